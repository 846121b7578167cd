"""fastrnn.torch.RNN / LSTM / GRU and RNNCell / LSTMCell / GRUCell: subclasses of the torch.nn classes whose
forward runs fastrnn's kernels.

Everything but `forward` is torch's own (constructor, Parameters, state_dict, .to(), reset_parameters,
pickling, repr), so a module is interchangeable with its torch.nn twin.  `forward` validates as torch does
(torch's own checks, torch's messages), maps PackedSequence onto the kernels' `lengths`, and calls
fastrnn.torch.autograd.run (eager) or the torch.library custom ops (under torch.compile).  Whatever the kernels
do not cover falls back to torch.nn's implementation, with one warning per module.
"""
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _engine as E
from .autograd import infer_step as _infer_step, run as _run, torch_mask_fn

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "FastRNNWarning"]

_NP = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_PLAIN = (torch.Tensor, nn.Parameter)


class FastRNNWarning(UserWarning):
    """A fastrnn.torch module ran torch.nn's implementation for a call the kernels do not cover."""


def _is_compiling():
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def _tensor_reason(t, what, dtype=None):
    """Why the kernels cannot take tensor t (None when they can)."""
    if torch.compiler.is_compiling():  # Dynamo's fake tensors: only what the custom ops need
        if t.device.type != "cpu":
            return f"{what} is on {t.device.type}"
        if t.dtype not in _NP or (dtype is not None and t.dtype != dtype):
            return f"{what} has dtype {t.dtype}"
        return None
    if type(t) not in _PLAIN:
        return f"{what} is a {type(t).__name__}, not a plain torch.Tensor"
    if t.device.type != "cpu":
        return f"{what} is on {t.device.type}"
    if t.dtype not in _NP:
        return f"{what} has dtype {t.dtype} (the kernels have float32 and float64)"
    if dtype is not None and t.dtype != dtype:
        return f"{what} has dtype {t.dtype}, the input {dtype}"
    if t.layout != torch.strided:
        return f"{what} has layout {t.layout}"
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        return f"{what} is under a torch.func transform"
    return None


_grad_enabled = torch.is_grad_enabled
_tracing_state = torch._C._get_tracing_state
_any_autocast = torch._C._is_any_autocast_enabled
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_STRIDED = torch.strided
try:  # what torch.onnx.is_in_onnx_export() reads, without its two imports per call (3 us)
    from torch.onnx._internal.exporter import _flags as _onnx_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _onnx_globals

    def _onnx_exporting():
        return _onnx_globals.in_onnx_export or _onnx_flags._is_onnx_exporting
    _onnx_exporting()
except Exception:  # pragma: no cover - another torch layout
    _onnx_exporting = torch.onnx.is_in_onnx_export


def _plain_eager():
    """No tracing, compiling, export or autocast around this call: the fast paths' first check."""
    return not (_tracing_state() is not None or torch.compiler.is_compiling() or _any_autocast()
                or _onnx_exporting())


def _plain_state(t, dt, shape):
    """Whether t is a state tensor the fast paths take as is: a plain CPU tensor of dtype dt and this shape."""
    return type(t) is torch.Tensor and t.dtype is dt and t.is_cpu and t.shape == shape and not _wrapped(t)


def _fast_params(self, fast):
    """Whether the Parameters are the ones recorded in `fast` (none replaced, as functional_call or an
    assignment would) with their memory where it was (.to(), .data = ... move it; in-place updates keep it)."""
    get = self._parameters.get
    for w, ptr, name in fast[1]:
        if get(name) is not w or w.data_ptr() != ptr:
            return False
    return True


def _global_reason():
    if torch._C._get_tracing_state() is not None:
        return "torch.jit.trace"
    if _onnx_exporting():
        return "torch.onnx.export"
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled("cpu"):
        return "autocast"
    return None


def _compile_reason():
    try:
        if torch.compiler.is_exporting():
            return "torch.export"
    except AttributeError:  # pragma: no cover
        pass
    return None


class _FastMixin:
    """What the six classes share: the fallback rule, the spec cache, pickling without caches."""

    _fastrnn_base = None  # the torch.nn class this one stands for

    def _fastrnn_fallback(self, reason):
        if not self.__dict__.get("_fastrnn_warned"):
            self.__dict__["_fastrnn_warned"] = True
            warnings.warn(f"fastrnn.torch.{type(self).__name__}: {reason}; this module runs torch.nn's "
                          f"implementation for such calls (warned once per module)", FastRNNWarning,
                          stacklevel=3)

    def _fastrnn_params(self, ws, keys):
        """(reason, views): why the kernels cannot take the Parameters (None when they can: CPU, one float
        dtype), and their numpy views keyed by `keys` (None: make them per call).  Cached while the Parameters'
        memory stays where it is (in-place updates keep it; .to(), .data = ..., functional_call move it)."""
        ptrs = tuple([w.data_ptr() for w in ws])
        hit = self.__dict__.get("_fastrnn_pcache")
        if hit is not None and hit[0] == ptrs and hit[1] == keys:
            return hit[2], hit[3]
        reason, views = None, None
        for w in ws:
            reason = _tensor_reason(w, "a parameter", ws[0].dtype)
            if reason is not None:
                break
        if reason is None and all(w.is_contiguous() for w in ws):
            views = {k: w.detach().numpy() for k, w in zip(keys, ws)}
        self.__dict__["_fastrnn_pcache"] = (ptrs, keys, reason, views)
        return reason, views

    def forward(self, input, hx=None):
        """The fast path when the call is the kind last taken (_fastrnn_fast_forward), else the general one."""
        fast = self.__dict__.get("_fastrnn_fast")
        if fast is not None and type(input) is torch.Tensor:
            out = self._fastrnn_fast_forward(fast, input, hx)
            if out is not None:
                return out
        return self._fastrnn_forward(input, hx)

    def _fastrnn_record_fast(self, ws, names, dtype, views, keys, spec=None):
        """After a call the kernels took on views of the Parameters, record for the fast path: (the Parameters,
        (Parameter, data_ptr, name) triples it checks next time, dtype, the views, the engine's keys, a cell's
        spec or None)."""
        ws = tuple(ws)
        self.__dict__["_fastrnn_fast"] = (ws, tuple([(w, w.data_ptr(), n) for w, n in zip(ws, names)]), dtype,
                                          views, tuple(keys), spec)

    def __getstate__(self):
        state = super().__getstate__()
        return {k: v for k, v in state.items() if not k.startswith("_fastrnn_")}

    def __prepare_scriptable__(self):
        """torch.jit.script compiles torch.nn's forward: a twin of the torch.nn class sharing the Parameters."""
        twin = self._fastrnn_base.__new__(self._fastrnn_base)
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_fastrnn_")})
        return twin

    def flatten_parameters(self):
        """A no-op, as torch.nn's is on CPU (the kernels read the Parameters where they are)."""
        return None


# =========================================================================================================
# Sequence modules
# =========================================================================================================

class _FastRNNBase(_FastMixin):
    _fastrnn_cell = None

    def _fastrnn_weights(self):
        return self._flat_weights

    def _fastrnn_spec(self, dtype, batch_first):
        dropout = float(self.dropout) if self.training and self.num_layers > 1 else 0.0
        nl = getattr(self, "nonlinearity", "tanh")
        key = (dtype, batch_first, dropout, self.input_size, self.hidden_size, self.num_layers, self.bias,
               self.bidirectional, self.proj_size, nl)
        cache = self.__dict__.get("_fastrnn_specs")
        if cache is None:
            cache = self.__dict__["_fastrnn_specs"] = {}
        spec = cache.get(key)
        if spec is None:
            spec = E.make_spec(self._fastrnn_cell, self.input_size, self.hidden_size, self.num_layers,
                               self.bias, batch_first, dropout, self.bidirectional, self.proj_size, nl, _NP[dtype])
            keys = tuple(k for k, _ in E.param_shapes(spec))
            if keys != tuple(self._flat_weights_names):
                raise RuntimeError(f"fastrnn.torch: parameter names {list(self._flat_weights_names)} do not "
                                   f"match the engine's {list(keys)}")
            cache[key] = spec
        return spec

    def _fastrnn_reason(self, input, hx):
        """(reason to fall back, parameter views)."""
        compiling = _is_compiling()
        r = _compile_reason() if compiling else _global_reason()
        if r is not None:
            return r, None
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, torch.Tensor):
            return None, None  # let torch's forward raise its own error
        r = _tensor_reason(data, "the input")
        views = None
        if r is None:
            if compiling:
                ws = self._flat_weights
                r = next((q for q in (_tensor_reason(w, "a parameter", ws[0].dtype) for w in ws) if q), None)
            else:
                r, views = self._fastrnn_params(self._flat_weights, tuple(self._flat_weights_names))
        if r is None and hx is not None:
            for h in (hx if isinstance(hx, (tuple, list)) else (hx,)):
                if isinstance(h, torch.Tensor):
                    r = _tensor_reason(h, "hx")
                    if r is not None:
                        break
        if r is None and self._fastrnn_cell == "rnn" and self.mode not in ("RNN_TANH", "RNN_RELU"):
            r = f"mode {self.mode}"
        return r, views

    def _fastrnn_fast_forward(self, fast, x, hx):
        """The common call, checked cheaply (a few us at B = 1): a plain CPU tensor of the recorded dtype, of
        rank 2 or 3 with input_size features; hx None or batched plain tensors of the exact state shapes;
        the Parameters as recorded; plain eager mode.  None: anything else, for the general path to decide
        (fall back, or raise torch's error)."""
        dt = fast[2]
        if x.dtype is not dt or not x.is_cpu or x.layout is not _STRIDED or not _plain_eager() or _wrapped(x) \
                or not _fast_params(self, fast):
            return None
        bf = self.batch_first
        spec = self.__dict__["_fastrnn_specs"].get((dt, bf, self.training, self.dropout))
        if spec is None:
            return None
        nd = x.dim()
        if nd == 2 and hx is None:
            x3 = x.unsqueeze(0 if bf else 1)
        elif nd == 3:
            x3 = x
        else:
            return None
        if x3.shape[2] != self.input_size:
            return None
        lstm = spec.cell_name == "lstm"
        h0 = c0 = None
        if hx is not None:
            hs, cs = spec.state_shapes(x3.shape[0 if bf else 1])
            if lstm:
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                h0, c0 = hx
                if not _plain_state(c0, dt, cs):
                    return None
            else:
                h0 = hx
            if not _plain_state(h0, dt, hs):
                return None
        mask_fn = torch_mask_fn(spec.dropout, dt) if spec.dropout > 0 else None
        outs = _run(spec, fast[4], fast[0], x3, h0, c0, None, mask_fn, fast[3])
        if nd == 2:
            y = outs[0].squeeze(0 if bf else 1)
            return (y, (outs[1].squeeze(1), outs[2].squeeze(1))) if lstm else (y, outs[1].squeeze(1))
        return (outs[0], (outs[1], outs[2])) if lstm else (outs[0], outs[1])


    def _fastrnn_forward(self, input, hx=None):
        ps, ws = self._parameters, self._flat_weights
        for n, w in zip(self._flat_weights_names, ws):
            if ps.get(n) is not w:  # a Parameter replaced or swapped out (functional_call): torch's refresh
                self._update_flat_weights()
                break
        reason, views = self._fastrnn_reason(input, hx)
        if reason is not None:
            self._fastrnn_fallback(reason)
            return self._fastrnn_base.forward(self, input, hx)
        lstm = self._fastrnn_cell == "lstm"
        name = type(self).__name__
        orig_hx = hx
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
                self.check_forward_args(data, hx, batch_sizes)
            else:
                self.check_input(data, batch_sizes)
            # Padded time-major + lengths: the kernels do no work on the padding.
            x, lens = torch._VF._pad_packed_sequence(data, batch_sizes, False, 0.0, batch_sizes.shape[0])
            batch_first, batched = False, True
        else:
            if input.dim() not in (2, 3):
                if self._fastrnn_cell == "rnn":
                    raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            batch_first = self.batch_first
            x = input if batched else input.unsqueeze(0 if batch_first else 1)
            if hx is not None:
                if lstm:
                    want = 3 if batched else 2
                    if hx[0].dim() != want or hx[1].dim() != want:
                        kind = "batched 3-D" if batched else "unbatched 2-D"
                        raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                           f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                    if not batched:
                        hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                else:
                    if batched and hx.dim() != 3:
                        raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got "
                                           f"{hx.dim()}-D tensor")
                    if not batched:
                        if hx.dim() != 2:
                            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got "
                                               f"{hx.dim()}-D tensor")
                        hx = hx.unsqueeze(1)
                self.check_forward_args(x, hx, None)
            else:
                self.check_input(x, None)
            lens = None
            sorted_indices = unsorted_indices = None
        h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        if (h0 is not None and h0.dtype != x.dtype) or (c0 is not None and c0.dtype != x.dtype):
            return self._fastrnn_base.forward(self, input, orig_hx)  # torch raises its own error
        if _is_compiling():
            from . import ops
            dropout = float(self.dropout) if self.training and self.num_layers > 1 else 0.0
            key = ops.spec_key(self._fastrnn_cell, self.input_size, self.hidden_size, self.num_layers, self.bias,
                               batch_first, dropout, self.bidirectional, self.proj_size,
                               getattr(self, "nonlinearity", "tanh"), x.dtype == torch.float64)
            outs = ops.rnn_call(key, lstm, self._flat_weights, x, h0, c0, lens)
        else:
            spec = self._fastrnn_spec(x.dtype, batch_first)
            mask_fn = torch_mask_fn(spec.dropout, x.dtype) if spec.dropout > 0 else None
            outs = _run(spec, self._flat_weights_names, self._flat_weights, x, h0, c0,
                        None if lens is None else lens.numpy(), mask_fn, views)
            if views is not None:
                self.__dict__["_fastrnn_specs"][(x.dtype, batch_first, self.training, self.dropout)] = spec
                names = tuple(self._flat_weights_names)
                self._fastrnn_record_fast(self._flat_weights, names, x.dtype, views, names)
        y, hidden = outs[0], (tuple(outs[1:]) if lstm else outs[1])
        if isinstance(input, PackedSequence):
            ydata, _ = torch._VF._pack_padded_sequence(y, lens, False)
            return PackedSequence(ydata, batch_sizes, sorted_indices, unsorted_indices), \
                self.permute_hidden(hidden, unsorted_indices)
        if not batched:
            y = y.squeeze(0 if batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return y, hidden


class RNN(_FastRNNBase, nn.RNN):
    """torch.nn.RNN on fastrnn's kernels (same arguments, Parameters and results)."""
    _fastrnn_base, _fastrnn_cell = nn.RNN, "rnn"


class LSTM(_FastRNNBase, nn.LSTM):
    """torch.nn.LSTM on fastrnn's kernels (same arguments, Parameters and results; proj_size included)."""
    _fastrnn_base, _fastrnn_cell = nn.LSTM, "lstm"


class GRU(_FastRNNBase, nn.GRU):
    """torch.nn.GRU on fastrnn's kernels (same arguments, Parameters and results)."""
    _fastrnn_base, _fastrnn_cell = nn.GRU, "gru"


# =========================================================================================================
# Cells: one time step of a one-layer network (the same kernels with T = 1)
# =========================================================================================================

_CELL_KEYS = {"weight_ih": "weight_ih_l0", "weight_hh": "weight_hh_l0", "bias_ih": "bias_ih_l0",
              "bias_hh": "bias_hh_l0"}


class _FastCellBase(_FastMixin):
    _fastrnn_cell = None

    def _fastrnn_names(self):
        return ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")

    def _fastrnn_weights(self):
        return [getattr(self, n) for n in self._fastrnn_names()]

    def _fastrnn_spec(self, dtype):
        nl = getattr(self, "nonlinearity", "tanh")
        key = (dtype, self.input_size, self.hidden_size, self.bias, nl)
        cache = self.__dict__.get("_fastrnn_specs")
        if cache is None:
            cache = self.__dict__["_fastrnn_specs"] = {}
        spec = cache.get(key)
        if spec is None:
            spec = E.make_spec(self._fastrnn_cell, self.input_size, self.hidden_size, 1, self.bias, False, 0.0,
                               False, 0, nl, _NP[dtype])
            cache[key] = spec
        return spec

    def _fastrnn_reason(self, input, hx):
        compiling = _is_compiling()
        r = _compile_reason() if compiling else _global_reason()
        if r is not None or not isinstance(input, torch.Tensor):
            return r, None
        r = _tensor_reason(input, "the input")
        views = None
        if r is None:
            ws = self._fastrnn_weights()
            if compiling:
                r = next((q for q in (_tensor_reason(w, "a parameter", ws[0].dtype) for w in ws) if q), None)
            else:
                r, views = self._fastrnn_params(ws, tuple(_CELL_KEYS[n] for n in self._fastrnn_names()))
        if r is None and hx is not None:
            for h in (hx if isinstance(hx, (tuple, list)) else (hx,)):
                if isinstance(h, torch.Tensor):
                    r = _tensor_reason(h, "hx")
                    if r is not None:
                        break
        if r is None and getattr(self, "nonlinearity", "tanh") not in ("tanh", "relu"):
            r = f"nonlinearity {self.nonlinearity!r}"
        return r, views

    def _fastrnn_check(self, x, hs):
        """torch's checks of a cell's input and hidden sizes (check_rnn_cell_forward_*), torch's messages."""
        if x.dtype != self.weight_ih.dtype:
            return False  # torch's kernels raise their own error
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        for i, h in enumerate(hs):
            if h.dim() != 2 or h.dtype != x.dtype:
                return False
            if h.size(0) != x.size(0):
                raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected "
                                   f"{self.hidden_size}")
        return True

    def _fastrnn_fast_forward(self, fast, x, hx):
        """The common call (a step of a Python loop at small B: every us counts), checked cheaply: a batched
        plain CPU tensor of the recorded dtype and input_size, hx None or plain tensors of shape (B, H), the
        Parameters as recorded, plain eager mode.  None: the general path decides."""
        dt = fast[2]
        if x.dtype is not dt or not x.is_cpu or x.layout is not _STRIDED or x.dim() != 2 \
                or x.shape[1] != self.input_size or not _plain_eager() or _wrapped(x) or not _fast_params(self, fast):
            return None
        lstm = self._fastrnn_cell == "lstm"
        h0 = c0 = None
        h = c = None
        if hx is not None:
            want = (x.shape[0], self.hidden_size)
            if lstm:
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                h, c = hx
                if not _plain_state(c, dt, want):
                    return None
                c0 = c.unsqueeze(0)
            else:
                h = hx
            if not _plain_state(h, dt, want):
                return None
            h0 = h.unsqueeze(0)
        if not _grad_enabled() or not (x.requires_grad or (h is not None and h.requires_grad) or (
                c is not None and c.requires_grad) or any([w.requires_grad for w in fast[0]])):
            # no autograd: straight to the kernel when every operand is C-contiguous (the kernels' layout)
            if x.is_contiguous() and (h is None or h.is_contiguous()) and (c is None or c.is_contiguous()):
                return _infer_step(fast[5], fast[4], fast[3], x, h, c)
        outs = _run(fast[5], fast[4], fast[0], x.unsqueeze(0), h0, c0, None, None, fast[3])
        return (outs[1][0], outs[2][0]) if lstm else outs[1][0]

    def _fastrnn_forward(self, input, hx=None):
        reason, views = self._fastrnn_reason(input, hx)
        if reason is not None:
            self._fastrnn_fallback(reason)
            return self._fastrnn_base.forward(self, input, hx)
        lstm = self._fastrnn_cell == "lstm"
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if lstm:
                for idx, value in enumerate(hx):
                    if value.dim() not in (1, 2):
                        raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
            elif hx.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        hs = ()
        if hx is not None:
            hs = tuple(hx) if lstm else (hx,)
            if not batched:
                hs = tuple(h.unsqueeze(0) for h in hs)
        if not self._fastrnn_check(x, hs):  # a case torch's kernels judge (and reject): let torch raise
            return self._fastrnn_base.forward(self, input, hx)
        names = self._fastrnn_names()
        weights = [getattr(self, n) for n in names]
        h0 = hs[0].unsqueeze(0) if hs else None
        c0 = hs[1].unsqueeze(0) if lstm and hs else None
        x3 = x.unsqueeze(0)
        if _is_compiling():
            from . import ops
            key = ops.spec_key(self._fastrnn_cell, self.input_size, self.hidden_size, 1, self.bias, False, 0.0,
                               False, 0, getattr(self, "nonlinearity", "tanh"), x.dtype == torch.float64)
            outs = ops.rnn_call(key, lstm, weights, x3, h0, c0, None)
        else:
            spec = self._fastrnn_spec(x.dtype)
            keys = tuple(_CELL_KEYS[n] for n in names)
            outs = _run(spec, keys, weights, x3, h0, c0, None, None, views)
            if views is not None:
                self._fastrnn_record_fast(weights, names, x.dtype, views, keys, spec)
        if lstm:
            h, c = outs[1][0], outs[2][0]
            return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
        h = outs[1][0]
        return h if batched else h.squeeze(0)


class RNNCell(_FastCellBase, nn.RNNCell):
    """torch.nn.RNNCell on fastrnn's kernels."""
    _fastrnn_base, _fastrnn_cell = nn.RNNCell, "rnn"


class LSTMCell(_FastCellBase, nn.LSTMCell):
    """torch.nn.LSTMCell on fastrnn's kernels."""
    _fastrnn_base, _fastrnn_cell = nn.LSTMCell, "lstm"


class GRUCell(_FastCellBase, nn.GRUCell):
    """torch.nn.GRUCell on fastrnn's kernels."""
    _fastrnn_base, _fastrnn_cell = nn.GRUCell, "gru"
