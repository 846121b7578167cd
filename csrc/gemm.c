/*
 * gemm.c -- the BLAS path of the cells' GEMM, and the choice between it and fastrnn's own GEMM
 * (gemm_kernel.h, compiled per dtype and ISA with the cells).
 *
 * The BLAS path: row-major GEMM on top of a Fortran BLAS handed in at run time (fr_set_blas), so that the
 * extension links no BLAS at build time: the Python package passes scipy.linalg.cython_blas's sgemm/dgemm.
 * Without one, a plain C loop nest serves (correct, slow; for C users and tests).
 */
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"

/* These two are declared in common.h (not included here: it needs a dtype). */
#define FR_GEMM_OWN 0
#define FR_GEMM_BLAS 1
int fr_gemm_backend(void);
int fr_gemm_set_backend(int backend);

/* -1 until first use.  A plain int like dispatch.c's ISA: set at start-up or by the benchmark knob. */
static volatile int g_backend = -1;

int fr_gemm_backend(void) {
    if (g_backend < 0) {
        const char *env = getenv("FASTRNN_GEMM");
        g_backend = (env != NULL && strcmp(env, "blas") == 0) ? FR_GEMM_BLAS : FR_GEMM_OWN;
    }
    return g_backend;
}

int fr_gemm_set_backend(int backend) {
    g_backend = backend == FR_GEMM_BLAS ? FR_GEMM_BLAS : FR_GEMM_OWN;
    return g_backend;
}

static fr_sgemm_fn g_sgemm = NULL;
static fr_dgemm_fn g_dgemm = NULL;

void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm) {
    g_sgemm = sgemm;
    g_dgemm = dgemm;
}

/* Row-major C = alpha op(A) op(B) + beta C is column-major C^T = alpha op(B)^T op(A)^T + beta C^T, so
 * the Fortran call swaps the operands and their transposition flags and takes N before M. */
#define FR_DEFINE_GEMM(name, real, blas)                                                                   \
    void name(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A, int lda,          \
              const real *B, int ldb, real beta, real *C, int ldc) {                                      \
        if (M <= 0 || N <= 0) return;                                                                     \
        if (blas != NULL && K > 0) {                                                                      \
            char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';                                      \
            blas(&ta, &tb, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);                         \
            return;                                                                                       \
        }                                                                                                 \
        for (int m = 0; m < M; m++) {                                                                     \
            real *c = C + (size_t)m * ldc;                                                                \
            for (int n = 0; n < N; n++) c[n] = beta == 0 ? (real)0 : beta * c[n];                        \
            for (int k = 0; k < K; k++) {                                                                 \
                real a = alpha * (trans_a ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]);              \
                if (trans_b)                                                                              \
                    for (int n = 0; n < N; n++) c[n] += a * B[(size_t)n * ldb + k];                       \
                else                                                                                      \
                    for (int n = 0; n < N; n++) c[n] += a * B[(size_t)k * ldb + n];                       \
            }                                                                                             \
        }                                                                                                 \
    }

FR_DEFINE_GEMM(fr_gemm_f32, float, g_sgemm)
FR_DEFINE_GEMM(fr_gemm_f64, double, g_dgemm)
