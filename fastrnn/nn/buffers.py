"""Arrays the kernels write (outputs, tapes, gradients), 64-byte aligned.

numpy's allocator aligns to 16 bytes, and a large block comes from mmap 16 bytes past a page.  The kernels
split each row's units between threads in blocks of 16 (AVX-512) or 8 floats, and write and read their
units 8 or 16 at a time: on a 16-byte-aligned row a vector can straddle two cache lines, and a line at a
blocks' border is written by both threads.  torch's allocator aligns to 64 bytes, so the drop-in's tensors
already are.  Measured (docs/tuning.md, Aligned outputs and tapes): even to x1.1 on small 2-thread steps,
within the noise elsewhere."""
import numpy as np

ALIGN = 64  # bytes: a cache line, and one AVX-512 vector


def empty(shape, dtype):
    """np.empty(shape, dtype), its data 64-byte aligned (a view of a slightly larger byte buffer)."""
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = 1
    for s in shape:
        n *= s
    nbytes = n * dt.itemsize
    if nbytes < 4 * ALIGN:  # a state row or two: not worth a second object
        return np.empty(shape, dt)
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + nbytes].view(dt).reshape(shape)


def empty_like(a):
    """empty(a.shape, a.dtype)."""
    return empty(a.shape, a.dtype)
