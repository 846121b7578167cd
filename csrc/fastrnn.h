/*
 * fastrnn.h -- the C API of the fastrnn kernels.  Plain C99, no Python headers.
 *
 * Notation (docs/design.md, Notation): T time steps, B batch, I input size, H hidden size, P LSTM output size
 * (proj_size when > 0, else H), G gates per cell (RNN 1, GRU 3, LSTM 4).
 *
 * Layout: every array is row-major and time-major, contiguous, except the sequence outputs y / dy, whose
 * rows have a leading dimension (ldy, lddy) so that the two directions of a bidirectional layer write into
 * their halves of one (T, B, 2*H) array.  Weights are exactly torch.nn's:
 *   weight_ih (G*H, I), weight_hh (G*H, H or P), bias_ih (G*H), bias_hh (G*H), weight_hr (P, H).
 * Gate order: LSTM i, f, g, o;  GRU r, z, n.
 *
 * One call runs one layer in one direction over the whole sequence:
 *   forward   x, h0 (c0), weights               -> y, h_n (c_n), and the tape when training
 *   backward  x, h0 (c0), weights, y, tape, dy, dh_n (dc_n) -> dx, dh0 (dc0), every weight gradient
 * Forward and backward of a cell take their arguments in the same order.
 *
 * reverse   0: t = 0 .. T-1;  1: t = T-1 .. 0 (torch's _reverse direction).
 * lengths   NULL (every sequence has T steps) or (B) ints with 1 <= lengths[b] <= T.  Sequence b takes
 *           steps 0 .. lengths[b]-1 only; the reverse direction starts at its own step lengths[b]-1.
 *           y at padded steps is written 0, dy there is ignored, h_n is the state after the last valid step.
 * rmask     recurrent dropout (Keras's recurrent_dropout, docs/keras.md): NULL, or masks the recurrent
 *           product reads h_{t-1} through, batch order, fixed over the steps: the RNN's (B, H); the LSTM's
 *           (4, B, P), one per gate i, f, g, o (gate q's pre-activation takes (h_{t-1} * mask_q) W_hh,q^T).
 *           The forward applies it whenever given, training or not (a checkpointed training forward runs
 *           without a tape); backward takes the forward's.  NULL is exactly the unmasked kernel.  The GRU's
 *           (3, B, H), one per gate r, z, n (its kernel order): gate q's recurrent product reads
 *           h_{t-1} * mask_q (reset_after = 0: n's reads r * (h_{t-1} * mask_n)); the carry z * h_{t-1}
 *           reads the unmasked h_{t-1}.
 * h0, c0    may be NULL for zeros.  dh_n, dc_n may be NULL for zeros.
 * tape      training forward writes what backward needs into it: tape_len(...) elements, layout private to
 *           the kernel.  NULL for inference (then nothing is kept).
 * dx        written (dx_accumulate = 0) or added into (dx_accumulate = 1: the second direction of a
 *           bidirectional layer adds its part); NULL to skip computing it.
 * biases    NULL when the layer has no bias; then the bias gradients are NULL too.
 * Weight and bias gradients are overwritten, not accumulated.
 *
 * Return value: 0 on success, FR_ENOMEM when a workspace could not be allocated, FR_EINTR when an armed
 * interrupt stopped the call between time steps (outputs then meaningless); nothing is leaked either way.
 * Kernels never touch Python; they are safe to call concurrently from many threads.
 */
#ifndef FASTRNN_H
#define FASTRNN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FR_OK 0
#define FR_ENOMEM (-1)
#define FR_EINTR (-2) /* stopped between time steps by an interrupt the caller armed (threads.h) */

/* ---- instruction sets ------------------------------------------------------------------------------- */
#define FR_ISA_PORTABLE 0 /* plain C99, any x86-64 (or other) CPU */
#define FR_ISA_AVX2 1     /* AVX2 + FMA */
#define FR_ISA_AVX512 2   /* AVX-512 F/VL/DQ/BW + AVX2 + FMA: float32 16-wide tiles and GEMM; float64 as AVX2 */

/* The ISA in use: the best this CPU supports, unless the environment variable FASTRNN_ISA=portable
 * (or avx2: at most AVX2) asked otherwise at first use, or fr_set_isa() changed it. */
int fr_get_isa(void);
/* Force an ISA; returns the ISA now in use (an unsupported request falls back to the best supported
 * below it). */
int fr_set_isa(int isa);
int fr_cpu_has_avx2(void);
int fr_cpu_has_avx512(void);

/* Work buffers that grow with T (seq.h) are processed in chunks of steps of about fr_chunk_bytes() bytes,
 * and a chunk whose input projection is one GEMM has at least fr_proj_min_rows() rows (4 MB and 1024 by
 * default).  fr_set_chunking changes both (0 keeps a value): a testing knob that makes small inputs run
 * many chunks, not meant to change while kernels run. */
size_t fr_chunk_bytes(void);
int fr_proj_min_rows(void);
void fr_set_chunking(size_t chunk_bytes, int proj_min_rows);

/* Testing knob for the threads' sharing of a step's blocks (recurrent.h, rec_steal): 0 (default) steals
 * when a step is work enough; 1 whenever a step is split by units on 2+ threads; 2 as 1, and every step's
 * blocks start in the last thread's range, so the others take all theirs from its back.  Returns the
 * previous mode; not meant to change while kernels run. */
int fr_steal_mode(void);
int fr_set_steal_mode(int mode);

/* ---- BLAS -------------------------------------------------------------------------------------------- */
/* Fortran BLAS sgemm / dgemm (column-major), e.g. from scipy.linalg.cython_blas.  Until both are set the
 * kernels use their own (slower) C GEMM. */
typedef void (*fr_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                            const int *k, const float *alpha, const float *a, const int *lda,
                            const float *b, const int *ldb, const float *beta, float *c, const int *ldc);
typedef void (*fr_dgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                            const int *k, const double *alpha, const double *a, const int *lda,
                            const double *b, const int *ldb, const double *beta, double *c,
                            const int *ldc);
void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm);

/* ---- threads ----------------------------------------------------------------------------------------- */
int fr_get_num_threads(void);
void fr_set_num_threads(int n);
/* Run the kernels' parallel regions on an OpenMP runtime's threads (GOMP_parallel, omp_get_thread_num,
 * omp_get_num_threads, omp_in_parallel of a runtime loaded in the process), or on fastrnn's own pool
 * (parallel = NULL).  Returns 0, or -1 when a function is missing.  fr_omp_enabled: which one is set. */
int fr_set_omp(void *parallel, void *thread_num, void *num_threads, void *in_parallel);
int fr_omp_enabled(void);

/* ---- the kernels, one table per dtype ------------------------------------------------------------------
 * FR_KERNEL_TABLE(real, name) declares the struct `name` of function pointers for element type `real`.
 * fr_kernels_f32() / fr_kernels_f64() return the table of the ISA in use. */
#define FR_KERNEL_TABLE(real, name)                                                                      \
    typedef struct name {                                                                                \
        /* vanilla RNN: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = relu ? relu : tanh */         \
        size_t (*rnn_tape_len)(int T, int B, int H);                                                     \
        int (*rnn_forward)(int T, int B, int I, int H, int relu, int reverse,                            \
                           const int *lengths, /* (B) or NULL */                                         \
                           const real *rmask,  /* (B, H) or NULL */                                      \
                           const real *x,      /* (T, B, I) */                                           \
                           const real *h0,     /* (B, H) or NULL */                                      \
                           const real *w_ih,   /* (H, I) */                                              \
                           const real *w_hh,   /* (H, H) */                                              \
                           const real *b_ih,   /* (H) or NULL */                                         \
                           const real *b_hh,   /* (H) or NULL */                                         \
                           real *y, int ldy,   /* (T, B, ldy >= H) out */                                \
                           real *hn,           /* (B, H) out */                                          \
                           real *tape);        /* (rnn_tape_len) out, or NULL for inference */           \
        int (*rnn_backward)(int T, int B, int I, int H, int relu, int reverse,                           \
                            const int *lengths,   /* (B) or NULL */                                      \
                            const real *rmask,    /* (B, H) or NULL */                                   \
                            const real *x,        /* (T, B, I) */                                        \
                            const real *h0,       /* (B, H) or NULL */                                   \
                            const real *w_ih,     /* (H, I) */                                           \
                            const real *w_hh,     /* (H, H) */                                           \
                            const real *y, int ldy, /* (T, B, ldy) from the training forward */          \
                            const real *tape,     /* (rnn_tape_len) from the training forward */         \
                            const real *dy, int lddy, /* (T, B, lddy >= H) */                            \
                            const real *dhn,      /* (B, H) or NULL */                                   \
                            real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */                    \
                            real *dh0,            /* (B, H) out */                                       \
                            real *dw_ih,          /* (H, I) out */                                       \
                            real *dw_hh,          /* (H, H) out */                                       \
                            real *db_ih,          /* (H) out, or NULL */                                 \
                            real *db_hh);         /* (H) out, or NULL */                                 \
                                                                                                         \
        /* LSTM, gates i, f, g, o: c' = f*c + i*g, h' = o*tanh(c'), with projection h' = (o*tanh(c')) W_hr^T. \
         * P = proj_size, or P = H and w_hr = NULL without projection. */                                \
        size_t (*lstm_tape_len)(int T, int B, int H, int P);                                             \
        int (*lstm_forward)(int T, int B, int I, int H, int P, int reverse,                              \
                            const int *lengths, /* (B) or NULL */                                        \
                            const real *rmask,  /* (4, B, P) or NULL */                                  \
                            const real *x,      /* (T, B, I) */                                          \
                            const real *h0,     /* (B, P) or NULL */                                     \
                            const real *c0,     /* (B, H) or NULL */                                     \
                            const real *w_ih,   /* (4H, I) */                                            \
                            const real *w_hh,   /* (4H, P) */                                            \
                            const real *b_ih,   /* (4H) or NULL */                                       \
                            const real *b_hh,   /* (4H) or NULL */                                       \
                            const real *w_hr,   /* (P, H), NULL when P == H */                           \
                            real *y, int ldy,   /* (T, B, ldy >= P) out */                               \
                            real *hn,           /* (B, P) out */                                         \
                            real *cn,           /* (B, H) out */                                         \
                            real *tape);        /* (lstm_tape_len) out, or NULL for inference */         \
        int (*lstm_backward)(int T, int B, int I, int H, int P, int reverse,                             \
                             const int *lengths,   /* (B) or NULL */                                     \
                             const real *rmask,    /* (4, B, P) or NULL */                               \
                             const real *x,        /* (T, B, I) */                                       \
                             const real *h0,       /* (B, P) or NULL */                                  \
                             const real *c0,       /* (B, H) or NULL */                                  \
                             const real *w_ih,     /* (4H, I) */                                         \
                             const real *w_hh,     /* (4H, P) */                                         \
                             const real *w_hr,     /* (P, H), NULL when P == H */                        \
                             const real *y, int ldy, /* (T, B, ldy) from the training forward */         \
                             const real *tape,     /* (lstm_tape_len) from the training forward */       \
                             const real *dy, int lddy, /* (T, B, lddy >= P) */                           \
                             const real *dhn,      /* (B, P) or NULL */                                  \
                             const real *dcn,      /* (B, H) or NULL */                                  \
                             real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */                   \
                             real *dh0,            /* (B, P) out */                                      \
                             real *dc0,            /* (B, H) out */                                      \
                             real *dw_ih,          /* (4H, I) out */                                     \
                             real *dw_hh,          /* (4H, P) out */                                     \
                             real *db_ih,          /* (4H) out, or NULL */                               \
                             real *db_hh,          /* (4H) out, or NULL */                               \
                             real *dw_hr);         /* (P, H) out, NULL when P == H */                    \
                                                                                                         \
        /* GRU, gates r, z, n: r,z = sigmoid(x W_i^T + b_i + h W_h^T + b_h), h' = (1-z)*n + z*h,         \
         *   reset_after = 1 (torch):  n = tanh(x W_in^T + b_in + r*(h W_hn^T + b_hn))                   \
         *   reset_after = 0 (Cho et al.): n = tanh(x W_in^T + b_in + (r*h) W_hn^T + b_hn) */            \
        size_t (*gru_tape_len)(int T, int B, int H);                                                     \
        int (*gru_forward)(int T, int B, int I, int H, int reset_after, int reverse,                     \
                           const int *lengths, /* (B) or NULL */                                         \
                           const real *rmask,  /* (3, B, H) or NULL */                                   \
                           const real *x,      /* (T, B, I) */                                           \
                           const real *h0,     /* (B, H) or NULL */                                      \
                           const real *w_ih,   /* (3H, I) */                                             \
                           const real *w_hh,   /* (3H, H) */                                             \
                           const real *b_ih,   /* (3H) or NULL */                                        \
                           const real *b_hh,   /* (3H) or NULL */                                        \
                           real *y, int ldy,   /* (T, B, ldy >= H) out */                                \
                           real *hn,           /* (B, H) out */                                          \
                           real *tape);        /* (gru_tape_len) out, or NULL for inference */           \
        int (*gru_backward)(int T, int B, int I, int H, int reset_after, int reverse,                    \
                            const int *lengths,   /* (B) or NULL */                                      \
                            const real *rmask,    /* (3, B, H) or NULL */                                  \
                            const real *x,        /* (T, B, I) */                                        \
                            const real *h0,       /* (B, H) or NULL */                                   \
                            const real *w_ih,     /* (3H, I) */                                          \
                            const real *w_hh,     /* (3H, H) */                                          \
                            const real *y, int ldy, /* (T, B, ldy) from the training forward */          \
                            const real *tape,     /* (gru_tape_len) from the training forward */         \
                            const real *dy, int lddy, /* (T, B, lddy >= H) */                            \
                            const real *dhn,      /* (B, H) or NULL */                                   \
                            real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */                    \
                            real *dh0,            /* (B, H) out */                                       \
                            real *dw_ih,          /* (3H, I) out */                                      \
                            real *dw_hh,          /* (3H, H) out */                                      \
                            real *db_ih,          /* (3H) out, or NULL */                                \
                            real *db_hh);         /* (3H) out, or NULL */                                \
                                                                                                         \
        /* The activations the kernels use, exposed for tests: y = sigmoid(x) (fn 0) or tanh(x) (fn 1). */ \
        void (*activation)(int fn, const real *x, /* (n) */ real *y, /* (n) */ size_t n);              \
                                                                                                         \
        /* The cells' own GEMM, exposed for tests: row-major C (M, N) = alpha op(A) op(B) + beta C,      \
         * op(X) = X^T when trans_x; C is not read when beta == 0.  nthreads 0 lets the size decide,     \
         * n > 0 asks for n threads in row / column chunks, n < 0 for -n threads sharing one packed B    \
         * block (both capped by fr_get_num_threads()). */                                               \
        void (*gemm)(int trans_a, int trans_b, int M, int N, int K, real alpha,                          \
                     const real *A, int lda, /* (M, lda >= K), or (K, lda >= M) when trans_a */          \
                     const real *B, int ldb, /* (K, ldb >= N), or (N, ldb >= K) when trans_b */          \
                     real beta, real *C, int ldc, /* (M, ldc >= N) */                                    \
                     int nthreads);                                                                      \
    } name;

/* <complex.h> defines the macro I, which the prototypes use as a parameter name (the input size). */
#pragma push_macro("I")
#undef I
FR_KERNEL_TABLE(float, fr_kernels_f32_t)
FR_KERNEL_TABLE(double, fr_kernels_f64_t)
#pragma pop_macro("I")

const fr_kernels_f32_t *fr_kernels_f32(void);
const fr_kernels_f64_t *fr_kernels_f64(void);

/* The tables of each ISA, whatever the CPU (calling the AVX2 ones on a CPU without AVX2 crashes). */
extern const fr_kernels_f32_t fr_kernels_f32_portable, fr_kernels_f32_avx2, fr_kernels_f32_avx512;
extern const fr_kernels_f64_t fr_kernels_f64_portable, fr_kernels_f64_avx2;

#ifdef __cplusplus
}
#endif
#endif /* FASTRNN_H */
