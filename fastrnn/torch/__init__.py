"""fastrnn.torch: the PyTorch drop-in (torch.nn.RNN/LSTM/GRU and cells on fastrnn's kernels).

Depends on fastrnn.nn (and torch, an optional extra: pip install "fastrnn[torch]"); never on the
Keras-style API (fastrnn.layers, fastrnn.models, ...).
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError('fastrnn.torch needs PyTorch: pip install "fastrnn[torch]"') from e
