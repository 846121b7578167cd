"""fastrnn.losses: Keras 3's losses with their names and string aliases; each gives its value and its
gradient with respect to y_pred (reduction "sum_over_batch_size", masks and sample weights as Keras applies them).

Depends on numpy only (docs/design.md, Layers and their dependency rule).
"""
import numpy as np

__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "Huber", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get"]

EPS = 1e-7


def _align(y_true, y_pred):
    y_true = np.asarray(y_true)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    elif y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y: expected targets of shape {y_pred.shape} (the model's output), got {y_true.shape}")
    return y_true.astype(y_pred.dtype, copy=False)


class Loss:
    """value_and_grad(y_true, y_pred, weights=None) -> (loss, dloss/dy_pred); `weights` (per sample, or per
    sample and step for sequence outputs) carries sample weights and masks; the sum is divided by the number of
    per-sample losses (or of unmasked ones)."""
    name = "loss"

    def __init__(self, name=None, reduction="sum_over_batch_size"):
        if reduction not in ("sum_over_batch_size", "sum", "mean"):
            raise ValueError(f"reduction: expected 'sum_over_batch_size' or 'sum', got {reduction!r}")
        self.reduction = reduction
        if name:
            self.name = name

    def elementwise(self, y_true, y_pred):
        """(per-sample loss (shape of y_pred less its last axis), its gradient wrt y_pred)."""
        raise NotImplementedError

    def value_and_grad(self, y_true, y_pred, weights=None, count=None):
        l, g = self.elementwise(y_true, y_pred)
        n = l.size if count is None else count
        if self.reduction == "sum":
            n = 1
        n = max(n, 1)
        if weights is not None:
            w = np.asarray(weights, dtype=l.dtype).reshape(l.shape[:np.ndim(weights)] + (1,) * (l.ndim - np.ndim(weights)))
            w = np.broadcast_to(w, l.shape)
            return float((l * w).sum() / n), g * (w / n)[..., None]
        return float(l.sum() / n), g / n

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = np.asarray(y_pred, dtype=np.float64)
        return self.value_and_grad(y_true, y_pred, sample_weight)[0]

    def get_config(self):
        return {"name": self.name}


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def elementwise(self, y_true, y_pred):
        d = y_pred - _align(y_true, y_pred)
        K = d.shape[-1]
        return (d * d).mean(axis=-1), d * (2.0 / K)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def elementwise(self, y_true, y_pred):
        d = y_pred - _align(y_true, y_pred)
        return np.abs(d).mean(axis=-1), np.sign(d) / d.shape[-1]


class Huber(Loss):
    name = "huber_loss"

    def __init__(self, delta=1.0, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        if not delta > 0:
            raise ValueError(f"delta: expected a float > 0, got {delta!r}")
        self.delta = float(delta)

    def elementwise(self, y_true, y_pred):
        d = y_pred - _align(y_true, y_pred)
        a, dl = np.abs(d), self.delta
        quad = a <= dl
        l = np.where(quad, 0.5 * d * d, dl * a - 0.5 * dl * dl)
        g = np.where(quad, d, dl * np.sign(d))
        return l.mean(axis=-1), g / d.shape[-1]

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def elementwise(self, y_true, y_pred):
        t = _align(y_true, y_pred)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        K = y_pred.shape[-1]
        if self.from_logits:
            x = y_pred
            l = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
            return l.mean(axis=-1), (_sigmoid(x) - t) / K
        p = np.clip(y_pred, EPS, 1 - EPS)
        inside = (y_pred >= EPS) & (y_pred <= 1 - EPS)
        l = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        g = (-(t / p) + (1 - t) / (1 - p)) * inside
        return l.mean(axis=-1), g / K

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


def _log_softmax(x):
    m = x - x.max(axis=-1, keepdims=True)
    return m - np.log(np.exp(m).sum(axis=-1, keepdims=True))


def _xent_probs(t, p):
    """Keras's categorical cross-entropy from probabilities: p normalised to sum 1, clipped to [eps, 1-eps]."""
    s = p.sum(axis=-1, keepdims=True)
    q = p / s
    c = np.clip(q, EPS, 1 - EPS)
    l = -(t * np.log(c)).sum(axis=-1)
    dq = -(t / c) * ((q >= EPS) & (q <= 1 - EPS))
    g = (dq - (dq * q).sum(axis=-1, keepdims=True)) / s
    return l, g


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def elementwise(self, y_true, y_pred):
        t = _align(y_true, y_pred)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / t.shape[-1]
        if self.from_logits:
            ls = _log_softmax(y_pred)
            return -(t * ls).sum(axis=-1), np.exp(ls) * t.sum(axis=-1, keepdims=True) - t
        return _xent_probs(t, y_pred)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False, ignore_class=None, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        self.from_logits = bool(from_logits)
        if ignore_class is not None:
            raise ValueError("SparseCategoricalCrossentropy: ignore_class is not supported (expected None)")
        self.ignore_class = None

    def elementwise(self, y_true, y_pred):
        t = np.asarray(y_true)
        if t.ndim == y_pred.ndim and t.shape[-1] == 1:
            t = t[..., 0]
        if t.shape != y_pred.shape[:-1]:
            raise ValueError(f"y: expected integer class labels of shape {y_pred.shape[:-1]}, got {t.shape}")
        if t.dtype.kind == "f":
            t = t.astype(np.int64)
        K = y_pred.shape[-1]
        if t.size and (t.min() < 0 or t.max() >= K):
            raise ValueError(f"y: expected class labels in [0, {K}), got min {t.min()}, max {t.max()}")
        flat = y_pred.reshape(-1, K)
        idx = t.reshape(-1)
        rows = np.arange(flat.shape[0])
        if self.from_logits:
            ls = _log_softmax(flat)
            g = np.exp(ls)
            g[rows, idx] -= 1
            return -ls[rows, idx].reshape(t.shape), g.reshape(y_pred.shape)
        onehot = np.zeros_like(flat)
        onehot[rows, idx] = 1
        l, g = _xent_probs(onehot, flat)
        return l.reshape(t.shape), g.reshape(y_pred.shape)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


_ALIASES = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError, "MSE": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError, "MAE": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy, "cce": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy, "scce": SparseCategoricalCrossentropy,
}
for _c in (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy, CategoricalCrossentropy,
           SparseCategoricalCrossentropy):
    _ALIASES[_c.__name__] = _c


def get(identifier):
    """A Loss from a name (Keras's names and aliases), a Loss instance, or a {"class_name", "config"} dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict) and identifier.get("class_name") in _ALIASES:
        return _ALIASES[identifier["class_name"]](**identifier.get("config", {}))
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]()
    raise ValueError(f"loss: unknown loss {identifier!r}; expected one of {sorted(set(_ALIASES))} or a "
                     f"fastrnn.losses.Loss")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}
