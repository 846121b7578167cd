"""fastrnn.callbacks: Keras 3's training callbacks -- History, EarlyStopping (restore_best_weights),
ModelCheckpoint, CSVLogger, LambdaCallback, ReduceLROnPlateau, TerminateOnNaN -- and the progress bar
(ProgbarLogger: tqdm when installed, a plain bar otherwise; no control characters when not on a terminal).

Depends on numpy only; the model is whatever object set_model() was given (docs/design.md, Layers).
"""
import csv
import math
import os
import sys
import time

import numpy as np

__all__ = ["Callback", "CallbackList", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger", "LambdaCallback",
           "ReduceLROnPlateau", "TerminateOnNaN", "ProgbarLogger"]


class Callback:
    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


class CallbackList:
    def __init__(self, callbacks, model, params):
        if callbacks is None:
            callbacks = []
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"callbacks: expected a list of fastrnn.callbacks.Callback, got {type(callbacks).__name__}")
        for c in callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks: expected fastrnn.callbacks.Callback instances, got {type(c).__name__}")
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            c.set_model(model)
            c.set_params(params)

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)

        def call(*args):
            for c in self.callbacks:
                getattr(c, name)(*args)
        return call


class History(Callback):
    """history.history: {"loss": [...], "val_loss": [...], metric: [...]}, one value per epoch."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _mode_op(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return mode


class _Monitor(Callback):
    def __init__(self, monitor, mode, min_delta):
        super().__init__()
        self.monitor = monitor
        self.mode = _mode_op(mode, monitor)
        self.min_delta = abs(float(min_delta))

    def _improved(self, current, best):
        if best is None:
            return True
        if self.mode == "min":
            return current < best - self.min_delta
        return current > best + self.min_delta

    def _get(self, logs):
        v = (logs or {}).get(self.monitor)
        if v is None:
            print(f"{type(self).__name__}: the monitored quantity {self.monitor!r} is not available; available: "
                  f"{sorted(logs or {})}", file=sys.stderr)
        return v


class EarlyStopping(_Monitor):
    """Stop when `monitor` has not improved by min_delta for `patience` epochs; restore_best_weights puts back
    the best epoch's weights at the end of training."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.verbose, self.baseline = int(patience), int(verbose), baseline
        self.restore_best_weights, self.start_from_epoch = bool(restore_best_weights), int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, None, None, 0

    def on_epoch_end(self, epoch, logs=None):
        current = self._get(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (model.save, or save_weights with save_weights_only) after every epoch, or only when
    `monitor` improves with save_best_only; filepath may hold {epoch:02d} and {logs keys} fields."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, 0)
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: save_freq: only 'epoch' is supported, got {save_freq!r}")
        self.filepath, self.verbose = os.fspath(filepath), int(verbose)
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            current = self._get(logs)
            if current is None or not self._improved(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to {current}, saving to {path}")
            self.best = current
        (self.model.save_weights if self.save_weights_only else self.model.save)(path)


class CSVLogger(Callback):
    """One row per epoch (epoch, then the logs' keys sorted) into filename; append=True keeps what is there."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, bool(append)
        self._f = self._w = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._f = open(self.filename, "a" if self.append else "w", newline="")
        self._w = None
        self._header = exists

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = sorted(logs)
        if self._w is None:
            self._w = csv.writer(self._f, delimiter=self.sep)
            if not self._header:
                self._w.writerow(["epoch"] + keys)
        self._w.writerow([epoch] + [logs[k] for k in keys])
        self._f.flush()

    def on_train_end(self, logs=None):
        if self._f is not None:
            self._f.close()
            self._f = None


class LambdaCallback(Callback):
    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        super().__init__()
        for k in kwargs:
            if not k.startswith("on_") or not hasattr(Callback, k):
                raise TypeError(f"LambdaCallback: unexpected argument {k!r}")
        fns = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_train_begin=on_train_begin,
                   on_train_end=on_train_end, on_train_batch_begin=on_train_batch_begin,
                   on_train_batch_end=on_train_batch_end, **kwargs)
        for k, f in fns.items():
            if f is not None:
                if not callable(f):
                    raise TypeError(f"LambdaCallback: {k}: expected a callable, got {type(f).__name__}")
                setattr(self, k, f)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, **kwargs):
        super().__init__(monitor, mode, min_delta)
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor: expected a float in (0, 1), got {factor!r}")
        self.factor, self.patience, self.verbose = float(factor), int(patience), int(verbose)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        self.wait, self.cooldown_counter, self.best = 0, 0, None

    def on_epoch_end(self, epoch, logs=None):
        current = self._get(logs)
        opt = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = opt.current_learning_rate()
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = opt.current_learning_rate()
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    opt.set_learning_rate(new)
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stop training when the loss becomes NaN or infinite (fit always does this; the batch is not applied)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True


def _fmt(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float, np.floating)))


class ProgbarLogger(Callback):
    """The per-epoch progress line: a bar, loss and metrics, samples/s and the ETA.  tqdm when installed and on
    a terminal; without a terminal one plain line per epoch (no carriage returns or escapes)."""

    def __init__(self, verbose=1, stream=None):
        super().__init__()
        self.verbose = verbose
        self.stream = stream

    def on_train_begin(self, logs=None):
        self._out = self.stream or sys.stdout
        self._tty = hasattr(self._out, "isatty") and self._out.isatty()
        self._tqdm = None
        if self._tty and self.verbose == 1:
            try:
                import tqdm
                self._tqdm = tqdm.tqdm
            except ImportError:
                pass

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._seen = 0
        self._epoch = epoch
        steps = self.params.get("steps")
        if self.verbose and not (self._tty and self.verbose == 1):
            return
        if self._tqdm is not None:
            self._bar = self._tqdm(total=steps, desc=f"Epoch {epoch + 1}/{self.params.get('epochs')}",
                                   file=self._out, leave=True, unit="batch")
        else:
            self._bar = None
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')}", file=self._out)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._seen += logs.get("size", 0)
        if not (self._tty and self.verbose == 1):
            return
        el = time.perf_counter() - self._t0
        steps = self.params.get("steps") or 1
        rate = self._seen / el if el > 0 else 0.0
        shown = {k: v for k, v in logs.items() if k not in ("size", "batch")}
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{_fmt(shown)} - {rate:,.0f} samples/s")
            return
        done = batch + 1
        w = 30
        fill = int(w * done / steps)
        eta = el / done * (steps - done)
        bar = "=" * max(fill - 1, 0) + (">" if fill < w else "=") + "." * (w - fill)
        self._out.write(f"\r{done}/{steps} [{bar}] - ETA: {eta:.0f}s - {_fmt(shown)} - {rate:,.0f} samples/s")
        self._out.flush()

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        el = time.perf_counter() - self._t0
        rate = self._seen / el if el > 0 else 0.0
        steps = self.params.get("steps")
        line = f"{steps}/{steps} - {el:.1f}s - {rate:,.0f} samples/s - {_fmt(logs or {})}"
        if self._tty and self.verbose == 1:
            if self._bar is not None:
                self._bar.set_postfix_str(_fmt(logs or {}))
                self._bar.close()
                return
            self._out.write("\r" + line + "\x1b[K\n")
        else:
            self._out.write(f"Epoch {epoch + 1}/{self.params.get('epochs')}: {line}\n")
        self._out.flush()
