"""The Keras-style layers' door to the kernels: fastrnn.nn.functional when it exists, else a shim over the
numpy modules of fastrnn.nn with the same contract.

    spec = make_spec(cell, I, H, bias, nonlinearity, reset_after, go_backwards, dtype)
    y, state, tape = forward(spec, params, x, hx, lengths, train)      # x time-major (T, B, I)
    dx, dhx, grads = backward(tape, dy, dstate, out)

`params` maps torch's keys (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) to C-contiguous arrays that
the kernels read in place; `out` maps the same keys to arrays the parameter gradients are written into.
"""
import numpy as np

from .. import nn as _nn

try:  # the stateless functional core (fastrnn.nn.functional, LayerSpec)
    from ..nn import LayerSpec as _LayerSpec
    from ..nn import functional as _F
except ImportError:  # pragma: no cover - depends on the fastrnn.nn in use
    _LayerSpec = _F = None

HAVE_FUNCTIONAL = _F is not None

__all__ = ["make_spec", "forward", "backward", "HAVE_FUNCTIONAL"]


class _ShimSpec:
    """What the shim needs of a LayerSpec (hashable, frozen by convention)."""
    __slots__ = ("cell", "input_size", "hidden_size", "bias", "nonlinearity", "reset_after", "go_backwards",
                 "dtype")

    def __init__(self, cell, input_size, hidden_size, bias, nonlinearity, reset_after, go_backwards, dtype):
        self.cell, self.input_size, self.hidden_size, self.bias = cell, input_size, hidden_size, bias
        self.nonlinearity, self.reset_after, self.go_backwards = nonlinearity, reset_after, go_backwards
        self.dtype = np.dtype(dtype)

    def _key(self):
        return (self.cell, self.input_size, self.hidden_size, self.bias, self.nonlinearity, self.reset_after,
                self.go_backwards, self.dtype.str)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _ShimSpec) and self._key() == other._key()


def make_spec(cell, input_size, hidden_size, bias=True, nonlinearity="tanh", reset_after=True,
              go_backwards=False, dtype=np.float32):
    if _LayerSpec is not None:
        return _LayerSpec(cell, input_size=input_size, hidden_size=hidden_size, num_layers=1, bias=bias,
                          batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                          nonlinearity=nonlinearity, reset_after=reset_after, go_backwards=go_backwards,
                          dtype=np.dtype(dtype).type)
    return _ShimSpec(cell, input_size, hidden_size, bias, nonlinearity, reset_after, go_backwards, dtype)


def param_shapes(spec):
    """[(key, shape)] in torch's order for a single-layer unidirectional spec."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[spec.cell]
    H, I = spec.hidden_size, spec.input_size
    out = [("weight_ih_l0", (G * H, I)), ("weight_hh_l0", (G * H, H))]
    if spec.bias:
        out += [("bias_ih_l0", (G * H,)), ("bias_hh_l0", (G * H,))]
    return out


# ---- the shim -------------------------------------------------------------------------------------------------
_modules = {}


def _module(spec):
    mod = _modules.get(spec)
    if mod is None:
        if spec.cell == "lstm":
            mod = _nn.LSTM(spec.input_size, spec.hidden_size, bias=spec.bias, dtype=spec.dtype)
        elif spec.cell == "gru":
            mod = _nn.GRU(spec.input_size, spec.hidden_size, bias=spec.bias, dtype=spec.dtype,
                          reset_after=spec.reset_after)
        else:
            mod = _nn.RNN(spec.input_size, spec.hidden_size, nonlinearity=spec.nonlinearity, bias=spec.bias,
                          dtype=spec.dtype)
        _modules[spec] = mod
    return mod


def _reverse_index(T, B, lengths):
    """(T, B) time index that reverses each sequence within its own length (an involution)."""
    t = np.arange(T)[:, None]
    if lengths is None:
        return np.broadcast_to(T - 1 - t, (T, B))
    L = np.asarray(lengths)[None, :]
    return np.where(t < L, L - 1 - t, t)


class _ShimTape:
    __slots__ = ("mod", "tape", "rev", "params")


def _gather(a, rev):
    return a[rev, np.arange(a.shape[1])[None, :]]


def _shim_forward(spec, params, x, hx, lengths, train):
    mod = _module(spec)
    mod._params = params  # read in place: the module's own arrays are never used
    mod._layer_cache = {}
    rev = None
    if spec.go_backwards:
        rev = _reverse_index(x.shape[0], x.shape[1], lengths)
        x = _gather(x, rev)
    y, state, tape = mod.forward(x, hx, lengths, train=train)
    if rev is not None:
        y = _gather(y, rev)
    st = None
    if train:
        st = _ShimTape()
        st.mod, st.tape, st.rev, st.params = mod, tape, rev, params
    return y, state, st


def _shim_backward(tape, dy, dstate=None, out=None):
    mod = tape.mod
    mod._params = tape.params
    mod._layer_cache = {}
    if tape.rev is not None:
        dy = np.ascontiguousarray(_gather(dy, tape.rev))
    dx, dhx, grads = mod.backward(tape.tape, dy, dstate)
    if tape.rev is not None:
        dx = _gather(dx, tape.rev)
    if out:
        for k, g in grads.items():
            if k in out:
                out[k][...] = g
                grads[k] = out[k]
    return dx, dhx, grads


def forward(spec, params, x, hx=None, lengths=None, train=False):
    if _F is not None:
        return _F.forward(spec, params, x, hx=hx, lengths=lengths, train=train)
    return _shim_forward(spec, params, x, hx, lengths, train)


def backward(tape, dy, dstate=None, out=None):
    if _F is not None:
        return _F.backward(tape, dy, dstate=dstate, out=out)
    return _shim_backward(tape, dy, dstate, out)
