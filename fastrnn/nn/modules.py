"""The numpy API: fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU.

Same constructor arguments, parameter names, shapes and results as torch.nn.RNN/LSTM/GRU, on numpy arrays.
Each module owns its parameters (numpy arrays, initialised as torch does) and a LayerSpec; its calls go to
the functional core (functional.py), which validates every argument before any C code runs.
"""
import math
from collections import OrderedDict

import numpy as np

from . import functional as F
from .spec import LayerSpec
from .tape import Tape
from .validation import as_float_array, check_shape, shape_str

__all__ = ["RNN", "LSTM", "GRU", "Tape"]


_INIT_CHUNK = 1 << 20  # elements drawn at a time


def _uniform(rng, bound, shape, dtype):
    """U(-bound, bound) of `shape` in `dtype`, the same numbers as rng.uniform(-bound, bound, shape).astype(dtype)
    (the draws are sequential, so drawing in chunks changes nothing) without a float64 temporary of the whole
    array: a large float32 layer is initialised in its final memory plus one chunk."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    for i in range(0, flat.size, _INIT_CHUNK):
        j = min(i + _INIT_CHUNK, flat.size)
        flat[i:j] = rng.uniform(-bound, bound, size=j - i)
    return out


class _RNNBase:
    _cell = None  # the cell's name in fastrnn.nn.cells.CELLS

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype=np.float32, seed=None, **cell_options):
        spec = LayerSpec(self._cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype=dtype, **cell_options)
        self.spec = spec
        self.input_size, self.hidden_size, self.num_layers = spec.input_size, spec.hidden_size, spec.num_layers
        self.bias, self.batch_first, self.dropout = spec.bias, spec.batch_first, spec.dropout
        self.bidirectional, self.proj_size, self.dtype = spec.bidirectional, spec.proj_size, spec.dtype
        self._version = 0
        rng = np.random.default_rng(seed)
        self._params = OrderedDict()
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in spec.param_shapes():
            self._params[name] = _uniform(rng, bound, shape, spec.dtype)
        self._rng = rng  # dropout masks come from the same seeded stream, after the initial weights

    def _mask(self, k, shape):
        keep = 1.0 - self.dropout
        return (self._rng.random(shape) < keep).astype(self.dtype) / self.dtype.type(keep)

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ---- state dict ---------------------------------------------------------------------------------------
    def state_dict(self):
        """Copies of the parameters, keyed and shaped exactly as torch.nn's state_dict()."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state_dict):
        """Load parameters from any mapping of array-likes (a torch module's state_dict() included).
        Every key must be present with torch's shape; nothing is changed unless all entries are valid."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        extra = [k for k in state_dict.keys() if k not in self._params]
        if missing or extra:
            raise ValueError(f"state_dict: expected exactly the keys {list(self._params)}; "
                             f"missing {missing}, unexpected {extra}")
        new = OrderedDict()
        for name, old in self._params.items():
            arr = as_float_array(name, state_dict[name], self.dtype)
            check_shape(name, arr, old.shape)
            new[name] = np.array(arr, dtype=self.dtype, order="C", copy=True)
        self._params = new
        self._version += 1

    # ---- forward ------------------------------------------------------------------------------------------
    def __call__(self, x, hx=None, lengths=None):
        """Inference: (y, h_n) or, for LSTM, (y, (h_n, c_n)) exactly as torch.nn returns them."""
        y, state, _ = F.run(self.spec, self._params, x, hx, lengths, False, None)
        return y, state

    def forward(self, x, hx=None, lengths=None, train=True, checkpoint=None):
        """(y, state, tape); `tape` (None when train=False) is what `backward` needs.  checkpoint=k keeps the
        state every k steps instead of the whole tape and recomputes the rest in backward (long sequences:
        memory for one more forward pass; README.md, Long sequences)."""
        y, state, tape = F.run(self.spec, self._params, x, hx, lengths, bool(train), self._mask, checkpoint)
        if tape is not None:
            tape.bind(self, self._version)
        return y, state, tape

    def step(self, x_t, state=None):
        """Advance one time step: x_t (B, I) (or unbatched (I,)) and the state as `hx` -> (y_t, new_state),
        y_t (B, P) (or (P,)).  For streaming inference; equal to running the whole sequence at once."""
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence; call the layer on it")
        x = as_float_array("x_t", x_t, self.dtype)
        I = self.input_size
        if x.ndim == 1:
            check_shape("x_t", x, (I,))
        elif x.ndim == 2:
            check_shape("x_t", x, ("B", I))
        else:
            raise ValueError(f"x_t: expected shape (B, {I}) or ({I},), got {shape_str(x.shape)}")
        batched = x.ndim == 2
        xt = np.ascontiguousarray(x.reshape((1, x.shape[0] if batched else 1, I)))
        y, new_state, _ = F.run_time_major(self.spec, self._params, xt, batched, state, None, False, None)
        return (y[0] if batched else y[0, 0]), new_state

    # ---- backward -----------------------------------------------------------------------------------------
    def backward(self, tape, dy, dstate=None, out=None):
        """Backpropagation through time from a training forward's tape.

        dy is shaped like y; dstate like the returned state ((dh_n, dc_n) for LSTM, either may be None),
        or None.  Returns (dx, dhx, grads): dx like x, dhx like the state (zeros-shaped when hx was None),
        grads a dict keyed like state_dict().  `out` (optional) maps state_dict keys to C-contiguous arrays of
        the layer's dtype and the parameter's shape: those gradients are written into them (no copy)."""
        if not isinstance(tape, Tape):
            raise TypeError(f"tape: expected the Tape returned by forward(..., train=True), "
                            f"got {type(tape).__name__}")
        owner = tape._owner() if tape._owner is not None else None
        if owner is not self:
            raise ValueError("tape: this tape was recorded by another layer; pass it to that layer's backward")
        if tape.spec != self.spec:
            raise ValueError("tape: recorded with another configuration of this layer")
        if tape._version != self._version:
            raise ValueError("tape: the parameters were reloaded (load_state_dict) after this forward; "
                             "run forward again")
        return F.backward(tape, dy, dstate, out)

    def __repr__(self):
        extra = ""
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if not self.bias:
            extra += ", bias=False"
        if self.batch_first:
            extra += ", batch_first=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.bidirectional:
            extra += ", bidirectional=True"
        if self.proj_size:
            extra += f", proj_size={self.proj_size}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"


class RNN(_RNNBase):
    """Elman RNN, h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = tanh or relu, as torch.nn.RNN."""
    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, dtype, seed, nonlinearity=nonlinearity)


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o), with optional projection of h (proj_size), as torch.nn.LSTM."""
    _cell = "lstm"


class GRU(_RNNBase):
    """GRU (gates r, z, n) as torch.nn.GRU.  reset_after=False is the original Cho et al. form
    n = tanh(x W_in^T + b_in + (r*h) W_hn^T + b_hn) (Keras's reset_after=False); it has no torch twin."""
    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, dtype=np.float32, seed=None, reset_after=True):
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, dtype, seed, reset_after=reset_after)
