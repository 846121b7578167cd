"""convert(model) / revert(model): swap torch.nn's recurrent modules for fastrnn.torch's and back.

The swap changes each module's class in place (fastrnn's classes are subclasses of torch.nn's that add no
state), so the module objects, their Parameters (the very same objects: an optimizer built before the
conversion keeps working), buffers, hooks, devices and dtypes all stay as they were.
"""
import copy

from torch import nn

from . import rnn as M

__all__ = ["convert", "revert"]

_TO_FAST = {nn.RNN: M.RNN, nn.LSTM: M.LSTM, nn.GRU: M.GRU,
            nn.RNNCell: M.RNNCell, nn.LSTMCell: M.LSTMCell, nn.GRUCell: M.GRUCell}
_TO_TORCH = {v: k for k, v in _TO_FAST.items()}


def _swap(model, table, inplace, what):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: expected a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for m in model.modules():
        new = table.get(type(m))  # exact types only: a user's subclass (own forward) is left alone
        if new is not None:
            m.__dict__.pop("_fastrnn_specs", None)
            m.__dict__.pop("_fastrnn_warned", None)
            m.__class__ = new
    return model


def convert(model, inplace=True):
    """Replace every torch.nn.RNN / LSTM / GRU / RNNCell / LSTMCell / GRUCell inside `model` (the model itself
    included; nested, in ModuleList / Sequential / ModuleDict) by its fastrnn.torch twin; returns the model.
    inplace=False converts a deep copy and leaves `model` untouched."""
    return _swap(model, _TO_FAST, inplace, "convert")


def revert(model, inplace=True):
    """Undo convert(): every fastrnn.torch module inside `model` becomes its torch.nn class again."""
    return _swap(model, _TO_TORCH, inplace, "revert")
