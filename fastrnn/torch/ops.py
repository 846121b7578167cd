"""The kernels as torch.library custom ops, for torch.compile.

Under torch.compile the modules call `fastrnn::rnn_forward` (and autograd calls `fastrnn::rnn_backward`):
opaque to Dynamo and Inductor (no graph break, no decomposition into torch's implementation), with fake-tensor
rules giving the output shapes and an autograd rule.  The tape of a training forward stays in Python: the
forward op returns a one-element int64 "handle" tensor naming it, which the autograd rule saves and hands to
the backward op; the tape is dropped when the handle tensor is freed.
Eager calls do not go through these ops (fastrnn.torch.autograd is a few microseconds cheaper a call).
"""
import itertools
import weakref
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _engine as E
from .autograd import _np, _np_param, sync_threads, torch_mask_fn

__all__ = ["rnn_call"]

_SPECS = {}          # spec key (str) -> LayerSpec
_TAPES = {}          # handle -> (tape, y shape)
_COUNTER = itertools.count(1)
CALLS = [0]          # calls of the forward op (a test hook)
_TDT = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def spec_key(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
             nonlinearity, f64):
    """The op's description of a layer: a string (custom ops take str), built with plain Python so Dynamo
    traces it; the op turns it into a LayerSpec (_spec)."""
    return (f"{cell}|{int(input_size)}|{int(hidden_size)}|{int(num_layers)}|{int(bool(bias))}|"
            f"{int(bool(batch_first))}|{float(dropout)!r}|{int(bool(bidirectional))}|{int(proj_size)}|"
            f"{nonlinearity}|{'float64' if f64 else 'float32'}")


def _spec(key):
    spec = _SPECS.get(key)
    if spec is None:
        c, i, h, n, b, bf, p, bd, pr, nl, dt = key.split("|")
        spec = _SPECS[key] = E.make_spec(c, int(i), int(h), int(n), b == "1", bf == "1", float(p), bd == "1",
                                         int(pr), nl, np.dtype(dt))
    return spec


def _shapes(spec, x):
    T, B = (x.shape[1], x.shape[0]) if spec.batch_first else (x.shape[0], x.shape[1])
    y = (B, T, spec.D * spec.P) if spec.batch_first else (T, B, spec.D * spec.P)
    return y, (spec.num_layers * spec.D, B, spec.P), (spec.num_layers * spec.D, B, spec.hidden_size)


@torch.library.custom_op("fastrnn::rnn_forward", mutates_args=())
def rnn_forward(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
                params: List[Tensor], spec_key: str, keep_tape: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    spec = _spec(spec_key)
    sync_threads()
    CALLS[0] += 1
    lstm = spec.cell_name == "lstm"
    pd = {k: _np_param(p) for (k, _), p in zip(spec.param_shapes(), params)}
    hx = None if h0 is None else ((_np(h0), _np(c0)) if lstm else _np(h0))
    dropout = spec.dropout > 0 and spec.num_layers > 1
    mask_fn = torch_mask_fn(spec.dropout, x.dtype) if dropout else None
    lens = None if lengths is None else lengths.numpy()
    y, state, tape = E.forward(spec, pd, _np(x), hx, lens, train=keep_tape or dropout, mask_fn=mask_fn)
    hn, cn = state if lstm else (state, np.empty((0,), spec.dtype))
    handle = torch.zeros((1,), dtype=torch.int64)
    if keep_tape:
        hid = next(_COUNTER)
        _TAPES[hid] = (tape, y.shape)
        handle[0] = hid
        weakref.finalize(handle, _TAPES.pop, hid, None)
    return torch.from_numpy(y), torch.from_numpy(hn), torch.from_numpy(cn), handle


@rnn_forward.register_fake
def _(x, h0, c0, lengths, params, spec_key, keep_tape):
    spec = _spec(spec_key)
    ys, hs, cs = _shapes(spec, x)
    cn = x.new_empty(cs) if spec.cell_name == "lstm" else x.new_empty((0,))
    return x.new_empty(ys), x.new_empty(hs), cn, x.new_empty((1,), dtype=torch.int64)


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward(handle: Tensor, dy: Tensor, dh: Tensor, dc: Tensor, x: Tensor, params: List[Tensor],
                 spec_key: str) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    spec = _spec(spec_key)
    entry = _TAPES.get(int(handle[0]))
    if entry is None:
        raise RuntimeError("fastrnn::rnn_backward: the forward's tape is gone (backward through the graph a "
                           "second time? use retain_graph=True)")
    tape, _ = entry
    lstm = spec.cell_name == "lstm"
    sync_threads()
    gt = [torch.empty(s, dtype=_TDT[spec.dtype]) for _, s in spec.param_shapes()]
    out = {k: t.numpy() for (k, _), t in zip(spec.param_shapes(), gt)}
    dstate = (_np(dh), _np(dc)) if lstm else _np(dh)
    dx, dhx, _ = E.backward(tape, _np(dy), dstate, out=out)
    dh0, dc0 = dhx if lstm else (dhx, np.empty((0,), spec.dtype))
    return torch.from_numpy(dx), torch.from_numpy(dh0), torch.from_numpy(dc0), gt


@rnn_backward.register_fake
def _(handle, dy, dh, dc, x, params, spec_key):
    return x.new_empty(x.shape), dh.new_empty(dh.shape), dc.new_empty(dc.shape), \
        [p.new_empty(p.shape) for p in params]


def _setup_context(ctx, inputs, output):
    x, h0, c0, lengths, params, spec_key, keep_tape = inputs
    ctx.spec_key, ctx.h0_given, ctx.n = spec_key, h0 is not None, len(params)
    ctx.save_for_backward(output[3], x, *params)


def _backward(ctx, dy, dh, dc, dhandle):
    if torch.is_grad_enabled():
        from .autograd import _DOUBLE_BACKWARD
        raise RuntimeError(_DOUBLE_BACKWARD)
    handle, x, *params = ctx.saved_tensors
    dx, dh0, dc0, grads = torch.ops.fastrnn.rnn_backward(handle, dy, dh, dc, x, list(params), ctx.spec_key)
    lstm = _spec(ctx.spec_key).cell_name == "lstm"
    if not ctx.h0_given:
        dh0 = dc0 = None
    elif not lstm:
        dc0 = None
    return dx, dh0, dc0, None, list(grads), None, None


torch.library.register_autograd("fastrnn::rnn_forward", _backward, setup_context=_setup_context)


def rnn_call(key, lstm, params, x, h0, c0, lengths):
    """What the modules call under torch.compile: (y, h_n) or (y, h_n, c_n)."""
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)
                                        or (h0 is not None and h0.requires_grad)
                                        or (c0 is not None and c0.requires_grad))
    y, hn, cn, _ = torch.ops.fastrnn.rnn_forward(x, h0, c0, lengths, list(params), key, keep)
    return (y, hn, cn) if lstm else (y, hn)
