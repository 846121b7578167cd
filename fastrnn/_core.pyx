# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: numpy arrays in, C kernel calls with the GIL released, error codes out.

This module trusts its caller (fastrnn/nn/functional.py) for shapes, contiguity and sizes: that layer validates
every argument before it comes here.  What is checked here is only what would otherwise corrupt memory
silently if the caller had a bug: every array is an ndarray of the call's dtype.
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

cnp.import_array()

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


cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr)

cdef unsigned int _TRACE_DOMAIN = 389047  # numpy's tracemalloc domain: these blocks stand for its data buffers


cdef class _Block:
    """Memory of fr_ws_alloc that numpy arrays view (empty()): given back with fr_ws_free when the last of
    them goes, so a large block returns to the workspace cache for the next call rather than to the kernel.
    Reported to tracemalloc as numpy reports its own data buffers, so a leak of such arrays shows there."""
    cdef void *p

    def __dealloc__(self):
        if self.p != NULL:
            PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t>self.p)
            fr_ws_free(self.p)


def empty(shape, dtype):
    """An uninitialised C-contiguous ndarray of `shape` (a tuple of ints >= 0) and float `dtype` (an
    np.dtype), 64-byte aligned, on workspace memory (csrc/workspace.c): what the kernels write (outputs,
    tapes, gradients; fastrnn/nn/buffers.py).  A large block comes back from the cache warm rather than as
    fresh pages to fault in and zero, and under _set_workspace_poison it is NaN-filled like the kernels'
    own buffers."""
    cdef cnp.npy_intp dims[8]
    cdef int nd = len(shape)
    cdef size_t n = 1
    cdef int i
    if nd > 8:
        raise ValueError(f"empty: at most 8 dimensions, got {nd}")
    for i in range(nd):
        dims[i] = shape[i]
        if dims[i] < 0:
            raise ValueError(f"empty: negative dimension in {shape}")
        n *= <size_t>dims[i]
    cdef cnp.dtype dt = dtype
    cdef void *p = fr_ws_alloc(n * <size_t>dt.itemsize)
    if p == NULL:
        raise MemoryError(f"fastrnn: cannot allocate {n * dt.itemsize} bytes for an array of shape {shape}")
    cdef _Block blk = _Block.__new__(_Block)
    blk.p = p
    PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t>p, n * <size_t>dt.itemsize)
    arr = cnp.PyArray_SimpleNewFromData(nd, dims, dt.type_num, p)  # C order, writable, not owning p
    cnp.set_array_base(arr, blk)
    return arr


def _set_workspace_poison(bint on):
    """Testing knob (not API): fill every work buffer with NaN bytes before a kernel gets it, so reading one
    before writing it shows in the results.  Returns the previous setting."""
    return bool(fr_ws_set_poison(on))


def set_num_threads(int n):
    fr_set_num_threads(n)


def _set_omp(size_t parallel, size_t thread_num, size_t num_threads, size_t in_parallel):
    """Run the parallel regions on an OpenMP runtime's threads, given the addresses of its GOMP_parallel,
    omp_get_thread_num, omp_get_num_threads and omp_in_parallel (fastrnn.runtime.use_openmp finds them), or
    on fastrnn's own pool (parallel = 0)."""
    if fr_set_omp(<void *>parallel, <void *>thread_num, <void *>num_threads, <void *>in_parallel) != 0:
        raise ValueError("_set_omp: expected the four function addresses, or 0 for the pool")


def _omp_enabled():
    return bool(fr_omp_enabled())


# ---- kernel calls: one binding function per cell kernel -------------------------------------------------------
# Each takes the C kernel's arguments in the C order (csrc/fastrnn.h), arrays as ndarrays or None, and runs it
# with the GIL released.  The dtype is the one of x; the fused `real` bodies below are written once for float32
# and float64 (the only two-line difference is which table, fr_kernels_f32() or fr_kernels_f64(), is read).

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


cdef inline bint _f64(object x) except -1:
    if type(x) is not cnp.ndarray:
        raise TypeError("internal: kernel argument is not an ndarray")
    return cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT64


cdef extern from "Python.h":
    void PyErr_SetInterrupt()
    int PyErr_CheckSignals() except -1
    unsigned long PyThread_get_thread_ident()

import threading as _threading

# Interrupts (csrc/threads.h): a call of at least this much work, from the main thread, installs the kernels'
# SIGINT handler for its duration (two sigaction calls, ~1 us: nothing at this size), so that Ctrl-C stops
# it between time steps; shorter calls end within milliseconds anyway and keep Python's handler.
cdef double _ARM_FLOPS = 5e7
cdef unsigned long _MAIN_THREAD = _threading.main_thread().ident


cdef inline bint _arm(double flops):
    if flops < _ARM_FLOPS or PyThread_get_thread_ident() != _MAIN_THREAD:
        return False
    return fr_interrupt_arm() == 0


cdef inline _done(bint armed, int rc):
    """After a kernel call: a SIGINT that came while it ran goes to Python's handler (KeyboardInterrupt by
    default); then the kernel's return code."""
    if armed and fr_interrupt_disarm():
        PyErr_SetInterrupt()
        PyErr_CheckSignals()
    _check(rc)


cdef inline double _flops(int T, int B, int I, int H, int G, int P, double factor):
    return factor * 2.0 * T * B * G * H * <double>(I + P)


cdef inline _check(int rc):
    if rc == FR_EINTR:
        raise KeyboardInterrupt("fastrnn: kernel interrupted")
    if rc == FR_ENOMEM:
        raise MemoryError("fastrnn: a kernel could not allocate its workspace")
    if rc != FR_OK:
        raise RuntimeError(f"fastrnn: kernel failed with code {rc}")


def rnn_tape_len(int T, int B, int H, bint f64):
    """Elements of the tape one RNN (layer, direction) keeps for backward."""
    return fr_kernels_f64().rnn_tape_len(T, B, H) if f64 else fr_kernels_f32().rnn_tape_len(T, B, H)


def lstm_tape_len(int T, int B, int H, int P, bint f64):
    """Elements of the tape one LSTM (layer, direction) keeps for backward."""
    return fr_kernels_f64().lstm_tape_len(T, B, H, P) if f64 else fr_kernels_f32().lstm_tape_len(T, B, H, P)


def gru_tape_len(int T, int B, int H, bint f64):
    """Elements of the tape one GRU (layer, direction) keeps for backward."""
    return fr_kernels_f64().gru_tape_len(T, B, H) if f64 else fr_kernels_f32().gru_tape_len(T, B, H)


# ---- RNN -------------------------------------------------------------------------------------------------------
cdef int _rnn_forward(real *k, int T, int B, int I, int H, bint relu, bint reverse, const int *lp, tuple a,
                      int ldy) except? -99:
    # a = (x, h0, w_ih, w_hh, b_ih, b_hh, y, hn, tape, rmask)
    cdef real *p[10]
    cdef int i, rc
    cdef unsigned mode
    for i in range(10):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()  # denormals flushed for the whole call, whatever the threads
        if real is float:
            rc = fr_kernels_f32().rnn_forward(T, B, I, H, relu, reverse, lp, p[9], p[0], p[1], p[2], p[3], p[4], p[5],
                                              p[6], ldy, p[7], p[8])
        else:
            rc = fr_kernels_f64().rnn_forward(T, B, I, H, relu, reverse, lp, p[9], p[0], p[1], p[2], p[3], p[4], p[5],
                                              p[6], ldy, p[7], p[8])
        fr_fpmode_leave(mode)
    return rc


cdef int _rnn_backward(real *k, int T, int B, int I, int H, bint relu, bint reverse, const int *lp, tuple a,
                       int ldy, int lddy, bint dx_acc) except? -99:
    # a = (x, h0, w_ih, w_hh, y, tape, dy, dhn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rmask)
    cdef real *p[15]
    cdef int i, rc
    cdef unsigned mode
    for i in range(15):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()
        if real is float:
            rc = fr_kernels_f32().rnn_backward(T, B, I, H, relu, reverse, lp, p[14], p[0], p[1], p[2], p[3], p[4], ldy,
                                               p[5], p[6], lddy, p[7], p[8], dx_acc, p[9], p[10], p[11], p[12],
                                               p[13])
        else:
            rc = fr_kernels_f64().rnn_backward(T, B, I, H, relu, reverse, lp, p[14], p[0], p[1], p[2], p[3], p[4], ldy,
                                               p[5], p[6], lddy, p[7], p[8], dx_acc, p[9], p[10], p[11], p[12],
                                               p[13])
        fr_fpmode_leave(mode)
    return rc


def rnn_forward(int T, int B, int I, int H, bint relu, bint reverse, lengths, x, h0, w_ih, w_hh, b_ih, b_hh,
                y, int ldy, hn, tape, rmask=None):
    """One RNN (layer, direction) over the whole sequence (csrc/fastrnn.h, rnn_forward); y may be a strided
    view (row stride ldy) into a bidirectional output; tape is None for inference; rmask the (B, H)
    recurrent dropout mask or None."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, w_ih, w_hh, b_ih, b_hh, y, hn, tape, rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 1, H, 1.0))
    _done(armed, _rnn_forward(d, T, B, I, H, relu, reverse, lp, a, ldy) if _f64(x) else
           _rnn_forward(f, T, B, I, H, relu, reverse, lp, a, ldy))


def rnn_backward(int T, int B, int I, int H, bint relu, bint reverse, lengths, x, h0, w_ih, w_hh, y, int ldy,
                 tape, dy, int lddy, dhn, dx, bint dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh, rmask=None):
    """BPTT of one RNN (layer, direction) (csrc/fastrnn.h, rnn_backward): gradients written into the arrays
    given (dx added into when dx_accumulate)."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, w_ih, w_hh, y, tape, dy, dhn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 1, H, 2.0))
    _done(armed, _rnn_backward(d, T, B, I, H, relu, reverse, lp, a, ldy, lddy, dx_accumulate) if _f64(x) else
           _rnn_backward(f, T, B, I, H, relu, reverse, lp, a, ldy, lddy, dx_accumulate))


# ---- LSTM ------------------------------------------------------------------------------------------------------
cdef int _lstm_forward(real *k, int T, int B, int I, int H, int P, bint reverse, const int *lp, tuple a,
                       int ldy) except? -99:
    # a = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, hn, cn, tape, rmask)
    cdef real *p[13]
    cdef int i, rc
    cdef unsigned mode
    for i in range(13):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()
        if real is float:
            rc = fr_kernels_f32().lstm_forward(T, B, I, H, P, reverse, lp, p[12], p[0], p[1], p[2], p[3], p[4], p[5],
                                               p[6], p[7], p[8], ldy, p[9], p[10], p[11])
        else:
            rc = fr_kernels_f64().lstm_forward(T, B, I, H, P, reverse, lp, p[12], p[0], p[1], p[2], p[3], p[4], p[5],
                                               p[6], p[7], p[8], ldy, p[9], p[10], p[11])
        fr_fpmode_leave(mode)
    return rc


cdef int _lstm_backward(real *k, int T, int B, int I, int H, int P, bint reverse, const int *lp, tuple a,
                        int ldy, int lddy, bint dx_acc) except? -99:
    # a = (x, h0, c0, w_ih, w_hh, w_hr, y, tape, dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr,
    #      rmask)
    cdef real *p[20]
    cdef int i, rc
    cdef unsigned mode
    for i in range(20):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()
        if real is float:
            rc = fr_kernels_f32().lstm_backward(T, B, I, H, P, reverse, lp, p[19], p[0], p[1], p[2], p[3], p[4], p[5],
                                                p[6], ldy, p[7], p[8], lddy, p[9], p[10], p[11], dx_acc, p[12],
                                                p[13], p[14], p[15], p[16], p[17], p[18])
        else:
            rc = fr_kernels_f64().lstm_backward(T, B, I, H, P, reverse, lp, p[19], p[0], p[1], p[2], p[3], p[4], p[5],
                                                p[6], ldy, p[7], p[8], lddy, p[9], p[10], p[11], dx_acc, p[12],
                                                p[13], p[14], p[15], p[16], p[17], p[18])
        fr_fpmode_leave(mode)
    return rc


def lstm_forward(int T, int B, int I, int H, int P, bint reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                 w_hr, y, int ldy, hn, cn, tape, rmask=None):
    """One LSTM (layer, direction) over the whole sequence (csrc/fastrnn.h, lstm_forward); P = H and
    w_hr None without projection; rmask the (4, B, P) recurrent dropout masks or None."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, hn, cn, tape, rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 4, P, 1.0))
    _done(armed, _lstm_forward(d, T, B, I, H, P, reverse, lp, a, ldy) if _f64(x) else
           _lstm_forward(f, T, B, I, H, P, reverse, lp, a, ldy))


def lstm_backward(int T, int B, int I, int H, int P, bint reverse, lengths, x, h0, c0, w_ih, w_hh, w_hr, y,
                  int ldy, tape, dy, int lddy, dhn, dcn, dx, bint dx_accumulate, dh0, dc0, dw_ih, dw_hh, db_ih,
                  db_hh, dw_hr, rmask=None):
    """BPTT of one LSTM (layer, direction) (csrc/fastrnn.h, lstm_backward)."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, c0, w_ih, w_hh, w_hr, y, tape, dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr,
         rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 4, P, 2.0))
    _done(armed, _lstm_backward(d, T, B, I, H, P, reverse, lp, a, ldy, lddy, dx_accumulate) if _f64(x) else
           _lstm_backward(f, T, B, I, H, P, reverse, lp, a, ldy, lddy, dx_accumulate))


# ---- GRU -------------------------------------------------------------------------------------------------------
cdef int _gru_forward(real *k, int T, int B, int I, int H, bint reset_after, bint reverse, const int *lp,
                      tuple a, int ldy) except? -99:
    # a = (x, h0, w_ih, w_hh, b_ih, b_hh, y, hn, tape, rmask)
    cdef real *p[10]
    cdef int i, rc
    cdef unsigned mode
    for i in range(10):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()
        if real is float:
            rc = fr_kernels_f32().gru_forward(T, B, I, H, reset_after, reverse, lp, p[9], p[0], p[1], p[2], p[3], p[4],
                                              p[5], p[6], ldy, p[7], p[8])
        else:
            rc = fr_kernels_f64().gru_forward(T, B, I, H, reset_after, reverse, lp, p[9], p[0], p[1], p[2], p[3], p[4],
                                              p[5], p[6], ldy, p[7], p[8])
        fr_fpmode_leave(mode)
    return rc


cdef int _gru_backward(real *k, int T, int B, int I, int H, bint reset_after, bint reverse, const int *lp,
                       tuple a, int ldy, int lddy, bint dx_acc) except? -99:
    # a = (x, h0, w_ih, w_hh, y, tape, dy, dhn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rmask)
    cdef real *p[15]
    cdef int i, rc
    cdef unsigned mode
    for i in range(15):
        p[i] = _ptr(a[i], k)
    with nogil:
        mode = fr_fpmode_enter()
        if real is float:
            rc = fr_kernels_f32().gru_backward(T, B, I, H, reset_after, reverse, lp, p[14], p[0], p[1], p[2], p[3], p[4],
                                               ldy, p[5], p[6], lddy, p[7], p[8], dx_acc, p[9], p[10], p[11],
                                               p[12], p[13])
        else:
            rc = fr_kernels_f64().gru_backward(T, B, I, H, reset_after, reverse, lp, p[14], p[0], p[1], p[2], p[3], p[4],
                                               ldy, p[5], p[6], lddy, p[7], p[8], dx_acc, p[9], p[10], p[11],
                                               p[12], p[13])
        fr_fpmode_leave(mode)
    return rc


def gru_forward(int T, int B, int I, int H, bint reset_after, bint reverse, lengths, x, h0, w_ih, w_hh, b_ih,
                b_hh, y, int ldy, hn, tape, rmask=None):
    """One GRU (layer, direction) over the whole sequence (csrc/fastrnn.h, gru_forward); rmask the (3, B, H)
    recurrent dropout masks (gates r, z, n) or None."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, w_ih, w_hh, b_ih, b_hh, y, hn, tape, rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 3, H, 1.0))
    _done(armed, _gru_forward(d, T, B, I, H, reset_after, reverse, lp, a, ldy) if _f64(x) else
           _gru_forward(f, T, B, I, H, reset_after, reverse, lp, a, ldy))


def gru_backward(int T, int B, int I, int H, bint reset_after, bint reverse, lengths, x, h0, w_ih, w_hh, y,
                 int ldy, tape, dy, int lddy, dhn, dx, bint dx_accumulate, dh0, dw_ih, dw_hh, db_ih, db_hh,
                 rmask=None):
    """BPTT of one GRU (layer, direction) (csrc/fastrnn.h, gru_backward)."""
    cdef float *f = NULL
    cdef double *d = NULL
    cdef const int *lp = _iptr(lengths)
    a = (x, h0, w_ih, w_hh, y, tape, dy, dhn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rmask)
    cdef bint armed = _arm(_flops(T, B, I, H, 3, H, 2.0))
    _done(armed, _gru_backward(d, T, B, I, H, reset_after, reverse, lp, a, ldy, lddy, dx_accumulate) if _f64(x) else
           _gru_backward(f, T, B, I, H, reset_after, reverse, lp, a, ldy, lddy, dx_accumulate))


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


# ---- fused optimizer updates (csrc/optim.c) ----------------------------------------------------------------
cdef inline bint _flat_like(cnp.ndarray a, int t, Py_ssize_t n, bint write):
    return (cnp.PyArray_TYPE(a) == t and a.ndim == 1 and a.shape[0] == n and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and (not write or a.flags.writeable))


def adam_update(cnp.ndarray w, cnp.ndarray g, cnp.ndarray m, cnp.ndarray v, vh, double c1, double c2,
                double alpha, double eps):
    """One Adam step in place (csrc/optim.h, fr_adam_*) over 1-D contiguous float32 / float64 arrays of one
    dtype and size (vh: the amsgrad maximum, or None).  Returns False, touching nothing, when the arrays are
    not of that form (the caller then takes numpy's form)."""
    cdef int t = cnp.PyArray_TYPE(w)
    cdef Py_ssize_t n = w.shape[0] if w.ndim == 1 else -1
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        return False
    if not (_flat_like(w, t, n, True) and _flat_like(g, t, n, False) and _flat_like(m, t, n, True)
            and _flat_like(v, t, n, True)):
        return False
    if vh is not None and not (type(vh) is cnp.ndarray and _flat_like(<cnp.ndarray>vh, t, n, True)):
        return False
    cdef void *pw = cnp.PyArray_DATA(w)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pm = cnp.PyArray_DATA(m)
    cdef void *pv = cnp.PyArray_DATA(v)
    cdef void *ph = NULL if vh is None else cnp.PyArray_DATA(<cnp.ndarray>vh)
    cdef size_t nn = <size_t>n
    if t == cnp.NPY_FLOAT32:
        with nogil:
            fr_adam_f32(nn, <float *>pw, <const float *>pg, <float *>pm, <float *>pv, <float *>ph, <float>c1,
                        <float>c2, <float>alpha, <float>eps)
    else:
        with nogil:
            fr_adam_f64(nn, <double *>pw, <const double *>pg, <double *>pm, <double *>pv, <double *>ph, c1, c2,
                        alpha, eps)
    return True
