"""fastrnn.torch: the PyTorch drop-in (torch.nn.RNN/LSTM/GRU and cells on fastrnn's kernels).

    from fastrnn.torch import LSTM            # a torch.nn.LSTM subclass: same arguments, Parameters, results
    model = fastrnn.torch.convert(model)      # or swap every torch.nn RNN/LSTM/GRU (and cell) inside a model

Depends on fastrnn.nn (and torch, an optional extra: pip install "fastrnn[torch]"); never on the
Keras-style API (fastrnn.layers, fastrnn.models, ...).  See docs/torch.md.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError('fastrnn.torch needs PyTorch: pip install "fastrnn[torch]"') from e

from .rnn import GRU, LSTM, RNN, FastRNNWarning, GRUCell, LSTMCell, RNNCell  # noqa: E402
from .convert import convert, revert  # noqa: E402
from .autograd import share_torch_threads  # noqa: E402

share_torch_threads()  # the kernels run on torch's own OpenMP threads (docs/torch.md, Threads)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "revert", "FastRNNWarning"]
