"""fastrnn.models: Keras's Sequential model (compile / fit / evaluate / predict / train_on_batch / summary /
save) over fastrnn.layers, and load_model.

    from fastrnn import Sequential              # or fastrnn.models.Sequential
    model = Sequential([LSTM(64, input_shape=(50, 8)), Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(X, y, epochs=10)

After the model is built every trainable weight is a view of one flat parameter vector and its gradient a view
of one flat gradient vector: the kernels read and write them in place and the optimizer updates all of them
with a few vector operations.  Part of the Keras-style API; depends on fastrnn.layers, losses, metrics,
optimizers, callbacks and numpy.
"""
import json
import math
import os
import sys
import tempfile
import zipfile

import numpy as np

from .. import callbacks as _cb
from .. import layers as _layers
from .. import losses as _losses
from .. import metrics as _metrics
from .. import optimizers as _optimizers
from ..layers._util import new_rng, set_random_seed
from ..layers.core import InputLayer, Layer, _shape_str, as_float
from ..layers.rnn import Bidirectional, _RNNLayer

__all__ = ["Sequential", "load_model", "set_random_seed"]

FORMAT = "fastrnn-model"
FORMAT_VERSION = 1


def _as_x(x, first):
    if isinstance(first, _layers.Embedding):
        return first._prepare(x)
    return as_float("x", x, first.dtype)


class Sequential:
    """keras.Sequential: a stack of layers, each with one input and one output."""

    def __init__(self, layers=None, name=None, seed=None):
        self.layers = []
        self.name = name or "sequential"
        self.built = False
        self.optimizer = self.loss = None
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._rng = new_rng(seed)
        self._input_shape = None
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise TypeError(f"Sequential: expected a list of layers, got {type(layers).__name__}")
            for l in layers:
                self.add(l)

    # ---- structure ------------------------------------------------------------------------------------------
    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a fastrnn.layers layer, got {type(layer).__name__}")
        if self.built:
            raise ValueError("Sequential.add: the model is already built")
        if isinstance(layer, InputLayer):
            if self.layers:
                raise ValueError("Sequential.add: an Input must come first")
            self._input_shape = layer.shape
            return
        if getattr(layer, "return_state", False):
            raise ValueError(f"Sequential: {layer.label()} has return_state=True; a Sequential layer has one output")
        if isinstance(layer, Bidirectional) and layer.merge_mode is None:
            raise ValueError("Sequential: Bidirectional with merge_mode=None has two outputs")
        if not self.layers and self._input_shape is None and layer._input_shape_arg is not None:
            self._input_shape = layer._input_shape_arg
        names = {l.name for l in self.layers}
        if layer.name is None or layer.name in names:
            base = layer.name or type(layer).__name__.lower()
            i, n = 0, base
            while n in names or n is None:
                i += 1
                n = f"{base}_{i}"
            layer.name = n
        self.layers.append(layer)
        if self._input_shape is not None and len(self.layers) == 1:
            pass

    def build(self, input_shape=None):
        """Keras's build: `input_shape` with the batch dimension first, e.g. (None, T, F); without it, the shape
        given by input_shape= / Input.  Gathers the trainable weights into the flat vectors."""
        self._build(None if input_shape is None else tuple(input_shape)[1:])

    def _build(self, input_shape=None):
        shape = tuple(input_shape) if input_shape is not None else self._input_shape
        if shape is None:
            raise ValueError("Sequential: the input shape is unknown; give input_shape to the first layer, add an "
                             "Input, or call fit / predict on data first")
        if not self.layers:
            raise ValueError("Sequential: the model has no layers")
        self._input_shape = shape
        for l in self.layers:
            if not l.built:
                l.build(shape)
            shape = l.output_shape
        self.output_shape = (None,) + tuple(shape)
        self._gather_weights()
        self.built = True

    def _gather_weights(self):
        items = []
        for li, l in enumerate(self.layers):
            for n, p, g in l.trainable_items():
                items.append((l, n, p))
        dt = np.result_type(*[p.dtype for _, _, p in items]) if items else np.float32
        total = sum(p.size for _, _, p in items)
        self._flat_w = np.zeros(total, dt)
        self._flat_g = np.zeros(total, dt)
        self._segments = []
        off = 0
        for l, n, p in items:
            sz = p.size
            self._segments.append((off, sz))
            l._rebind(n, self._flat_w[off:off + sz].reshape(p.shape), self._flat_g[off:off + sz].reshape(p.shape))
            off += sz

    def _ensure_built(self, x):
        if not self.built:
            if self._input_shape is None:  # from data: the time axis stays free, as Keras's (None, T, F)
                shape = tuple(x.shape[1:])
                if len(shape) == 2 or isinstance(self.layers[0], _layers.Embedding) and len(shape) == 1:
                    shape = (None,) + shape[1:]
                self._build(shape)
            else:
                self._build(self._input_shape)

    # ---- weights ----------------------------------------------------------------------------------------------
    def get_weights(self):
        return [w for l in self.layers for w in l.get_weights()]

    def set_weights(self, weights):
        if not self.built:
            raise ValueError("Sequential.set_weights: build the model first (input_shape or a call on data)")
        weights = list(weights)
        need = sum(len(l.get_weights()) for l in self.layers)
        if len(weights) != need:
            raise ValueError(f"Sequential.set_weights: expected {need} arrays (get_weights()'s list), got "
                             f"{len(weights)}")
        i = 0
        for l in self.layers:
            n = len(l.get_weights())
            l.set_weights(weights[i:i + n])
            i += n

    @property
    def weights(self):
        return self.get_weights()

    def count_params(self):
        return sum(l.count_params() for l in self.layers)

    def reset_states(self):
        for l in self._rnn_layers():
            l.reset_states()

    def _rnn_layers(self):
        out = []
        for l in self.layers:
            if isinstance(l, _RNNLayer):
                out.append(l)
            elif isinstance(l, Bidirectional):
                out.extend(l.sublayers)
        return out

    def summary(self, print_fn=None):
        print_fn = print_fn or print
        if not self.built:
            raise ValueError("Sequential.summary: the model is not built yet (give input_shape or call it on data)")
        rows = [(f"{l.name} ({type(l).__name__})", _shape_str((None,) + tuple(l.output_shape)), f"{l.count_params():,}")
                for l in self.layers]
        w = [max(len(r[i]) for r in rows + [("Layer (type)", "Output Shape", "Param #")]) + 2 for i in range(3)]
        line = "-" * sum(w)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        print_fn("Layer (type)".ljust(w[0]) + "Output Shape".ljust(w[1]) + "Param #".rjust(w[2]))
        print_fn("=" * sum(w))
        for r in rows:
            print_fn(r[0].ljust(w[0]) + r[1].ljust(w[1]) + r[2].rjust(w[2]))
        print_fn("=" * sum(w))
        total = self.count_params()
        trainable = sum(l.count_params() for l in self.layers if l.trainable)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")

    # ---- compile ------------------------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True):
        self.optimizer = _optimizers.get(optimizer)
        if loss is None:
            raise ValueError("compile: expected a loss (a name such as 'mse' or a fastrnn.losses.Loss)")
        self.loss = _losses.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, str):
            metrics = [metrics]
        if not isinstance(metrics, (list, tuple)):
            raise ValueError(f"compile: metrics: expected a list of names, got {metrics!r}")
        for m in metrics:
            _metrics.get(m, "x", (1,), (1,))  # validate the names now
        self._metric_names = list(metrics)
        self.compiled = True

    def _make_metrics(self, y, y_pred_shape):
        return [_metrics.get(m, self.loss.name, np.shape(y), y_pred_shape) for m in self._metric_names]

    # ---- forward / backward -----------------------------------------------------------------------------------
    def _forward(self, x, training):
        mask = None
        caches = []
        for l in self.layers:
            x, mask, c = l.forward(x, mask, training)
            caches.append(c)
        return x, mask, caches

    def _backward(self, caches, dy):
        # Nothing needs the input's gradient: the first layer with trainable weights computes none, and the
        # layers before it are not run backward.
        first = next((i for i, l in enumerate(self.layers) if l.trainable_items()), len(self.layers))
        for i in range(len(self.layers) - 1, first - 1, -1):
            if dy is None:
                break
            l = self.layers[i]
            l._need_dx = i > first
            dy = l.backward(caches[i], dy)

    def __call__(self, x, training=False):
        x = _as_x(x, self.layers[0])
        self._ensure_built(x)
        return self._forward(x, training)[0]

    def _check_xy(self, x, y, sample_weight=None, where="fit"):
        if not self.layers:
            raise ValueError(f"{where}: the model has no layers")
        x = _as_x(x, self.layers[0])
        self._ensure_built(x)
        exp = self._input_shape
        if x.ndim != len(exp) + 1 or any(e is not None and e != s for e, s in zip(exp, x.shape[1:])):
            raise ValueError(f"{where}: x: expected shape {_shape_str((None,) + tuple(exp))}, got "
                             f"{_shape_str(x.shape)}")
        if y is not None:
            y = np.asarray(y)
            if y.dtype.kind not in "biuf":
                raise TypeError(f"{where}: y: expected a numeric array, got dtype {y.dtype}")
            if y.ndim == 0 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{where}: x and y: expected the same number of samples, got {x.shape[0]} and "
                                 f"{y.shape[0] if y.ndim else 'a scalar'}")
            out = self.output_shape
            if not (y.ndim == len(out) or y.ndim == len(out) - 1 or (y.ndim == len(out) + 1 and y.shape[-1] == 1)):
                raise ValueError(f"{where}: y: expected targets of shape {_shape_str(out)} (or class labels), got "
                                 f"{_shape_str(y.shape)}")
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.ndim < 1 or sample_weight.shape[0] != x.shape[0]:
                raise ValueError(f"{where}: sample_weight: expected one weight per sample ({x.shape[0]},), got "
                                 f"{_shape_str(sample_weight.shape)}")
        return x, y, sample_weight

    def _weights_for(self, y, y_pred, mask, sw):
        """Per-sample (or per-step) weights and the loss's denominator, as Keras applies masks."""
        w, count = sw, None
        if mask is not None and y_pred.ndim == 3:
            m = mask.astype(np.float64)
            w = m if w is None else m * w.reshape(w.shape[0], *([1] * (m.ndim - 1)))
            count = float(m.sum())
        return w, count

    def _loss_and_grad(self, y, y_pred, mask, sw):
        w, count = self._weights_for(y, y_pred, mask, sw)
        loss, g = self.loss.value_and_grad(y, y_pred, w, count)
        return loss, g, w

    def _train_step(self, x, y, sw):
        y_pred, mask, caches = self._forward(x, True)
        loss, g, w = self._loss_and_grad(y, y_pred, mask, sw)
        reg = 0.0
        for l in self.layers:
            reg += l.regularization_loss()
        loss += reg
        if not math.isfinite(loss):
            return loss, y_pred, w, False
        self._backward(caches, g.astype(y_pred.dtype, copy=False))
        if reg:
            for l in self.layers:
                l.add_regularization_grads()
        if self._flat_w.size:
            self.optimizer.apply(self._flat_w, self._flat_g, self._segments)
        return loss, y_pred, w, True

    # ---- fit ----------------------------------------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
            tbptt=None):
        """Keras's fit; tbptt=k trains on windows of k steps, carrying each sequence's state forward between
        windows and cutting the gradient there (truncated BPTT)."""
        if not self.compiled:
            raise ValueError("fit: compile the model first (model.compile(optimizer, loss))")
        if x is None or y is None:
            raise ValueError("fit: expected x and y arrays")
        batch_size = 32 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"fit: batch_size: expected an int >= 1, got {batch_size!r}")
        for n, v in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"fit: {n}: expected an int >= 0, got {v!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split: expected a float in [0, 1), got {validation_split!r}")
        x, y, sample_weight = self._check_xy(x, y, sample_weight)
        if tbptt is not None:
            if isinstance(tbptt, bool) or not isinstance(tbptt, (int, np.integer)) or tbptt < 1:
                raise ValueError(f"fit: tbptt: expected an int >= 1 (steps per window), got {tbptt!r}")
            if any(isinstance(l, Bidirectional) for l in self.layers):
                raise ValueError("fit: tbptt: a Bidirectional layer needs whole sequences")
            if x.ndim < 3 and not isinstance(self.layers[0], _layers.Embedding):
                raise ValueError("fit: tbptt: expected sequence input (batch, time, ...)")
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError(f"fit: class_weight: expected a dict class -> weight, got {type(class_weight).__name__}")
            cls = y.reshape(y.shape[0], -1)
            lab = np.argmax(cls, axis=1) if cls.shape[1] > 1 else np.round(cls[:, 0]).astype(np.int64)
            cw = np.array([class_weight.get(int(c), 1.0) for c in lab], dtype=np.float64)
            sample_weight = cw if sample_weight is None else sample_weight * cw
        if validation_data is None and validation_split > 0:
            n_val = int(x.shape[0] * validation_split)
            if n_val < 1:
                raise ValueError(f"fit: validation_split={validation_split} leaves no validation sample")
            validation_data = (x[-n_val:], y[-n_val:]) + ((sample_weight[-n_val:],) if sample_weight is not None
                                                         else ())
            x, y = x[:-n_val], y[:-n_val]
            sample_weight = None if sample_weight is None else sample_weight[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("fit: validation_data: expected (x_val, y_val) or (x_val, y_val, sample_weight)")
            vx, vy, vsw = self._check_xy(validation_data[0], validation_data[1],
                                         validation_data[2] if len(validation_data) == 3 else None,
                                         "fit (validation_data)")
        N = x.shape[0]
        steps = math.ceil(N / batch_size)
        if verbose == "auto":
            verbose = 1
        self.history = _cb.History()
        cbs = [self.history] + list(callbacks or [])
        if verbose:
            cbs.insert(0, _cb.ProgbarLogger(verbose))
        params = {"epochs": epochs, "steps": steps, "verbose": verbose, "batch_size": batch_size, "samples": N}
        cbl = _cb.CallbackList(cbs, self, params)
        self.stop_training = False
        cbl.on_train_begin({})
        for epoch in range(initial_epoch, epochs):
            cbl.on_epoch_begin(epoch, {})
            order = self._rng.permutation(N) if shuffle else None
            tot, seen = 0.0, 0
            ms = self._make_metrics(y, self.output_shape)
            for m in ms:
                m.reset_state()
            for b in range(steps):
                sl = slice(b * batch_size, min(N, (b + 1) * batch_size))
                idx = order[sl] if order is not None else sl
                xb, yb = x[idx], y[idx]
                swb = None if sample_weight is None else sample_weight[idx]
                cbl.on_train_batch_begin(b, {})
                if tbptt is None:
                    loss, y_pred, w, ok = self._train_step(xb, yb, swb)
                else:
                    loss, y_pred, w, ok = self._tbptt_step(xb, yb, swb, int(tbptt))
                if not ok:
                    print(f"fit: the loss became {loss} at epoch {epoch + 1}, batch {b + 1}; training stopped "
                          f"before this batch's update (the weights are those of the previous batch). Lower the "
                          f"learning rate or clip the gradients (clipnorm=1.0).", file=sys.stderr)
                    self.stop_training = True
                    cbl.on_train_batch_end(b, {"loss": loss, "size": 0})
                    break
                n = xb.shape[0]
                tot += loss * n
                seen += n
                for m in ms:
                    m.update_state(yb, y_pred, w)
                logs = {"loss": tot / seen}
                logs.update({m.name: m.result() for m in ms})
                logs["size"] = n
                cbl.on_train_batch_end(b, logs)
                if self.stop_training:
                    break
            logs = {"loss": tot / seen if seen else float("nan")}
            logs.update({m.name: m.result() for m in ms})
            if validation_data is not None and seen and (epoch + 1) % validation_freq == 0:
                vals = self.evaluate(vx, vy, batch_size=validation_batch_size or batch_size, sample_weight=vsw,
                                     verbose=0, return_dict=True, _checked=True)
                logs.update({"val_" + k: v for k, v in vals.items()})
            cbl.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbl.on_train_end({})
        return self.history

    def _tbptt_step(self, xb, yb, swb, k):
        T = xb.shape[1]
        seq_targets = yb.ndim >= 2 and yb.shape[1] == T and len(self.output_shape) == 3
        rnns = self._rnn_layers()
        for l in rnns:
            l._carry = [np.zeros((xb.shape[0], l.units), l.dtype) for _ in range(2 if l._cell == "lstm" else 1)]
        total, n, last = 0.0, 0, None
        try:
            for s in range(0, T, k):
                xw = xb[:, s:s + k]
                if seq_targets:
                    loss, y_pred, w, ok = self._train_step(xw, yb[:, s:s + k], swb)
                    if not ok:
                        return loss, y_pred, w, False
                    total += loss * xw.shape[1]
                    n += xw.shape[1]
                    last = (y_pred, w)
                elif s + k < T:
                    self._forward(xw, False)  # carry the state only; the gradient is cut here
                else:
                    loss, y_pred, w, ok = self._train_step(xw, yb, swb)
                    return loss, y_pred, w, ok
        finally:
            for l in rnns:
                l._carry = None
        if seq_targets:
            # metrics on the whole sequence's predictions would need every window; report the last window's
            y_pred, w = last
            return total / n, y_pred, w, True
        return total, None, None, True

    # ---- evaluate / predict -------------------------------------------------------------------------------------
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, _checked=False):
        if not self.compiled:
            raise ValueError("evaluate: compile the model first")
        batch_size = 32 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"evaluate: batch_size: expected an int >= 1, got {batch_size!r}")
        if not _checked:
            x, y, sample_weight = self._check_xy(x, y, sample_weight, "evaluate")
        N = x.shape[0]
        ms = self._make_metrics(y, self.output_shape)
        tot = 0.0
        for s in range(0, N, batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            swb = None if sample_weight is None else sample_weight[s:s + batch_size]
            y_pred, mask, _ = self._forward(xb, False)
            w, count = self._weights_for(yb, y_pred, mask, swb)
            loss, _ = self.loss.value_and_grad(yb, y_pred, w, count)
            tot += loss * xb.shape[0]
            for m in ms:
                m.update_state(yb, y_pred, w)
        reg = sum(l.regularization_loss() for l in self.layers)
        out = {"loss": tot / N + reg}
        out.update({m.name: m.result() for m in ms})
        if verbose and verbose != "auto":
            print(" - ".join(f"{k}: {v:.4f}" for k, v in out.items()))
        if return_dict:
            return out
        vals = list(out.values())
        return vals[0] if len(vals) == 1 else vals

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        batch_size = 32 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"predict: batch_size: expected an int >= 1, got {batch_size!r}")
        x, _, _ = self._check_xy(x, None, None, "predict")
        outs = [self._forward(x[s:s + batch_size], False)[0] for s in range(0, x.shape[0], batch_size)]
        return np.concatenate(outs, axis=0)

    def predict_on_batch(self, x):
        x, _, _ = self._check_xy(x, None, None, "predict_on_batch")
        return self._forward(x, False)[0]

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        if not self.compiled:
            raise ValueError("train_on_batch: compile the model first")
        x, y, sample_weight = self._check_xy(x, y, sample_weight, "train_on_batch")
        if class_weight is not None:
            cls = y.reshape(y.shape[0], -1)
            lab = np.argmax(cls, axis=1) if cls.shape[1] > 1 else np.round(cls[:, 0]).astype(np.int64)
            cw = np.array([class_weight.get(int(c), 1.0) for c in lab])
            sample_weight = cw if sample_weight is None else sample_weight * cw
        loss, y_pred, w, ok = self._train_step(x, y, sample_weight)
        if not ok:
            raise ValueError(f"train_on_batch: the loss is {loss}; the update was not applied")
        ms = self._make_metrics(y, self.output_shape)
        for m in ms:
            m.update_state(y, y_pred, w)
        out = {"loss": loss}
        out.update({m.name: m.result() for m in ms})
        if return_dict:
            return out
        vals = list(out.values())
        return vals[0] if len(vals) == 1 else vals

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        return self.evaluate(x, y, batch_size=max(1, len(x)), sample_weight=sample_weight, verbose=0,
                             return_dict=return_dict)

    # ---- config and files ---------------------------------------------------------------------------------------
    def get_config(self):
        return {"name": self.name, "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [_layers.serialize(l) for l in self.layers]}

    @classmethod
    def from_config(cls, config):
        m = cls(name=config.get("name"))
        if config.get("input_shape") is not None:
            m._input_shape = tuple(config["input_shape"])
        for d in config["layers"]:
            m.add(_layers.deserialize(d))
        return m

    def save(self, filepath, overwrite=True):
        """One file (a zip): the architecture and the compile settings as JSON, the weights as .npy entries in
        Keras's layout; no pickle.  Written to a temporary name beside it, then renamed."""
        if not self.built:
            raise ValueError("save: the model is not built yet")
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "model": self.get_config()}
        if self.compiled:
            doc["compile"] = {"loss": _losses.serialize(self.loss),
                              "optimizer": {"class_name": type(self.optimizer).__name__,
                                            "config": self.optimizer.get_config()},
                              "metrics": self._metric_names}
        _write_archive(filepath, doc, self.get_weights(), overwrite)

    def save_weights(self, filepath, overwrite=True):
        if not self.built:
            raise ValueError("save_weights: the model is not built yet")
        _write_archive(filepath, {"format": FORMAT + "-weights", "version": FORMAT_VERSION}, self.get_weights(),
                       overwrite)

    def load_weights(self, filepath):
        doc, weights = _read_archive(filepath, FORMAT + "-weights", allow_model=True)
        if not self.built:
            raise ValueError("load_weights: build the model first")
        try:
            self.set_weights(weights)
        except ValueError as e:
            raise ValueError(f"{os.fspath(filepath)}: the weights do not fit this model ({e})") from None


def _write_archive(filepath, doc, weights, overwrite):
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise ValueError(f"{path}: exists (overwrite=False)")
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".fastrnn", dir=d)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            doc = dict(doc, weights=[{"shape": list(w.shape), "dtype": w.dtype.str} for w in weights])
            z.writestr("fastrnn.json", json.dumps(doc, indent=1))
            for i, w in enumerate(weights):
                with z.open(f"weights/{i}.npy", "w") as e:
                    np.lib.format.write_array(e, np.ascontiguousarray(w), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_archive(filepath, kind, allow_model=False):
    path = os.fspath(filepath)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                doc = json.loads(z.read("fastrnn.json").decode("utf-8"))
            except KeyError:
                raise ValueError(f"{path}: not a fastrnn model file (no fastrnn.json inside)") from None
            if not isinstance(doc, dict) or doc.get("format") not in (kind, FORMAT if allow_model else kind):
                raise ValueError(f"{path}: not a fastrnn {'model' if kind == FORMAT else 'weights'} file "
                                 f"(format {doc.get('format') if isinstance(doc, dict) else None!r})")
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"{path}: format version {doc.get('version')!r}, this fastrnn reads "
                                 f"{FORMAT_VERSION}")
            weights = []
            for i, meta in enumerate(doc["weights"]):
                with z.open(f"weights/{i}.npy") as e:
                    a = np.lib.format.read_array(e, allow_pickle=False)
                if list(a.shape) != list(meta["shape"]):
                    raise ValueError(f"{path}: weight {i} has shape {a.shape}, its description says {meta['shape']}")
                weights.append(a)
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: damaged fastrnn file ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError,
            zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a fastrnn model file, or a damaged or truncated one "
                         f"({type(e).__name__}: {e})") from None
    return doc, weights


def load_model(filepath, compile=True):
    """Load a model saved by model.save (.fastrnn), or a Sequential model Keras 3 saved (.keras: read by
    fastrnn.models.keras_format, needs h5py -- `pip install "fastrnn[keras]"`).  A damaged, truncated or
    foreign file, or a Keras layer or option fastrnn does not have, is a ValueError naming the file."""
    path = os.fspath(filepath)
    from . import keras_format
    if keras_format.is_keras_file(path):
        return keras_format.load_keras_model(path, compile=compile)
    doc, weights = _read_archive(path, FORMAT)
    try:
        model = Sequential.from_config(doc["model"])
        model.build()
        model.set_weights(weights)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: the architecture or the weights are not valid ({type(e).__name__}: {e})") from None
    if compile and "compile" in doc:
        c = doc["compile"]
        model.compile(optimizer=c["optimizer"], loss=c["loss"], metrics=c.get("metrics"))
    return model
