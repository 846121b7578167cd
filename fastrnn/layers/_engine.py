"""The Keras-style layers' door to the kernels: fastrnn.nn's functional core for one layer and direction.

    spec = make_spec(cell, I, H, bias, nonlinearity, reset_after, go_backwards, dtype)
    y, state, tape = forward(spec, params, x, hx, lengths, train)      # x time-major (T, B, I)
    dx, dhx, grads = backward(tape, dy, dstate, out)

`params` maps torch's keys (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) to C-contiguous arrays that
the kernels read in place; `out` maps the same keys to arrays the parameter gradients are written into.
"""
import numpy as np

from ..nn import LayerSpec, functional as _F

__all__ = ["make_spec", "forward", "backward", "param_shapes"]


def make_spec(cell, input_size, hidden_size, bias=True, nonlinearity="tanh", reset_after=True,
              go_backwards=False, dtype=np.float32):
    return LayerSpec(cell, input_size=input_size, hidden_size=hidden_size, num_layers=1, bias=bias,
                     batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                     nonlinearity=nonlinearity, reset_after=reset_after, go_backwards=go_backwards,
                     dtype=np.dtype(dtype))


def param_shapes(spec):
    """[(key, shape)] in torch's order."""
    return spec.param_shapes()


def forward(spec, params, x, hx=None, lengths=None, train=False, rmasks=None):
    # The layer owns `params` (built from spec.param_shapes()): run() skips re-checking them per call.
    return _F.run(spec, params, x, hx, lengths, bool(train), None, None, rmasks)


def backward(tape, dy, dstate=None, out=None, need_dx=True):
    return _F.backward(tape, dy, dstate=dstate, out=out, need_dx=need_dx)
