"""One autograd node per module call: the training forward and the BPTT kernels of fastrnn.nn on the
tensors' own memory.

`run(spec, keys, params, x, h0, c0, lengths, dropout_masks)` is what the modules call.  It returns torch
tensors (y, h_n[, c_n]); when autograd needs them, the outputs hang on one `_RNNFunction` node whose backward
runs fastrnn's backward kernels and writes the parameter gradients straight into fresh tensors' memory.
Parameters are read in place on every call (numpy views of the Parameters; no copy unless one is not
C-contiguous), so in-place optimizer updates are always seen.
"""
import numpy as np
import torch

from .. import runtime as _rt
from ..nn.functional import backward as _backward_np, run as _run_np

__all__ = ["run", "infer_step", "sync_threads", "share_torch_threads", "torch_mask_fn"]

CALLS = [0]  # calls of the kernels through run() (a test hook: which path ran)


def torch_openmp():
    """The path of the OpenMP runtime torch's ops run on, or None (torch not built with OpenMP, or not found)."""
    import os
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
    except Exception:  # pragma: no cover - a torch without the report
        return None
    libs = _rt.loaded_openmp()
    tdir = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    mine = [p for p in libs if os.path.abspath(p).startswith(tdir)]  # torch/lib or a wheel's torch.libs
    if mine:
        return mine[0]
    return libs[0] if len(libs) == 1 else None


def share_torch_threads(enable=None):
    """Run the kernels on torch's OpenMP threads (fastrnn.runtime.use_openmp) rather than fastrnn's own pool,
    so that torch's threads, which spin for a while after each of torch's parallel ops, and the kernels'
    threads are the same threads.  Called when fastrnn.torch is imported; FASTRNN_TORCH_OPENMP=0 in the
    environment (or enable=False) keeps the own pool.  Returns the pool in use (fastrnn.runtime.thread_pool)."""
    import os
    if enable is None:
        enable = os.environ.get("FASTRNN_TORCH_OPENMP", "1") != "0"
    lib = torch_openmp() if enable else None
    _rt.use_openmp(lib)
    return _rt.thread_pool()


def sync_threads():
    """The kernels use torch.get_num_threads() threads when called through fastrnn.torch."""
    n = torch.get_num_threads()
    if _rt.get_num_threads() != n:
        _rt.set_num_threads(n)


def _np(t):
    """A numpy view of a CPU tensor (no copy)."""
    return t.detach().numpy()


def _np_param(t):
    a = t.detach()
    if not a.is_contiguous():
        a = a.contiguous()
    return a.numpy()


def torch_mask_fn(p, dtype):
    """Dropout masks drawn from torch's default generator (so torch.manual_seed repeats a run)."""
    keep = 1.0 - p

    def mask_fn(k, shape):
        return torch.empty(tuple(shape), dtype=dtype).bernoulli_(keep).div_(keep).numpy()
    return mask_fn


_DOUBLE_BACKWARD = ("fastrnn.torch: double backward (create_graph=True through an RNN/LSTM/GRU) is not supported: "
                    "the fastrnn kernels are first-order only; use torch.nn's module (fastrnn.torch.revert) "
                    "for second-order gradients")


class _RNNFunction(torch.autograd.Function):
    """y, h_n[, c_n] = f(x, h0, c0, *params); backward = fastrnn's BPTT kernels (first order only).
    meta = (spec, keys, lengths, mask_fn, views): one non-tensor argument, so that autograd's apply inspects
    four arguments besides the Parameters rather than eight."""

    @staticmethod
    def forward(ctx, meta, x, h0, c0, *params):
        spec, keys, lengths, mask_fn, views = meta
        has_c = spec.cell_name == "lstm"
        pd = views if views is not None else {k: _np_param(p) for k, p in zip(keys, params)}
        hx = None if h0 is None else ((_np(h0), _np(c0)) if has_c else _np(h0))
        # keep_x: the tape may keep x's own memory (no copy): x is saved below, and autograd's version counter
        # makes backward raise if x is modified in place in between, as torch.nn's RNNs do.
        y, state, tape = _run_np(spec, pd, _np(x), hx, lengths, True, mask_fn, keep_x=True)
        ctx.set_materialize_grads(False)
        ctx.fr = (spec, keys, tape, has_c, y.shape, h0 is not None)
        # Saved so that autograd's version counters catch an in-place change before backward.
        ctx.save_for_backward(x, *params)
        if has_c:
            return _from_numpy(y), _from_numpy(state[0]), _from_numpy(state[1])
        return _from_numpy(y), _from_numpy(state)

    @staticmethod
    def backward(ctx, dy, dh, dc=None):
        if _grad_enabled():  # create_graph=True: a gradient of this gradient was asked for
            raise RuntimeError(_DOUBLE_BACKWARD)
        ctx.saved_tensors  # raises if x or a parameter was modified in place since the forward
        spec, keys, tape, has_c, y_shape, h0_given = ctx.fr
        dy_np = np.zeros(y_shape, spec.dtype) if dy is None else dy.numpy()
        if has_c:
            dstate = None if dh is None and dc is None else (None if dh is None else dh.numpy(),
                                                             None if dc is None else dc.numpy())
        else:
            dstate = None if dh is None else dh.numpy()
        # Fresh arrays for every gradient (the kernels write them all, on workspace memory), handed to
        # autograd as tensors sharing their memory: AccumulateGrad adopts them as .grad or adds them in.
        dx, dhx, g = _backward_np(tape, dy_np, dstate)
        need = ctx.needs_input_grad
        dx_t = _from_numpy(dx) if need[1] else None
        dh0 = dc0 = None
        if h0_given:
            if has_c:
                dh0 = _from_numpy(dhx[0]) if need[2] else None
                dc0 = _from_numpy(dhx[1]) if need[3] else None
            else:
                dh0 = _from_numpy(dhx) if need[2] else None
        return (None, dx_t, dh0, dc0) + tuple([_from_numpy(g[k]) if need[4 + i] else None
                                                for i, k in enumerate(keys)])


def _c_apply():
    """_RNNFunction's apply without torch.autograd.Function.apply's Python layer (its functorch checks and
    an unwrap of every argument, ~6 us a call at B = 1, measured): the C apply it ends in, bound to the class.
    Taken only while no functorch transform is active (the modules' fast paths refuse functorch-wrapped
    tensors); None when this torch has no such method (then Function.apply)."""
    base = getattr(torch._C, "_FunctionBase", None)
    raw = getattr(base, "__dict__", {}).get("apply") if base is not None else None
    if raw is None or not hasattr(raw, "__get__"):  # pragma: no cover - another torch
        return None
    return raw.__get__(None, _RNNFunction)


_apply_c = _c_apply()
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
if _functorch_active is None:  # pragma: no cover - another torch
    _apply_c = None


def _apply(*args):
    if _apply_c is not None and not _functorch_active():
        return _apply_c(*args)
    return _RNNFunction.apply(*args)


def run(spec, keys, params, x, h0, c0, lengths, mask_fn, views=None):
    """Forward of one module call.  x, h0, c0: CPU tensors in the layouts the spec expects (h0/c0 None for
    zeros; c0 only for LSTM); params: the tensors keyed by `keys`; lengths: None or an int ndarray (B,).
    spec.dropout > 0 only in training mode (the caller's choice).  Returns (y, h_n) or (y, h_n, c_n).
    Written for the per-call cost at B = 1 (docs/torch.md, Overhead): no generator, no extra layer."""
    n = _get_threads()
    if _rt.get_num_threads() != n:
        _rt.set_num_threads(n)
    CALLS[0] += 1
    needs_grad = False
    if _grad_enabled():
        needs_grad = x.requires_grad or (h0 is not None and h0.requires_grad) or (
            c0 is not None and c0.requires_grad)
        if not needs_grad:
            for p in params:
                if p.requires_grad:
                    needs_grad = True
                    break
    dropout = spec.dropout > 0 and spec.num_layers > 1
    if needs_grad:
        return _apply((spec, keys, lengths, mask_fn if dropout else None, views), x, h0, c0, *params)
    lstm = spec.cell_name == "lstm"
    pd = views if views is not None else {k: _np_param(p) for k, p in zip(keys, params)}
    hx = None if h0 is None else ((h0.detach().numpy(), c0.detach().numpy()) if lstm else h0.detach().numpy())
    xn = x.detach().numpy() if x.requires_grad else x.numpy()  # (no_grad: detach() is a new tensor, ~0.5 us)
    y, state, _ = _run_np(spec, pd, xn, hx, lengths, dropout, mask_fn if dropout else None)
    if lstm:
        return _from_numpy(y), _from_numpy(state[0]), _from_numpy(state[1])
    return _from_numpy(y), _from_numpy(state)


def infer_step(spec, keys, views, x, h, c):
    """One step of a cell (a one-layer spec) without autograd, straight to the cell's kernel: what
    LSTMCell(x, (h, c)) costs at B = 1 is mostly per-call Python, so this skips functional.run's general
    argument handling.  x: (B, I), h / c: (B, H) or None, plain C-contiguous CPU tensors of the spec's dtype
    (the module's fast path checked them); views: the Parameters' numpy views by `keys`.  Returns h'[, c']."""
    n = _get_threads()
    if _rt.get_num_threads() != n:
        _rt.set_num_threads(n)
    CALLS[0] += 1
    B, H, dt = x.shape[0], spec.hidden_size, spec.dtype
    lstm = spec.cell_name == "lstm"
    y = np.empty((1, B, H), dt)
    hn = np.empty((1, B, H), dt)
    cn = np.empty((1, B, H), dt) if lstm else None
    h0 = None if h is None else h.detach().numpy()[None]
    c0 = None if c is None else c.detach().numpy()[None]
    p = (views[keys[0]], views[keys[1]], views.get(keys[2]) if len(keys) > 2 else None,
         views.get(keys[3]) if len(keys) > 3 else None, None)
    spec.cell.forward(spec, 1, B, spec.input_size, 0, None, x.detach().numpy()[None], h0, c0, p, y, H, hn, cn,
                      None)
    if lstm:
        return _from_numpy(hn[0]), _from_numpy(cn[0])
    return _from_numpy(hn[0])


_get_threads = torch.get_num_threads
_grad_enabled = torch.is_grad_enabled
_from_numpy = torch.from_numpy
