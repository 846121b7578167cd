"""fastrnn: fast CPU kernels for RNN, LSTM and GRU, forward and backpropagation through time.

    import fastrnn
    lstm = fastrnn.LSTM(64, 128)
    y, (h_n, c_n) = lstm(x)                       # x (T, B, 64) -> y (T, B, 128), as torch.nn.LSTM
    y, state, tape = lstm.forward(x, train=True)
    dx, dhx, grads = lstm.backward(tape, dy)

The package's layers (docs/design.md): fastrnn._core (the binding) <- fastrnn.nn (numpy layers) <-
fastrnn.torch (the PyTorch drop-in) and the Keras-style API (fastrnn.layers, models, optimizers, losses,
callbacks); fastrnn.runtime holds the process-wide controls.  See README.md for the contract.
"""
import os as _os

# OpenBLAS's worker threads busy-wait ~0.1 s after every call by default; on a 2-CPU machine they then starve
# the kernels' own threads (measured: forward 4.3 -> 2.1 ms at T=100, B=16, H=128).  A short spin costs
# OpenBLAS nothing measurable.  Only takes effect if scipy's OpenBLAS is not loaded yet, and never
# overrides a value the user set.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

from .nn import GRU, LSTM, RNN, Tape
from .runtime import (cpu_has_avx2, cpu_has_avx512, get_isa, get_num_threads, release_workspace, set_isa,
                      set_num_threads, workspace_bytes)

from ._version import __version__
# The Keras-style entry points, imported on first use (fastrnn.models is not needed by the numpy layers).
_LAZY = {"Sequential": "fastrnn.models", "load_model": "fastrnn.models"}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = ["RNN", "LSTM", "GRU", "Tape", "get_isa", "set_isa", "cpu_has_avx2", "cpu_has_avx512", "get_num_threads",
           "set_num_threads", "release_workspace", "workspace_bytes"]
