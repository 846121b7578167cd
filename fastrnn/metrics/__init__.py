"""fastrnn.metrics: the metrics of compile(metrics=[...]) -- accuracy (the variant chosen as Keras chooses it),
binary / categorical / sparse categorical accuracy, mae, mse -- averaged over the samples of an epoch."""
import numpy as np

__all__ = ["Metric", "get"]


class Metric:
    def __init__(self, name, fn):
        self.name, self._fn = name, fn
        self.reset_state()

    def reset_state(self):
        self._sum = 0.0
        self._n = 0.0

    def update_state(self, y_true, y_pred, weights=None):
        v = self._fn(np.asarray(y_true), np.asarray(y_pred))
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            w = np.broadcast_to(w.reshape(w.shape + (1,) * (v.ndim - w.ndim)), v.shape)
            self._sum += float((v * w).sum())
            self._n += float(w.sum())
        else:
            self._sum += float(v.sum())
            self._n += v.size

    def result(self):
        return self._sum / self._n if self._n else 0.0


def _sq(t, p):
    return t.reshape(p.shape) if t.size == p.size else t


def _mse(t, p):
    return np.square(p - _sq(t, p)).mean(axis=-1)


def _mae(t, p):
    return np.abs(p - _sq(t, p)).mean(axis=-1)


def _binary_acc(t, p):
    return ((p > 0.5) == (_sq(t, p) > 0.5)).mean(axis=-1).astype(np.float64)


def _cat_acc(t, p):
    return (np.argmax(p, -1) == np.argmax(t, -1)).astype(np.float64)


def _sparse_acc(t, p):
    if t.ndim == p.ndim and t.shape[-1] == 1:
        t = t[..., 0]
    return (np.argmax(p, -1) == t.astype(np.int64)).astype(np.float64)


_FNS = {"mse": _mse, "mean_squared_error": _mse, "mae": _mae, "mean_absolute_error": _mae,
        "binary_accuracy": _binary_acc, "categorical_accuracy": _cat_acc,
        "sparse_categorical_accuracy": _sparse_acc}


def get(name, loss_name=None, y_true_shape=None, y_pred_shape=None):
    """A Metric from a name; "accuracy" / "acc" picks the variant as Keras does: from the loss when it is a
    cross-entropy, else binary when y_pred has one column, sparse when y_true has one axis less (or one column
    against several), else categorical."""
    if not isinstance(name, str):
        raise ValueError(f"metrics: expected metric names (str), got {name!r}")
    if name in ("accuracy", "acc"):
        fn = None
        if loss_name == "binary_crossentropy":
            fn = _binary_acc
        elif loss_name == "categorical_crossentropy":
            fn = _cat_acc
        elif loss_name == "sparse_categorical_crossentropy":
            fn = _sparse_acc
        elif y_pred_shape is not None:
            if y_pred_shape[-1] == 1:
                fn = _binary_acc
            elif len(y_true_shape) < len(y_pred_shape) or y_true_shape[-1] == 1:
                fn = _sparse_acc
            else:
                fn = _cat_acc
        return Metric(name, fn or _binary_acc)
    if name not in _FNS:
        raise ValueError(f"metrics: unknown metric {name!r}; expected one of {sorted(_FNS) + ['accuracy']}")
    return Metric(name, _FNS[name])
