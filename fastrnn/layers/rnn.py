"""Keras 3's recurrent layers on fastrnn's fused kernels: SimpleRNN, LSTM, GRU and Bidirectional.

Each layer keeps its weights in the kernels' (torch's) layout -- weight_ih_l0 (G*U, F), weight_hh_l0 (G*U, U),
bias_ih_l0, bias_hh_l0 -- which the kernels read in place on every call, and converts to Keras's layout
(kernel (F, G*U), recurrent_kernel (U, G*U), bias, Keras's gate order) only in get_weights / set_weights.
Where Keras has one bias (SimpleRNN, LSTM, GRU with reset_after=False) it is bias_ih_l0 and bias_hh_l0 stays
zero and is not trained.  The time loop, forward and backward, is in the kernels; the Python here shapes the
arrays (batch first <-> time major), turns a mask into per-sequence lengths and applies Keras's rules for
masked steps.
"""
import numpy as np

from . import _engine as E
from ._util import (as_dtype, check_initializer, check_int, check_rate, get_activation, get_regularizer,
                    initialize, new_rng)
from .core import Layer, _shape_str, as_float

__all__ = ["SimpleRNN", "LSTM", "GRU", "Bidirectional", "mask_to_lengths"]


def mask_to_lengths(mask, B, T, who="mask"):
    """A right-padded (B, T) mask (True = keep) -> (B,) int32 lengths; None when nothing is masked.
    A mask that is not a prefix of each sequence is a ValueError."""
    m = np.asarray(mask)
    if m.shape != (B, T):
        raise ValueError(f"{who}: expected a boolean mask of shape ({B}, {T}), got {_shape_str(m.shape)}")
    m = m.astype(bool, copy=False)
    lengths = m.sum(axis=1)
    if not np.array_equal(m, np.arange(T)[None, :] < lengths[:, None]):
        bad = int(np.nonzero((m != (np.arange(T)[None, :] < lengths[:, None])).any(axis=1))[0][0])
        raise ValueError(f"{who}: fastrnn's recurrent layers need right-padded masks (each sequence's kept "
                         f"steps first, then only masked steps); sequence {bad} is not")
    if lengths.min() == T:
        return None
    return lengths.astype(np.int32)


class _RNNCache:
    __slots__ = ("tape", "lengths", "zero", "dmask", "T", "B", "fill", "return_sequences", "go_back")


class _RNNLayer(Layer):
    """The common part of SimpleRNN, LSTM and GRU."""
    supports_masking = True
    _cell = None
    _G = None
    _perm = None  # Keras gate block k = kernels' gate block _perm[k]
    _arg_names = ("units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
                  "recurrent_initializer", "bias_initializer", "unit_forget_bias", "kernel_regularizer",
                  "recurrent_regularizer", "bias_regularizer", "dropout", "recurrent_dropout", "seed",
                  "return_sequences", "return_state", "go_backwards", "stateful")

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, reset_after=True, use_cudnn="auto",
                 zero_output_for_mask=False, **kwargs):
        super().__init__(**kwargs)
        cls = type(self).__name__
        for n, v in (("activity_regularizer", activity_regularizer), ("kernel_constraint", kernel_constraint),
                     ("recurrent_constraint", recurrent_constraint), ("bias_constraint", bias_constraint)):
            if v is not None:
                raise ValueError(f"{cls}: {n} is not supported (expected None)")
        self.units = check_int("units", units)
        if self._cell == "rnn":
            self.activation = get_activation(activation, "activation", ("tanh", "relu"))
            self.recurrent_activation = None
        else:
            self.activation = get_activation(activation, "activation", ("tanh",))
            self.recurrent_activation = get_activation(recurrent_activation, "recurrent_activation", ("sigmoid",))
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = check_initializer(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = check_initializer(bias_initializer, "bias_initializer")
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_regularizer = get_regularizer(kernel_regularizer, "kernel_regularizer")
        self.recurrent_regularizer = get_regularizer(recurrent_regularizer, "recurrent_regularizer")
        self.bias_regularizer = get_regularizer(bias_regularizer, "bias_regularizer")
        self.dropout = check_rate("dropout", dropout)
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        if self.recurrent_dropout > 0 and self.dropout > 0 and self._cell in ("lstm", "gru"):
            # Keras 3 switches the cell to implementation 1 with recurrent_dropout, which then draws one input
            # mask per gate (dropout_mask_count = 4, GRU 3): not the single input mask the layer applies to x
            raise ValueError(f"{cls}: dropout together with recurrent_dropout is not supported yet (Keras then "
                             f"draws one input mask per gate); expected one of them 0.0, got dropout={dropout}, "
                             f"recurrent_dropout={recurrent_dropout}")
        self.seed = seed
        self._rng = new_rng(seed)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)  # a performance hint in Keras; the kernels are fused either way
        self.reset_after = bool(reset_after)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.states = None
        self._carry = None  # state carried between windows of truncated BPTT (set by the model)

    # ---- weights ------------------------------------------------------------------------------------------
    def _bias_hh_trained(self):
        return self._cell == "gru" and self.reset_after

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"{self.label()}: expected input of shape (batch, time, features) with known "
                             f"features, got {_shape_str((None,) + tuple(input_shape))}")
        F, U, G = input_shape[-1], self.units, self._G
        self.spec = E.make_spec(self._cell, F, U, bias=self.use_bias, nonlinearity=self.activation or "tanh",
                                reset_after=self.reset_after, go_backwards=self.go_backwards, dtype=self.dtype)
        rng = self._rng
        kernel = initialize(self.kernel_initializer, rng, (F, G * U), np.float64)
        recurrent = initialize(self.recurrent_initializer, rng, (U, G * U), np.float64)
        weights = [kernel, recurrent]
        if self.use_bias:
            if self._cell == "lstm" and self.unit_forget_bias:
                b = initialize(self.bias_initializer, rng, (U,), np.float64)
                bias = np.concatenate([b, np.ones(U), initialize(self.bias_initializer, rng, (2 * U,), np.float64)])
            elif self._bias_hh_trained():
                bias = initialize(self.bias_initializer, rng, (2, G * U), np.float64)
            else:
                bias = initialize(self.bias_initializer, rng, (G * U,), np.float64)
            weights.append(bias)
        self._add_weight("weight_ih_l0", np.zeros((G * U, F)))
        self._add_weight("weight_hh_l0", np.zeros((G * U, U)))
        self._scratch = {}
        if self.use_bias:
            self._add_weight("bias_ih_l0", np.zeros(G * U))
            trained = self._bias_hh_trained()
            self._add_weight("bias_hh_l0", np.zeros(G * U), trainable=trained)
            if not trained:
                self._scratch["bias_hh_l0"] = np.zeros(G * U, self.dtype)
        Layer.build(self, input_shape)
        self._load_keras(weights)

    def _to_keras(self, w):
        """Kernels' (G*U, X) -> Keras's (X, G*U) with Keras's gate order."""
        G, U = self._G, self.units
        return np.ascontiguousarray(w.reshape(G, U, -1)[self._perm].reshape(G * U, -1).T)

    def _from_keras(self, k):
        G, U = self._G, self.units
        inv = np.argsort(self._perm)
        return k.T.reshape(G, U, -1)[inv].reshape(G * U, -1)

    def _vec_to_keras(self, b):
        G, U = self._G, self.units
        return b.reshape(G, U)[self._perm].reshape(G * U)

    def _vec_from_keras(self, b):
        G, U = self._G, self.units
        return b.reshape(G, U)[np.argsort(self._perm)].reshape(G * U)

    def _keras_shapes(self):
        F, U, G = self.input_shape[-1], self.units, self._G
        shapes = [(F, G * U), (U, G * U)]
        if self.use_bias:
            shapes.append((2, G * U) if self._bias_hh_trained() else (G * U,))
        return shapes

    def get_weights(self):
        """[kernel (F, G*U), recurrent_kernel (U, G*U), bias] in Keras's layout and gate order (LSTM i, f, c, o;
        GRU z, r, h with bias (2, 3U) = [input, recurrent] under reset_after, (3U,) without)."""
        if not self.built:
            return []
        p = self.params
        out = [self._to_keras(p["weight_ih_l0"]), self._to_keras(p["weight_hh_l0"])]
        if self.use_bias:
            if self._bias_hh_trained():
                out.append(np.stack([self._vec_to_keras(p["bias_ih_l0"]), self._vec_to_keras(p["bias_hh_l0"])]))
            else:
                out.append(self._vec_to_keras(p["bias_ih_l0"] + p["bias_hh_l0"]))
        return out

    def set_weights(self, weights):
        weights = self._check_weight_list(weights, self._keras_shapes())
        self._load_keras(weights)

    def _load_keras(self, weights):
        p = self.params
        p["weight_ih_l0"][...] = self._from_keras(np.asarray(weights[0]))
        p["weight_hh_l0"][...] = self._from_keras(np.asarray(weights[1]))
        if self.use_bias:
            b = np.asarray(weights[2])
            if self._bias_hh_trained():
                p["bias_ih_l0"][...] = self._vec_from_keras(b[0])
                p["bias_hh_l0"][...] = self._vec_from_keras(b[1])
            else:
                p["bias_ih_l0"][...] = self._vec_from_keras(b)
                p["bias_hh_l0"][...] = 0

    def count_params(self):
        return int(sum(int(np.prod(s)) for s in self._keras_shapes())) if self.built else 0

    def regularization_loss(self):
        out = 0.0
        if self.kernel_regularizer is not None:
            out += self.kernel_regularizer(self.params["weight_ih_l0"])
        if self.recurrent_regularizer is not None:
            out += self.recurrent_regularizer(self.params["weight_hh_l0"])
        if self.bias_regularizer is not None and self.use_bias:
            out += self.bias_regularizer(self.params["bias_ih_l0"])
            if self._bias_hh_trained():
                out += self.bias_regularizer(self.params["bias_hh_l0"])
        return out

    def add_regularization_grads(self):
        p, g = self.params, self.grads
        if self.kernel_regularizer is not None:
            self.kernel_regularizer.add_grad(p["weight_ih_l0"], g["weight_ih_l0"])
        if self.recurrent_regularizer is not None:
            self.recurrent_regularizer.add_grad(p["weight_hh_l0"], g["weight_hh_l0"])
        if self.bias_regularizer is not None and self.use_bias:
            self.bias_regularizer.add_grad(p["bias_ih_l0"], g["bias_ih_l0"])
            if self._bias_hh_trained():
                self.bias_regularizer.add_grad(p["bias_hh_l0"], g["bias_hh_l0"])

    # ---- shapes ---------------------------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        T = input_shape[0]
        return (T, self.units) if self.return_sequences else (self.units,)

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None

    # ---- state ------------------------------------------------------------------------------------------------
    def reset_states(self, states=None):
        """Stateful layers: forget the carried state (zeros), or set it to `states` ([h] or [h, c], (B, U))."""
        if states is None:
            self.states = None
            return
        n = 2 if self._cell == "lstm" else 1
        if not isinstance(states, (list, tuple)):
            states = [states]
        if len(states) != n:
            raise ValueError(f"{self.label()}.reset_states: expected {n} arrays of shape (batch, {self.units})")
        arrs = [as_float("states", s, self.dtype) for s in states]
        for a in arrs:
            if a.ndim != 2 or a.shape[1] != self.units or a.shape[0] != arrs[0].shape[0]:
                raise ValueError(f"{self.label()}.reset_states: expected arrays of shape (batch, {self.units}), "
                                 f"got {_shape_str(a.shape)}")
        self.states = [np.array(a) for a in arrs]

    def _initial_state(self, initial_state, B):
        """The kernels' hx ((1, B, U) or a pair for LSTM) or None."""
        src = None
        if initial_state is not None:
            src = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            n = 2 if self._cell == "lstm" else 1
            if len(src) != n:
                raise ValueError(f"{self.label()}: initial_state: expected {n} array(s) of shape ({B}, {self.units}),"
                                 f" got {len(src)}")
            src = [as_float("initial_state", s, self.dtype) for s in src]
            for s in src:
                if s.shape != (B, self.units):
                    raise ValueError(f"{self.label()}: initial_state: expected shape ({B}, {self.units}), "
                                     f"got {_shape_str(s.shape)}")
        elif self._carry is not None:
            src = self._carry
        elif self.stateful and self.states is not None:
            src = self.states
            if src[0].shape[0] != B:
                raise ValueError(f"{self.label()}: a stateful layer needs the same batch size on every call "
                                 f"(state of {src[0].shape[0]} sequences, got a batch of {B}); use a batch size "
                                 f"that divides the data or call reset_states()")
        if src is None:
            return None
        if self._cell == "lstm":
            return (np.ascontiguousarray(src[0][None]), np.ascontiguousarray(src[1][None]))
        return np.ascontiguousarray(src[0][None])

    # ---- the kernels' call ----------------------------------------------------------------------------------
    def _core_forward(self, x, mask, training, initial_state=None):
        """x (B, T, F) -> time-major y (T, B, U) with zeros at masked steps (each direction at its original time
        positions), the state [h (B, U)(, c)] and the cache (None unless training)."""
        B, T, _ = x.shape
        lengths = None if mask is None else mask_to_lengths(mask, B, T, f"{self.label()}: mask")
        zero = None
        if lengths is not None and lengths.min() == 0:
            zero = lengths == 0
            lengths = np.maximum(lengths, 1)
        self._lengths = lengths
        hx = self._initial_state(initial_state, B)
        xt = np.ascontiguousarray(x.transpose(1, 0, 2))
        dmask = None
        if training and self.dropout > 0:
            keep = 1.0 - self.dropout  # one mask per sequence, the same at every step (Keras's)
            dmask = (self._rng.random((B, x.shape[2])) < keep).astype(self.dtype) / self.dtype.type(keep)
            xt *= dmask
        rmasks = [self._recurrent_mask(B)] if training and self.recurrent_dropout > 0 else None
        y, state, tape = E.forward(self.spec, self.params, xt, hx, lengths, train=training, rmasks=rmasks)
        if self._cell == "lstm":
            h, c = state[0][0], state[1][0]
            st = [h, c]
        else:
            st = [state[0]]
        if zero is not None:  # fully masked sequences: zero outputs, the initial state carried through
            y[:, zero] = 0
            for k, s in enumerate(st):
                s[zero] = 0 if hx is None else (hx[k] if self._cell == "lstm" else hx)[0][zero]
        if self.stateful or self._carry is not None:
            new = [s.copy() for s in st]
            if self._carry is not None:
                self._carry = new
            if self.stateful:
                self.states = new
        cache = None
        if training:
            cache = _RNNCache()
            cache.tape, cache.lengths, cache.zero, cache.dmask, cache.T, cache.B = tape, lengths, zero, dmask, T, B
        return y, st, cache

    def _recurrent_mask(self, B):
        """Keras's recurrent dropout masks for a batch of B sequences, drawn once per call (per batch) and
        the same at every step, 0 or 1/(1-rate): SimpleRNN one (B, U) on h_{t-1}; LSTM one per gate, (4, B, U)
        in the kernels' gate order i, f, g, o = Keras's i, f, c, o; GRU one per gate, drawn in Keras's order
        z, r, h and handed to the kernels in theirs, r, z, n (docs/keras.md)."""
        m = self._draw_recurrent_mask(B)
        if self._cell == "gru":  # Keras's block k is the kernels' block _perm[k]
            m = np.ascontiguousarray(m[np.argsort(self._perm)])
        return m

    def _draw_recurrent_mask(self, B):
        """The masks of _recurrent_mask in Keras's gate order (SimpleRNN (B, U), LSTM (4, B, U) i, f, c, o, GRU
        (3, B, U) z, r, h), from the layer's seeded generator."""
        keep = 1.0 - self.recurrent_dropout
        shape = (B, self.units) if self._cell == "rnn" else (self._G, B, self.units)
        return (self._rng.random(shape) < keep).astype(self.dtype) / self.dtype.type(keep)

    def _zeros_dy(self, T, B, U):
        """A (T, B, U) array of zeros, kept between batches of one shape: the kernels only read dy, and
        _core_backward zeroes masked columns of it (which stay zeros)."""
        z = getattr(self, "_dy0", None)
        if z is None or z.shape != (T, B, U) or z.dtype != self.dtype:
            z = self._dy0 = np.zeros((T, B, U), self.dtype)
        return z

    def _core_backward(self, cache, dy_tm, dstate):
        """dy_tm (T, B, U) time-major (ignored at masked steps), dstate [dh (B, U) or None, (dc)] -> dx (B, T, F)."""
        zero = cache.zero
        if zero is not None:
            dy_tm[:, zero] = 0
            dstate = [None if d is None else np.where(zero[:, None], 0, d) for d in dstate]
        if self._cell == "lstm":
            ds = tuple(None if d is None else np.ascontiguousarray(d[None], dtype=self.dtype) for d in dstate)
            if ds[0] is None and ds[1] is None:
                ds = None
        else:
            ds = None if dstate[0] is None else np.ascontiguousarray(dstate[0][None], dtype=self.dtype)
        out = dict(self.grads)
        out.update(self._scratch)
        dx, _, _ = E.backward(cache.tape, dy_tm, ds, out=out, need_dx=self._need_dx)
        if dx is None:
            return None
        if cache.dmask is not None:
            dx *= cache.dmask
        return dx.transpose(1, 0, 2)

    # ---- Keras's outputs ------------------------------------------------------------------------------------
    def forward(self, x, mask, training, initial_state=None):
        y_tm, st, cache = self._core_forward(x, mask, training, initial_state)
        T, B = y_tm.shape[:2]
        lengths = None
        lengths = None
        if self.return_sequences:
            if self.go_backwards:  # Keras's order: the processed order
                y = np.ascontiguousarray(y_tm[::-1].transpose(1, 0, 2))
            else:
                if not self.zero_output_for_mask:
                    lengths = self._lengths
                if lengths is None:
                    y = np.ascontiguousarray(y_tm.transpose(1, 0, 2))
                else:  # a masked step repeats the last valid output
                    idx = np.minimum(np.arange(T)[None, :], lengths[:, None] - 1)
                    y = y_tm[idx, np.arange(B)[:, None]]
        else:
            y = st[0].copy()
        if cache is not None:
            cache.fill = lengths
        out_mask = mask if self.return_sequences else None
        if self.return_state:
            return [y] + [s.copy() for s in st], out_mask, cache
        return y, out_mask, cache

    def backward(self, cache, dy, dstates=None):
        """dy like the output (the first output when return_state); dstates: gradients of the returned states."""
        T, B, U = cache.T, cache.B, self.units
        if self.return_sequences:
            if self.go_backwards:
                dy_tm = np.ascontiguousarray(dy[:, ::-1].transpose(1, 0, 2), dtype=self.dtype)
            else:
                dy_tm = np.ascontiguousarray(dy.transpose(1, 0, 2), dtype=self.dtype)
                lengths = cache.fill
                if lengths is not None:  # fold the repeated outputs' gradients into each last valid step
                    pad = np.arange(T)[:, None] >= lengths[None, :]
                    extra = (dy_tm * pad[:, :, None]).sum(axis=0)
                    dy_tm[pad] = 0
                    dy_tm[lengths - 1, np.arange(B)] += extra
            dh = None
        else:  # the output is the last state: its gradient goes in as dh_n, over a dy of zeros
            dy_tm = self._zeros_dy(T, B, U)
            dh = np.asarray(dy, dtype=self.dtype)
        n = 2 if self._cell == "lstm" else 1
        ds = [dh] + [None] * (n - 1)
        if dstates is not None:
            for k, d in enumerate(dstates):
                if d is not None:
                    ds[k] = d if ds[k] is None else ds[k] + d
        return self._core_backward(cache, dy_tm, ds)

    def __call__(self, x, mask=None, training=False, initial_state=None):
        x = self._prepare(x)
        self._ensure_built(x)
        self._check_input(x)
        y, _, _ = self.forward(x, mask, bool(training), initial_state)
        return y


class SimpleRNN(_RNNLayer):
    """keras.layers.SimpleRNN: h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias), activation
    'tanh' (default) or 'relu'."""
    _cell, _G, _perm = "rnn", 1, np.array([0])
    _arg_names = tuple(a for a in _RNNLayer._arg_names if a not in ("recurrent_activation", "unit_forget_bias"))

    def __init__(self, units, activation="tanh", **kwargs):
        for bad in ("recurrent_activation", "unit_forget_bias", "reset_after"):
            if bad in kwargs:
                raise TypeError(f"SimpleRNN: unexpected argument {bad!r}")
        super().__init__(units, activation=activation, **kwargs)


class LSTM(_RNNLayer):
    """keras.layers.LSTM (gates i, f, c, o; unit_forget_bias=True by default)."""
    _cell, _G, _perm = "lstm", 4, np.array([0, 1, 2, 3])

    def __init__(self, units, **kwargs):
        if "reset_after" in kwargs:
            raise TypeError("LSTM: unexpected argument 'reset_after'")
        super().__init__(units, **kwargs)


class GRU(_RNNLayer):
    """keras.layers.GRU (gates z, r, h; reset_after=True by default, Keras 3's and cuDNN's form)."""
    _cell, _G, _perm = "gru", 3, np.array([1, 0, 2])
    _arg_names = tuple(a for a in _RNNLayer._arg_names if a != "unit_forget_bias") + ("reset_after",)

    def __init__(self, units, **kwargs):
        if "unit_forget_bias" in kwargs:
            raise TypeError("GRU: unexpected argument 'unit_forget_bias'")
        super().__init__(units, **kwargs)


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Layer):
    """keras.layers.Bidirectional(layer, merge_mode="concat"): the layer forward in time and a copy of it with
    go_backwards flipped; outputs merged by concat / sum / mul / ave (None: a list, outside Sequential).
    Weights: the forward layer's then the backward layer's, as Keras orders them."""
    supports_masking = True

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, _RNNLayer):
            raise ValueError(f"Bidirectional: expected a SimpleRNN, LSTM or GRU layer, got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"Bidirectional: merge_mode: expected one of {list(_MERGE_MODES)}, got {merge_mode!r}")
        if "input_shape" not in kwargs and layer._input_shape_arg is not None:
            kwargs["input_shape"] = layer._input_shape_arg
        kwargs.setdefault("dtype", layer.dtype)
        super().__init__(**kwargs)
        if layer.stateful:
            raise ValueError("Bidirectional: stateful layers are not supported")
        self.forward_layer = layer
        if backward_layer is None:
            cfg = layer.get_config()
            cfg["go_backwards"] = not layer.go_backwards
            cfg["name"] = "backward_" + (layer.name or type(layer).__name__.lower())
            cfg.pop("input_shape", None)
            if cfg.get("seed") is not None:
                cfg["seed"] = cfg["seed"] + 1
            backward_layer = type(layer).from_config(cfg)
        elif not isinstance(backward_layer, _RNNLayer) or backward_layer.go_backwards == layer.go_backwards:
            raise ValueError("Bidirectional: backward_layer: expected a recurrent layer whose go_backwards is the "
                             "opposite of the forward layer's")
        if backward_layer.return_sequences != layer.return_sequences or \
                backward_layer.return_state != layer.return_state:
            raise ValueError("Bidirectional: the forward and backward layers need the same return_sequences and "
                             "return_state")
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self._init_weights = weights

    def get_config(self):
        cfg = super().get_config()
        cfg["merge_mode"] = self.merge_mode
        cfg["layer"] = {"class_name": type(self.forward_layer).__name__, "config": self.forward_layer.get_config()}
        cfg["backward_layer"] = {"class_name": type(self.backward_layer).__name__,
                                 "config": self.backward_layer.get_config()}
        return cfg

    @classmethod
    def from_config(cls, config):
        from . import deserialize
        config = dict(config)
        layer = deserialize(config.pop("layer"))
        bl = config.pop("backward_layer", None)
        return cls(layer, backward_layer=None if bl is None else deserialize(bl), **config)

    def build(self, input_shape):
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)
        Layer.build(self, input_shape)
        if self._init_weights is not None:
            self.set_weights(self._init_weights)

    @property
    def sublayers(self):
        return (self.forward_layer, self.backward_layer)

    def trainable_items(self):
        if not self.trainable:
            return []
        return [(f"{i}/{n}", p, g) for i, l in enumerate(self.sublayers) for n, p, g in l.trainable_items()]

    def _rebind(self, name, param, grad=None):
        i, n = name.split("/", 1)
        self.sublayers[int(i)]._rebind(n, param, grad)

    def get_weights(self):
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights):
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.label()}.set_weights: expected a list of arrays, got {type(weights).__name__}")
        n = len(self.forward_layer._keras_shapes())
        if len(weights) != 2 * n:
            raise ValueError(f"{self.label()}.set_weights: expected {2 * n} arrays (forward then backward), "
                             f"got {len(weights)}")
        fw = self.forward_layer._check_weight_list(list(weights[:n]), self.forward_layer._keras_shapes())
        bw = self.backward_layer._check_weight_list(list(weights[n:]), self.backward_layer._keras_shapes())
        self.forward_layer._load_keras(fw)
        self.backward_layer._load_keras(bw)

    def count_params(self):
        return self.forward_layer.count_params() + self.backward_layer.count_params()

    def regularization_loss(self):
        return self.forward_layer.regularization_loss() + self.backward_layer.regularization_loss()

    def add_regularization_grads(self):
        self.forward_layer.add_regularization_grads()
        self.backward_layer.add_regularization_grads()

    def compute_output_shape(self, input_shape):
        U = self.forward_layer.units + (self.backward_layer.units if self.merge_mode == "concat" else 0)
        if self.merge_mode != "concat" and self.forward_layer.units != self.backward_layer.units:
            raise ValueError(f"Bidirectional: merge_mode {self.merge_mode!r} needs equal units")
        return (input_shape[0], U) if self.return_sequences else (U,)

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None

    def forward(self, x, mask, training, initial_state=None):
        fl, bl = self.sublayers
        yf, sf, cf = fl._core_forward(x, mask, training)
        yb, sb, cb = bl._core_forward(x, mask, training)  # the kernels' reverse direction, original positions
        if self.return_sequences:
            a, b = yf, yb  # time-major, zeros at masked steps (Keras's zero_output_for_mask)
        else:
            a, b = sf[0], sb[0]
        m = self.merge_mode
        if m == "concat":
            y = np.concatenate([a, b], axis=-1)
        elif m == "sum":
            y = a + b
        elif m == "mul":
            y = a * b
        elif m == "ave":
            y = (a + b) * 0.5
        else:
            y = None
        if self.return_sequences:
            to_bf = (lambda t: np.ascontiguousarray(t.transpose(1, 0, 2)))
            y = None if y is None else to_bf(y)
            outs = [to_bf(a), to_bf(b)] if m is None else None
        else:
            outs = [a.copy(), b.copy()] if m is None else None
        cache = (cf, cb, a, b) if training else None
        out_mask = mask if self.return_sequences else None
        result = y if m is not None else outs
        if self.return_state:
            states = [s.copy() for s in sf] + [s.copy() for s in sb]
            result = ([result] if m is not None else list(result)) + states
        return result, out_mask, cache

    def backward(self, cache, dy, dstates=None):
        if self.merge_mode is None:
            raise ValueError("Bidirectional: backward with merge_mode=None is not supported")
        cf, cb, a, b = cache
        fl, bl = self.sublayers
        if self.return_sequences:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2), dtype=self.dtype)
        m = self.merge_mode
        if m == "concat":
            Uf = fl.units
            da, db = dy[..., :Uf], dy[..., Uf:]
        elif m == "sum":
            da = db = dy
        elif m == "mul":
            da, db = dy * b, dy * a
        else:
            da = db = dy * 0.5
        n = 2 if fl._cell == "lstm" else 1
        dsf = [None] * n
        dsb = [None] * n
        if dstates is not None:
            dsf = list(dstates[:n]) + [None] * (n - len(dstates[:n]))
            dsb = list(dstates[n:2 * n]) + [None] * (n - len(dstates[n:2 * n]))
        if self.return_sequences:
            dxf = fl._core_backward(cf, np.ascontiguousarray(da), dsf)
            dxb = bl._core_backward(cb, np.ascontiguousarray(db), dsb)
        else:
            T, B = cf.T, cf.B
            dsf[0] = da if dsf[0] is None else dsf[0] + da
            dsb[0] = db if dsb[0] is None else dsb[0] + db
            dxf = fl._core_backward(cf, np.zeros((T, B, fl.units), self.dtype), dsf)
            dxb = bl._core_backward(cb, np.zeros((T, B, bl.units), self.dtype), dsb)
        return dxf + dxb

    def __call__(self, x, mask=None, training=False):
        x = self._prepare(x)
        self._ensure_built(x)
        self._check_input(x)
        y, _, _ = self.forward(x, mask, bool(training))
        return y
