"""fastrnn.nn: the numpy layers over the binding fastrnn._core.

    cells.py       one descriptor per cell (gates, state, parameters, kernels)
    spec.py        LayerSpec: a layer stack's configuration, validated and hashable
    validation.py  the checks every argument passes before C runs
    tape.py        what a training forward keeps for backward
    functional.py  forward / backward of a spec over given parameter arrays (stateless)
    modules.py     RNN, LSTM, GRU: torch.nn-like classes owning their parameters
    updates.py     fused optimizer steps on flat vectors (fastrnn.optimizers)
    linalg.py      matmul on the kernels' GEMM and thread pool (fastrnn.layers.Dense)

Depends on fastrnn._core only (docs/design.md, Layers and their dependency rule).
"""
from . import functional
from .cells import CELLS, Cell, get_cell
from .modules import GRU, LSTM, RNN
from .spec import LayerSpec
from .tape import Tape

__all__ = ["RNN", "LSTM", "GRU", "Tape", "LayerSpec", "Cell", "CELLS", "get_cell", "functional"]
