"""The optional peers and what they share with fastrnn: lazy imports of torch, onnxruntime, onnx and
threadpoolctl (each imported the first time a case needs it, never by `import fastrnn.bench`), the thread
limits applied to every engine alike, and the ONNX model of one LSTM / GRU / RNN node that ONNX Runtime runs.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np

from ..runtime import BLAS_ENV, get_num_threads, set_num_threads

_MODS = {}


def _opt_import(name):
    if name not in _MODS:
        try:
            _MODS[name] = importlib.import_module(name)
        except Exception:  # ImportError, or a broken install
            _MODS[name] = None
    return _MODS[name]


def _torch():
    return _opt_import("torch")


def _ort():
    return _opt_import("onnxruntime")


def _onnx():
    return _opt_import("onnx")


def _threadpoolctl():
    return _opt_import("threadpoolctl")


def peers_available():
    """{engine: None if usable else the reason it is not}."""
    out = {"fastrnn": None}
    out["torch"] = None if _torch() is not None else "torch is not installed"
    if _ort() is None:
        out["ort"] = "onnxruntime is not installed"
    elif _onnx() is None:
        out["ort"] = "onnx is not installed (needed to build the ONNX graph)"
    else:
        out["ort"] = None
    return out


def thread_control_note():
    """What `thread_limits(n)` does on this installation, in one sentence per mechanism."""
    parts = ["fastrnn.set_num_threads(n)"]
    if _torch() is not None:
        parts.append("torch.set_num_threads(n)")
    if _ort() is not None:
        parts.append("ORT SessionOptions intra_op_num_threads=n, inter_op_num_threads=1 (sequential)")
    if _threadpoolctl() is not None:
        parts.append("threadpoolctl.threadpool_limits(n) over every BLAS and OpenMP runtime loaded "
                     "(scipy's and numpy's OpenBLAS, used by the sgemm peak and by fastrnn's GEMMs when "
                     "FASTRNN_GEMM=blas; torch's OpenMP)")
    else:
        env = ", ".join(f"{k}={os.environ[k]}" for k in BLAS_ENV if k in os.environ) or "none set"
        parts.append("BLAS threads NOT limited at run time (threadpoolctl not installed): set "
                     f"OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS before launching ({env})")
    return "; ".join(parts)


@contextlib.contextmanager
def thread_limits(n):
    """The same n threads for everybody: fastrnn, torch, the BLAS/OpenMP pools (threadpoolctl when
    installed). ORT's thread count is a session option (see `CaseData.ort_session`). Restores on exit."""
    n = int(n)
    torch = _torch()
    prev_fr = get_num_threads()
    prev_t = torch.get_num_threads() if torch is not None else None
    tpc = _threadpoolctl()
    ctl = tpc.threadpool_limits(limits=n) if tpc is not None else contextlib.nullcontext()
    try:
        with ctl:
            set_num_threads(n)
            if torch is not None:
                torch.set_num_threads(n)
            yield n
    finally:
        set_num_threads(prev_fr)
        if torch is not None:
            torch.set_num_threads(prev_t)


# ---- ONNX ---------------------------------------------------------------------------------------------------

def onnx_model_bytes(case, sd, opset=17):
    """A serialized ONNX model of one ONNX LSTM / GRU / RNN node with the weights of `sd` (torch layout)
    as initializers: X (T, B, I) -> Y (T, 1, B, H), Y_h (1, B, H) [, Y_c (1, B, H)].
    Gate blocks reordered: torch LSTM i,f,g,o -> ONNX i,o,f,c; torch GRU r,z,n -> ONNX z,r,h with
    linear_before_reset=1 (torch applies r to (h W_hn^T + b_hn)); RNN Tanh or Relu. B = [Wb, Rb]."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    H, T, Bn, I = case.H, case.T, case.B, case.I
    perm = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}[case.cell]

    def reorder(a):
        a = np.asarray(a, np.float32)
        return np.ascontiguousarray(np.concatenate([a[p * H:(p + 1) * H] for p in perm], axis=0))
    W = reorder(sd["weight_ih_l0"])[None]
    R = reorder(sd["weight_hh_l0"])[None]
    Bias = np.concatenate([reorder(sd["bias_ih_l0"]), reorder(sd["bias_hh_l0"])])[None]
    attrs = {"hidden_size": H, "direction": "forward"}
    if case.cell == "rnn":
        attrs["activations"] = ["Relu" if case.nonlinearity == "relu" else "Tanh"]
    if case.cell == "gru":
        attrs["linear_before_reset"] = 1
    outs = ["Y", "Y_h"] + (["Y_c"] if case.cell == "lstm" else [])
    node = helper.make_node({"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[case.cell], ["X", "W", "R", "B"], outs,
                            **attrs)
    out_info = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, Bn, H])]
    out_info += [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, Bn, H]) for o in outs[1:]]
    graph = helper.make_graph([node], f"fastrnn_bench_{case.label}",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, Bn, I])], out_info,
                              initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                                           numpy_helper.from_array(Bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fastrnn.bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
