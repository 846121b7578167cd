"""The functional core of the numpy layers: forward and backward of a LayerSpec over given parameter arrays.

    y, state, tape = forward(spec, params, x, hx=None, lengths=None, train=False, mask_fn=None, rmasks=None)
    dx, dhx, grads = backward(tape, dy, dstate=None, out=None)

`params` maps state_dict keys to C-contiguous arrays of spec.dtype (spec.param_shapes()); they are read in
place at every call, never copied nor written, so the owner of the arrays (a module, an optimizer, a torch
tensor's numpy view) keeps them.  `out` maps keys to arrays the parameter gradients are written into.
Everything is validated here, before any C code runs; the loops are over layers and directions only (the time
loop is in C).  fastrnn.nn.modules wraps this in torch.nn-like classes that own their parameters.
"""
import numpy as np

from . import buffers
from . import checkpoint as ckpt
from .spec import LayerSpec
from .tape import Tape
from .validation import as_float_array, check_kernel_array, check_kernel_sizes, check_shape, shape_str

__all__ = ["forward", "backward", "check_params"]


# ---- argument preparation -----------------------------------------------------------------------------------
def prep_x(spec, x):
    """x -> (time-major contiguous (T, B, I) array, batched?)."""
    x = as_float_array("x", x, spec.dtype)
    I = spec.input_size
    if x.ndim == 2:
        check_shape("x", x, ("T", I))
        xt, batched = x[:, None, :], False
    elif x.ndim == 3:
        if spec.batch_first:
            check_shape("x", x, ("B", "T", I))
            xt = x.transpose(1, 0, 2)
        else:
            check_shape("x", x, ("T", "B", I))
            xt = x
        batched = True
    else:
        expected = ("B", "T", I) if spec.batch_first else ("T", "B", I)
        raise ValueError(f"x: expected shape {shape_str(expected)} (or unbatched (T, {I})), "
                         f"got {shape_str(x.shape)}")
    if xt.shape[0] == 0 or xt.shape[1] == 0:
        raise ValueError(f"x: expected at least one time step and one sequence, got {shape_str(x.shape)}")
    check_kernel_sizes(spec, xt.shape[0], xt.shape[1])  # before the copy below allocates anything
    return buffers.contiguous(xt), batched


def prep_state(spec, name, s, B, batched, allow_none_parts):
    """hx / dstate -> time-major (L*D, B, P) [and (L*D, B, H)] contiguous arrays, or None."""
    has_c = spec.cell.has_cell_state
    if s is None:
        return (None, None) if has_c else None
    hs, cs = spec.state_shapes(B, batched)
    if has_c:
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise ValueError(f"{name}: expected a tuple (h, c) of shapes {shape_str(hs)} and "
                             f"{shape_str(cs)}, got {type(s).__name__}")
        out = []
        for part, sub, shp in ((s[0], "h", hs), (s[1], "c", cs)):
            if part is None and allow_none_parts:
                out.append(None)
                continue
            arr = as_float_array(f"{name}[{sub}]", part, spec.dtype)
            check_shape(f"{name} ({sub})", arr, shp)
            out.append(np.ascontiguousarray(arr if batched else arr[:, None, :]))
        return tuple(out)
    arr = as_float_array(name, s, spec.dtype)
    check_shape(name, arr, hs)
    return np.ascontiguousarray(arr if batched else arr[:, None, :])


def prep_lengths(lengths, T, B, batched):
    if lengths is None:
        return None
    if not batched:
        raise ValueError("lengths: expected None for unbatched input (T, I)")
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(lengths)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected integers, got dtype {arr.dtype}")
    check_shape("lengths", arr, (B,))
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"lengths: expected every length in [1, T={T}], got min {arr.min()}, max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def to_api_layout(spec, y_tm, batched):
    """Time-major (T, B, F) -> the caller's layout (batch_first / unbatched)."""
    if not batched:
        return y_tm[:, 0, :]
    return buffers.copy(y_tm.transpose(1, 0, 2)) if spec.batch_first else y_tm


def from_api_layout(spec, name, a, T, B, batched, F):
    """dy in the caller's layout -> time-major contiguous (T, B, F)."""
    a = as_float_array(name, a, spec.dtype)
    if not batched:
        check_shape(name, a, (T, F))
        return np.ascontiguousarray(a[:, None, :])
    if spec.batch_first:
        check_shape(name, a, (B, T, F))
        return buffers.contiguous(a.transpose(1, 0, 2))
    check_shape(name, a, (T, B, F))
    return np.ascontiguousarray(a)


def pack_state(spec, hn, cn, batched):
    if not batched:
        hn = hn[:, 0, :]
        cn = cn[:, 0, :] if cn is not None else None
    return (hn, cn) if spec.cell.has_cell_state else hn


def check_params(spec, params, name="params"):
    """ValueError / TypeError unless `params` holds every parameter of `spec` as a C-contiguous ndarray of
    spec.dtype with its shape (the kernels read them in place)."""
    if not hasattr(params, "keys"):
        raise TypeError(f"{name}: expected a mapping of parameter arrays, got {type(params).__name__}")
    for key, shape in spec.param_shapes():
        if key not in params:
            raise ValueError(f"{name}: missing {key!r}; expected the keys {[k for k, _ in spec.param_shapes()]}")
        check_kernel_array(f"{name}[{key!r}]", params[key], shape, spec.dtype)


def _check_spec(spec):
    if not isinstance(spec, LayerSpec):
        raise TypeError(f"spec: expected a fastrnn.nn.LayerSpec, got {type(spec).__name__}")


def _default_mask_fn(spec):
    rng = np.random.default_rng()
    keep = 1.0 - spec.dropout
    return lambda k, shape: (rng.random(shape) < keep).astype(spec.dtype) / spec.dtype.type(keep)


def check_rmasks(spec, rmasks, B, train):
    """The recurrent dropout masks of forward(..., rmasks=) checked: None, or a list of L*D entries (row k*D + d),
    each None or a C-contiguous ndarray of spec.dtype shaped spec.cell.rmask_shape(B, P) -- RNN (B, P), LSTM
    (4, B, P), one mask per gate i, f, g, o, GRU (3, B, H), one per gate r, z, n (Keras's recurrent_dropout,
    docs/keras.md) -- fixed over the
    steps.  TypeError / ValueError otherwise, before any C code runs."""
    if rmasks is None:
        return None
    cell, L, D, P = spec.cell, spec.num_layers, spec.D, spec.P
    if cell.rmask_gates == 0:
        raise ValueError(f"rmasks: recurrent dropout is not supported yet for the {cell.torch_name}")
    if not train:
        raise ValueError("rmasks: recurrent dropout masks are for a training forward (train=True)")
    if not isinstance(rmasks, (list, tuple)):
        raise TypeError(f"rmasks: expected a list of {L * D} arrays (or None entries), got {type(rmasks).__name__}")
    if len(rmasks) != L * D:
        raise ValueError(f"rmasks: expected {L * D} entries (one per layer and direction), got {len(rmasks)}")
    shape = cell.rmask_shape(B, P)
    out = []
    for j, m in enumerate(rmasks):
        if m is None:
            out.append(None)
            continue
        if type(m) is not np.ndarray:
            raise TypeError(f"rmasks[{j}]: expected an ndarray of {spec.dtype}, got {type(m).__name__}")
        if m.dtype != spec.dtype:
            raise TypeError(f"rmasks[{j}]: expected dtype {spec.dtype}, got {m.dtype}")
        check_shape(f"rmasks[{j}]", m, shape)
        out.append(np.ascontiguousarray(m))
    return out if any(m is not None for m in out) else None


# ---- forward ----------------------------------------------------------------------------------------------
def forward(spec, params, x, hx=None, lengths=None, train=False, mask_fn=None, checkpoint=None, rmasks=None):
    """(y, state, tape): the layers and directions of `spec` over x with `params`; tape is None unless train.
    See the module docstring; the shapes and the lengths rule are README.md's (The numpy API).
    checkpoint=k (training only): keep the state every k steps instead of the whole tape, and recompute
    the rest in backward (fastrnn/nn/checkpoint.py).  rmasks (training only): recurrent dropout masks
    (check_rmasks), kept on the tape for backward."""
    _check_spec(spec)
    check_params(spec, params)
    return run(spec, params, x, hx, lengths, bool(train), mask_fn, checkpoint, rmasks)


def check_checkpoint(checkpoint, train):
    if checkpoint is None:
        return None
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)):
        raise TypeError(f"checkpoint: expected None or an int (steps between kept states), "
                        f"got {type(checkpoint).__name__}")
    if checkpoint < 1:
        raise ValueError(f"checkpoint: expected None or an int >= 1 (steps between kept states), got {checkpoint}")
    if not train:
        raise ValueError("checkpoint: only a training forward (train=True) keeps a tape to checkpoint")
    return int(checkpoint)


def run(spec, params, x, hx, lengths, train, mask_fn, checkpoint=None, rmasks=None, keep_x=False):
    """forward() without the checks of spec and params (the modules validate those once, not per call).
    keep_x: the tape may keep x's own memory rather than a copy, for a caller that guarantees x is not
    written before backward (fastrnn.torch: autograd's version counter on the saved x guards it)."""
    k = check_checkpoint(checkpoint, train) if checkpoint is not None else None
    xt, batched = prep_x(spec, x)
    rm = check_rmasks(spec, rmasks, xt.shape[1], train) if rmasks is not None else None
    if train and not keep_x and np.may_share_memory(xt, x):
        xt = buffers.copy(xt)  # the tape keeps x: the caller may reuse its buffer before calling backward
    y, state, tape = run_time_major(spec, params, xt, batched, hx, lengths, train, mask_fn, k, rm)
    return to_api_layout(spec, y, batched), state, tape


def run_time_major(spec, params, xt, batched, hx, lengths, train, mask_fn, checkpoint=None, rmasks=None):
    """The layers and directions over time-major contiguous xt (T, B, I); y comes back time-major.  rmasks:
    check_rmasks's list (training only), or None."""
    T, B, _ = xt.shape
    cell = spec.cell
    state = prep_state(spec, "hx", hx, B, batched, allow_none_parts=False)
    h0, c0 = state if cell.has_cell_state else (state, None)
    lens = prep_lengths(lengths, T, B, batched)
    L, D, H, P, dt = spec.num_layers, spec.D, spec.hidden_size, spec.P, spec.dtype
    hn = np.empty((L * D, B, P), dt)
    cn = np.empty((L * D, B, H), dt) if cell.has_cell_state else None
    f64 = dt == np.float64
    tape = None
    if train:
        # The tape owns its copies of the initial state, as of x (see run).
        h0 = None if h0 is None else h0.copy()
        c0 = None if c0 is None else c0.copy()
        tape = Tape(spec, params, T, B, batched, lens)
        tape.h0, tape.c0 = h0, c0
        tape.rmasks = rmasks
        if checkpoint is not None and checkpoint >= T:
            checkpoint = None  # one chunk: the plain tape is the same memory
        tape.checkpoint = checkpoint
        if spec.dropout > 0 and L > 1 and mask_fn is None:
            mask_fn = _default_mask_fn(spec)
    tape_len = cell.tape_len(T, B, H, P, f64) if train and (checkpoint is None or checkpoint >= T) else 0
    inp = xt
    get = params.get
    for k in range(L):
        out = buffers.empty((T, B, D * P), dt)
        for d in range(D):
            kw = spec._keys[k][d]
            p = (params[kw[0]], params[kw[1]], get(kw[2]), get(kw[3]), get(kw[4]))  # get(None) is None
            j = k * D + d
            rm = rmasks[j] if rmasks is not None else None  # (training only)
            if train and checkpoint is not None:
                tape.chunks.append(ckpt.forward_direction(
                    spec, cell, checkpoint, inp, lens, d or spec.go_backwards, None if h0 is None else h0[j],
                    None if c0 is None else c0[j], p, out[:, :, d * P:d * P + P], D * P, hn[j],
                    None if cn is None else cn[j], rm))
                continue
            kt = buffers.empty(tape_len, dt) if train and checkpoint is None else None
            cell.forward(spec, T, B, inp.shape[2], d or spec.go_backwards, lens, inp,
                         None if h0 is None else h0[j], None if c0 is None else c0[j], p,
                         out[:, :, d * P:], D * P, hn[j], None if cn is None else cn[j], kt, rm)
            if train:
                tape.tapes.append(kt)
        if train:
            tape.inputs.append(inp)
            tape.outputs.append(out)
        if train and spec.dropout > 0 and k < L - 1:
            mask = mask_fn(k, out.shape)
            if type(mask) is not np.ndarray or mask.dtype != dt or mask.shape != out.shape:
                raise ValueError(f"mask_fn: expected an ndarray of {dt} and shape {shape_str(out.shape)}, "
                                 f"got {type(mask).__name__} {getattr(mask, 'dtype', '')} "
                                 f"{shape_str(getattr(mask, 'shape', ()))}")
            tape.masks.append(mask)
            inp = out * mask
        else:
            inp = out
    return inp, pack_state(spec, hn, cn, batched), tape


# ---- backward ---------------------------------------------------------------------------------------------
def backward(tape, dy, dstate=None, out=None, need_dx=True):
    """(dx, dhx, grads): backpropagation through time from a training forward's tape.

    dy is shaped like y; dstate like the returned state ((dh_n, dc_n) for LSTM, either may be None), or
    None.  dx is like x, dhx like the state (zeros-shaped when hx was None), grads a dict keyed like
    state_dict(): the arrays of `out` where given (written in place), fresh arrays for the other keys.
    need_dx=False: dx is not computed (None is returned in its place; the kernels skip dZ W_ih of the first
    layer), for a caller that has no use for the input's gradient."""
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected the Tape returned by forward(..., train=True), "
                        f"got {type(tape).__name__}")
    spec = tape.spec
    T, B, batched = tape.T, tape.B, tape.batched
    L, D, H, P, dt = spec.num_layers, spec.D, spec.hidden_size, spec.P, spec.dtype
    cell = spec.cell
    dy_t = from_api_layout(spec, "dy", dy, T, B, batched, D * P)
    ds = prep_state(spec, "dstate", dstate, B, batched, allow_none_parts=True)
    dhn, dcn = ds if cell.has_cell_state else (ds, None)
    if out is not None and not hasattr(out, "keys"):
        raise TypeError(f"out: expected a mapping of gradient arrays, got {type(out).__name__}")
    grads = {}
    for name, shape in spec.param_shapes():
        if out is not None and name in out:
            check_kernel_array(f"out[{name!r}]", out[name], shape, dt, writeable=True)
            grads[name] = out[name]
        else:
            grads[name] = buffers.empty(shape, dt)
    if out is not None:
        extra = [k for k in out.keys() if k not in grads]
        if extra:
            raise ValueError(f"out: unexpected keys {extra}; expected some of {list(grads)}")
    dh0 = np.empty((L * D, B, P), dt)
    dc0 = np.empty((L * D, B, H), dt) if cell.has_cell_state else None
    params = tape.params
    h0, c0 = tape.h0, tape.c0
    dout = dy_t
    for k in reversed(range(L)):
        inp, outk = tape.inputs[k], tape.outputs[k]
        din = buffers.empty_like(inp) if need_dx or k > 0 else None
        for d in range(D):
            kw = spec._keys[k][d]
            p = (params[kw[0]], params[kw[1]], params.get(kw[2]), params.get(kw[3]), params.get(kw[4]))
            g = (grads[kw[0]], grads[kw[1]], grads.get(kw[2]), grads.get(kw[3]), grads.get(kw[4]))
            j = k * D + d
            rm = tape.rmasks[j] if tape.rmasks is not None else None
            if tape.checkpoint is not None:
                ckpt.backward_direction(spec, cell, tape.chunks[j], inp, d or spec.go_backwards, p,
                                        dout[:, :, d * P:d * P + P], None if dhn is None else dhn[j],
                                        None if dcn is None else dcn[j], din, d, dh0[j],
                                        None if dc0 is None else dc0[j], g, rm)
                continue
            cell.backward(spec, T, B, inp.shape[2], d or spec.go_backwards, tape.lengths, inp,
                          None if h0 is None else h0[j], None if c0 is None else c0[j], p,
                          outk[:, :, d * P:], D * P, tape.tapes[j], dout[:, :, d * P:], D * P,
                          None if dhn is None else dhn[j], None if dcn is None else dcn[j], din, d, dh0[j],
                          None if dc0 is None else dc0[j], g, rm)
        if k > 0 and tape.masks:
            din *= tape.masks[k - 1]
        dout = din
    dx = to_api_layout(spec, dout, batched) if dout is not None else None
    return dx, pack_state(spec, dh0, dc0, batched), grads
