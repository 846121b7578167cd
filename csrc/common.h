/*
 * common.h -- what every cell kernel shares: the element type, GEMM, activations, workspace allocation.
 *
 * The cell files (rnn.c, lstm.c, gru.c) are written once against `real` and compiled once per dtype and
 * ISA: csrc/isa/<dtype>_<isa>.c defines FR_DOUBLE (0 or 1) and FR_AVX2 (0 or 1), then includes
 * instance.h, which includes the cells and fills that combination's kernel table.  The cells' functions
 * are static, so the four instances never collide.
 */
#ifndef FR_COMMON_H
#define FR_COMMON_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"
#include "workspace.h"

#ifndef FR_AVX512
#define FR_AVX512 0 /* 1 only in csrc/isa/f32_avx512.c, which also sets FR_AVX2 */
#endif
#if !defined(FR_DOUBLE) || !defined(FR_AVX2)
#error "define FR_DOUBLE and FR_AVX2 before including common.h (see csrc/isa/)"
#endif
/* The one ISA predicate of the cells: this instance has vector kernels (the register tiles of recurrent.h,
 * the vector widths of simd.h).  Only float32 does: the float64 AVX2 instance vectorises its GEMM alone
 * (gemm_kernel.h), and keeps libm's exact activations for the gradient checks. */
#define FR_SIMD (FR_AVX2 && !FR_DOUBLE)

#if FR_DOUBLE
typedef double real;
#define R_EXP exp
#define R_TANH tanh
#define fr_gemm_blas fr_gemm_f64
#define FR_TABLE_T fr_kernels_f64_t
#else
typedef float real;
#define R_EXP expf
#define R_TANH tanhf
#define fr_gemm_blas fr_gemm_f32
#define FR_TABLE_T fr_kernels_f32_t
#endif

/* Row-major GEMM: C (M, N) = alpha * op(A) @ op(B) + beta * C, op(X) = X^T when trans_x.
 * A is (M, K) or (K, M) when transposed, with leading dimension lda; likewise B; C has ldc.
 * The cells call fr_gemm: fastrnn's own blocked GEMM of this dtype and ISA (gemm_kernel.h, included by
 * instance.h before the cells), or the BLAS path below when the backend is FR_GEMM_BLAS. */
#define fr_gemm gk_gemm_cell
#define fr_gemm_jobs gk_gemm_jobs

/* Which GEMM fr_gemm uses (gemm.c): FR_GEMM_OWN, unless the environment variable FASTRNN_GEMM=blas said
 * otherwise at first use, or fr_gemm_set_backend changed it (a knob for benchmarks and a fallback). */
#define FR_GEMM_OWN 0
#define FR_GEMM_BLAS 1
int fr_gemm_backend(void);
int fr_gemm_set_backend(int backend);

/* The BLAS path (gemm.c, fr_gemm_blas for this dtype): goes to the registered BLAS when there is one, else
 * to a plain C loop nest. */
void fr_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
void fr_gemm_f64(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda,
                 const double *B, int ldb, double beta, double *C, int ldc);

/* For helpers whose only effect is __builtin_prefetch.  GCC (12) judges such a function, when it does not
 * inline it, free of side effects and -- its int loop counter cannot overflow without -fwrapv -- sure to
 * finish, and deletes every call: a plain -O3 build had no prefetch left in the training forwards and the
 * backward.  Forcing the inline keeps them whatever the flags (Python's own CFLAGS carry -fwrapv, which hid
 * it); tests/c/test_c_kernels.py checks the instructions are in the built tasks. */
#define FR_PREFETCH_FN static inline __attribute__((always_inline))

/* Exact activations from libm: the width vr1 of simd.h; its vector widths replace them with approximations. */
static inline real fr_sigmoid(real v) { return (real)1 / ((real)1 + R_EXP(-v)); }
static inline real fr_tanh(real v) { return R_TANH(v); }

/* 64-byte aligned workspace (workspace.c: large ones are reused between calls), zero-initialised when
 * zero != 0; NULL on failure (n == 0 still allocates).  Freed by fr_free, never free(). */
static inline real *fr_alloc(size_t n, int zero) {
    if (n > SIZE_MAX / sizeof(real)) return NULL;
    real *p = (real *)fr_ws_alloc(n * sizeof(real));
    if (p && zero) memset(p, 0, n * sizeof(real));
    return p;
}
static inline void fr_free(void *p) { fr_ws_free(p); }

/* The time index that step s (s = 0 is the first step a direction processes) of a sequence of len_b
 * valid steps reads and writes: s going forward, len_b - 1 - s in reverse. */
static inline int fr_time_index(int s, int len_b, int reverse) { return reverse ? len_b - 1 - s : s; }

#endif /* FR_COMMON_H */
