"""fastrnn.layers: Keras 3's layers on fastrnn's kernels (part of the Keras-style training API: fastrnn.layers,
models, optimizers, losses, metrics, callbacks).

    from fastrnn.layers import SimpleRNN, LSTM, GRU, Bidirectional, Dense, Embedding, Masking, Dropout

Depends on fastrnn.nn and numpy only; never on fastrnn.torch (docs/design.md, Layers and their dependency rule).
"""
from ._util import L1, L1L2, L2, set_random_seed
from .core import (Activation, Dense, Dropout, Embedding, Flatten, Input, InputLayer, Layer, Masking,
                   TimeDistributed)
from .rnn import GRU, LSTM, Bidirectional, SimpleRNN

__all__ = ["Layer", "Input", "InputLayer", "Dense", "Activation", "Dropout", "Masking", "Embedding", "Flatten",
           "TimeDistributed", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "L1", "L2", "L1L2", "set_random_seed",
           "serialize", "deserialize"]

_CLASSES = {c.__name__: c for c in (InputLayer, Dense, Activation, Dropout, Masking, Embedding, Flatten,
                                     TimeDistributed, SimpleRNN, LSTM, GRU, Bidirectional)}


def serialize(layer):
    """{"class_name": ..., "config": ...} (JSON-able)."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def _clean(cfg):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v.get("class_name") == "L1L2":
            v = L1L2(**v["config"])
        out[k] = v
    return out


def deserialize(d):
    if not isinstance(d, dict) or "class_name" not in d or not isinstance(d.get("config"), dict):
        raise ValueError(f"expected a layer description {{'class_name': ..., 'config': {{...}}}}, got {d!r}")
    cls = _CLASSES.get(d["class_name"])
    if cls is None:
        raise ValueError(f"unknown layer class {d['class_name']!r} (expected one of {sorted(_CLASSES)})")
    cfg = _clean(d["config"])
    if "input_shape" in cfg and cfg["input_shape"] is not None:
        cfg["input_shape"] = tuple(cfg["input_shape"])
    if cls is InputLayer:
        cfg["shape"] = tuple(cfg["shape"])
    return cls.from_config(cfg)
