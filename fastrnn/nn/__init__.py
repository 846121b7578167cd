"""fastrnn.nn: the numpy layers (RNN, LSTM, GRU with torch.nn's semantics) over the binding fastrnn._core.

This subpackage depends on fastrnn._core only (docs/design.md, Layers and their dependency rule).
"""
from .modules import GRU, LSTM, RNN, Tape

__all__ = ["RNN", "LSTM", "GRU", "Tape"]
