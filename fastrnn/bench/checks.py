"""The correctness gate: every engine's result is checked before it is timed.

`CaseData` holds one Case's inputs, weights and layers (fastrnn's, torch.nn's with the same weights, ONNX
Runtime sessions) and checks each (engine, mode) against the reference: torch.nn's float32 autograd, with
torch in float64 as the arbiter when they disagree; without torch, fastrnn's float64 oracle
(`fastrnn.reference`, the one the tests use): its forward for the output; for a training step, its BPTT for
the input and every parameter gradient and, besides, a central difference of its forward along a random
direction of (x, parameters). `CheckResult` is the verdict.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..nn import GRU, LSTM, RNN
from ..reference import ref_backward, ref_forward
from .peers import _ort, _torch, onnx_model_bytes, peers_available
from .shapes import ENGINE_NAMES, ENGINES, MODES

# Normwise check: max|result - reference| / max|reference| <= TOLERANCE (float32 against float32 torch, or
# against float64 numpy). A wrong gate order or a wrong carry gives errors of order 1e-1..1; float32
# summation-order differences give 1e-6..1e-5.
TOLERANCE = 1e-3


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
        """torch autograd forward + backward (float32) when torch is installed, else the float64 oracle's
        forward (fastrnn.reference)."""
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
                self._ref = {"kind": "numpy float64", "y": self._oracle_y(self.sd, self.x)}
        return self._ref

    def _oracle_y(self, sd, x):
        """The output y (T, B, H) of this case's layer with parameters `sd` on x, in float64, by the oracle
        shared with the tests (fastrnn.reference.ref_forward)."""
        y, _, _ = ref_forward(self.case.cell, sd, x, nonlinearity=self.case.nonlinearity)
        return y

    def _oracle_bptt(self):
        """{"y", "dx", "grads"} of the oracle (fastrnn.reference: ref_forward + ref_backward of dy), float64."""
        if getattr(self, "_bptt", None) is None:
            y, _, cache = ref_forward(self.case.cell, self.sd, self.x, nonlinearity=self.case.nonlinearity)
            dx, _, grads = ref_backward(cache, self.dy)
            self._bptt = {"y": y, "dx": dx, "grads": grads}
        return self._bptt

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
        (measured on a DeepBench shape: docs/tuning.md, Benchmark).  Returns (reference, ties that
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
        Without torch: fastrnn's float64 oracle (fastrnn.reference), its BPTT and a central difference for
        the gradients. The training step checks y, dx and every parameter gradient. Cached per (engine, mode,
        threads).
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
            else:  # no torch: the float64 oracle's forward and BPTT, and a directional derivative
                errs = self._errors(res, self._oracle_bptt())
                worst = max(errs, key=errs.get)
                e_d = self._directional_check(res["dx"], res["grads"])
                err = max(errs[worst], e_d)
                detail = (f"worst vs the oracle's BPTT: {worst} {errs[worst]:.1e} (y, dx and every parameter "
                          f"gradient checked); directional derivative of sum(y*dy) along (x, params) {e_d:.1e}")
                kind = "numpy float64 (fastrnn.reference BPTT; central difference for the gradients)"
        except Exception as e:  # a crash is a failed check, reported like a wrong number
            err, detail = math.inf, f"{type(e).__name__}: {e}"
        ok = bool(err <= tol)
        if not ok and engine != "fastrnn" and math.isfinite(err):
            ok, inexact = True, True  # a peer is timed anyway, flagged
        res = CheckResult(engine, mode, ok, float(err), tol, kind, detail, inexact)
        self._checks[key] = res
        return res

    def _directional_check(self, dx, grads):
        """|<dx, vx> + sum <g, vW> - central difference| / sum |terms|, in float64 on the oracle's forward."""
        rng = np.random.default_rng(self.seed + 1)
        vx = rng.standard_normal(self.x.shape)
        vw = {k: rng.standard_normal(v.shape) for k, v in self.sd.items()}
        dy = self.dy.astype(np.float64)
        eps = 1e-5

        def f(s):
            sd = {k: self.sd[k].astype(np.float64) + s * vw[k] for k in self.sd}
            return float(np.sum(self._oracle_y(sd, self.x.astype(np.float64) + s * vx) * dy))
        fd = (f(eps) - f(-eps)) / (2 * eps)
        terms = [np.asarray(dx, np.float64) * vx] + [np.asarray(grads[k], np.float64) * vw[k] for k in vw]
        pred = sum(float(np.sum(t)) for t in terms)
        scale = sum(float(np.sum(np.abs(t))) for t in terms)
        return abs(pred - fd) / scale if scale > 0 else abs(pred - fd)
