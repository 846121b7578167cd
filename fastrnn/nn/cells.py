"""The cell descriptors: one `Cell` per recurrent cell, everything the layers above the binding need to know
about it -- its gates, its state, its options, its parameters' names and shapes, and its kernels.

The numpy layers (functional.py, modules.py), the float64 reference (fastrnn/reference.py), the benchmark
and the tests take what they need from here, so a new cell is: its C file, its descriptor below, its
reference step functions, its tests (docs/design.md, Adding a cell).

Kernel calls go through each descriptor's `forward` / `backward` adapters, which take one argument order for
every cell (the parameters of one layer and direction as a tuple `p = (w_ih, w_hh, b_ih, b_hh, w_hr)`, the
cell state `c` None for cells without one) and call the cell's own binding function in fastrnn._core.
"""
from dataclasses import dataclass
from typing import Callable, Tuple

from .. import _core

__all__ = ["Cell", "CELLS", "RNN_CELL", "LSTM_CELL", "GRU_CELL", "get_cell"]


@dataclass(frozen=True)
class Cell:
    name: str                   # "rnn", "lstm", "gru": the key of CELLS
    torch_name: str             # the torch.nn class it mirrors
    gates: Tuple[str, ...]      # gate blocks of weight_ih / weight_hh / biases, top to bottom (torch's order)
    state: Tuple[str, ...]      # the recurrent state: ("h",) or ("h", "c")
    projection: bool            # takes proj_size (weight_hr, P < H)
    option: Callable            # spec -> the int option the kernel takes (relu, reset_after; 0 if none)
    tape_len: Callable          # (T, B, H, P, f64) -> elements of one (layer, direction) tape
    forward: Callable           # see the module docstring
    backward: Callable
    rmask_gates: int = 0        # recurrent dropout masks per (layer, direction): RNN 1 (B, H), LSTM 4
                                # (4, B, P), GRU 3 (3, B, H), one per gate (Keras's); 0: not supported

    def rmask_shape(self, B, P):
        """The kernels' recurrent dropout operand of one (layer, direction): (B, P) or (G, B, P)."""
        return (B, P) if self.rmask_gates == 1 else (self.rmask_gates, B, P)

    @property
    def G(self):
        """Gates per cell: the row blocks of weight_ih and weight_hh."""
        return len(self.gates)

    @property
    def has_cell_state(self):
        return len(self.state) > 1


def _rnn_forward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, hn, cn, tape, rmask=None):
    _core.rnn_forward(T, B, I, spec.hidden_size, spec.nonlinearity == "relu", reverse, lengths, x, h0,
                      p[0], p[1], p[2], p[3], y, ldy, hn, tape, rmask)


def _rnn_backward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, tape, dy, lddy, dhn, dcn, dx, dx_acc,
                  dh0, dc0, g, rmask=None):
    _core.rnn_backward(T, B, I, spec.hidden_size, spec.nonlinearity == "relu", reverse, lengths, x, h0,
                       p[0], p[1], y, ldy, tape, dy, lddy, dhn, dx, dx_acc, dh0, g[0], g[1], g[2], g[3], rmask)


def _lstm_forward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, hn, cn, tape, rmask=None):
    _core.lstm_forward(T, B, I, spec.hidden_size, spec.P, reverse, lengths, x, h0, c0, p[0], p[1], p[2], p[3],
                       p[4], y, ldy, hn, cn, tape, rmask)


def _lstm_backward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, tape, dy, lddy, dhn, dcn, dx, dx_acc,
                   dh0, dc0, g, rmask=None):
    _core.lstm_backward(T, B, I, spec.hidden_size, spec.P, reverse, lengths, x, h0, c0, p[0], p[1], p[4], y,
                        ldy, tape, dy, lddy, dhn, dcn, dx, dx_acc, dh0, dc0, g[0], g[1], g[2], g[3], g[4], rmask)


def _gru_forward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, hn, cn, tape, rmask=None):
    _core.gru_forward(T, B, I, spec.hidden_size, spec.reset_after, reverse, lengths, x, h0, p[0], p[1], p[2],
                      p[3], y, ldy, hn, tape, rmask)


def _gru_backward(spec, T, B, I, reverse, lengths, x, h0, c0, p, y, ldy, tape, dy, lddy, dhn, dcn, dx, dx_acc,
                  dh0, dc0, g, rmask=None):
    _core.gru_backward(T, B, I, spec.hidden_size, spec.reset_after, reverse, lengths, x, h0, p[0], p[1], y,
                       ldy, tape, dy, lddy, dhn, dx, dx_acc, dh0, g[0], g[1], g[2], g[3], rmask)


RNN_CELL = Cell("rnn", "RNN", gates=("h",), state=("h",), projection=False,
                option=lambda spec: int(spec.nonlinearity == "relu"),
                tape_len=lambda T, B, H, P, f64: _core.rnn_tape_len(T, B, H, f64),
                forward=_rnn_forward, backward=_rnn_backward, rmask_gates=1)
LSTM_CELL = Cell("lstm", "LSTM", gates=("i", "f", "g", "o"), state=("h", "c"), projection=True,
                 option=lambda spec: 0,
                 tape_len=lambda T, B, H, P, f64: _core.lstm_tape_len(T, B, H, P, f64),
                 forward=_lstm_forward, backward=_lstm_backward, rmask_gates=4)
GRU_CELL = Cell("gru", "GRU", gates=("r", "z", "n"), state=("h",), projection=False,
                option=lambda spec: int(spec.reset_after),
                tape_len=lambda T, B, H, P, f64: _core.gru_tape_len(T, B, H, f64),
                forward=_gru_forward, backward=_gru_backward, rmask_gates=3)

CELLS = {c.name: c for c in (RNN_CELL, LSTM_CELL, GRU_CELL)}


def get_cell(name):
    """The descriptor of cell `name` ("rnn", "lstm", "gru"; any case), or a ValueError naming the choices."""
    c = CELLS.get(str(name).lower()) if isinstance(name, str) else (name if isinstance(name, Cell) else None)
    if c is None:
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {name!r}")
    return c
