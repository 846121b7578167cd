"""Shared test helpers: tolerances (stated once, here), comparisons, random cases, torch and fastrnn glue.

Nothing here imports fastrnn or torch at module level: tests/test_reference.py runs without fastrnn, and
the torch-dependent files importorskip torch themselves.
"""

import math
from dataclasses import dataclass, field, replace

import numpy as np

from fastrnn import reference as ref

# =========================================================================================================
# Tolerances -- the only place they are stated.
#
# Every number the engine produces is a long chain of rounded multiply-adds: a forward output is built from
# T steps, each a dot product of length I + G*H (the input and recurrent products of all gates), and a
# gradient adds to that the sums over T*B rows of the weight-gradient GEMMs.  With round-to-nearest the
# rounding errors of an n-term sum behave like a random walk, |error| ~ lambda * u * sqrt(n) * (size of the
# terms) (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019), u the unit
# roundoff.  So the bound is
#
#     rel_err <= SAFETY * eps(dtype) * sqrt(depth),    depth = L * T * (I' + G*H + B),  I' = max(I, D*P)
#
# measured normwise: max|actual - expected| / max|expected| over the whole array (elementwise relative
# error is meaningless where a value crosses zero).  SAFETY = 16 covers lambda ~ 5 (a 1e-6 tail over the
# thousands of elements we compare), activation approximations "accurate to a few ulps" (docs/design.md, Tolerances), and a
# modest amplification of errors through the recurrence of contractive, torch-initialised weights.  For
# float32 with T=10, I=H=16, LSTM that is 16 * 1.2e-7 * sqrt(10*(16+64+4)) ~ 5.5e-5; for float64 ~ 1e-13.
# A real kernel bug (a wrong gate, index, carry or mask) is orders of magnitude above either.
#
# When both sides carry their own rounding (fastrnn float32 vs torch float32), the bound is the sum of the
# two bounds: `sources=2`.  Do not loosen SAFETY to make a test pass; a failure is a finding.
# =========================================================================================================

SAFETY = 16.0
EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps),
       np.dtype(np.float64): float(np.finfo(np.float64).eps)}

# Central finite differences in float64 (tests/test_gradcheck.py): with step h the truncation error is
# ~h^2 |f'''| / 6 ~ 1e-12 and the cancellation error ~eps |L| / h ~ 1e-9 for |L| ~ 10, so a derivative is
# good to ~1e-8 absolute; FD_RTOL = 1e-6 of max(1, max|analytic grad|) leaves a 100x margin and is still
# five orders of magnitude below what a wrong derivative gives.
FD_STEP = 1e-6
FD_RTOL = 1e-6


def tolerance(dtype, depth, sources=1):
    """Normwise relative tolerance for a result of the given dtype and accumulation depth."""
    return sources * SAFETY * EPS[np.dtype(dtype)] * math.sqrt(max(int(depth), 1))


def accumulation_depth(T, B, I, H, G, L=1, D=1, P=None):
    """depth = L * T * (I' + G*H + B): see the comment above."""
    P = H if not P else P
    return L * T * (max(I, D * P) + G * H + B)


# Largest error seen, per (suite, dtype): filled by assert_close(record=...), printed by conftest at the end.
RECORD = {}


def _record(suite, dtype, rel, tol, name):
    key = (suite, np.dtype(dtype).name)
    best = RECORD.get(key)
    if best is None:
        RECORD[key] = dict(max_rel=rel, tol_at_max=tol, name_at_max=name, max_ratio=rel / tol,
                           name_at_ratio=name, count=1)
        return
    best["count"] += 1
    if rel > best["max_rel"]:
        best.update(max_rel=rel, tol_at_max=tol, name_at_max=name)
    if rel / tol > best["max_ratio"]:
        best.update(max_ratio=rel / tol, name_at_ratio=name)


def errors(actual, expected):
    """(max abs error, normwise relative error)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - e)
    if not np.all(np.isfinite(diff)):
        return math.inf, math.inf
    abs_err = float(diff.max())
    scale = float(np.abs(e).max())
    return abs_err, abs_err / (scale if scale > 0 else 1.0)


def assert_close(actual, expected, dtype, depth, name, *, sources=1, record=None):
    """Assert |actual - expected| within tolerance(dtype, depth, sources), normwise; report both errors."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    tol = tolerance(dtype, depth, sources)
    abs_err, rel = errors(actual, expected)
    if record is not None:
        _record(record, dtype, rel, tol, name)
    assert rel <= tol, (f"{name}: max abs error {abs_err:.3e}, normwise rel error {rel:.3e} > tol {tol:.3e} "
                        f"(dtype {np.dtype(dtype).name}, depth {depth}, max|expected| "
                        f"{float(np.abs(expected).max()) if expected.size else 0:.3e})")


def assert_state_close(actual, expected, dtype, depth, name, **kw):
    """State-like values: an array, or a tuple (h, c) for LSTM."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), \
            f"{name}: expected a tuple of {len(expected)}, got {type(actual).__name__}"
        for part, a, e in zip(("h", "c"), actual, expected):
            assert_close(a, e, dtype, depth, f"{name}[{part}]", **kw)
    else:
        assert not isinstance(actual, tuple), f"{name}: expected an array, got a tuple"
        assert_close(actual, expected, dtype, depth, name, **kw)


def assert_grads_close(actual, expected, dtype, depth, name="grads", **kw):
    assert set(actual) == set(expected), \
        f"{name}: keys {sorted(actual)} != expected {sorted(expected)}"
    for k in expected:
        assert_close(actual[k], expected[k], dtype, depth, f"{name}[{k}]", **kw)


# =========================================================================================================
# Cases
# =========================================================================================================

VARIANTS = {
    # name: (cell, extra options)
    "rnn_tanh": ("rnn", dict(nonlinearity="tanh")),
    "rnn_relu": ("rnn", dict(nonlinearity="relu")),
    "lstm": ("lstm", dict()),
    "lstm_proj": ("lstm", dict(proj_size=3)),
    "gru": ("gru", dict()),
    "gru_reset_before": ("gru", dict(reset_after=False)),
}
TORCH_VARIANTS = [v for v in VARIANTS if v != "gru_reset_before"]


@dataclass
class Case:
    cell: str
    T: int = 5
    B: int = 3
    I: int = 4
    H: int = 6
    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    proj_size: int = 0
    nonlinearity: str = "tanh"
    reset_after: bool = True
    batch_first: bool = False
    lengths: tuple = None        # None: every sequence has T steps
    with_hx: bool = True
    dropout: float = 0.0
    unbatched: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def variant(cls, name, **kw):
        cell, opts = VARIANTS[name]
        opts = dict(opts)
        opts.update(kw)
        if opts.get("proj_size"):
            opts["proj_size"] = min(opts["proj_size"], opts.get("H", cls.H) - 1)
        return cls(cell=cell, **opts)

    def but(self, **kw):
        return replace(self, **kw)

    @property
    def G(self):
        return ref.GATES[self.cell]

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def P(self):
        return self.proj_size if (self.cell == "lstm" and self.proj_size) else self.H

    @property
    def depth(self):
        return accumulation_depth(self.T, self.B, self.I, self.H, self.G, self.num_layers, self.D, self.P)

    def __str__(self):
        bits = [self.cell, f"T{self.T}", f"B{self.B}", f"I{self.I}", f"H{self.H}"]
        if self.cell == "rnn":
            bits.append(self.nonlinearity)
        if self.proj_size:
            bits.append(f"P{self.proj_size}")
        if not self.reset_after:
            bits.append("reset_before")
        if self.num_layers > 1:
            bits.append(f"L{self.num_layers}")
        if self.bidirectional:
            bits.append("bidir")
        if not self.bias:
            bits.append("nobias")
        if self.batch_first:
            bits.append("batch_first")
        if self.lengths is not None:
            bits.append("len" + "-".join(map(str, self.lengths)))
        if not self.with_hx:
            bits.append("nohx")
        if self.unbatched:
            bits.append("unbatched")
        if self.dropout:
            bits.append(f"drop{self.dropout}")
        return "_".join(bits)

    def ref_kwargs(self):
        return dict(num_layers=self.num_layers, bidirectional=self.bidirectional,
                    nonlinearity=self.nonlinearity, reset_after=self.reset_after,
                    proj_size=self.proj_size if self.cell == "lstm" else 0,
                    lengths=None if self.lengths is None else np.asarray(self.lengths))

    def shapes(self):
        return ref.param_shapes(self.cell, self.I, self.H, self.num_layers, self.bidirectional, self.bias,
                                self.proj_size if self.cell == "lstm" else 0)

    def state_shapes(self):
        """Time-major batched state shapes: [(L*D, B, P)] or [(L*D, B, P), (L*D, B, H)]."""
        LD = self.num_layers * self.D
        if self.cell == "lstm":
            return [(LD, self.B, self.P), (LD, self.B, self.H)]
        return [(LD, self.B, self.H)]


def random_params(case, dtype=np.float64, seed=0, scale=1.0):
    """torch's init U(-1/sqrt(H), 1/sqrt(H)) (times scale), rounded to dtype, returned as float64 arrays
    holding exactly the dtype's values (so a float32 layer and the float64 reference see the same numbers)."""
    rng = np.random.default_rng(seed)
    k = scale / math.sqrt(case.H)
    return {name: rng.uniform(-k, k, size=shape).astype(dtype).astype(np.float64)
            for name, shape in case.shapes().items()}


def random_lengths(rng, T, B):
    """Lengths in [1, T] with at least one full-length and (when B > 1) at least one short sequence."""
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T
    if B > 1 and T > 1:
        j = rng.integers(B)
        if lengths[j] == T and np.sum(lengths == T) > 1:
            lengths[j] = rng.integers(1, T)
    return tuple(int(v) for v in lengths)


@dataclass
class Data:
    """Time-major batched float64 arrays (holding values exact in the case's dtype)."""
    x: np.ndarray
    hx: object            # None, array, or (h0, c0)
    dy: np.ndarray
    dstate: object        # array or (dh_n, dc_n)


def random_data(case, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype).astype(np.float64)

    x = r(case.T, case.B, case.I)
    states = [r(*s) * 0.5 for s in case.state_shapes()]
    hx = None
    if case.with_hx:
        hx = tuple(states) if case.cell == "lstm" else states[0]
    dy = r(case.T, case.B, case.D * case.P)
    ds = [r(*s) for s in case.state_shapes()]
    dstate = tuple(ds) if case.cell == "lstm" else ds[0]
    return Data(x, hx, dy, dstate)


def reference_run(case, params, data, masks=None):
    """Reference forward + backward on time-major batched data; returns a dict of float64 results."""
    y, state, cache = ref.ref_forward(case.cell, params, data.x, data.hx, masks=masks, **case.ref_kwargs())
    dx, dhx, grads = ref.ref_backward(cache, data.dy, data.dstate)
    return dict(y=y, state=state, dx=dx, dhx=dhx, grads=grads)


# ---- layout conversions between the reference's time-major batched arrays and the API's ----------------

def _map_state(state, fn):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def to_api_seq(case, a, dtype):
    """(T, B, ·) time-major -> the layout the layer takes/returns for x, y, dx, dy."""
    a = np.asarray(a)
    if case.unbatched:
        assert a.shape[1] == 1
        a = a[:, 0]
    elif case.batch_first:
        a = a.transpose(1, 0, 2)
    return np.ascontiguousarray(a, dtype=dtype)


def from_api_seq(case, a):
    a = np.asarray(a)
    if case.unbatched:
        return a[:, None]
    if case.batch_first:
        return a.transpose(1, 0, 2)
    return a


def to_api_state(case, s, dtype):
    return _map_state(s, lambda a: np.ascontiguousarray(a[:, 0] if case.unbatched else a, dtype=dtype))


def from_api_state(case, s):
    return _map_state(s, lambda a: np.asarray(a)[:, None] if case.unbatched else np.asarray(a))


# =========================================================================================================
# fastrnn glue
# =========================================================================================================

def fastrnn_layer(case, dtype, params=None, seed=0, **extra):
    """A fastrnn layer built from the case's options; loads params (cast to dtype) when given."""
    import fastrnn
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[case.cell]
    kw = dict(input_size=case.I, hidden_size=case.H, num_layers=case.num_layers, bias=case.bias,
              batch_first=case.batch_first, dropout=case.dropout, bidirectional=case.bidirectional,
              dtype=dtype, seed=seed)
    if case.cell == "rnn":
        kw["nonlinearity"] = case.nonlinearity
    if case.cell == "lstm" and case.proj_size:
        kw["proj_size"] = case.proj_size
    if case.cell == "gru" and not case.reset_after:
        kw["reset_after"] = False
    kw.update(case.extra)
    kw.update(extra)
    layer = cls(**kw)
    if params is not None:
        layer.load_state_dict({k: np.asarray(v, dtype=dtype) for k, v in params.items()})
    return layer


def lengths_kw(case):
    return {} if case.lengths is None else dict(lengths=np.asarray(case.lengths))


def fastrnn_run(case, layer, data, dtype, backward=True):
    """Inference forward, training forward and backward of `layer` on the case's data, in API layout;
    returns time-major batched results (as returned, not cast) for comparison with reference_run."""
    x = to_api_seq(case, data.x, dtype)
    hx = to_api_state(case, data.hx, dtype)
    out = {}
    y, state = layer(x, hx, **lengths_kw(case))
    out["infer_y"], out["infer_state"] = from_api_seq(case, y), from_api_state(case, state)
    y, state, tape = layer.forward(x, hx, train=True, **lengths_kw(case))
    out["y"], out["state"], out["tape"] = from_api_seq(case, y), from_api_state(case, state), tape
    out["raw_y"] = y
    if backward:
        dy = to_api_seq(case, data.dy, dtype)
        dstate = to_api_state(case, data.dstate, dtype)
        dx, dhx, grads = layer.backward(tape, dy, dstate)
        out["dx"], out["dhx"], out["grads"] = from_api_seq(case, dx), from_api_state(case, dhx), grads
    return out


# =========================================================================================================
# torch glue
# =========================================================================================================

def torch_dtype(dtype):
    import torch
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def torch_module(case, dtype, params=None):
    """torch.nn.RNN/LSTM/GRU with the case's options (no reset_after=False in torch)."""
    import torch
    # One intra-op thread: these shapes are tiny, and on a loaded 2-core CI machine torch's spinning OpenMP
    # threads cost more than the work (seconds per case).  Numerics do not depend on it.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    assert case.reset_after, "torch has no reset_after=False GRU"
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell]
    kw = dict(num_layers=case.num_layers, bias=case.bias, batch_first=case.batch_first,
              dropout=0.0, bidirectional=case.bidirectional, dtype=torch_dtype(dtype))
    if case.cell == "rnn":
        kw["nonlinearity"] = case.nonlinearity
    if case.cell == "lstm" and case.proj_size:
        kw["proj_size"] = case.proj_size
    m = cls(case.I, case.H, **kw)
    if params is not None:
        m.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=dtype)) for k, v in params.items()})
    return m


def torch_run(case, module, data, dtype, backward=True):
    """torch forward (+ autograd backward of sum(y*dy) + sum(state*dstate)) on the case's data, in the case's
    API layout (batch_first / unbatched); returns numpy results in time-major batched layout."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    tdt = torch_dtype(dtype)
    x = torch.from_numpy(to_api_seq(case, data.x, dtype)).requires_grad_(backward)
    hx = None
    if data.hx is not None:
        hx = _map_state(to_api_state(case, data.hx, dtype),
                        lambda a: torch.from_numpy(a).requires_grad_(backward))
    if case.lengths is not None:
        assert not case.unbatched
        packed = pack_padded_sequence(x, torch.as_tensor(case.lengths, dtype=torch.int64),
                                      batch_first=case.batch_first, enforce_sorted=False)
        out, state = module(packed, hx)
        y, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.T)
    else:
        y, state = module(x, hx)
    res = dict(y=from_api_seq(case, y.detach().numpy()),
               state=from_api_state(case, _map_state(state, lambda t: t.detach().numpy())))
    if backward:
        dy = torch.from_numpy(to_api_seq(case, data.dy, dtype))
        dstate = to_api_state(case, data.dstate, dtype)
        loss = (y * dy).sum()
        if isinstance(state, tuple):
            for s, d in zip(state, dstate):
                loss = loss + (s * torch.from_numpy(d)).sum()
        else:
            loss = loss + (state * torch.from_numpy(dstate)).sum()
        loss.backward()
        res["dx"] = from_api_seq(case, x.grad.numpy())
        if hx is not None:
            res["dhx"] = from_api_state(case, _map_state(hx, lambda t: t.grad.numpy()))
        res["grads"] = {k: p.grad.numpy() for k, p in module.named_parameters()}
        assert all(t.dtype == tdt for t in module.parameters())
    return res


# =========================================================================================================
# random option combinations (torch parity and friends)
# =========================================================================================================

def random_case(variant, rng, allow_reset_before=False):
    """A random small case of the given variant over the whole option set torch has (no dropout)."""
    cell, opts = VARIANTS[variant]
    T = int(rng.choice([1, 2, 3, 5, 7]))
    B = int(rng.choice([1, 2, 3, 5]))
    I = int(rng.integers(1, 10))
    H = int(rng.integers(2, 12))
    o = dict(opts)
    if "proj_size" in o:
        o["proj_size"] = int(rng.integers(1, H))
    elif cell == "lstm" and rng.random() < 0.3:
        o["proj_size"] = int(rng.integers(1, H))
    case = Case(cell=cell, T=T, B=B, I=I, H=H,
                num_layers=int(rng.integers(1, 4)),
                bidirectional=bool(rng.random() < 0.5),
                bias=bool(rng.random() < 0.75),
                batch_first=bool(rng.random() < 0.3),
                with_hx=bool(rng.random() < 0.6),
                **o)
    if rng.random() < 0.4:
        case.lengths = random_lengths(rng, T, B)
    elif rng.random() < 0.15:
        case.unbatched = True
        case.B = 1
        case.batch_first = False
    return case
