"""Arrays the kernels write (outputs, tapes, gradients): 64-byte aligned, on workspace memory.

numpy's allocator aligns to 16 bytes, and a large block comes from mmap 16 bytes past a page.  The kernels
split each row's units between threads in blocks of 16 (AVX-512) or 8 floats, and write and read their
units 8 or 16 at a time: on a 16-byte-aligned row a vector can straddle two cache lines, and a line at a
blocks' border is written by both threads.  torch's allocator aligns to 64 bytes, so the drop-in's tensors
already are.  Measured (docs/tuning.md, Aligned outputs and tapes): even to x1.1 on small 2-thread steps,
within the noise elsewhere.

The memory comes from the kernels' workspace cache (_core.empty, csrc/workspace.c): when a large array is
freed its block is kept for the next call, which then writes warm pages instead of faulting fresh ones in
(docs/tuning.md, Outputs and tapes on workspace memory)."""
import numpy as np

from .. import _core

_dtype = np.dtype
_empty = _core.empty


def empty(shape, dtype):
    """np.empty(shape, dtype), C-contiguous, its data 64-byte aligned, on workspace memory."""
    if type(shape) is not tuple:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return _empty(shape, dtype if isinstance(dtype, _dtype) else _dtype(dtype))


def empty_like(a):
    """empty(a.shape, a.dtype)."""
    return _empty(a.shape, a.dtype)


def contiguous(a):
    """a itself when C-contiguous, else a C-contiguous copy on workspace memory (np.ascontiguousarray's
    result, for the layout copies of batch-first inputs and outputs)."""
    if a.flags.c_contiguous:
        return a
    return copy(a)


def copy(a):
    """A C-contiguous copy of a on workspace memory."""
    out = _empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out
