# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: numpy arrays in, C kernel calls with the GIL released, error codes out.

This module trusts its caller (fastrnn/modules.py) for shapes, contiguity and sizes: that layer validates
every argument before it comes here.  What is checked here is only what would otherwise corrupt memory
silently if the caller had a bug: every array is an ndarray of the call's dtype.
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

cnp.import_array()

cdef extern from "workspace.h" nogil:
    size_t fr_ws_release()
    size_t fr_ws_cached()
    int fr_ws_set_poison(int on)

cdef extern from "threads.h" nogil:
    unsigned fr_fpmode_enter()
    void fr_fpmode_leave(unsigned saved)

cdef extern from "fastrnn.h" nogil:
    int FR_OK
    int FR_ENOMEM
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

    # The kernel tables (fastrnn.h's FR_KERNEL_TABLE, once per dtype).
    ctypedef struct fr_kernels_f32_t:
        size_t (*rnn_tape_len)(int T, int B, int H) noexcept nogil
        int (*rnn_forward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, float *y, int ldy, float *hn, float *tape) noexcept nogil
        int (*rnn_backward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, float *dx, int dx_accumulate, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh) noexcept nogil
        size_t (*lstm_tape_len)(int T, int B, int H, int P) noexcept nogil
        int (*lstm_forward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const float *x, const float *h0, const float *c0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, const float *w_hr, float *y, int ldy, float *hn, float *cn, float *tape) noexcept nogil
        int (*lstm_backward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const float *x, const float *h0, const float *c0, const float *w_ih, const float *w_hh, const float *w_hr, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, const float *dcn, float *dx, int dx_accumulate, float *dh0, float *dc0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *dw_hr) noexcept nogil
        size_t (*gru_tape_len)(int T, int B, int H) noexcept nogil
        int (*gru_forward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh, float *y, int ldy, float *hn, float *tape) noexcept nogil
        int (*gru_backward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const float *x, const float *h0, const float *w_ih, const float *w_hh, const float *y, int ldy, const float *tape, const float *dy, int lddy, const float *dhn, float *dx, int dx_accumulate, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh) noexcept nogil
        void (*activation)(int fn, const float *x, float *y, size_t n) noexcept nogil
        void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc, int nthreads) noexcept nogil
    ctypedef struct fr_kernels_f64_t:
        size_t (*rnn_tape_len)(int T, int B, int H) noexcept nogil
        int (*rnn_forward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, double *y, int ldy, double *hn, double *tape) noexcept nogil
        int (*rnn_backward)(int T, int B, int I, int H, int relu, int reverse, const int *lengths, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, double *dx, int dx_accumulate, double *dh0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh) noexcept nogil
        size_t (*lstm_tape_len)(int T, int B, int H, int P) noexcept nogil
        int (*lstm_forward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const double *x, const double *h0, const double *c0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, const double *w_hr, double *y, int ldy, double *hn, double *cn, double *tape) noexcept nogil
        int (*lstm_backward)(int T, int B, int I, int H, int P, int reverse, const int *lengths, const double *x, const double *h0, const double *c0, const double *w_ih, const double *w_hh, const double *w_hr, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, const double *dcn, double *dx, int dx_accumulate, double *dh0, double *dc0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh, double *dw_hr) noexcept nogil
        size_t (*gru_tape_len)(int T, int B, int H) noexcept nogil
        int (*gru_forward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *b_ih, const double *b_hh, double *y, int ldy, double *hn, double *tape) noexcept nogil
        int (*gru_backward)(int T, int B, int I, int H, int reset_after, int reverse, const int *lengths, const double *x, const double *h0, const double *w_ih, const double *w_hh, const double *y, int ldy, const double *tape, const double *dy, int lddy, const double *dhn, double *dx, int dx_accumulate, double *dh0, double *dw_ih, double *dw_hh, double *db_ih, double *db_hh) noexcept nogil
        void (*activation)(int fn, const double *x, double *y, size_t n) noexcept nogil
        void (*gemm)(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda, const double *B, int ldb, double beta, double *C, int ldc, int nthreads) noexcept nogil
    const fr_kernels_f32_t *fr_kernels_f32()
    const fr_kernels_f64_t *fr_kernels_f64()


# ---- BLAS from scipy, handed to the kernels once ----------------------------------------------------------
def _install_scipy_blas():
    from scipy.linalg import cython_blas
    caps = cython_blas.__pyx_capi__
    s, d = caps["sgemm"], caps["dgemm"]
    fr_set_blas(<fr_sgemm_fn>PyCapsule_GetPointer(s, PyCapsule_GetName(s)),
                <fr_dgemm_fn>PyCapsule_GetPointer(d, PyCapsule_GetName(d)))

_install_scipy_blas()

# ---- ISA and threads ----------------------------------------------------------------------------------------
_ISA_NAMES = {FR_ISA_PORTABLE: "portable", FR_ISA_AVX2: "avx2", FR_ISA_AVX512: "avx512"}
_ISA_CODES = {v: k for k, v in _ISA_NAMES.items()}


def get_isa():
    """The instruction set the kernels use now: "avx512", "avx2" or "portable"."""
    return _ISA_NAMES[fr_get_isa()]


def set_isa(name):
    """Use the "portable", "avx2" or "avx512" kernels from now on; returns the ISA in use afterwards.
    "avx512" changes the float32 kernels only (float64 runs its AVX2 kernels there)."""
    if name not in _ISA_CODES:
        raise ValueError(f"isa: expected one of {sorted(_ISA_CODES)}, got {name!r}")
    if name == "avx2" and not fr_cpu_has_avx2():
        raise ValueError("isa: 'avx2' requested but this CPU lacks AVX2+FMA")
    if name == "avx512" and not fr_cpu_has_avx512():
        raise ValueError("isa: 'avx512' requested but this CPU lacks AVX-512 F/VL/DQ/BW (or AVX2+FMA)")
    return _ISA_NAMES[fr_set_isa(_ISA_CODES[name])]


def cpu_has_avx2():
    """Whether this CPU can run the AVX2+FMA kernels."""
    return bool(fr_cpu_has_avx2())


def cpu_has_avx512():
    """Whether this CPU can run the AVX-512 kernels (F, VL, DQ, BW, with AVX2+FMA)."""
    return bool(fr_cpu_has_avx512())


def _set_chunking(chunk_bytes=0, proj_min_rows=0):
    """Testing knob (not API): the kernels' chunk buffers take about chunk_bytes (default 4 MB), and a
    chunk whose input projection is one GEMM at least proj_min_rows rows (default 1024); 0 keeps a value.
    Small values make small inputs run many chunks.  Returns the previous (chunk_bytes, proj_min_rows)."""
    if chunk_bytes < 0 or proj_min_rows < 0:
        raise ValueError(f"_set_chunking: expected sizes >= 0, got {chunk_bytes}, {proj_min_rows}")
    old = (fr_chunk_bytes(), fr_proj_min_rows())
    fr_set_chunking(chunk_bytes, proj_min_rows)
    return old


def _set_steal_mode(int mode):
    """Testing knob (not API): how the threads of a step share its blocks (fastrnn.h, fr_set_steal_mode):
    0 by the step's work (default), 1 always by claims, 2 always, with every block starting in the last
    thread's range so the others take theirs from its back.  Returns the previous mode."""
    if mode not in (0, 1, 2):
        raise ValueError(f"_set_steal_mode: expected 0, 1 or 2, got {mode}")
    return fr_set_steal_mode(mode)


def get_num_threads():
    return fr_get_num_threads()


def release_workspace():
    """Frees the large work buffers the kernels keep between calls (weight panels, projections: at most
    256 MB, about one call's worth, or FASTRNN_WORKSPACE_MB from the environment) and returns how many bytes
    that was.  The next call allocates afresh."""
    return fr_ws_release()


def workspace_bytes():
    """Bytes of work buffers kept for the next call (release_workspace frees them)."""
    return fr_ws_cached()


def _set_workspace_poison(bint on):
    """Testing knob (not API): fill every work buffer with NaN bytes before a kernel gets it, so reading one
    before writing it shows in the results.  Returns the previous setting."""
    return bool(fr_ws_set_poison(on))


def set_num_threads(int n):
    fr_set_num_threads(n)


# ---- kernel calls -------------------------------------------------------------------------------------------
cdef enum:
    _RNN = 0
    _LSTM = 1
    _GRU = 2

CELL_RNN, CELL_LSTM, CELL_GRU = _RNN, _LSTM, _GRU  # the cell codes modules.py passes in

ctypedef fused real:
    float
    double


cdef inline real *_ptr(object a, real *kind) except? NULL:
    """The data pointer of ndarray `a` (NULL for None), after checking it holds `real`s."""
    if a is None:
        return NULL
    if type(a) is not cnp.ndarray:
        raise TypeError("internal: kernel argument is not an ndarray")
    cdef int want = cnp.NPY_FLOAT32 if real is float else cnp.NPY_FLOAT64
    if cnp.PyArray_TYPE(<cnp.ndarray>a) != want:
        raise TypeError("internal: kernel argument of the wrong dtype")
    return <real *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline const int *_iptr(object a) except? NULL:
    if a is None:
        return NULL
    if type(a) is not cnp.ndarray or cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.NPY_INT32:
        raise TypeError("internal: lengths must be an int32 ndarray")
    return <const int *>cnp.PyArray_DATA(<cnp.ndarray>a)


def tape_len(int cell, int T, int B, int H, int P, bint f64):
    """Elements of the tape one (layer, direction) keeps for backward."""
    cdef const fr_kernels_f32_t *t32
    cdef const fr_kernels_f64_t *t64
    if f64:
        t64 = fr_kernels_f64()
        if cell == _RNN: return t64.rnn_tape_len(T, B, H)
        if cell == _LSTM: return t64.lstm_tape_len(T, B, H, P)
        return t64.gru_tape_len(T, B, H)
    t32 = fr_kernels_f32()
    if cell == _RNN: return t32.rnn_tape_len(T, B, H)
    if cell == _LSTM: return t32.lstm_tape_len(T, B, H, P)
    return t32.gru_tape_len(T, B, H)


cdef int _forward(real *kind, int cell, int opt, int T, int B, int I, int H, int P, int reverse,
                  const int *lengths, const real *x, const real *h0, const real *c0, const real *w_ih,
                  const real *w_hh, const real *b_ih, const real *b_hh, const real *w_hr, real *y, int ldy,
                  real *hn, real *cn, real *tape) noexcept nogil:
    """One (layer, direction) forward; `opt` is the cell's option: relu (RNN), P (LSTM), reset_after (GRU)."""
    cdef const fr_kernels_f32_t *t32
    cdef const fr_kernels_f64_t *t64
    if real is float:
        t32 = fr_kernels_f32()
        if cell == _RNN:
            return t32.rnn_forward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, b_ih, b_hh, y, ldy, hn, tape)
        if cell == _LSTM:
            return t32.lstm_forward(T, B, I, H, P, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, ldy, hn, cn, tape)
        return t32.gru_forward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, b_ih, b_hh, y, ldy, hn, tape)
    else:
        t64 = fr_kernels_f64()
        if cell == _RNN:
            return t64.rnn_forward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, b_ih, b_hh, y, ldy, hn, tape)
        if cell == _LSTM:
            return t64.lstm_forward(T, B, I, H, P, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, ldy, hn, cn, tape)
        return t64.gru_forward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, b_ih, b_hh, y, ldy, hn, tape)


cdef int _backward(real *kind, int cell, int opt, int T, int B, int I, int H, int P, int reverse,
                   const int *lengths, const real *x, const real *h0, const real *c0, const real *w_ih,
                   const real *w_hh, const real *w_hr, const real *y, int ldy, const real *tape,
                   const real *dy, int lddy, const real *dhn, const real *dcn, real *dx, int dx_accumulate,
                   real *dh0, real *dc0, real *dw_ih, real *dw_hh, real *db_ih, real *db_hh,
                   real *dw_hr) noexcept nogil:
    cdef const fr_kernels_f32_t *t32
    cdef const fr_kernels_f64_t *t64
    if real is float:
        t32 = fr_kernels_f32()
        if cell == _RNN:
            return t32.rnn_backward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, y, ldy, tape, dy, lddy, dhn, dx, dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh)
        if cell == _LSTM:
            return t32.lstm_backward(T, B, I, H, P, reverse, lengths, x, h0, c0, w_ih, w_hh, w_hr, y, ldy, tape, dy, lddy, dhn, dcn, dx, dx_accumulate, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
        return t32.gru_backward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, y, ldy, tape, dy, lddy, dhn, dx, dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh)
    else:
        t64 = fr_kernels_f64()
        if cell == _RNN:
            return t64.rnn_backward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, y, ldy, tape, dy, lddy, dhn, dx, dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh)
        if cell == _LSTM:
            return t64.lstm_backward(T, B, I, H, P, reverse, lengths, x, h0, c0, w_ih, w_hh, w_hr, y, ldy, tape, dy, lddy, dhn, dcn, dx, dx_accumulate, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
        return t64.gru_backward(T, B, I, H, opt, reverse, lengths, x, h0, w_ih, w_hh, y, ldy, tape, dy, lddy, dhn, dx, dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh)


cdef inline _check(int rc):
    if rc == FR_ENOMEM:
        raise MemoryError("fastrnn: a kernel could not allocate its workspace")
    if rc != FR_OK:
        raise RuntimeError(f"fastrnn: kernel failed with code {rc}")


def forward(int cell, int opt, int T, int B, int I, int H, int P, bint reverse, lengths, x, h0, c0,
            w_ih, w_hh, b_ih, b_hh, w_hr, y, int ldy, hn, cn, tape):
    """One (layer, direction) forward over the whole sequence, GIL released.  y may be a strided view
    (row stride ldy) into a bidirectional output; tape is None for inference."""
    cdef int rc
    cdef const int *lp = _iptr(lengths)
    cdef float *f = NULL
    cdef double *d = NULL
    cdef double *dp[12]
    cdef unsigned mode
    cdef float *fp[12]
    cdef int k
    objs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, hn, cn, tape)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT64:
        for k in range(12):
            dp[k] = _ptr(objs[k], d)
        with nogil:
            mode = fr_fpmode_enter()  # denormals flushed for the whole call, whatever the threads
            rc = _forward(d, cell, opt, T, B, I, H, P, reverse, lp, dp[0], dp[1], dp[2], dp[3], dp[4],
                          dp[5], dp[6], dp[7], dp[8], ldy, dp[9], dp[10], dp[11])
            fr_fpmode_leave(mode)
    else:
        for k in range(12):
            fp[k] = _ptr(objs[k], f)
        with nogil:
            mode = fr_fpmode_enter()  # denormals flushed for the whole call, whatever the threads
            rc = _forward(f, cell, opt, T, B, I, H, P, reverse, lp, fp[0], fp[1], fp[2], fp[3], fp[4],
                          fp[5], fp[6], fp[7], fp[8], ldy, fp[9], fp[10], fp[11])
            fr_fpmode_leave(mode)
    _check(rc)


def backward(int cell, int opt, int T, int B, int I, int H, int P, bint reverse, lengths, x, h0, c0,
             w_ih, w_hh, w_hr, y, int ldy, tape, dy, int lddy, dhn, dcn, dx, bint dx_accumulate, dh0, dc0,
             dw_ih, dw_hh, db_ih, db_hh, dw_hr):
    """One (layer, direction) backward through time, GIL released; gradients are written into the
    given arrays (dx added into when dx_accumulate)."""
    cdef int rc
    cdef const int *lp = _iptr(lengths)
    cdef float *f = NULL
    cdef double *d = NULL
    cdef double *dp[20]
    cdef unsigned mode
    cdef float *fp[20]
    cdef int k
    objs = (x, h0, c0, w_ih, w_hh, w_hr, y, tape, dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh,
            dw_hr)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT64:
        for k in range(19):
            dp[k] = _ptr(objs[k], d)
        with nogil:
            mode = fr_fpmode_enter()  # denormals flushed for the whole call, whatever the threads
            rc = _backward(d, cell, opt, T, B, I, H, P, reverse, lp, dp[0], dp[1], dp[2], dp[3], dp[4],
                           dp[5], dp[6], ldy, dp[7], dp[8], lddy, dp[9], dp[10], dp[11], dx_accumulate,
                           dp[12], dp[13], dp[14], dp[15], dp[16], dp[17], dp[18])
            fr_fpmode_leave(mode)
    else:
        for k in range(19):
            fp[k] = _ptr(objs[k], f)
        with nogil:
            mode = fr_fpmode_enter()  # denormals flushed for the whole call, whatever the threads
            rc = _backward(f, cell, opt, T, B, I, H, P, reverse, lp, fp[0], fp[1], fp[2], fp[3], fp[4],
                           fp[5], fp[6], ldy, fp[7], fp[8], lddy, fp[9], fp[10], fp[11], dx_accumulate,
                           fp[12], fp[13], fp[14], fp[15], fp[16], fp[17], fp[18])
            fr_fpmode_leave(mode)
    _check(rc)


def activation(name, x):
    """sigmoid or tanh of a float32/float64 array, computed by the kernels' own activation code of the ISA
    in use (for tests of its accuracy)."""
    cdef int fn = {"sigmoid": 0, "tanh": 1}[name]
    cdef cnp.ndarray xa = cnp.PyArray_GETCONTIGUOUS(x)
    cdef cnp.ndarray y = xa.copy()
    cdef size_t n = xa.size
    if cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT64:
        fr_kernels_f64().activation(fn, <double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(y), n)
    elif cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT32:
        fr_kernels_f32().activation(fn, <float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(y), n)
    else:
        raise TypeError("activation: expected a float32 or float64 array")
    return y


cdef int _ld(cnp.ndarray a, str name) except -1:
    """Leading dimension of a 2-D array whose rows are contiguous (a C-contiguous array or a column slice
    of one), in elements."""
    if a.ndim != 2:
        raise ValueError(f"gemm: {name} must be 2-D")
    cdef Py_ssize_t item = a.itemsize
    if a.size == 0:
        return <int>max(a.shape[1], 1)
    if a.shape[1] > 1 and a.strides[1] != item:
        raise ValueError(f"gemm: the rows of {name} must be contiguous")
    if a.strides[0] % item or a.strides[0] < 0:
        raise ValueError(f"gemm: {name} has an unsupported row stride")
    cdef Py_ssize_t ld = a.strides[0] // item
    if a.shape[0] > 1 and ld < a.shape[1]:
        raise ValueError(f"gemm: the rows of {name} overlap")
    return <int>max(ld, a.shape[1], 1)


def gemm(bint trans_a, bint trans_b, alpha, cnp.ndarray A, cnp.ndarray B, beta, cnp.ndarray C, int nthreads=0):
    """C = alpha op(A) op(B) + beta C in place, op(X) = X.T when trans_x, by the kernels' own GEMM of the
    ISA in use (for tests).  A, B, C: 2-D arrays of one dtype whose rows are contiguous; their row strides
    are the leading dimensions.  nthreads 0 lets the size decide; n > 0 asks for n threads taking chunks
    of C, n < 0 for -n threads sharing each packed block of B (csrc/gemm_kernel.h)."""
    cdef int M = C.shape[0] if C.ndim == 2 else -1, N = C.shape[1] if C.ndim == 2 else -1
    cdef int K = (A.shape[0] if trans_a else A.shape[1]) if A.ndim == 2 else -1
    cdef int lda = _ld(A, "A"), ldb = _ld(B, "B"), ldc = _ld(C, "C")
    if (A.shape[1] if trans_a else A.shape[0]) != M or (B.shape[0] if trans_b else B.shape[1]) != N \
            or (B.shape[1] if trans_b else B.shape[0]) != K:
        raise ValueError("gemm: shapes do not match")
    if not C.flags.writeable:
        raise ValueError("gemm: C is read-only")
    cdef int t = cnp.PyArray_TYPE(C)
    if cnp.PyArray_TYPE(A) != t or cnp.PyArray_TYPE(B) != t:
        raise TypeError("gemm: A, B and C must have one dtype")
    cdef double al = alpha, be = beta
    cdef void *pa = cnp.PyArray_DATA(A)
    cdef void *pb = cnp.PyArray_DATA(B)
    cdef void *pc = cnp.PyArray_DATA(C)
    if t == cnp.NPY_FLOAT64:
        with nogil:
            fr_kernels_f64().gemm(trans_a, trans_b, M, N, K, al, <double *>pa, lda, <double *>pb, ldb, be,
                                  <double *>pc, ldc, nthreads)
    elif t == cnp.NPY_FLOAT32:
        with nogil:
            fr_kernels_f32().gemm(trans_a, trans_b, M, N, K, <float>al, <float *>pa, lda, <float *>pb, ldb,
                                  <float>be, <float *>pc, ldc, nthreads)
    else:
        raise TypeError("gemm: expected float32 or float64 arrays")
