"""The numpy API: fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU.

Same constructor arguments, parameter names, shapes and results as torch.nn.RNN/LSTM/GRU, on numpy arrays.
This layer validates every argument (shapes, dtypes, tapes) and raises before any C code runs, converts
`batch_first` / unbatched input to the kernels' time-major layout, and loops over layers and directions;
the time loop itself is in C (fastrnn/_core.pyx -> csrc/).
"""
import math
import weakref
from collections import OrderedDict

import numpy as np

from .. import _core

__all__ = ["RNN", "LSTM", "GRU", "Tape"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _shape_str(shape):
    """(T, B, 64) style, letters for the dims the layer cannot know."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _as_float_array(name, a, dtype):
    """`a` as an ndarray of `dtype`: floats cast, ints and bools converted, anything else a TypeError."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, possibly requiring grad
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected an array of float32 or float64 (ints and bools are converted), "
                        f"got {type(a).__name__} ({e})") from None
    kind = arr.dtype.kind
    if arr.dtype in _FLOATS or kind in "biu":
        return arr.astype(dtype, copy=False)
    raise TypeError(f"{name}: expected an array of float32 or float64 (ints and bools are converted), "
                    f"got dtype {arr.dtype}")


def _check_shape(name, arr, expected):
    """ValueError naming `expected` unless arr.shape matches it (str entries match any size)."""
    if arr.shape == expected:  # the common case, without the generator below (step() is latency-bound)
        return
    ok = arr.ndim == len(expected) and all(
        isinstance(e, str) or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        raise ValueError(f"{name}: expected shape {_shape_str(expected)}, got {_shape_str(arr.shape)}")


class Tape:
    """What a training forward keeps for backward.  Opaque: pass it to the layer's `backward`.

    `masks` is the list of the dropout masks applied between layers (empty without dropout): each is
    time-major (T, B, D*P) with entries 0 or 1/(1-dropout).
    """

    __slots__ = ("_owner", "_version", "_key", "T", "B", "batched", "lengths", "inputs", "outputs",
                 "tapes", "h0", "c0", "masks", "__weakref__")

    def __init__(self, owner, key, T, B, batched, lengths):
        self._owner = weakref.ref(owner)
        self._version = owner._version
        self._key = key
        self.T, self.B, self.batched, self.lengths = T, B, batched, lengths
        self.inputs, self.outputs, self.tapes, self.masks = [], [], [], []
        self.h0 = self.c0 = None


class _RNNBase:
    _cell = None          # _core.CELL_*
    _G = None             # gates per cell
    _has_cell_state = False

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype=np.float32, seed=None):
        for name, v, lo in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                            ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating, np.integer)):
            raise TypeError(f"dropout: expected a float in [0, 1), got {type(dropout).__name__}")
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout}")
        if proj_size and proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected 0 or a size < hidden_size ({hidden_size}), got {proj_size}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}") from None
        if dt not in _FLOATS:
            raise TypeError(f"dtype: expected np.float32 or np.float64, got {dt}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.dtype = dt
        self._version = 0
        rng = np.random.default_rng(seed)
        self._params = OrderedDict()
        self._layer_cache = {}
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in self._param_shapes():
            self._params[name] = rng.uniform(-bound, bound, size=shape).astype(dt)
        self._rng = rng  # dropout masks come from the same seeded stream, after the initial weights

    # ---- shapes ---------------------------------------------------------------------------------------------
    @property
    def _D(self):
        return 2 if self.bidirectional else 1

    @property
    def _P(self):
        """Output size of each direction: proj_size when projecting, else hidden_size."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _opt(self):
        """The cell option passed to the kernels (relu for RNN, P for LSTM, reset_after for GRU)."""
        return 0

    def _param_shapes(self):
        """(name, shape) of every parameter, in torch's order."""
        GH, P = self._G * self.hidden_size, self._P
        out = []
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else P * self._D
            for d in range(self._D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                out += [("weight_ih" + sfx, (GH, I)), ("weight_hh" + sfx, (GH, P))]
                if self.bias:
                    out += [("bias_ih" + sfx, (GH,)), ("bias_hh" + sfx, (GH,))]
                if self.proj_size > 0:
                    out += [("weight_hr" + sfx, (P, self.hidden_size))]
        return out

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def _layer_params(self, k, d):
        """(w_ih, w_hh, b_ih, b_hh, w_hr) of layer k, direction d (None where absent).  Memoised per
        parameter dict: references to the arrays, so in-place updates of the parameters are seen."""
        cache = self._layer_cache  # emptied whenever self._params is replaced (load_state_dict)
        hit = cache.get((k, d))
        if hit is not None:
            return hit
        sfx = f"_l{k}" + ("_reverse" if d else "")
        p = self._params
        out = (p["weight_ih" + sfx], p["weight_hh" + sfx], p.get("bias_ih" + sfx), p.get("bias_hh" + sfx),
               p.get("weight_hr" + sfx))
        cache[(k, d)] = out
        return out

    # ---- state dict ---------------------------------------------------------------------------------------
    def state_dict(self):
        """Copies of the parameters, keyed and shaped exactly as torch.nn's state_dict()."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state_dict):
        """Load parameters from any mapping of array-likes (a torch module's state_dict() included).
        Every key must be present with torch's shape; nothing is changed unless all entries are valid."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        extra = [k for k in state_dict.keys() if k not in self._params]
        if missing or extra:
            raise ValueError(f"state_dict: expected exactly the keys {list(self._params)}; "
                             f"missing {missing}, unexpected {extra}")
        new = OrderedDict()
        for name, old in self._params.items():
            arr = _as_float_array(name, state_dict[name], self.dtype)
            _check_shape(name, arr, old.shape)
            new[name] = np.array(arr, dtype=self.dtype, order="C", copy=True)
        self._params = new
        self._layer_cache = {}
        self._version += 1

    # ---- argument preparation -----------------------------------------------------------------------------
    def _prep_x(self, x):
        """x -> (time-major contiguous (T, B, I) array, batched?)."""
        x = _as_float_array("x", x, self.dtype)
        I = self.input_size
        if x.ndim == 2:
            _check_shape("x", x, ("T", I))
            xt, batched = x[:, None, :], False
        elif x.ndim == 3:
            if self.batch_first:
                _check_shape("x", x, ("B", "T", I))
                xt = x.transpose(1, 0, 2)
            else:
                _check_shape("x", x, ("T", "B", I))
                xt = x
            batched = True
        else:
            expected = ("B", "T", I) if self.batch_first else ("T", "B", I)
            raise ValueError(f"x: expected shape {_shape_str(expected)} (or unbatched (T, {I})), "
                             f"got {_shape_str(x.shape)}")
        if xt.shape[0] == 0 or xt.shape[1] == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, got {_shape_str(x.shape)}")
        return np.ascontiguousarray(xt), batched

    def _state_shapes(self, B, batched):
        LD, H, P = self.num_layers * self._D, self.hidden_size, self._P
        hs = (LD, B, P) if batched else (LD, P)
        cs = (LD, B, H) if batched else (LD, H)
        return hs, cs

    def _prep_state(self, name, s, B, batched, allow_none_parts):
        """hx / dstate -> time-major (L*D, B, P) [and (L*D, B, H)] contiguous arrays, or None."""
        if s is None:
            return (None, None) if self._has_cell_state else None
        hs, cs = self._state_shapes(B, batched)
        if self._has_cell_state:
            if not isinstance(s, (tuple, list)) or len(s) != 2:
                raise ValueError(f"{name}: expected a tuple (h, c) of shapes {_shape_str(hs)} and "
                                 f"{_shape_str(cs)}, got {type(s).__name__}")
            out = []
            for part, sub, shp in ((s[0], "h", hs), (s[1], "c", cs)):
                if part is None and allow_none_parts:
                    out.append(None)
                    continue
                arr = _as_float_array(f"{name}[{sub}]", part, self.dtype)
                _check_shape(f"{name} ({sub})", arr, shp)
                out.append(np.ascontiguousarray(arr if batched else arr[:, None, :]))
            return tuple(out)
        arr = _as_float_array(name, s, self.dtype)
        _check_shape(name, arr, hs)
        return np.ascontiguousarray(arr if batched else arr[:, None, :])

    def _prep_lengths(self, lengths, T, B, batched):
        if lengths is None:
            return None
        if not batched:
            raise ValueError("lengths: expected None for unbatched input (T, I)")
        if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):
            lengths = lengths.detach().cpu().numpy()
        arr = np.asarray(lengths)
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"lengths: expected integers, got dtype {arr.dtype}")
        _check_shape("lengths", arr, (B,))
        if arr.min() < 1 or arr.max() > T:
            raise ValueError(f"lengths: expected every length in [1, T={T}], got min {arr.min()}, max {arr.max()}")
        return np.ascontiguousarray(arr, dtype=np.int32)

    def _to_api_layout(self, y_tm, batched):
        """Time-major (T, B, F) -> the caller's layout (batch_first / unbatched)."""
        if not batched:
            return y_tm[:, 0, :]
        return np.ascontiguousarray(y_tm.transpose(1, 0, 2)) if self.batch_first else y_tm

    def _from_api_layout(self, name, a, T, B, batched, F):
        """dy in the caller's layout -> time-major contiguous (T, B, F)."""
        a = _as_float_array(name, a, self.dtype)
        if not batched:
            _check_shape(name, a, (T, F))
            return np.ascontiguousarray(a[:, None, :])
        if self.batch_first:
            _check_shape(name, a, (B, T, F))
            return np.ascontiguousarray(a.transpose(1, 0, 2))
        _check_shape(name, a, (T, B, F))
        return np.ascontiguousarray(a)

    def _pack_state(self, hn, cn, batched):
        if not batched:
            hn = hn[:, 0, :]
            cn = cn[:, 0, :] if cn is not None else None
        return (hn, cn) if self._has_cell_state else hn

    # ---- forward ------------------------------------------------------------------------------------------
    def __call__(self, x, hx=None, lengths=None):
        """Inference: (y, h_n) or, for LSTM, (y, (h_n, c_n)) exactly as torch.nn returns them."""
        y, state, _ = self._run(x, hx, lengths, train=False)
        return y, state

    def forward(self, x, hx=None, lengths=None, train=True):
        """(y, state, tape); `tape` (None when train=False) is what `backward` needs."""
        return self._run(x, hx, lengths, train=bool(train))

    def _run(self, x, hx, lengths, train):
        xt, batched = self._prep_x(x)
        if train and (xt is x or not xt.flags.owndata):
            xt = xt.copy()  # the tape keeps x: the caller may reuse its buffer before calling backward
        y, state, tape = self._run_time_major(xt, batched, hx, lengths, train)
        return self._to_api_layout(y, batched), state, tape

    def step(self, x_t, state=None):
        """Advance one time step: x_t (B, I) (or unbatched (I,)) and the state as `hx` -> (y_t, new_state),
        y_t (B, P) (or (P,)).  For streaming inference; equal to running the whole sequence at once."""
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence; call the layer on it")
        x = _as_float_array("x_t", x_t, self.dtype)
        I = self.input_size
        if x.ndim == 1:
            _check_shape("x_t", x, (I,))
        elif x.ndim == 2:
            _check_shape("x_t", x, ("B", I))
        else:
            raise ValueError(f"x_t: expected shape (B, {I}) or ({I},), got {_shape_str(x.shape)}")
        batched = x.ndim == 2
        xt = np.ascontiguousarray(x.reshape((1, x.shape[0] if batched else 1, I)))
        y, new_state, _ = self._run_time_major(xt, batched, state, None, False)
        return (y[0] if batched else y[0, 0]), new_state

    def _run_time_major(self, xt, batched, hx, lengths, train):
        """The layers and directions over time-major contiguous xt (T, B, I); y comes back time-major."""
        T, B, _ = xt.shape
        state = self._prep_state("hx", hx, B, batched, allow_none_parts=False)
        h0, c0 = state if self._has_cell_state else (state, None)
        lens = self._prep_lengths(lengths, T, B, batched)
        L, D, H, P, dt = self.num_layers, self._D, self.hidden_size, self._P, self.dtype
        hn = np.empty((L * D, B, P), dt)
        cn = np.empty((L * D, B, H), dt) if self._has_cell_state else None
        f64 = dt == np.float64
        tape = None
        if train:
            # The tape owns its copies of the initial state, as of x (see _run).
            h0 = None if h0 is None else h0.copy()
            c0 = None if c0 is None else c0.copy()
            tape = Tape(self, self._tape_key(T, B), T, B, batched, lens)
            tape.h0, tape.c0 = h0, c0
        inp = xt
        for k in range(L):
            out = np.empty((T, B, D * P), dt)
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_params(k, d)
                j = k * D + d
                kt = np.empty(_core.tape_len(self._cell, T, B, H, P, f64), dt) if train else None
                _core.forward(self._cell, self._opt(), T, B, inp.shape[2], H, P, d, lens, inp,
                              None if h0 is None else h0[j], None if c0 is None else c0[j],
                              w_ih, w_hh, b_ih, b_hh, w_hr, out[:, :, d * P:], D * P, hn[j],
                              None if cn is None else cn[j], kt)
                if train:
                    tape.tapes.append(kt)
            if train:
                tape.inputs.append(inp)
                tape.outputs.append(out)
            if train and self.dropout > 0 and k < L - 1:
                keep = 1.0 - self.dropout
                mask = (self._rng.random(out.shape) < keep).astype(dt) / dt.type(keep)
                tape.masks.append(mask)
                inp = out * mask
            else:
                inp = out
        return inp, self._pack_state(hn, cn, batched), tape

    def _tape_key(self, T, B):
        return (type(self).__name__, self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                self.proj_size, self.bias, self.dtype.str, self._opt(), T, B)

    # ---- backward -----------------------------------------------------------------------------------------
    def backward(self, tape, dy, dstate=None):
        """Backpropagation through time from a training forward's tape.

        dy is shaped like y; dstate like the returned state ((dh_n, dc_n) for LSTM, either may be None),
        or None.  Returns (dx, dhx, grads): dx like x, dhx like the state (zeros-shaped when hx was None),
        grads a dict keyed like state_dict()."""
        if not isinstance(tape, Tape):
            raise TypeError(f"tape: expected the Tape returned by forward(..., train=True), "
                            f"got {type(tape).__name__}")
        if tape._owner() is not self:
            raise ValueError("tape: this tape was recorded by another layer; pass it to that layer's backward")
        if tape._key != self._tape_key(tape.T, tape.B):
            raise ValueError("tape: recorded with another configuration of this layer")
        if tape._version != self._version:
            raise ValueError("tape: the parameters were reloaded (load_state_dict) after this forward; "
                             "run forward again")
        T, B, batched = tape.T, tape.B, tape.batched
        L, D, H, P, dt = self.num_layers, self._D, self.hidden_size, self._P, self.dtype
        dy_t = self._from_api_layout("dy", dy, T, B, batched, D * P)
        ds = self._prep_state("dstate", dstate, B, batched, allow_none_parts=True)
        dhn, dcn = ds if self._has_cell_state else (ds, None)
        dh0 = np.empty((L * D, B, P), dt)
        dc0 = np.empty((L * D, B, H), dt) if self._has_cell_state else None
        grads = OrderedDict((name, np.empty(shape, dt)) for name, shape in self._param_shapes())
        h0, c0 = tape.h0, tape.c0
        dout = dy_t
        for k in reversed(range(L)):
            inp, out = tape.inputs[k], tape.outputs[k]
            din = np.empty_like(inp)
            for d in range(D):
                w_ih, w_hh, _, _, w_hr = self._layer_params(k, d)
                sfx = f"_l{k}" + ("_reverse" if d else "")
                j = k * D + d
                _core.backward(self._cell, self._opt(), T, B, inp.shape[2], H, P, d, tape.lengths, inp,
                               None if h0 is None else h0[j], None if c0 is None else c0[j],
                               w_ih, w_hh, w_hr, out[:, :, d * P:], D * P, tape.tapes[j],
                               dout[:, :, d * P:], D * P, None if dhn is None else dhn[j],
                               None if dcn is None else dcn[j], din, d, dh0[j],
                               None if dc0 is None else dc0[j], grads["weight_ih" + sfx],
                               grads["weight_hh" + sfx], grads.get("bias_ih" + sfx),
                               grads.get("bias_hh" + sfx), grads.get("weight_hr" + sfx))
            if k > 0 and tape.masks:
                din *= tape.masks[k - 1]
            dout = din
        dx = self._to_api_layout(dout, batched)
        return dx, self._pack_state(dh0, dc0, batched), dict(grads)

    def __repr__(self):
        extra = ""
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if not self.bias:
            extra += ", bias=False"
        if self.batch_first:
            extra += ", batch_first=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.bidirectional:
            extra += ", bidirectional=True"
        if self.proj_size:
            extra += f", proj_size={self.proj_size}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"


class RNN(_RNNBase):
    """Elman RNN, h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = tanh or relu, as torch.nn.RNN."""
    _cell, _G = _core.CELL_RNN, 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, dtype, seed)

    def _opt(self):
        return 1 if self.nonlinearity == "relu" else 0


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o), with optional projection of h (proj_size), as torch.nn.LSTM."""
    _cell, _G, _has_cell_state = _core.CELL_LSTM, 4, True

    def _opt(self):
        return self._P


class GRU(_RNNBase):
    """GRU (gates r, z, n) as torch.nn.GRU.  reset_after=False is the original Cho et al. form
    n = tanh(x W_in^T + b_in + (r*h) W_hn^T + b_hn) (Keras's reset_after=False); it has no torch twin."""
    _cell, _G = _core.CELL_GRU, 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, dtype=np.float32, seed=None, reset_after=True):
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, dtype, seed)

    def _opt(self):
        return 1 if self.reset_after else 0
