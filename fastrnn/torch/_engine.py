"""The numpy engine under fastrnn.torch: fastrnn.nn's functional core (LayerSpec, functional.forward /
backward), with the per-call path the modules use."""
import numpy as np

from ..nn import LayerSpec, functional as _F

__all__ = ["make_spec", "forward", "backward", "param_shapes"]



def make_spec(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
              bidirectional=False, proj_size=0, nonlinearity="tanh", dtype=np.float32):
    return LayerSpec(cell, input_size=int(input_size), hidden_size=int(hidden_size), num_layers=int(num_layers),
                     bias=bool(bias), batch_first=bool(batch_first), dropout=float(dropout),
                     bidirectional=bool(bidirectional), proj_size=int(proj_size), nonlinearity=nonlinearity,
                     reset_after=True, go_backwards=False, dtype=np.dtype(dtype))


def forward(spec, params, x, hx=None, lengths=None, train=False, mask_fn=None):
    # functional.run is forward() without re-validating spec and params: the modules hand over arrays that
    # are the Parameters' own memory (shapes fixed by the torch module, dtype and contiguity checked there).
    return _F.run(spec, params, x, hx, lengths, bool(train), mask_fn)


def backward(tape, dy, dstate=None, out=None):
    return _F.backward(tape, dy, dstate=dstate, out=out)


def param_shapes(spec):
    return spec.param_shapes()
