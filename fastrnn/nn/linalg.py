"""Matrix products on the kernels' own GEMM and thread pool (csrc/gemm.c), for the layers around the
recurrent ones (fastrnn.layers.Dense).

Why not numpy's `@`: it runs on the BLAS numpy was built with (OpenBLAS in the wheels), whose threads spin
for a while after each product, waiting for the next (~0.1 s by default).  In a training step that alternates
a Dense layer's products with the recurrent kernels, those spinners share the cores with the kernels' pool,
whose time loop runs at the pace of its most preempted thread.  fastrnn/__init__.py shortens the spin
(OPENBLAS_THREAD_TIMEOUT), but only when fastrnn is imported before numpy: `import numpy as np` first, the
usual order, leaves it at the default.  The demo's model (Embedding + LSTM + Dense(100), batches of 64 x 64,
Intel Xeon AVX-512, 2 vCPUs, 2026-12-04; processes of either build alternated, medians of 8 epochs):

    numpy imported first      LSTM(64)  12.0, 12.3 -> 7.9, 7.6 ms a step    LSTM(256)  79.4, 78.5 -> 41.0, 42.3
    fastrnn imported first    LSTM(64)   9.7,  8.8 -> 7.7, 7.8              LSTM(256)  40.9, 41.8 -> 40.2, 40.8

(one process holding both builds cannot compare them: the old one's spinning threads slow the new one's
steps too).  On one set of threads there is nobody to share with.
"""
import numpy as np

from .. import _core

__all__ = ["matmul"]

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _rows_contiguous(a):
    return a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize) and a.strides[0] >= 0


def matmul(a, b, trans_a=False, trans_b=False, out=None):
    """op(a) @ op(b), op(x) = x.T when trans_x, into `out` when given ((M, N), C-contiguous, written over).
    a and b are 2-D; float32 / float64 of one dtype go to the kernels' GEMM (any other case to numpy's
    matmul, the same product)."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if (a.dtype not in _KERNEL_DTYPES or b.dtype != a.dtype or a.ndim != 2 or b.ndim != 2
            or opa.shape[1] != opb.shape[0] or 0 in opa.shape or 0 in opb.shape
            or (out is not None and (out.dtype != a.dtype or not out.flags.c_contiguous))):
        return np.matmul(opa, opb, out=out)
    if not _rows_contiguous(a):
        a = np.ascontiguousarray(a)
    if not _rows_contiguous(b):
        b = np.ascontiguousarray(b)
    if out is None:
        out = np.empty((opa.shape[0], opb.shape[1]), a.dtype)
    elif out.shape != (opa.shape[0], opb.shape[1]):
        raise ValueError(f"matmul: out has shape {out.shape}, expected {(opa.shape[0], opb.shape[1])}")
    _core.gemm(bool(trans_a), bool(trans_b), 1.0, a, b, 0.0, out)
    return out
