"""Argument checks and conversions shared by the numpy layers: every check here runs before any C code."""
import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def shape_str(shape):
    """(T, B, 64) style, letters for the dims the layer cannot know."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def as_float_array(name, a, dtype):
    """`a` as an ndarray of `dtype`: floats cast, ints and bools converted, anything else a TypeError."""
    if type(a) is np.ndarray and a.dtype == dtype:  # already one: what the rest would return (step() is latency-bound)
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, possibly requiring grad
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected an array of float32 or float64 (ints and bools are converted), "
                        f"got {type(a).__name__} ({e})") from None
    kind = arr.dtype.kind
    if arr.dtype in FLOATS or kind in "biu":
        return arr.astype(dtype, copy=False)
    raise TypeError(f"{name}: expected an array of float32 or float64 (ints and bools are converted), "
                    f"got dtype {arr.dtype}")


def check_shape(name, arr, expected):
    """ValueError naming `expected` unless arr.shape matches it (str entries match any size)."""
    if arr.shape == expected:  # the common case, without the generator below (step() is latency-bound)
        return
    ok = arr.ndim == len(expected) and all(
        isinstance(e, str) or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        raise ValueError(f"{name}: expected shape {shape_str(expected)}, got {shape_str(arr.shape)}")


def check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")


def check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}") from None
    if dt not in FLOATS:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dt}")
    return dt


def check_kernel_array(name, a, shape, dtype, writeable=False):
    """An array the kernels read (or write) in place: exactly an ndarray of `dtype` and `shape`, C-contiguous."""
    if type(a) is not np.ndarray:
        raise TypeError(f"{name}: expected a numpy ndarray of {dtype}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    check_shape(name, a, shape)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")


# The kernels take T, B, I, H, P and the row strides as C ints, and count rows (T*B) and gate widths (G*H) in
# ints too; their element offsets are 64-bit (size_t).  Sizes past INT_MAX are refused here, before any
# allocation or kernel, and so are arrays whose byte count could not be addressed.
INT_MAX = 2**31 - 1
MAX_BYTES = 2**62


def check_kernel_sizes(spec, T, B):
    """ValueError unless every size the kernels compute in C ints fits one (T, B from x's shape)."""
    G, H, P, D, I = spec.cell.G, spec.hidden_size, spec.P, spec.D, spec.input_size
    # The largest per-call arrays (outputs, tape, gradients of the gates) are ~T*B*(G*H + 2H + 2P) elements.
    nbytes = T * B * (G * H + 2 * H + 2 * D * P + I) * spec.dtype.itemsize
    if max(T, B, T * B, I, G * H, D * P, G * H * max(I, D * P)) <= INT_MAX and nbytes <= MAX_BYTES:
        return  # every size fits: the common case, without building the messages' table below
    sizes = (("T (time steps)", T), ("B (batch)", B), ("T*B (rows)", T * B), ("input_size", I),
             ("G*hidden_size (gate rows)", G * H), ("num_directions*P (output features)", D * P),
             ("G*hidden_size*input_size (weight elements)", G * H * max(I, D * P)))
    for name, v in sizes:
        if v > INT_MAX:
            raise ValueError(f"{name} = {v}: the kernels index it with 32-bit ints; expected at most "
                             f"{INT_MAX} (split the batch or the sequence)")
    if nbytes > MAX_BYTES:
        raise ValueError(f"T={T}, B={B}: the call's arrays would need ~{nbytes:.3e} bytes, more than can be "
                         f"addressed (2^62)")
