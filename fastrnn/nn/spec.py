"""LayerSpec: the configuration of one recurrent layer stack (torch.nn.RNN/LSTM/GRU's constructor arguments),
validated once, immutable and hashable; the functional core and the modules take everything from it."""
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .cells import Cell, get_cell
from .validation import check_dtype, check_int

__all__ = ["LayerSpec"]


@dataclass(frozen=True)
class LayerSpec:
    cell_name: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    nonlinearity: str = "tanh"      # RNN only: "tanh" or "relu"
    reset_after: bool = True        # GRU only: torch's form (True) or Cho et al.'s (False)
    go_backwards: bool = False      # unidirectional only: each sequence from its last valid step to step 0
    dtype: np.dtype = field(default=np.dtype(np.float32))

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, nonlinearity="tanh", reset_after=True, go_backwards=False,
                 dtype=np.float32):
        c = get_cell(cell)
        for name, v, lo in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                            ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            check_int(name, v, lo)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating, np.integer)):
            raise TypeError(f"dropout: expected a float in [0, 1), got {type(dropout).__name__}")
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout}")
        if proj_size and not c.projection:
            raise ValueError(f"proj_size: the {c.torch_name} cell has no projection; expected 0, got {proj_size}")
        if proj_size and proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected 0 or a size < hidden_size ({hidden_size}), got {proj_size}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        if go_backwards and bidirectional:
            raise ValueError("go_backwards: expected False for a bidirectional layer (it runs both directions)")
        dt = check_dtype(dtype)
        s = object.__setattr__
        s(self, "cell_name", c.name)
        s(self, "input_size", int(input_size))
        s(self, "hidden_size", int(hidden_size))
        s(self, "num_layers", int(num_layers))
        s(self, "bias", bool(bias))
        s(self, "batch_first", bool(batch_first))
        s(self, "dropout", float(dropout))
        s(self, "bidirectional", bool(bidirectional))
        s(self, "proj_size", int(proj_size))
        s(self, "nonlinearity", nonlinearity if c.name == "rnn" else "tanh")
        s(self, "reset_after", bool(reset_after) if c.name == "gru" else True)
        s(self, "go_backwards", bool(go_backwards))
        s(self, "dtype", dt)
        # Derived values the per-call path reads (not fields: eq and hash are the fields').
        s(self, "_cell", c)
        s(self, "_P", self.proj_size if self.proj_size > 0 else self.hidden_size)
        s(self, "_D", 2 if self.bidirectional else 1)
        s(self, "_keys", tuple(tuple(_make_layer_keys(self, k, d) for d in range(self._D))
                               for k in range(self.num_layers)))

    # ---- derived sizes --------------------------------------------------------------------------------------
    @property
    def cell(self) -> Cell:
        return self._cell

    @property
    def G(self):
        return self.cell.G

    @property
    def D(self):
        """Directions: 2 when bidirectional."""
        return self._D

    @property
    def P(self):
        """Output size of each direction: proj_size when projecting, else hidden_size."""
        return self._P

    @property
    def output_size(self):
        """Features of y: D * P."""
        return self.D * self.P

    def replace(self, **changes):
        """A copy with some fields changed (validated again); `cell=` changes the cell."""
        kw = {k: getattr(self, k) for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                                              "dropout", "bidirectional", "proj_size", "nonlinearity",
                                              "reset_after", "go_backwards", "dtype")}
        cell = changes.pop("cell", self.cell_name)
        kw.update(changes)
        return LayerSpec(cell, **kw)

    # ---- parameters -----------------------------------------------------------------------------------------
    def param_shapes(self):
        """[(name, shape)] of every parameter, keyed and ordered as torch.nn's state_dict()."""
        return list(_param_shapes(self))

    def layer_keys(self, k, d):
        """The state_dict keys (w_ih, w_hh, b_ih, b_hh, w_hr) of layer k, direction d; None where absent."""
        return self._keys[k][d]

    def state_shapes(self, B, batched=True):
        """Shapes of h (and c) in the state: (L*D, B, P) and (L*D, B, H), without B when unbatched."""
        LD, H, P = self.num_layers * self.D, self.hidden_size, self.P
        return ((LD, B, P), (LD, B, H)) if batched else ((LD, P), (LD, H))


@lru_cache(maxsize=256)
def _param_shapes(spec):
    GH, P, D = spec.G * spec.hidden_size, spec.P, spec.D
    out = []
    for k in range(spec.num_layers):
        I = spec.input_size if k == 0 else P * D
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = spec.layer_keys(k, d)
            out += [(w_ih, (GH, I)), (w_hh, (GH, P))]
            if b_ih is not None:
                out += [(b_ih, (GH,)), (b_hh, (GH,))]
            if w_hr is not None:
                out += [(w_hr, (P, spec.hidden_size))]
    return tuple(out)


def _make_layer_keys(spec, k, d):
    sfx = f"_l{k}" + ("_reverse" if d else "")
    b = spec.bias
    return ("weight_ih" + sfx, "weight_hh" + sfx, "bias_ih" + sfx if b else None, "bias_hh" + sfx if b else None,
            "weight_hr" + sfx if spec.proj_size > 0 else None)
