"""fastrnn.bench: the benchmark instrument (used by `fastrnn bench` and by the pytest-benchmark suite in bench/).

For every case (cell, T, B, I, H) it

1. builds a fastrnn layer and, when torch is installed, the torch.nn layer with the same weights
   (``layer.load_state_dict(module.state_dict())``), and an ONNX Runtime session of the ONNX LSTM/GRU/RNN op
   built with onnx.helper from the same weights (gate blocks reordered for ONNX);
2. CHECKS every engine before it is timed: fastrnn's forward output, and for a training step its input
   gradient and every parameter gradient, against torch (torch's autograd forward + backward is the
   reference; torch's own no-grad forward and ONNX Runtime's output are checked against it too). Without
   torch the reference is a float64 numpy forward, and the training step is checked with a float64 central
   difference along one random direction of (x, all parameters). A result outside the tolerance is never
   timed nor reported: the row says WRONG;
3. times, with the same number of threads for everybody, fastrnn inference ``layer(x)``, the fastrnn
   training step (``forward(train=True)`` + ``backward``), torch's forward under ``torch.no_grad()``, the torch
   training step (zero grads, forward, backward of ``dy``, input gradient included), and ONNX Runtime's
   forward. The engines are timed in interleaved rounds (each round runs a short burst of every engine, in
   rotating order), so that the noise of a shared machine falls on all of them alike; a row reports the
   median over rounds of the per-call time of a burst;
4. reports ms, GFLOP/s (forward ``2*T*B*G*H*(I+H)`` flops, training step 3x that), the percentage of the
   machine's measured sgemm peak at the same thread count, and the ratio of each peer's time to fastrnn's
   (> 1: fastrnn is faster).

Nothing here needs torch, onnx, onnxruntime, threadpoolctl or matplotlib: each is imported when present.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import math
import os
import platform
import sys
import threading
import time

import numpy as np

from . import __version__
from ._core import get_isa, get_num_threads, set_num_threads
from .nn import GRU, LSTM, RNN
from .runtime import machine_info

__all__ = ["Case", "GRID_SHAPES", "QUICK_SHAPES", "DEEPBENCH", "DEEPBENCH_TRAINING", "SHAPE_SETS", "cases",
           "thread_limits", "thread_control_note", "sgemm_peak", "CaseData", "CheckResult", "Timing",
           "measure", "plan_rounds", "run", "format_table", "format_header", "machine_info", "write_json",
           "plot", "rows_from_records", "update_peaks", "wait_idle", "load_average", "TOLERANCE", "ENGINES", "MODES", "peers_available"]

ENGINES = ("fastrnn", "torch", "ort")
ENGINE_NAMES = {"fastrnn": "fastrnn", "torch": "torch", "ort": "ORT"}
MODES = ("forward", "train")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

# Normwise check: max|result - reference| / max|reference| <= TOLERANCE (float32 against float32 torch, or
# against float64 numpy). A wrong gate order or a wrong carry gives errors of order 1e-1..1; float32
# summation-order differences give 1e-6..1e-5.
TOLERANCE = 1e-3

# ---- shapes -------------------------------------------------------------------------------------------------

# (T, B, I, H): the grid of issue 4 / DESIGN.md (latency B=1, 16 with H=128; mid; large H=512, 1024).
GRID_SHAPES = ((100, 1, 64, 128), (100, 16, 64, 128), (100, 32, 128, 256), (50, 64, 512, 512),
               (25, 64, 1024, 1024))
QUICK_SHAPES = ((100, 1, 64, 128), (100, 16, 64, 128), (50, 64, 512, 512))

# DeepBench (baidu-research/DeepBench, code/kernels/rnn_problems.h), `training_set`, as
# (hidden, batch, timesteps, type). DeepBench's cuDNN runs use CUDNN_SKIP_INPUT with input size = hidden;
# here every layer has its full W_ih and I = H. "vanilla" is the ReLU RNN (DeepBench's MIOpen/cuDNN mode).
DEEPBENCH_TRAINING = (
    (1760, 16, 50, "vanilla"), (1760, 32, 50, "vanilla"), (1760, 64, 50, "vanilla"), (1760, 128, 50, "vanilla"),
    (2048, 16, 50, "vanilla"), (2048, 32, 50, "vanilla"), (2048, 64, 50, "vanilla"), (2048, 128, 50, "vanilla"),
    (2560, 16, 50, "vanilla"), (2560, 32, 50, "vanilla"), (2560, 64, 50, "vanilla"), (2560, 128, 50, "vanilla"),
    (512, 16, 25, "lstm"), (512, 32, 25, "lstm"), (512, 64, 25, "lstm"), (512, 128, 25, "lstm"),
    (1024, 16, 25, "lstm"), (1024, 32, 25, "lstm"), (1024, 64, 25, "lstm"), (1024, 128, 25, "lstm"),
    (2048, 16, 25, "lstm"), (2048, 32, 25, "lstm"), (2048, 64, 25, "lstm"), (2048, 128, 25, "lstm"),
    (4096, 16, 25, "lstm"), (4096, 32, 25, "lstm"), (4096, 64, 25, "lstm"), (4096, 128, 25, "lstm"),
    (1536, 8, 50, "lstm"), (1536, 16, 50, "lstm"), (1536, 32, 50, "lstm"),
    (256, 16, 150, "lstm"), (256, 32, 150, "lstm"), (256, 64, 150, "lstm"),
    (2816, 32, 750, "gru"), (2816, 32, 375, "gru"), (2816, 32, 187, "gru"),
    (2048, 32, 1500, "gru"), (2048, 32, 750, "gru"), (2048, 32, 375, "gru"), (2048, 32, 187, "gru"),
    (1536, 32, 1500, "gru"), (1536, 32, 750, "gru"), (1536, 32, 375, "gru"), (1536, 32, 187, "gru"),
    (2560, 32, 1500, "gru"), (2560, 32, 750, "gru"), (2560, 32, 375, "gru"), (2560, 32, 187, "gru"),
    (512, 32, 1, "gru"), (1024, 32, 1500, "gru"), (1024, 64, 1500, "gru"),
)
# The subset run by default (`--shapes deepbench`): every cell type and both ends of the size range, each
# case a few seconds per engine on a 2-core machine (the whole training set takes hours there:
# `--shapes deepbench-full`). All of them fit in 24 GiB; the largest, GRU H=2560 T=1500 B=32, needs ~6 GiB.
DEEPBENCH = (
    (1760, 16, 50, "vanilla"), (1760, 64, 50, "vanilla"), (2560, 32, 50, "vanilla"),
    (512, 16, 25, "lstm"), (512, 128, 25, "lstm"), (1024, 32, 25, "lstm"), (2048, 16, 25, "lstm"),
    (1536, 8, 50, "lstm"), (256, 32, 150, "lstm"),
    (512, 32, 1, "gru"), (1536, 32, 187, "gru"),
)
SHAPE_SETS = ("quick", "grid", "deepbench", "all", "deepbench-full")


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer shape: a single-layer, unidirectional, float32, time-major layer with biases."""
    cell: str                 # "rnn", "lstm", "gru"
    T: int
    B: int
    I: int
    H: int
    group: str = "grid"       # "grid" | "deepbench"
    nonlinearity: str = "tanh"  # RNN only

    @property
    def G(self):
        return GATES[self.cell]

    @property
    def label(self):
        return "rnn-relu" if self.cell == "rnn" and self.nonlinearity == "relu" else self.cell

    @property
    def shape(self):
        return f"{self.T},{self.B},{self.I},{self.H}"

    @property
    def id(self):
        return f"{self.label}-T{self.T}-B{self.B}-I{self.I}-H{self.H}" + ("-db" if self.group == "deepbench" else "")

    @classmethod
    def from_id(cls, s):
        """Inverse of `id`."""
        parts = s.split("-")
        group = "grid"
        if parts[-1] == "db":
            group, parts = "deepbench", parts[:-1]
        nonlin = "tanh"
        if parts[0] == "rnn" and parts[1] == "relu":
            nonlin, parts = "relu", [parts[0]] + parts[2:]
        dims = {p[0]: int(p[1:]) for p in parts[1:]}
        return cls(parts[0], dims["T"], dims["B"], dims["I"], dims["H"], group, nonlin)

    def flops(self, mode="forward"):
        """2*T*B*G*H*(I+H) per forward; a training step counts 3 forwards (forward + 2 GEMM-sized backward)."""
        f = 2.0 * self.T * self.B * self.G * self.H * (self.I + self.H)
        return f if mode == "forward" else 3.0 * f

    def memory_bytes(self):
        """Rough peak memory of a training step of every engine at once (float32)."""
        T, B, I, H, G = self.T, self.B, self.I, self.H, self.G
        return 4 * (4 * T * B * (I + H) + 8 * T * B * G * H + 8 * G * H * (I + H))


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cases(cells=("lstm", "gru", "rnn"), shapes="grid", memory_fraction=0.6):
    """The list of Cases for `shapes` in SHAPE_SETS, cell-major in the order of `cells`.
    Cases whose estimated memory exceeds `memory_fraction` of the available memory are left out."""
    if shapes not in SHAPE_SETS:
        raise ValueError(f"shapes: expected one of {SHAPE_SETS}, got {shapes!r}")
    cells = list(cells)
    for c in cells:
        if c not in GATES:
            raise ValueError(f"cell: expected one of {tuple(GATES)}, got {c!r}")
    out = []
    if shapes in ("quick", "grid", "all"):
        grid = QUICK_SHAPES if shapes == "quick" else GRID_SHAPES
        out += [Case(c, *s) for c in cells for s in grid]
    if shapes in ("deepbench", "all", "deepbench-full"):
        table = DEEPBENCH_TRAINING if shapes == "deepbench-full" else DEEPBENCH
        kind = {"vanilla": "rnn", "lstm": "lstm", "gru": "gru"}
        for c in cells:
            for H, B, T, typ in table:
                if kind[typ] == c:
                    out.append(Case(c, T, B, H, H, "deepbench", "relu" if typ == "vanilla" else "tanh"))
    avail = _mem_available()
    if avail:
        out = [c for c in out if c.memory_bytes() <= memory_fraction * avail]
    return out


# ---- optional peers -----------------------------------------------------------------------------------------

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


# ---- threads ------------------------------------------------------------------------------------------------

_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def thread_control_note():
    """What `thread_limits(n)` does on this installation, in one sentence per mechanism."""
    parts = ["fastrnn.set_num_threads(n)"]
    if _torch() is not None:
        parts.append("torch.set_num_threads(n)")
    if _ort() is not None:
        parts.append("ORT SessionOptions intra_op_num_threads=n, inter_op_num_threads=1 (sequential)")
    if _threadpoolctl() is not None:
        parts.append("threadpoolctl.threadpool_limits(n) over every BLAS and OpenMP runtime loaded "
                     "(scipy's and numpy's OpenBLAS, used by the sgemm peak and by fastrnn's GEMMs when FASTRNN_GEMM=blas; torch's OpenMP)")
    else:
        env = ", ".join(f"{k}={os.environ[k]}" for k in _BLAS_ENV if k in os.environ) or "none set"
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


# ---- machine sgemm peak -------------------------------------------------------------------------------------

_PEAKS = {}


def sgemm_peak(threads, sizes=(2048, 3072), trials=3, refresh=False):
    """The machine's float32 GEMM peak at `threads` threads, GFLOP/s: the best of `trials` runs of numpy's
    matmul, of scipy's BLAS sgemm (Fortran-ordered operands, no copies) and of fastrnn's own GEMM (the one
    its cells use, at the ISA in use) on square matrices of `sizes`.
    Cached per thread count; `refresh=True` measures again and keeps the better of the two (a peak measured
    while other processes ran is too low). Returns a dict: gflops (the best), numpy, scipy, size (of the
    best), other_cpus (CPUs other processes used during the measurement)."""
    key = (int(threads), tuple(sizes), int(trials))
    if key in _PEAKS and not refresh:
        return _PEAKS[key]
    try:
        from scipy.linalg import blas as sblas
    except Exception:  # scipy is a dependency, but keep the peak measurable without it
        sblas = None
    rng = np.random.default_rng(1)
    from . import _core
    res = {"gflops": 0.0, "numpy": 0.0, "scipy": 0.0, "fastrnn": 0.0, "size": None, "threads": int(threads)}
    c0 = _cpu_counters()
    with thread_limits(threads):
        for n in sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c = np.empty((n, n), np.float32)
            flops = 2.0 * n ** 3
            runs = [("numpy", lambda: np.matmul(a, b, out=c))]
            if sblas is not None:
                af, bf = np.asfortranarray(a), np.asfortranarray(b)
                cf = np.asfortranarray(c)
                runs.append(("scipy", lambda: sblas.sgemm(1.0, af, bf, 0.0, cf, overwrite_c=1)))
            runs.append(("fastrnn", lambda: _core.gemm(False, False, 1.0, a, b, 0.0, c)))
            for name, fn in runs:
                fn()  # warm-up (thread pool start, page faults)
                for _ in range(trials):
                    t0 = time.perf_counter()
                    fn()
                    g = flops / (time.perf_counter() - t0) / 1e9
                    if g > res[name]:
                        res[name] = g
                    if g > res["gflops"]:
                        res["gflops"], res["size"] = g, n
            del a, b, c
    res["other_cpus"] = other_cpus(c0, _cpu_counters())
    old = _PEAKS.get(key)
    if old is not None and old["gflops"] >= res["gflops"]:
        return old
    _PEAKS[key] = res
    return res


def update_peaks(rows, peaks):
    """Recompute every row's sgemm_peak_gflops / pct_peak from `peaks` ({threads: sgemm_peak dict})."""
    for row in rows:
        p = peaks.get(row["threads"])
        if not p:
            continue
        row["sgemm_peak_gflops"] = p["gflops"]
        for e in row["engines"].values():
            if "gflops" in e:
                e["pct_peak"] = 100.0 * e["gflops"] / p["gflops"]


# ---- reference implementations ------------------------------------------------------------------------------

def _sigmoid(v):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


def numpy_forward(case, sd, x):
    """float64 numpy forward of a single-layer layer in torch's definitions; y (T, B, H)."""
    f = np.float64
    x = np.asarray(x, f)
    W, R = np.asarray(sd["weight_ih_l0"], f), np.asarray(sd["weight_hh_l0"], f)
    bi, bh = np.asarray(sd["bias_ih_l0"], f), np.asarray(sd["bias_hh_l0"], f)
    T, B, _ = x.shape
    H = case.H
    xw = x @ W.T + bi
    h = np.zeros((B, H), f)
    c = np.zeros((B, H), f)
    y = np.empty((T, B, H), f)
    for t in range(T):
        if case.cell == "rnn":
            a = xw[t] + h @ R.T + bh
            h = np.maximum(a, 0.0) if case.nonlinearity == "relu" else np.tanh(a)
        elif case.cell == "lstm":
            g = xw[t] + h @ R.T + bh
            i, fg, gg, o = _sigmoid(g[:, :H]), _sigmoid(g[:, H:2 * H]), np.tanh(g[:, 2 * H:3 * H]), _sigmoid(g[:, 3 * H:])
            c = fg * c + i * gg
            h = o * np.tanh(c)
        else:
            gh = h @ R.T + bh
            r = _sigmoid(xw[t, :, :H] + gh[:, :H])
            z = _sigmoid(xw[t, :, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(xw[t, :, 2 * H:] + r * gh[:, 2 * H:])
            h = (1.0 - z) * n + z * h
        y[t] = h
    return y


def rel_err(a, ref):
    """max|a - ref| / max|ref| (inf when a has another shape or a non-finite entry)."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape or not np.all(np.isfinite(a)):
        return math.inf
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(a - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


@dataclasses.dataclass
class CheckResult:
    engine: str
    mode: str
    ok: bool
    err: float
    tol: float
    reference: str
    detail: str = ""
    inexact: bool = False   # a peer outside the tolerance of float64: timed, but flagged

    def message(self):
        return (f"{ENGINE_NAMES[self.engine]} {self.mode}{' (INEXACT)' if self.inexact else ''}: max rel err "
                f"{self.err:.2e} vs {self.reference} "
                f"(tol {self.tol:.0e}){' [' + self.detail + ']' if self.detail else ''}")


# ---- one case: data, engines, checks ------------------------------------------------------------------------

class CaseData:
    """Inputs, weights, layers and reference results of one Case (thread-count independent, except the ORT
    sessions, which are built per thread count)."""

    def __init__(self, case, seed=0, tol=TOLERANCE):
        self.case, self.seed, self.tol = case, seed, tol
        T, B, I, H = case.T, case.B, case.I, case.H
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((T, B, I), dtype=np.float32)
        self.dy = rng.standard_normal((T, B, H), dtype=np.float32)
        kw = {"nonlinearity": case.nonlinearity} if case.cell == "rnn" else {}
        cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[case.cell]
        self.layer = cls(I, H, seed=seed, **kw)
        torch = _torch()
        self.module = None
        if torch is not None:
            tcls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell]
            torch.manual_seed(seed)
            self.module = tcls(I, H, **kw)
            self.layer.load_state_dict(self.module.state_dict())
        self.sd = self.layer.state_dict()
        self._ref = None
        self._sessions = {}
        self._checks = {}
        self._torch_bufs = None

    # -- reference
    @property
    def reference(self):
        """torch autograd forward + backward (float32) when torch is installed, else the float64 numpy forward."""
        if self._ref is None:
            torch = _torch()
            if self.module is not None:
                with torch.enable_grad():
                    xt = torch.from_numpy(self.x.copy()).requires_grad_(True)
                    self.module.zero_grad(set_to_none=True)
                    y, _ = self.module(xt)
                    y.backward(torch.from_numpy(self.dy))
                grads = {n: p.grad.detach().numpy().copy() for n, p in self.module.named_parameters()}
                self.module.zero_grad(set_to_none=True)
                self._ref = {"kind": "torch.nn (autograd)", "y": y.detach().numpy().copy(),
                             "dx": xt.grad.numpy().copy(), "grads": grads}
            else:
                self._ref = {"kind": "numpy float64", "y": numpy_forward(self.case, self.sd, self.x)}
        return self._ref

    # -- engines
    def available(self, engine, mode):
        """None if (engine, mode) can run here, else why not."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if engine == "fastrnn":
            return None
        if engine == "torch":
            return None if self.module is not None else "torch is not installed"
        if engine == "ort":
            if mode == "train":
                return "ONNX Runtime is timed for inference only"
            return peers_available()["ort"]
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")

    def ort_session(self, threads):
        if threads not in self._sessions:
            ort = _ort()
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            self._sessions[threads] = ort.InferenceSession(onnx_model_bytes(self.case, self.sd), so,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def fn(self, engine, mode, threads):
        """The zero-argument callable that is timed."""
        why = self.available(engine, mode)
        if why:
            raise RuntimeError(why)
        x, dy, layer = self.x, self.dy, self.layer
        if engine == "fastrnn":
            if mode == "forward":
                return lambda: layer(x)

            def fastrnn_train_step():
                _, _, tape = layer.forward(x, train=True)
                return layer.backward(tape, dy)
            return fastrnn_train_step
        if engine == "torch":
            torch, m = _torch(), self.module
            if self._torch_bufs is None:
                self._torch_bufs = (torch.from_numpy(x), torch.from_numpy(x.copy()).requires_grad_(True),
                                    torch.from_numpy(dy))
            xt, xg, dyt = self._torch_bufs
            if mode == "forward":
                def torch_forward():
                    with torch.no_grad():
                        return m(xt)
                return torch_forward

            def torch_train_step():
                m.zero_grad(set_to_none=True)
                xg.grad = None
                y, _ = m(xg)
                y.backward(dyt)
                return y, xg.grad
            return torch_train_step
        sess = self.ort_session(threads)
        feeds = {"X": x}
        return lambda: sess.run(None, feeds)

    # -- checks
    @property
    def reference64(self):
        """torch.nn in float64 (autograd), same weights and inputs: the arbiter when an engine disagrees with the
        float32 reference (float32 torch itself can be the inexact one). None without torch."""
        if getattr(self, "_ref64", None) is None and self.module is not None:
            torch = _torch()
            tcls = type(self.module)
            kw = {"nonlinearity": self.case.nonlinearity} if self.case.cell == "rnn" else {}
            m = tcls(self.case.I, self.case.H, dtype=torch.float64, **kw)
            m.load_state_dict({k: v.detach().double() for k, v in self.module.state_dict().items()})
            with torch.enable_grad():
                xt = torch.from_numpy(self.x.astype(np.float64)).requires_grad_(True)
                y, _ = m(xt)
                y.backward(torch.from_numpy(self.dy.astype(np.float64)))
            self._ref64 = {"kind": "torch.nn float64 (autograd)", "y": y.detach().numpy(), "dx": xt.grad.numpy(),
                           "grads": {n: p.grad.numpy() for n, p in m.named_parameters()}}
        return getattr(self, "_ref64", None)

    def relu_tie_reference(self, y_engine):
        """float64 autograd of the ReLU RNN (manual loop), whose on/off pattern is float64's own except at ties:
        units whose float64 pre-activation is within float32 rounding of zero (|p| <= 64 * 2^-24 * the sum of
        the magnitudes of its terms), which take the side y_engine took (y > 0).  Which side of zero a tie
        falls on is float32 rounding luck, and one flipped unit can move the gradients by percents at large H
        (DeepBench's 50,16,1760,1760: one tie in 1.4M units, 2% on dW_hh).  Returns (reference, ties that
        took the other side than float64), or (None, 0) without torch or for another cell."""
        torch = _torch()
        if torch is None or self.case.cell != "rnn" or self.case.nonlinearity != "relu":
            return None, 0
        sd = {k: torch.from_numpy(np.asarray(v, np.float64)).requires_grad_(True) for k, v in self.sd.items()}
        w_ih, w_hh, b_ih, b_hh = (sd[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
        on_engine = torch.from_numpy(np.asarray(y_engine) > 0)
        flipped = 0
        with torch.enable_grad():
            xt = torch.from_numpy(self.x.astype(np.float64)).requires_grad_(True)
            h, ys = torch.zeros(self.case.B, self.case.H, dtype=torch.float64), []
            for t in range(self.case.T):
                p = xt[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
                with torch.no_grad():
                    scale = (xt[t].abs() @ w_ih.abs().T + b_ih.abs() + h.abs() @ w_hh.abs().T + b_hh.abs())
                    tie = p.abs() <= 64 * 2.0 ** -24 * scale
                    on = torch.where(tie, on_engine[t], p > 0)
                    flipped += int((tie & (on != (p > 0))).sum())
                h = p * on.to(torch.float64)
                ys.append(h)
            y = torch.stack(ys)
            y.backward(torch.from_numpy(self.dy.astype(np.float64)))
        ref = {"kind": "float64 autograd, ReLU ties on fastrnn's side", "y": y.detach().numpy(),
               "dx": xt.grad.numpy(), "grads": {k: v.grad.numpy() for k, v in sd.items()}}
        return ref, flipped

    @staticmethod
    def _errors(res, ref):
        """{quantity: rel err} of the quantities in `res` (y, dx, grads) that `ref` has."""
        errs = {}
        if "y" in res:
            errs["y"] = rel_err(res["y"], ref["y"])
        if "dx" in res and "dx" in ref:
            errs["dx"] = rel_err(res["dx"], ref["dx"])
        if "grads" in res and "grads" in ref:
            errs.update({k: rel_err(res["grads"][k], ref["grads"][k]) for k in ref["grads"]})
        return errs

    def _result(self, engine, mode, threads):
        """The engine's outputs as {"y", ["dx", "grads"]} numpy arrays."""
        if engine == "fastrnn" and mode == "forward":
            return {"y": self.layer(self.x)[0]}
        if engine == "fastrnn":
            y, _, tape = self.layer.forward(self.x, train=True)
            dx, _, grads = self.layer.backward(tape, self.dy)
            return {"y": y, "dx": dx, "grads": grads}
        out = self.fn(engine, mode, threads)()
        if engine == "torch" and mode == "forward":
            return {"y": out[0].numpy()}
        if engine == "torch":
            return {"y": out[0].detach().numpy(), "dx": out[1].numpy().copy(),
                    "grads": {n: p.grad.numpy().copy() for n, p in self.module.named_parameters()}}
        return {"y": out[0][:, 0]}  # ORT: Y (T, 1, B, H)

    def check(self, engine, mode, threads):
        """Run (engine, mode) once and compare it with the reference: torch float32 autograd; when an engine
        disagrees with it, torch float64 decides (the engine passes if it is within tolerance of float64).
        Without torch: a float64 numpy forward, and a central difference for the gradients. The training step
        checks y, dx and every parameter gradient. Cached per (engine, mode, threads).
        A peer (torch, ORT) outside the tolerance of float64 is still timed but flagged `inexact`."""
        key = (engine, mode, threads)
        if key in self._checks:
            return self._checks[key]
        ref = self.reference
        tol, kind = self.tol, ref["kind"]
        detail = ""
        inexact = False
        try:
            res = self._result(engine, mode, threads)
            if "dx" in ref or mode == "forward":
                errs = self._errors(res, ref)
                worst = max(errs, key=errs.get)
                err = errs[worst]
                if mode == "train":
                    detail = f"worst: {worst}; y, dx and every parameter gradient checked"
                r64 = self.reference64 if (err > tol or getattr(self, "_ref64", None) is not None) else None
                if r64 is not None:
                    e64 = self._errors(res, r64)
                    w64 = max(e64, key=e64.get)
                    # The float32 reference's own distance from float64 measures the conditioning of the
                    # problem (e.g. ReLU units whose sign flips with float32 rounding, at large H): an engine
                    # is accepted within max(tol, 2x that distance) of float64.
                    cond = max(v for k, v in self._errors(ref, r64).items() if k in e64)
                    tol_eff = max(tol, 2.0 * cond)
                    if err > tol or e64[w64] > tol_eff:
                        detail = (f"worst vs float64: {w64}; float32 torch is {cond:.1e} from float64"
                                  + (f", tolerance widened to {tol_eff:.1e}" if tol_eff > tol else "")
                                  + f"; vs float32 torch {err:.1e}")
                        err, kind, tol = e64[w64], r64["kind"], tol_eff
                    if err > tol and mode == "train" and engine == "fastrnn" and e64["y"] <= tol:
                        # y agrees with float64 but the gradients do not: ReLU units tied at zero may have
                        # fallen on the other side (relu_tie_reference); judge against float64 with our side
                        rt, flipped = self.relu_tie_reference(res["y"])
                        if rt is not None and flipped > 0:
                            et = self._errors(res, rt)
                            wt = max(et, key=et.get)
                            detail = (f"{flipped} ReLU unit(s) tied at zero in float64 (within float32 rounding) "
                                      f"on the other side; vs float64 with fastrnn's side of the ties: worst "
                                      f"{wt} {et[wt]:.1e}; vs plain float64 {err:.1e}")
                            err, kind, tol = et[wt], rt["kind"], self.tol
            else:  # no torch: numpy float64 forward + directional derivative
                e_y = rel_err(res["y"], ref["y"])
                e_d = self._directional_check(res["dx"], res["grads"])
                err = max(e_y, e_d)
                detail = f"y {e_y:.1e}; directional derivative of sum(y*dy) along (x, params) {e_d:.1e}"
                kind = "numpy float64 (central difference for the gradients)"
        except Exception as e:  # a crash is a failed check, reported like a wrong number
            err, detail = math.inf, f"{type(e).__name__}: {e}"
        ok = bool(err <= tol)
        if not ok and engine != "fastrnn" and math.isfinite(err):
            ok, inexact = True, True  # a peer is timed anyway, flagged
        res = CheckResult(engine, mode, ok, float(err), tol, kind, detail, inexact)
        self._checks[key] = res
        return res

    def _directional_check(self, dx, grads):
        """|<dx, vx> + sum <g, vW> - central difference| / sum |terms|, in float64 on the numpy forward."""
        rng = np.random.default_rng(self.seed + 1)
        vx = rng.standard_normal(self.x.shape)
        vw = {k: rng.standard_normal(v.shape) for k, v in self.sd.items()}
        dy = self.dy.astype(np.float64)
        eps = 1e-5

        def f(s):
            sd = {k: self.sd[k].astype(np.float64) + s * vw[k] for k in self.sd}
            return float(np.sum(numpy_forward(self.case, sd, self.x.astype(np.float64) + s * vx) * dy))
        fd = (f(eps) - f(-eps)) / (2 * eps)
        terms = [np.asarray(dx, np.float64) * vx] + [np.asarray(grads[k], np.float64) * vw[k] for k in vw]
        pred = sum(float(np.sum(t)) for t in terms)
        scale = sum(float(np.sum(np.abs(t))) for t in terms)
        return abs(pred - fd) / scale if scale > 0 else abs(pred - fd)


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


# ---- timing -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timing:
    median: float   # seconds per call: median over rounds of the mean of a round's burst
    q1: float
    q3: float
    min: float
    rounds: int
    iterations: int  # calls per burst

    def as_dict(self):
        return {"median_ms": 1e3 * self.median, "q1_ms": 1e3 * self.q1, "q3_ms": 1e3 * self.q3,
                "min_ms": 1e3 * self.min, "rounds": self.rounds, "iterations": self.iterations}


def _estimate(fn, burst):
    """Seconds per call after a warm-up call (a couple of calls more when they are short)."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t < burst:
        k = max(1, min(50, int(0.2 * burst / max(t, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        t = (time.perf_counter() - t0) / k
    return t


def plan_rounds(t_call, budget, burst=0.05, min_rounds=3, max_rounds=15):
    """(rounds, iterations) to spend about `budget` seconds on a callable of `t_call` seconds."""
    it = max(1, int(round(burst / max(t_call, 1e-7))))
    rounds = int(budget / max(it * t_call, 1e-7))
    return max(min_rounds, min(max_rounds, rounds)), it


def _threads_runtime():
    """Nanoseconds of CPU used so far by this process's threads other than the calling one (Linux
    /proc/self/task/*/schedstat), or None where that is not readable."""
    me = str(threading.get_native_id())
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            if tid == me:
                continue
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # the thread ended meanwhile
    except OSError:
        return None
    return total


def wait_quiet_threads(gap=0.02, max_wait=0.3, window=0.005, quiet_fraction=0.1):
    """Sleep `gap` seconds, then until this process's other threads use less than `quiet_fraction` of a CPU
    over a `window` (at most `max_wait` seconds in all).  Peers' pools keep spinning after their last call --
    ONNX Runtime's workers for ~50 ms on a Xeon VM, longer than a fixed 20 ms gap -- and on a 2-core machine
    that spinning would slow whichever engine is timed next."""
    time.sleep(gap)
    deadline = time.perf_counter() + max(0.0, max_wait - gap)
    prev = _threads_runtime()
    while prev is not None and time.perf_counter() < deadline:
        time.sleep(window)
        cur = _threads_runtime()
        if cur is None or cur - prev < quiet_fraction * window * 1e9:
            return
        prev = cur


def measure(fns, rounds=None, budget=4.0, burst=0.05, min_rounds=3, max_rounds=15, gap=0.02):
    """Interleaved timing of the callables in `fns` ({key: fn}): each round runs a burst of calls of every
    callable (rotating the order; the burst length is re-planned every round from the median so far, to
    last about `burst` seconds), the burst's mean is one sample; returns {key: Timing} with the median over
    rounds. `rounds` fixes the number of rounds; otherwise rounds continue until `budget` seconds are spent
    (at least `min_rounds`, at most `max_rounds`).  Each burst starts after `gap` seconds of idleness and
    once the process's other threads are quiet (wait_quiet_threads): thread pools (ORT's, OpenMP's,
    OpenBLAS's) keep spinning for a while after their last call."""
    keys = list(fns)
    if not keys:
        return {}
    est = {k: _estimate(fns[k], burst) for k in keys}
    samples = {k: [] for k in keys}
    its_used = {k: [] for k in keys}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    try:
        r = 0
        while True:
            if rounds:
                if r >= int(rounds):
                    break
            elif r >= max_rounds or (r >= min_rounds and time.perf_counter() - start >= budget):
                break
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in order:
                t_call = float(np.median(samples[k])) if samples[k] else est[k]
                n = max(1, int(round(burst / max(t_call, 1e-7))))
                fn = fns[k]
                if gap > 0:
                    wait_quiet_threads(gap)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[k].append((time.perf_counter() - t0) / n)
                its_used[k].append(n)
            r += 1
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for k in keys:
        s = np.asarray(samples[k])
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        out[k] = Timing(float(med), float(q1), float(q3), float(s.min()), len(s), int(np.median(its_used[k])))
    return out


def _cpu_counters():
    """(wall s, CPU-seconds busy on the whole machine incl. steal, CPU-seconds of this process) or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(a) for a in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / hz  # user nice system irq softirq steal
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def other_cpus(start, end):
    """CPUs used by other processes (and stolen by the hypervisor) between two _cpu_counters() snapshots:
    0 on an idle machine; 1 means one whole CPU was taken from us."""
    if not start or not end or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def wait_idle(max_wait=60.0, window=2.0, threshold=0.1):
    """Sleep until other processes use less than `threshold` CPUs over a `window`-second window, or until
    `max_wait` seconds have passed. Returns the last measured use (None when the OS does not tell)."""
    deadline = time.perf_counter() + max_wait
    oc = None
    while True:
        c0 = _cpu_counters()
        time.sleep(window)
        oc = other_cpus(c0, _cpu_counters())
        if oc is None or oc < threshold or time.perf_counter() >= deadline:
            return oc


def load_average():
    """1-minute load average and the usable CPUs (None when the OS does not tell)."""
    try:
        la = os.getloadavg()[0]
    except (AttributeError, OSError):
        la = None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count()
    return la, n


# ---- the run ------------------------------------------------------------------------------------------------

def run(case_list, threads_list, engines=ENGINES, modes=MODES, rounds=None, budget=4.0, tol=TOLERANCE,
        seed=0, on_row=None, on_note=None, retry_busy=0, busy_threshold=0.25, idle_wait=120.0):
    """Check and time every case at every thread count; returns the rows (also passed to `on_row` one by
    one, as they are measured). On a shared machine, `retry_busy` > 0 re-measures a (case, threads) whose
    timing overlapped other processes using more than `busy_threshold` CPUs, after waiting (up to
    `idle_wait` s) for the machine to go idle; the least disturbed measurement is kept.
    A row is one (case, threads, mode):

        {"cell", "label", "group", "T", "B", "I", "H", "threads", "mode", "flops", "sgemm_peak_gflops",
         "engines": {engine: {"ok", "check_err", "tol", "reference", "median_ms", ..., "gflops", "pct_peak"}
                     or {"skipped": reason}},
         "ratios": {peer: peer_ms / fastrnn_ms}, "ratio_best_peer": min(peer ms) / fastrnn ms}
    """
    note = on_note or (lambda s: None)
    rows = []
    for case in case_list:
        data = CaseData(case, seed=seed, tol=tol)
        for threads in threads_list:
            peak = sgemm_peak(threads)["gflops"]
            with thread_limits(threads):
                fns, checks, skipped = {}, {}, {}
                for mode in modes:
                    for eng in engines:
                        why = data.available(eng, mode)
                        if why:
                            skipped[(eng, mode)] = why
                            continue
                        chk = data.check(eng, mode, threads)
                        checks[(eng, mode)] = chk
                        if chk.ok:
                            fns[(eng, mode)] = data.fn(eng, mode, threads)
                            if chk.inexact:
                                note(f"INEXACT peer result, timed anyway: {case.id} threads={threads}: "
                                     f"{chk.message()}")
                        else:
                            note(f"REFUSED to time {case.id} threads={threads}: {chk.message()}")
                best = None
                for attempt in range(int(retry_busy) + 1):
                    if attempt:
                        note(f"retry {attempt}/{retry_busy} of {case.id} threads={threads}: other processes used "
                             f"{others:.2f} CPUs while it was timed; waiting for an idle machine")
                        wait_idle(idle_wait)
                    c0 = _cpu_counters()
                    timings = measure(fns, rounds=rounds, budget=budget)
                    others = other_cpus(c0, _cpu_counters())
                    if best is None or (others is not None and best[1] is not None and others < best[1]):
                        best = (timings, others)
                    if others is None or others <= busy_threshold:
                        break
                timings, others = best
            for mode in modes:
                row = {"cell": case.cell, "label": case.label, "group": case.group, "T": case.T, "B": case.B,
                       "I": case.I, "H": case.H, "threads": threads, "mode": mode, "flops": case.flops(mode),
                       "sgemm_peak_gflops": peak, "loadavg": load_average()[0], "other_cpus": others,
                       "engines": {}, "ratios": {},
                       "ratio_best_peer": None}
                for eng in engines:
                    k = (eng, mode)
                    if k in skipped:
                        row["engines"][eng] = {"skipped": skipped[k]}
                        continue
                    chk = checks[k]
                    e = {"ok": chk.ok, "check_err": chk.err, "tol": chk.tol, "reference": chk.reference}
                    if chk.detail:
                        e["check_detail"] = chk.detail
                    if chk.inexact:
                        e["inexact"] = True
                    if k in timings:
                        t = timings[k]
                        e.update(t.as_dict())
                        e["gflops"] = case.flops(mode) / t.median / 1e9
                        e["pct_peak"] = 100.0 * e["gflops"] / peak if peak else None
                    row["engines"][eng] = e
                fr = row["engines"].get("fastrnn", {})
                if "median_ms" in fr:
                    for eng in engines:
                        if eng != "fastrnn" and "median_ms" in row["engines"].get(eng, {}):
                            row["ratios"][eng] = row["engines"][eng]["median_ms"] / fr["median_ms"]
                    if row["ratios"]:
                        row["ratio_best_peer"] = min(row["ratios"].values())
                rows.append(row)
                if on_row:
                    on_row(row)
        data = None
        gc.collect()
    return rows


def rows_from_records(records):
    """Rows as `run` returns them, from flat per-(case, threads, mode, engine) records (the pytest-benchmark
    suite's results). A record: case_id, threads, mode, engine, ok, check_err, tol, reference,
    sgemm_peak_gflops, and when timed median_ms, q1_ms, q3_ms, min_ms, rounds, iterations (or "skipped")."""
    rows, index = [], {}
    for rec in records:
        key = (rec["case_id"], int(rec["threads"]), rec["mode"])
        if key not in index:
            case = Case.from_id(rec["case_id"])
            index[key] = {"cell": case.cell, "label": case.label, "group": case.group, "T": case.T, "B": case.B,
                          "I": case.I, "H": case.H, "threads": int(rec["threads"]), "mode": rec["mode"],
                          "flops": case.flops(rec["mode"]), "sgemm_peak_gflops": rec.get("sgemm_peak_gflops"),
                          "loadavg": rec.get("loadavg"), "engines": {}, "ratios": {}, "ratio_best_peer": None}
            rows.append(index[key])
        row = index[key]
        if rec.get("other_cpus") is not None:
            row["other_cpus"] = max(row.get("other_cpus") or 0.0, rec["other_cpus"])
        e = {k: rec[k] for k in ("ok", "check_err", "tol", "reference", "check_detail", "median_ms", "q1_ms",
                                 "q3_ms", "min_ms", "rounds", "iterations", "skipped", "inexact") if rec.get(k) is not None}
        if "median_ms" in e:
            e["gflops"] = row["flops"] / (e["median_ms"] * 1e-3) / 1e9
            peak = row["sgemm_peak_gflops"]
            e["pct_peak"] = 100.0 * e["gflops"] / peak if peak else None
        row["engines"][rec["engine"]] = e
    for row in rows:
        fr = row["engines"].get("fastrnn", {})
        if "median_ms" in fr:
            for eng, e in row["engines"].items():
                if eng != "fastrnn" and "median_ms" in e:
                    row["ratios"][eng] = e["median_ms"] / fr["median_ms"]
            if row["ratios"]:
                row["ratio_best_peer"] = min(row["ratios"].values())
    return rows


# ---- report -------------------------------------------------------------------------------------------------

_COLS = (("cell", 8, "<"), ("shape (T,B,I,H)", 17, "<"), ("thr", 3, ">"), ("mode", 7, "<"),
         ("fastrnn ms", 10, ">"), ("GFLOP/s", 7, ">"), ("%peak", 5, ">"), ("torch ms", 9, ">"), ("x torch", 7, ">"),
         ("ORT ms", 8, ">"), ("x ORT", 6, ">"), ("x best", 6, ">"), ("other", 5, ">"))


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}")


def _cell(e, key="median_ms"):
    """Table text of one engine entry."""
    if not e or "skipped" in e:
        return "-"
    if not e.get("ok", True):
        return "WRONG"
    return _fmt_ms(e.get(key)) + ("?" if e.get("inexact") else "")


def format_header():
    line = " ".join(f"{name:{al}{w}}" for name, w, al in _COLS)
    return line + "\n" + "-" * len(line)


def format_row(row):
    en = row["engines"]
    fr = en.get("fastrnn", {})
    group = "*" if row.get("group") == "deepbench" else ""
    vals = [row["label"] + group, f"{row['T']},{row['B']},{row['I']},{row['H']}", str(row["threads"]),
            "fwd" if row["mode"] == "forward" else "train", _cell(fr)]
    ok = "median_ms" in fr
    vals.append(f"{fr['gflops']:.1f}" if ok else "-")
    vals.append(f"{fr['pct_peak']:.1f}" if ok and fr.get("pct_peak") is not None else "-")
    for eng in ("torch", "ort"):
        vals.append(_cell(en.get(eng)))
        r = row["ratios"].get(eng)
        vals.append(f"{r:.2f}" if r is not None else "-")
    vals.append(f"{row['ratio_best_peer']:.2f}" if row.get("ratio_best_peer") is not None else "-")
    oc = row.get("other_cpus")
    vals.append("-" if oc is None else f"{oc:.2f}" + ("!" if oc > 0.25 else ""))
    return " ".join(f"{v:{al}{w}}" for v, (_, w, al) in zip(vals, _COLS))


def format_table(rows):
    return "\n".join([format_header()] + [format_row(r) for r in rows])


TABLE_LEGEND = ("ms: median per call; GFLOP/s and %peak: fastrnn's (forward 2*T*B*G*H*(I+H) flops, train step 3x; "
                "peak = measured sgemm at the same threads); x peer = peer ms / fastrnn ms (> 1: fastrnn "
                "faster); x best = against the fastest peer timed; fwd = inference forward, train = forward + "
                "backward (input and weight gradients); * = DeepBench training shape (I = H, vanilla = ReLU RNN); "
                "WRONG = failed the correctness check, not timed; ? = a peer's result outside the tolerance of float64 "
                "(timed anyway); - = not installed / not applicable; other = CPUs taken by "
                "other processes or the hypervisor while the row was timed (0 on an idle machine; ! above 0.25: "
                "that row's multi-threaded timings are unreliable)")


def write_json(path, rows, peaks, failures=(), extra=None):
    doc = {"schema": "fastrnn-bench/1", "created": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": sys.argv, "machine": machine_info(), "thread_control": thread_control_note(),
           "tolerance": TOLERANCE, "sgemm_peak": {str(k): v for k, v in peaks.items()},
           "flops": "forward 2*T*B*G*H*(I+H); training step 3x forward", "results": rows,
           "failures": list(failures)}
    if extra:
        doc.update(extra)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    return doc


def plot(rows, path):
    """A PNG of the speed-up of fastrnn over each peer (peer ms / fastrnn ms) per case. Needs matplotlib;
    raises ImportError with a clear message without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the PNG chart needs matplotlib (pip install matplotlib); no chart written") from None
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 0.32 * max(
        sum(r["mode"] == m for r in rows) for m in modes) + 1.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['label']} {r['T']},{r['B']},{r['I']},{r['H']} t{r['threads']}" for r in rs]
        y = np.arange(len(rs))
        peers = [p for p in ("torch", "ort") if any(p in r["ratios"] for r in rs)]
        h = 0.8 / max(1, len(peers))
        for j, p in enumerate(peers):
            ratios = [r["ratios"].get(p, 1.0) for r in rs]  # bars grow from 1: right = fastrnn faster
            ax.barh(y + (j - (len(peers) - 1) / 2) * h, [v - 1.0 for v in ratios], left=1.0, height=h,
                    label=f"{ENGINE_NAMES[p]} ms / fastrnn ms")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{mode}: speed-up of fastrnn (> 1: faster)")
        if peers:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
