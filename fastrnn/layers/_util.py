"""Activations, initializers and regularizers of the Keras-style layers (Keras 3's names and defaults)."""
import math

import numpy as np

# ---- activations: forward f(x) and backward from (x, y=f(x), dy) -----------------------------------------------


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x):
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805

ACTIVATIONS = {
    "linear": (lambda x: x, lambda x, y, dy: dy),
    "relu": (lambda x: np.maximum(x, 0), lambda x, y, dy: dy * (x > 0)),
    "sigmoid": (_sigmoid, lambda x, y, dy: dy * y * (1 - y)),
    "tanh": (np.tanh, lambda x, y, dy: dy * (1 - y * y)),
    "softmax": (_softmax, lambda x, y, dy: y * (dy - (dy * y).sum(axis=-1, keepdims=True))),
    "softplus": (lambda x: np.logaddexp(0, x), lambda x, y, dy: dy * _sigmoid(x)),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
            lambda x, y, dy: dy * np.where(x > 0, 1, y + 1)),
    "selu": (lambda x: _SELU_S * np.where(x > 0, x, _SELU_A * np.expm1(np.minimum(x, 0))),
             lambda x, y, dy: dy * np.where(x > 0, _SELU_S, y + _SELU_S * _SELU_A)),
}


def get_activation(name, arg="activation", allowed=None):
    """The activation's name (validated); None means linear."""
    if name is None:
        name = "linear"
    if callable(name) and getattr(name, "__name__", None) in ACTIVATIONS:
        name = name.__name__
    choices = allowed if allowed is not None else sorted(ACTIVATIONS)
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{arg}: expected one of {list(choices)}, got {name!r}")
    return name


# ---- initializers -------------------------------------------------------------------------------------------

def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    rf = int(np.prod(shape[:-2]))
    return shape[-2] * rf, shape[-1] * rf


def _orthogonal(rng, shape, gain=1.0):
    rows = int(np.prod(shape[:-1]))
    cols = shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def _init(name, rng, shape):
    fan_in, fan_out = _fans(shape)
    if name == "zeros":
        return np.zeros(shape)
    if name == "ones":
        return np.ones(shape)
    if name == "glorot_uniform":
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape)
    if name == "glorot_normal":
        return _truncated(rng, shape, math.sqrt(2.0 / (fan_in + fan_out)))
    if name == "he_uniform":
        lim = math.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if name == "he_normal":
        return _truncated(rng, shape, math.sqrt(2.0 / fan_in))
    if name == "lecun_uniform":
        lim = math.sqrt(3.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if name == "lecun_normal":
        return _truncated(rng, shape, math.sqrt(1.0 / fan_in))
    if name == "orthogonal":
        return _orthogonal(rng, shape)
    if name == "uniform":  # keras.initializers.RandomUniform(-0.05, 0.05), Embedding's default
        return rng.uniform(-0.05, 0.05, shape)
    if name == "normal":  # keras.initializers.RandomNormal(stddev=0.05)
        return rng.normal(0.0, 0.05, shape)
    raise AssertionError(name)


def _truncated(rng, shape, std):
    # Keras's variance-scaling normal: truncated at 2 std, stddev corrected by 0.8796...
    std = std / 0.87962566103423978
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


INITIALIZERS = ("zeros", "ones", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
                "lecun_normal", "orthogonal", "uniform", "normal")
_INIT_ALIASES = {"random_uniform": "uniform", "random_normal": "normal", "GlorotUniform": "glorot_uniform",
                 "Orthogonal": "orthogonal", "Zeros": "zeros", "Ones": "ones", "HeNormal": "he_normal",
                 "HeUniform": "he_uniform", "GlorotNormal": "glorot_normal", "RandomUniform": "uniform",
                 "RandomNormal": "normal"}


def check_initializer(name, arg):
    name = _INIT_ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(f"{arg}: expected one of {list(INITIALIZERS)}, got {name!r}")
    return name


def initialize(name, rng, shape, dtype):
    return np.ascontiguousarray(_init(name, rng, tuple(shape)), dtype=dtype)


# ---- regularizers -------------------------------------------------------------------------------------------

class L1L2:
    """keras.regularizers.L1L2: l1 * sum|w| + l2 * sum w^2."""

    def __init__(self, l1=0.0, l2=0.0):
        for n, v in (("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or v < 0 or not math.isfinite(v):
                raise ValueError(f"{n}: expected a float >= 0, got {v!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w):
        out = 0.0
        if self.l1:
            out += self.l1 * float(np.abs(w).sum())
        if self.l2:
            out += self.l2 * float(np.square(w, dtype=np.float64).sum())
        return out

    def add_grad(self, w, g):
        if self.l1:
            g += self.l1 * np.sign(w)
        if self.l2:
            g += (2 * self.l2) * w

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


def L2(l2=0.01):
    return L1L2(l2=l2)


def L1(l1=0.01):
    return L1L2(l1=l1)


def get_regularizer(r, arg):
    if r is None or isinstance(r, L1L2):
        return r
    if isinstance(r, dict):
        return L1L2(**r)
    if r == "l2":
        return L2()
    if r == "l1":
        return L1()
    if r == "l1_l2":
        return L1L2(0.01, 0.01)
    raise ValueError(f"{arg}: expected None, 'l1', 'l2', 'l1_l2' or fastrnn.layers.L1L2/L1/L2(...), got {r!r}")


def as_dtype(dtype):
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {dt}")
    return dt


def check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {lo}, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    return int(v)


def check_rate(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a float in [0, 1), got {type(v).__name__}")
    if not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {v}")
    return float(v)


# ---- seeds --------------------------------------------------------------------------------------------------
_global = {"rng": np.random.default_rng()}


def set_random_seed(seed):
    """As keras.utils.set_random_seed: every layer's initial weights, dropout masks and fit's shuffling that
    are not given a seed of their own are drawn from this stream from now on (runs become repeatable)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    _global["rng"] = np.random.default_rng(int(seed))


def new_rng(seed=None):
    """A generator from `seed` when given, else a child of the global stream."""
    if seed is None:
        return np.random.default_rng(_global["rng"].integers(0, 2 ** 63))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected None or an int >= 0, got {seed!r}")
    return np.random.default_rng(int(seed))
