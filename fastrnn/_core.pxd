# The C declarations of the binding (fastrnn/_core.pyx): csrc/fastrnn.h, csrc/workspace.h, csrc/threads.h.
# Cython cannot instantiate one struct declaration for two element types as fastrnn.h's FR_KERNEL_TABLE
# macro does, so the two kernel tables are declared here member for member: keep them in step with
# fastrnn.h (a wrong member order would call the wrong kernel; tests/test_kernels_vs_reference.py catches it).

cdef extern from "workspace.h" nogil:
    void *fr_ws_alloc(size_t bytes)
    void fr_ws_free(void *p)
    size_t fr_ws_release()
    size_t fr_ws_cached()
    int fr_ws_set_poison(int on)

cdef extern from "threads.h" nogil:
    unsigned fr_fpmode_enter()
    void fr_fpmode_leave(unsigned saved)
    int fr_interrupt_arm()
    int fr_interrupt_disarm()

cdef extern from "fastrnn.h" nogil:
    int FR_OK
    int FR_ENOMEM
    int FR_EINTR
    int FR_ISA_PORTABLE
    int FR_ISA_AVX2
    int FR_ISA_AVX512
    ctypedef void (*fr_sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                                 const float *, const float *, const int *, const float *, const int *,
                                 const float *, float *, const int *)
    ctypedef void (*fr_dgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                                 const double *, const double *, const int *, const double *, const int *,
                                 const double *, double *, const int *)
    void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm)
    int fr_get_isa()
    int fr_set_isa(int isa)
    int fr_cpu_has_avx2()
    int fr_cpu_has_avx512()
    int fr_set_steal_mode(int mode)
    size_t fr_chunk_bytes()
    int fr_proj_min_rows()
    void fr_set_chunking(size_t chunk_bytes, int proj_min_rows)
    int fr_get_num_threads()
    void fr_set_num_threads(int n)
    int fr_set_omp(void *parallel, void *thread_num, void *num_threads, void *in_parallel)
    int fr_omp_enabled()

    # The kernel tables (fastrnn.h's FR_KERNEL_TABLE, once per dtype).
    ctypedef struct fr_kernels_f32_t:
        size_t (*rnn_tape_len)(int T, int B, int H) noexcept nogil
        int (*rnn_forward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, float *y, int ldy, float *hn, float *tape) noexcept nogil
        int (*rnn_backward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, float *dx, int dx_accumulate, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh) noexcept nogil
        size_t (*lstm_tape_len)(int T, int B, int H, int P) noexcept nogil
        int (*lstm_forward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *c0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, const float *w_hr, float *y, int ldy, float *hn, float *cn, float *tape) noexcept nogil
        int (*lstm_backward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *c0, const float *w_ih, const float *w_hh, const float *w_hr, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, const float *dcn, float *dx, int dx_accumulate, float *dh0, float *dc0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *dw_hr) noexcept nogil
        size_t (*gru_tape_len)(int T, int B, int H) noexcept nogil
        int (*gru_forward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, float *y, int ldy, float *hn, float *tape) noexcept nogil
        int (*gru_backward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const float *rmask, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, float *dx, int dx_accumulate, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh) noexcept nogil
        void (*activation)(int fn, const float *x, float *y, size_t n) noexcept nogil
        void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc, int nthreads) noexcept nogil
    ctypedef struct fr_kernels_f64_t:
        size_t (*rnn_tape_len)(int T, int B, int H) noexcept nogil
        int (*rnn_forward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, double *y, int ldy, double *hn, double *tape) noexcept nogil
        int (*rnn_backward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, double *dx, int dx_accumulate, double *dh0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh) noexcept nogil
        size_t (*lstm_tape_len)(int T, int B, int H, int P) noexcept nogil
        int (*lstm_forward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *c0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, const double *w_hr, double *y, int ldy, double *hn, double *cn, double *tape) noexcept nogil
        int (*lstm_backward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *c0, const double *w_ih, const double *w_hh, const double *w_hr, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, const double *dcn, double *dx, int dx_accumulate, double *dh0, double *dc0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh, double *dw_hr) noexcept nogil
        size_t (*gru_tape_len)(int T, int B, int H) noexcept nogil
        int (*gru_forward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, double *y, int ldy, double *hn, double *tape) noexcept nogil
        int (*gru_backward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const double *rmask, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, double *dx, int dx_accumulate, double *dh0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh) noexcept nogil
        void (*activation)(int fn, const double *x, double *y, size_t n) noexcept nogil
        void (*gemm)(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda, const double *B, int ldb, double beta, double *C, int ldc, int nthreads) noexcept nogil
    const fr_kernels_f32_t *fr_kernels_f32()
    const fr_kernels_f64_t *fr_kernels_f64()

cdef extern from "optim.h" nogil:
    void fr_adam_f32(size_t n, float *w, const float *g, float *m, float *v, float *vh, float c1, float c2,
                     float alpha, float eps)
    void fr_adam_f64(size_t n, double *w, const double *g, double *m, double *v, double *vh, double c1, double c2,
                     double alpha, double eps)
