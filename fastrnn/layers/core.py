"""The Layer base class and the non-recurrent layers: Input, Dense, Activation, Dropout, Masking, Embedding,
Flatten, TimeDistributed.

A layer works on numpy arrays, batch first, as Keras's do.  Training goes through

    y, mask_out, cache = layer.forward(x, mask, training)     # cache: what backward needs (None unless training)
    dx = layer.backward(cache, dy)                            # writes the weight gradients into layer.grads

and `layer(x)` is inference.  Weights live in `layer.params` (name -> array; trainable ones have a gradient
array of the same shape in `layer.grads`); a model may rebind them to views of one flat buffer (`_rebind`), so
an optimizer updates every weight with a few vector operations.
"""
from collections import OrderedDict

import numpy as np

from ..nn.linalg import matmul
from ._util import (ACTIVATIONS, as_dtype, check_initializer, check_int, check_rate, get_activation,
                    get_regularizer, initialize, new_rng)

__all__ = ["Layer", "InputLayer", "Input", "Dense", "Activation", "Dropout", "Masking", "Embedding", "Flatten",
           "TimeDistributed"]


def _shape_str(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def as_float(name, x, dtype):
    """x as an ndarray of dtype (floats cast, ints/bools converted), else a TypeError naming `name`."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__} ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array (float, int or bool), got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


class Layer:
    """Base of the Keras-style layers.  Subclasses define build / forward / backward / compute_output_shape."""

    supports_masking = False
    _arg_names = ()  # constructor arguments saved in get_config
    # False when nothing upstream needs this layer's input gradient (Sequential sets it: the first layer
    # with trainable weights and those before it); a layer that honours it returns None from backward.
    _need_dx = True

    def __init__(self, name=None, dtype=None, input_shape=None, trainable=True, input_dim=None,
                 batch_input_shape=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        self.name = name
        self.dtype = as_dtype(dtype)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        if input_dim is not None and input_shape is None:
            input_shape = (check_int("input_dim", input_dim),)
        if input_shape is not None:
            if isinstance(input_shape, (int, np.integer)):
                input_shape = (input_shape,)
            try:
                input_shape = tuple(None if s is None else int(s) for s in input_shape)
            except (TypeError, ValueError):
                raise ValueError(f"input_shape: expected a tuple of ints (None for any size), "
                                 f"got {input_shape!r}") from None
            if any(s is not None and s < 1 for s in input_shape):
                raise ValueError(f"input_shape: expected sizes >= 1, got {input_shape}")
        self._input_shape_arg = input_shape
        self.trainable = bool(trainable)
        self.params = OrderedDict()
        self.grads = OrderedDict()
        self._trainable_names = []
        self.built = False
        self.input_shape = None   # without the batch dimension
        self.output_shape = None

    # ---- weights --------------------------------------------------------------------------------------------
    def _add_weight(self, name, value, trainable=True):
        value = np.ascontiguousarray(value, dtype=self.dtype)
        self.params[name] = value
        if trainable:
            self._trainable_names.append(name)
            self.grads[name] = np.zeros_like(value)

    def _rebind(self, name, param, grad=None):
        """Make `param` (and `grad`) the storage of weight `name` (same shape); the values are copied in."""
        param[...] = self.params[name]
        self.params[name] = param
        if grad is not None:
            self.grads[name] = grad

    def trainable_items(self):
        """[(name, param, grad)] of the weights an optimizer updates (none when trainable=False)."""
        if not self.trainable:
            return []
        return [(n, self.params[n], self.grads[n]) for n in self._trainable_names]

    @property
    def weights(self):
        return self.get_weights()

    def get_weights(self):
        """Copies of the weights in Keras's layout and order."""
        return [w.copy() for w in self.params.values()]

    def set_weights(self, weights):
        """Load weights given in Keras's layout and order (as get_weights returns them)."""
        cur = self.get_weights()
        weights = self._check_weight_list(weights, [w.shape for w in cur])
        for (name, p), w in zip(self.params.items(), weights):
            p[...] = w

    def _check_weight_list(self, weights, shapes):
        if not self.built:
            raise ValueError(f"{self.label()}: set_weights before the layer is built (give input_shape or call "
                             f"the model on data first)")
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.label()}.set_weights: expected a list of arrays, got {type(weights).__name__}")
        if len(weights) != len(shapes):
            raise ValueError(f"{self.label()}.set_weights: expected {len(shapes)} arrays of shapes "
                             f"{[tuple(s) for s in shapes]}, got {len(weights)}")
        out = []
        for i, (w, s) in enumerate(zip(weights, shapes)):
            a = as_float(f"{self.label()} weight {i}", w, self.dtype)
            if a.shape != tuple(s):
                raise ValueError(f"{self.label()}.set_weights: weight {i} expected shape {_shape_str(s)}, "
                                 f"got {_shape_str(a.shape)}")
            out.append(a)
        return out

    def count_params(self):
        return int(sum(w.size for w in self.get_weights()))

    def regularization_loss(self):
        return 0.0

    def add_regularization_grads(self):
        pass

    # ---- shapes and calls -----------------------------------------------------------------------------------
    def label(self):
        return self.name or type(self).__name__

    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _ensure_built(self, x):
        if not self.built:
            shape = tuple(x.shape[1:]) if self._input_shape_arg is None else self._input_shape_arg
            if self._input_shape_arg is None and self.supports_masking and len(shape) == 2:
                shape = (None,) + shape[1:]  # a sequence: any number of steps
            self.build(shape)

    def _check_input(self, x):
        """Batch-first input of the shape the layer was built for (None matches any size)."""
        exp = self.input_shape
        if x.ndim != len(exp) + 1 or any(e is not None and e != s for e, s in zip(exp, x.shape[1:])):
            raise ValueError(f"{self.label()}: expected input of shape {_shape_str((None,) + tuple(exp))}, "
                             f"got {_shape_str(x.shape)}")

    def __call__(self, x, mask=None, training=False):
        """Inference (or a training-mode forward when training=True); returns the output array."""
        x = self._prepare(x)
        self._ensure_built(x)
        self._check_input(x)
        y, _, _ = self.forward(x, mask, bool(training))
        return y

    def _prepare(self, x):
        return as_float("x", x, self.dtype)

    def compute_mask(self, x, mask):
        return mask if self.supports_masking else None

    def forward(self, x, mask, training):
        raise NotImplementedError

    def backward(self, cache, dy):
        raise NotImplementedError

    # ---- config ---------------------------------------------------------------------------------------------
    def get_config(self):
        cfg = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self._input_shape_arg is not None:
            cfg["input_shape"] = list(self._input_shape_arg)
        for a in self._arg_names:
            v = getattr(self, a)
            if hasattr(v, "get_config"):
                v = {"class_name": type(v).__name__, "config": v.get_config()}
            cfg[a] = v
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} {self.label()!r}>"


class InputLayer(Layer):
    """keras.Input(shape): declares the input shape of a Sequential model (no computation)."""
    supports_masking = True

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, input_shape=None, **kwargs):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("Input: expected shape=(...) without the batch dimension, e.g. Input(shape=(50, 8))")
        super().__init__(name=name, dtype=dtype, input_shape=shape, **kwargs)
        self.shape = self._input_shape_arg

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    def forward(self, x, mask, training):
        return x, mask, None

    def backward(self, cache, dy):
        return dy


def Input(shape=None, batch_size=None, dtype=None, name=None, **kwargs):
    """keras.Input for Sequential models: `Sequential([Input((T, F)), LSTM(64), Dense(1)])`."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name, **kwargs)


class Dense(Layer):
    """keras.layers.Dense(units, activation=None, use_bias=True, ...): y = act(x @ kernel + bias) on the last axis
    (a 3-D input (B, T, F) is transformed at every step, and its mask passes through, as in Keras)."""
    supports_masking = True
    _arg_names = ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
                  "bias_regularizer", "seed")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        for n, v in (("activity_regularizer", activity_regularizer), ("kernel_constraint", kernel_constraint),
                     ("bias_constraint", bias_constraint)):
            if v is not None:
                raise ValueError(f"Dense: {n} is not supported (expected None)")
        self.units = check_int("units", units)
        self.activation = get_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(kernel_initializer, "kernel_initializer")
        self.bias_initializer = check_initializer(bias_initializer, "bias_initializer")
        self.kernel_regularizer = get_regularizer(kernel_regularizer, "kernel_regularizer")
        self.bias_regularizer = get_regularizer(bias_regularizer, "bias_regularizer")
        self.seed = seed
        self._rng = new_rng(seed)
        self._act, self._dact = ACTIVATIONS[self.activation]

    def build(self, input_shape):
        if len(input_shape) < 1 or input_shape[-1] is None:
            raise ValueError(f"{self.label()}: expected an input whose last dimension is known, got "
                             f"{_shape_str((None,) + tuple(input_shape))}")
        F = input_shape[-1]
        self._add_weight("kernel", initialize(self.kernel_initializer, self._rng, (F, self.units), self.dtype))
        if self.use_bias:
            self._add_weight("bias", initialize(self.bias_initializer, self._rng, (self.units,), self.dtype))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def _check_input(self, x):  # any rank, as Keras's Dense: only the last axis is fixed
        if x.ndim < 1 or x.shape[-1] != self.input_shape[-1]:
            raise ValueError(f"{self.label()}: expected input whose last dimension is {self.input_shape[-1]}, "
                             f"got {_shape_str(x.shape)}")

    def forward(self, x, mask, training):
        F = x.shape[-1]
        x2 = x.reshape(-1, F)
        z = matmul(x2, self.params["kernel"])   # the kernels' GEMM and threads (fastrnn/nn/linalg.py: why)
        if self.use_bias:
            z += self.params["bias"]
        y = self._act(z) if self.activation != "linear" else z
        cache = (x2, z, y, x.shape) if training else None
        return y.reshape(x.shape[:-1] + (self.units,)), mask, cache

    def backward(self, cache, dy):
        x2, z, y, xshape = cache
        dz = dy.reshape(-1, self.units)
        if self.activation != "linear":
            dz = self._dact(z, y, dz)
        if self.trainable:
            matmul(x2, dz, trans_a=True, out=self.grads["kernel"])
            if self.use_bias:
                dz.sum(axis=0, out=self.grads["bias"])
        if not self._need_dx:
            return None
        return matmul(dz, self.params["kernel"], trans_b=True).reshape(xshape)

    def regularization_loss(self):
        out = 0.0
        if self.kernel_regularizer is not None:
            out += self.kernel_regularizer(self.params["kernel"])
        if self.bias_regularizer is not None and self.use_bias:
            out += self.bias_regularizer(self.params["bias"])
        return out

    def add_regularization_grads(self):
        if self.kernel_regularizer is not None:
            self.kernel_regularizer.add_grad(self.params["kernel"], self.grads["kernel"])
        if self.bias_regularizer is not None and self.use_bias:
            self.bias_regularizer.add_grad(self.params["bias"], self.grads["bias"])


class Activation(Layer):
    supports_masking = True
    _arg_names = ("activation",)

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = get_activation(activation)
        self._act, self._dact = ACTIVATIONS[self.activation]

    def forward(self, x, mask, training):
        y = self._act(x)
        return y, mask, ((x, y) if training else None)

    def backward(self, cache, dy):
        return self._dact(cache[0], cache[1], dy)


class Dropout(Layer):
    """keras.layers.Dropout(rate, noise_shape=None, seed=None): in training, zero a fraction `rate` of the
    entries and scale the rest by 1/(1-rate); the identity in inference."""
    supports_masking = True
    _arg_names = ("rate", "noise_shape", "seed")

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.noise_shape = None if noise_shape is None else list(noise_shape)
        self.seed = seed
        self._rng = new_rng(seed)

    def forward(self, x, mask, training):
        if not training or self.rate == 0:
            return x, mask, None
        shape = x.shape if self.noise_shape is None else tuple(
            x.shape[i] if s is None else s for i, s in enumerate(self.noise_shape))
        keep = 1.0 - self.rate
        m = (self._rng.random(shape) < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * m, mask, m

    def backward(self, cache, dy):
        return dy if cache is None else dy * cache


class Masking(Layer):
    """keras.layers.Masking(mask_value=0.0): time steps whose features all equal mask_value are masked
    (False) for the layers after it, and zeroed, as in Keras."""
    supports_masking = True
    _arg_names = ("mask_value",)

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.label()}: expected input of shape (batch, time, features), got "
                             f"{_shape_str((None,) + tuple(input_shape))}")
        super().build(input_shape)

    def forward(self, x, mask, training):
        keep = np.any(x != self.mask_value, axis=-1)
        if mask is not None:
            keep &= mask
        y = x * keep[..., None].astype(x.dtype)
        return y, keep, (keep if training else None)

    def backward(self, cache, dy):
        return dy * cache[..., None].astype(dy.dtype)


class Embedding(Layer):
    """keras.layers.Embedding(input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False): integer
    indices (B, T) -> vectors (B, T, output_dim); mask_zero=True masks index 0 for the layers after it."""
    _arg_names = ("input_dim", "output_dim", "embeddings_initializer", "embeddings_regularizer", "mask_zero",
                  "seed")

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 embeddings_constraint=None, mask_zero=False, input_length=None, seed=None, **kwargs):
        if input_length is not None and "input_shape" not in kwargs:
            kwargs["input_shape"] = (input_length,)
        super().__init__(**kwargs)
        if embeddings_constraint is not None:
            raise ValueError("Embedding: embeddings_constraint is not supported (expected None)")
        self.input_dim = check_int("input_dim", input_dim)
        self.output_dim = check_int("output_dim", output_dim)
        self.embeddings_initializer = check_initializer(embeddings_initializer, "embeddings_initializer")
        self.embeddings_regularizer = get_regularizer(embeddings_regularizer, "embeddings_regularizer")
        self.mask_zero = bool(mask_zero)
        self.seed = seed
        self._rng = new_rng(seed)

    def _prepare(self, x):
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            if not np.all(arr == np.round(arr)):
                raise TypeError(f"{self.label()}: expected integer indices, got non-integer floats")
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{self.label()}: expected integer indices, got dtype {arr.dtype}")
        return arr.astype(np.intp, copy=False)

    def build(self, input_shape):
        self._add_weight("embeddings", initialize(self.embeddings_initializer, self._rng,
                                                  (self.input_dim, self.output_dim), self.dtype))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def forward(self, x, mask, training):
        if x.size and (x.min() < 0 or x.max() >= self.input_dim):
            raise ValueError(f"{self.label()}: expected indices in [0, {self.input_dim}), got min {x.min()}, "
                             f"max {x.max()}")
        y = self.params["embeddings"][x]
        out_mask = (x != 0) if self.mask_zero else mask
        return y, out_mask, (x if training else None)

    def backward(self, cache, dy):
        if self.trainable:
            g = self.grads["embeddings"]
            g[...] = 0
            np.add.at(g, cache.reshape(-1), dy.reshape(-1, self.output_dim))
        return None

    def regularization_loss(self):
        r = self.embeddings_regularizer
        return 0.0 if r is None else r(self.params["embeddings"])

    def add_regularization_grads(self):
        if self.embeddings_regularizer is not None:
            self.embeddings_regularizer.add_grad(self.params["embeddings"], self.grads["embeddings"])


class Flatten(Layer):
    def compute_output_shape(self, input_shape):
        n = 1
        for s in input_shape:
            if s is None:
                raise ValueError(f"{self.label()}: expected an input of known shape, got "
                                 f"{_shape_str((None,) + tuple(input_shape))}")
            n *= s
        return (n,)

    def forward(self, x, mask, training):
        return x.reshape(x.shape[0], -1), None, (x.shape if training else None)

    def backward(self, cache, dy):
        return dy.reshape(cache)


class TimeDistributed(Layer):
    """keras.layers.TimeDistributed(layer): apply `layer` (Dense, Activation, Dropout) at every time step of a
    (B, T, ...) input; the mask passes through."""
    supports_masking = True

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, (Dense, Activation, Dropout)):
            raise ValueError(f"TimeDistributed: expected a Dense, Activation or Dropout layer, got "
                             f"{type(layer).__name__}")
        self.layer = layer
        self.dtype = layer.dtype

    def get_config(self):
        cfg = super().get_config()
        cfg["layer"] = {"class_name": type(self.layer).__name__, "config": self.layer.get_config()}
        return cfg

    @classmethod
    def from_config(cls, config):
        from . import deserialize
        config = dict(config)
        return cls(deserialize(config.pop("layer")), **config)

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.label()}: expected input of shape (batch, time, ...), got "
                             f"{_shape_str((None,) + tuple(input_shape))}")
        self.layer.build(tuple(input_shape[1:]))
        self.params, self.grads = self.layer.params, self.layer.grads
        self._trainable_names = self.layer._trainable_names
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(self.layer.compute_output_shape(tuple(input_shape[1:])))

    def _rebind(self, name, param, grad=None):
        self.layer._rebind(name, param, grad)

    def forward(self, x, mask, training):
        y, _, cache = self.layer.forward(x, None, training)
        return y, mask, cache

    def backward(self, cache, dy):
        return self.layer.backward(cache, dy)

    def regularization_loss(self):
        return self.layer.regularization_loss()

    def add_regularization_grads(self):
        self.layer.add_regularization_grads()
