"""Property-based tests (hypothesis) of the numpy API against the float64 reference (fastrnn/reference.py).

Every drawn case -- cell and variant, shapes (T = 1, B = 1, I = 1, hidden sizes that are not a multiple of
any block: 1, 7, 17, 33), layers, bidirectional, projections, bias, batch_first, lengths, initial state or
none, unbatched input, dropout with the caller's masks (fastrnn.nn.functional.forward(mask_fn=...)),
go_backwards, dtype, non-contiguous inputs, thread count and ISA path -- runs a training forward and its
backward and must equal the reference within the tolerance rule of tests/helpers.py (y, state, dx, dhx and
every parameter gradient); the inference forward of the module built from the same parameters must equal
the training forward bitwise.  Bad argument combinations must raise ValueError/TypeError, and no kernel
may have run when they do (the binding module is replaced by one that fails on any kernel call).

Profiles (tests/conftest.py): "ci" (the default: a bounded number of examples, derandomized, so CI is
reproducible) and "long" (HYPOTHESIS_PROFILE=long: many more examples, random seeds).  docs/reliability.md.
"""
import contextlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import reference as ref  # noqa: E402
from fastrnn.nn import LayerSpec, cells  # noqa: E402
from fastrnn.nn import functional as F  # noqa: E402

import helpers  # noqa: E402
from helpers import Case  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
HIDDEN = [1, 2, 7, 17, 33]


def _isas():
    out = ["portable"]
    if fastrnn.cpu_has_avx2():
        out.append("avx2")
    if fastrnn.cpu_has_avx512():
        out.append("avx512")
    return out


ISAS = _isas()


# ---- the drawn configuration ------------------------------------------------------------------------------
@st.composite
def configs(draw):
    variant = draw(st.sampled_from(sorted(helpers.VARIANTS)))
    cell, opts = helpers.VARIANTS[variant]
    opts = dict(opts)
    T = draw(st.sampled_from([1, 2, 3, 5, 9, 20]))
    B = draw(st.sampled_from([1, 2, 3, 5, 17]))
    I = draw(st.sampled_from([1, 2, 5, 9]))
    H = draw(st.sampled_from(HIDDEN if cell != "lstm" or "proj_size" not in opts else [2, 7, 17, 33]))
    if cell == "lstm":
        if "proj_size" in opts or draw(st.booleans()):
            opts["proj_size"] = draw(st.integers(1, H - 1)) if H > 1 else 0
    L = draw(st.sampled_from([1, 1, 2, 3]))
    bidirectional = draw(st.booleans())
    go_backwards = (not bidirectional) and draw(st.booleans())
    unbatched = B == 1 and draw(st.booleans())
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    case = Case(cell=cell, T=T, B=B, I=I, H=H, num_layers=L, bidirectional=bidirectional,
                bias=draw(st.booleans()), batch_first=(not unbatched) and draw(st.booleans()),
                lengths=lengths, with_hx=draw(st.booleans()), unbatched=unbatched,
                dropout=draw(st.sampled_from([0.0, 0.3])) if L > 1 else 0.0, **opts)
    return dict(case=case, go_backwards=go_backwards,
                dtype=draw(st.sampled_from([F32, F64])),
                strided=draw(st.booleans()),
                threads=draw(st.sampled_from([1, 2])),
                isa=draw(st.sampled_from(ISAS)),
                seed=draw(st.integers(0, 2**16)))


class _Runtime:
    """Sets threads and ISA for one example, restores them afterwards."""

    def __init__(self, threads, isa):
        self.threads, self.isa = threads, isa

    def __enter__(self):
        self.old = (fastrnn.get_num_threads(), fastrnn.get_isa())
        fastrnn.set_num_threads(self.threads)
        fastrnn.set_isa(self.isa)
        assert fastrnn.get_isa() == self.isa

    def __exit__(self, *exc):
        fastrnn.set_num_threads(self.old[0])
        fastrnn.set_isa(self.old[1])


def _strided(a, rng):
    """The same values as `a` in a non-contiguous array (every other element of a larger buffer along a
    random axis, or a transposed copy seen through a transpose)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a
    if rng.random() < 0.5:
        ax = int(rng.integers(a.ndim))
        shape = list(a.shape)
        shape[ax] *= 2
        big = np.full(shape, np.nan, a.dtype)
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(0, None, 2)
        big[tuple(idx)] = a
        out = big[tuple(idx)]
    else:
        out = np.ascontiguousarray(a.T).T
    np.testing.assert_array_equal(out, a)
    return out


def _map_state(s, fn):
    if s is None:
        return None
    return tuple(fn(p) for p in s) if isinstance(s, tuple) else fn(s)


def _reverse_within(a, lengths):
    """a (T, B, F) with each sequence b's first lengths[b] steps reversed; steps past a length are zero."""
    T, B = a.shape[:2]
    out = np.zeros_like(a)
    for b in range(B):
        n = int(lengths[b])
        out[:n, b] = a[n - 1::-1, b] if n else a[:0, b]
    return out


def _reference(case, params, data, masks, go_backwards):
    """The reference's y, state, dx, dhx, grads (time-major batched float64); go_backwards as the forward
    cell over each sequence reversed within its length (the definition: the reverse direction alone)."""
    if not go_backwards:
        return helpers.reference_run(case, params, data, masks)
    lengths = np.full(case.B, case.T) if case.lengths is None else np.asarray(case.lengths)
    rdata = helpers.Data(_reverse_within(data.x, lengths), data.hx, _reverse_within(data.dy, lengths),
                         data.dstate)
    if masks is not None:  # the masks apply at the original time steps: reversed with the data
        masks = [_reverse_within(m, lengths) for m in masks]
    r = helpers.reference_run(case, params, rdata, masks)
    r["y"] = _reverse_within(r["y"], lengths)
    r["dx"] = _reverse_within(r["dx"], lengths)
    return r


# The tolerance rule (tests/helpers.py) is normwise relative to max|expected|.  The drawn cases include arrays
# of one or a few elements (H = 1, I = 1, P = 1), whose values can be the result of a cancellation (a 1x1
# weight gradient summing T*B terms of ~1 to 0.017; y = W_hr h summing terms of ~0.05 to 4e-5): their
# rounding error scales with the terms, not with the result.  The data here are of unit scale (unit-variance
# x, hx, dy, dstate; states bounded by 1; torch's initialisation), so the denominator is floored at the
# scale of the data, 1: an array of small values is compared absolutely at the tolerance (1e-5 in float32),
# still far below any wrong gate, index or mask (errors of the size of the values, >= 1e-3 here).
SCALE_FLOOR = 1.0


def _close(actual, expected, dtype, depth, name, sources=1):
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    if scale >= SCALE_FLOOR:
        return helpers.assert_close(actual, expected, dtype, depth, name, sources=sources, record="properties")
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    abs_err, _ = helpers.errors(actual, expected)
    tol = helpers.tolerance(dtype, depth, sources)
    assert abs_err <= tol * SCALE_FLOOR, (f"{name}: max abs error {abs_err:.3e} > {tol * SCALE_FLOOR:.3e} "
                                          f"(tol {tol:.2e} x the floor {SCALE_FLOOR} of the scale; "
                                          f"max|expected| {scale:.3e})")


def _state_close(actual, expected, dtype, depth, name):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), f"{name}: expected a tuple"
        for part, a, e in zip("hc", actual, expected):
            _close(a, e, dtype, depth, f"{name}[{part}]")
    else:
        _close(actual, expected, dtype, depth, name)


def _spec(case, dtype, go_backwards):
    return LayerSpec(case.cell, case.I, case.H, num_layers=case.num_layers, bias=case.bias,
                     batch_first=case.batch_first, dropout=case.dropout, bidirectional=case.bidirectional,
                     proj_size=case.proj_size if case.cell == "lstm" else 0, nonlinearity=case.nonlinearity,
                     reset_after=case.reset_after, go_backwards=go_backwards, dtype=dtype)


@given(cfg=configs())
def test_training_forward_and_backward_equal_the_reference(cfg):
    case, dtype, gb = cfg["case"], cfg["dtype"], cfg["go_backwards"]
    for e in (f"isa={cfg['isa']}", f"threads={cfg['threads']}", f"dtype={dtype.name}", f"cell={case.cell}",
              f"H={case.H}", f"go_backwards={gb}", f"strided={cfg['strided']}", f"dropout={case.dropout}",
              f"lengths={case.lengths is not None}", f"L={case.num_layers}"):
        hypothesis.event(e)
    rng = np.random.default_rng(cfg["seed"])
    params64 = helpers.random_params(case, dtype, seed=cfg["seed"])
    data = helpers.random_data(case, dtype, seed=cfg["seed"] + 1)
    spec = _spec(case, dtype, gb)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params64.items()}

    masks_made = []

    def mask_fn(k, shape):
        keep = 1.0 - case.dropout
        m = (rng.random(shape) < keep).astype(dtype) / dtype.type(keep)
        masks_made.append(m)
        return m

    x = helpers.to_api_seq(case, data.x, dtype)
    hx = helpers.to_api_state(case, data.hx, dtype)
    dy = helpers.to_api_seq(case, data.dy, dtype)
    dstate = helpers.to_api_state(case, data.dstate, dtype)
    if cfg["strided"]:
        x, dy = _strided(x, rng), _strided(dy, rng)
        hx = _map_state(hx, lambda a: _strided(a, rng))
        dstate = _map_state(dstate, lambda a: _strided(a, rng))
    x_before = x.copy()
    lengths = None if case.lengths is None else np.asarray(case.lengths)

    with _Runtime(cfg["threads"], cfg["isa"]):
        y, state, tape = F.forward(spec, params, x, hx, lengths=lengths, train=True,
                                   mask_fn=mask_fn if case.dropout else None)
        dx, dhx, grads = F.backward(tape, dy, dstate)
        yi, statei, none = F.forward(spec, params, x, hx, lengths=lengths, train=False)

    assert none is None
    np.testing.assert_array_equal(x, x_before)  # inputs never written
    for k, v in params.items():
        np.testing.assert_array_equal(v, params64[k].astype(dtype), err_msg=f"parameter {k} was written")
    assert y.dtype == dtype and dx.dtype == dtype
    masks = [np.asarray(m, np.float64) for m in masks_made] if case.dropout else None
    expect = _reference(case, params64, data, masks, gb)
    depth = case.depth
    name = f"{case}{'_goback' if gb else ''}_{dtype.name}_{cfg['isa']}_t{cfg['threads']}"
    _close(helpers.from_api_seq(case, y), expect["y"], dtype, depth, name + " y")
    _state_close(helpers.from_api_state(case, state), expect["state"], dtype, depth, name + " state")
    if not case.dropout:  # the inference forward (its own code path: no tape) computes the same
        _close(helpers.from_api_seq(case, yi), expect["y"], dtype, depth, name + " inference y")
        _state_close(helpers.from_api_state(case, statei), expect["state"], dtype, depth, name + " inference state")
    _close(helpers.from_api_seq(case, dx), expect["dx"], dtype, depth, name + " dx")
    _state_close(helpers.from_api_state(case, dhx), expect["dhx"], dtype, depth, name + " dhx")
    assert set(grads) == set(expect["grads"]), f"{name}: gradient keys {sorted(grads)}"
    for k in expect["grads"]:
        _close(grads[k], expect["grads"][k], dtype, depth, f"{name} grads[{k}]")


@given(cfg=configs())
def test_module_equals_functional_bitwise(cfg):
    """fastrnn.RNN/LSTM/GRU with loaded parameters give bitwise the functional core's numbers (inference,
    and the streaming step() of a unidirectional layer equals its whole-sequence run within tolerance)."""
    case, dtype = cfg["case"], cfg["dtype"]
    case = case.but(dropout=0.0)
    params64 = helpers.random_params(case, dtype, seed=cfg["seed"])
    data = helpers.random_data(case, dtype, seed=cfg["seed"] + 1)
    layer = helpers.fastrnn_layer(case, dtype, params=params64)
    spec = _spec(case, dtype, False)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params64.items()}
    x = helpers.to_api_seq(case, data.x, dtype)
    hx = helpers.to_api_state(case, data.hx, dtype)
    kw = helpers.lengths_kw(case)
    with _Runtime(cfg["threads"], cfg["isa"]):
        y1, s1 = layer(x, hx, **kw)
        y2, s2, _ = F.forward(spec, params, x, hx, train=False, **kw)
        np.testing.assert_array_equal(y1, y2)
        for a, b in zip(s1 if isinstance(s1, tuple) else (s1,), s2 if isinstance(s2, tuple) else (s2,)):
            np.testing.assert_array_equal(a, b)
        if not case.bidirectional and case.lengths is None and not case.batch_first:
            state = hx
            ys = []
            for t in range(case.T):
                yt, state = layer.step(x[t], state)
                ys.append(yt)
            _close(np.stack(ys), y1, dtype, case.depth, f"{case} step", sources=2)


# ---- bad combinations: ValueError / TypeError, and no kernel ran ---------------------------------------------
class _NoKernels:
    """Stands in for fastrnn._core inside fastrnn.nn.cells: any kernel call fails the test."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name.endswith("_forward") or name.endswith("_backward"):
            def fail(*a, **k):
                raise AssertionError(f"kernel {name} ran for arguments that should have been refused")
            return fail
        return getattr(self._real, name)


BAD_KINDS = ["x_features", "x_ndim", "x_empty", "x_dtype", "x_object", "hx_shape", "hx_kind", "hx_dtype",
             "lengths_range", "lengths_shape", "lengths_float", "lengths_unbatched", "param_missing",
             "param_dtype", "param_shape", "param_strided", "param_list", "checkpoint_type",
             "checkpoint_inference", "params_not_mapping", "spec_not_spec"]


@st.composite
def bad_forward_calls(draw):
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    T, B, I, H = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 9))
    L = draw(st.integers(1, 2))
    D = 2 if draw(st.booleans()) else 1
    dtype = draw(st.sampled_from([F32, F64]))
    kind = draw(st.sampled_from(BAD_KINDS))
    return dict(cell=cell, T=T, B=B, I=I, H=H, L=L, bidirectional=D == 2, dtype=dtype, kind=kind,
                batch_first=draw(st.booleans()), seed=draw(st.integers(0, 1000)))


@given(bad=bad_forward_calls())
def test_bad_forward_arguments_raise_before_any_kernel(bad):
    c = bad
    spec = LayerSpec(c["cell"], c["I"], c["H"], num_layers=c["L"], bidirectional=c["bidirectional"],
                     batch_first=c["batch_first"], dtype=c["dtype"])
    rng = np.random.default_rng(c["seed"])
    params = {k: rng.standard_normal(s).astype(c["dtype"]) for k, s in spec.param_shapes()}
    T, B, I, H, dt = c["T"], c["B"], c["I"], c["H"], c["dtype"]
    xs = (B, T, I) if c["batch_first"] else (T, B, I)
    x = rng.standard_normal(xs).astype(dt)
    LD = c["L"] * spec.D
    hs = (LD, B, spec.P)
    hx = (np.zeros(hs, dt), np.zeros((LD, B, H), dt)) if c["cell"] == "lstm" else np.zeros(hs, dt)
    kw = dict(hx=None, lengths=None, train=bool(rng.integers(2)))
    sp, p = spec, params
    k = c["kind"]
    expected = ValueError
    if k == "x_features":
        x = rng.standard_normal(xs[:2] + (I + 1,)).astype(dt)
    elif k == "x_ndim":
        x = rng.standard_normal((T, B, I, 1) if rng.integers(2) else (I,)).astype(dt)
    elif k == "x_empty":
        x = np.zeros((0, B, I) if rng.integers(2) else (T, 0, I), dt)
        if c["batch_first"]:
            x = x.transpose(1, 0, 2)
    elif k == "x_dtype":
        x, expected = x.astype(rng.choice([np.float16, np.complex64])), TypeError
    elif k == "x_object":
        x, expected = np.array([["a"] * I] * T), TypeError
    elif k == "hx_shape":
        kw["hx"] = _map_state(hx, lambda a: np.zeros(a.shape[:2] + (a.shape[2] + 1,), dt))
    elif k == "hx_kind":
        kw["hx"] = hx[0] if isinstance(hx, tuple) else (hx, hx)
        if c["cell"] != "lstm":  # a tuple for a single-state cell is an array of the wrong shape
            kw["hx"] = (hx, hx)
    elif k == "hx_dtype":
        kw["hx"], expected = _map_state(hx, lambda a: a.astype(np.complex128)), TypeError
    elif k == "lengths_range":
        lens = np.full(B, T)
        lens[rng.integers(B)] = rng.choice([0, T + 1, -1])
        kw["lengths"] = lens
    elif k == "lengths_shape":
        kw["lengths"] = np.full(B + 1, T)
    elif k == "lengths_float":
        kw["lengths"] = np.full(B, T - 0.5)
    elif k == "lengths_unbatched":
        x, kw["lengths"] = x[:, 0] if not c["batch_first"] else x[0], np.array([T])
    elif k == "param_missing":
        p = dict(params)
        p.pop(rng.choice(sorted(p)))
    elif k == "param_dtype":
        p = dict(params)
        key = rng.choice(sorted(p))
        p[key], expected = p[key].astype(F64 if dt == F32 else F32), TypeError
    elif k == "param_shape":
        p = dict(params)
        key = rng.choice(sorted(p))
        p[key] = np.zeros(p[key].shape[:-1] + (p[key].shape[-1] + 1,), dt)
    elif k == "param_strided":
        p = dict(params)
        key = str(rng.choice([n for n in sorted(p) if p[n].ndim == 2 and min(p[n].shape) > 1]
                             or sorted(p)))
        v = p[key]
        if v.ndim == 2 and min(v.shape) > 1:
            p[key] = np.asfortranarray(v)
        else:
            big = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), dt)
            big[..., ::2] = v
            p[key] = big[..., ::2]
            if p[key].flags.c_contiguous:  # a single element is contiguous whatever its stride
                p[key], expected = v.tolist(), TypeError
    elif k == "param_list":
        p = dict(params)
        key = rng.choice(sorted(p))
        p[key], expected = p[key].tolist(), TypeError
    elif k == "checkpoint_type":
        kw["checkpoint"], kw["train"], expected = ["2", 2.0, True][int(rng.integers(3))], True, TypeError
    elif k == "checkpoint_inference":
        kw["checkpoint"], kw["train"] = 2, False
    elif k == "params_not_mapping":
        p, expected = list(params.values()), TypeError
    elif k == "spec_not_spec":
        sp, expected = {"cell": c["cell"]}, TypeError
    with _no_kernels(), pytest.raises(expected):
        F.forward(sp, p, x, **kw)


@contextlib.contextmanager
def _no_kernels():
    """fastrnn.nn.cells sees a _core whose kernels fail, for the duration of the block."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cells, "_core", _NoKernels(cells._core))
    try:
        yield
    finally:
        mp.undo()


@st.composite
def bad_backward_calls(draw):
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    return dict(cell=cell, T=draw(st.integers(1, 4)), B=draw(st.integers(1, 3)), I=draw(st.integers(1, 4)),
                H=draw(st.integers(2, 6)), bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
                dtype=draw(st.sampled_from([F32, F64])),
                kind=draw(st.sampled_from(["dy_shape", "dy_dtype", "dstate_shape", "dstate_kind", "out_shape",
                                           "out_dtype", "out_readonly", "out_extra", "out_not_mapping",
                                           "tape_type", "tape_other_layer", "tape_reloaded",
                                           "tape_inference"])),
                seed=draw(st.integers(0, 1000)))


@given(bad=bad_backward_calls())
def test_bad_backward_arguments_raise_before_any_kernel(bad):
    c = bad
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[c["cell"]]
    layer = cls(c["I"], c["H"], bidirectional=c["bidirectional"], batch_first=c["batch_first"], dtype=c["dtype"],
                seed=c["seed"])
    rng = np.random.default_rng(c["seed"])
    T, B, dt = c["T"], c["B"], c["dtype"]
    x = rng.standard_normal((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"])).astype(dt)
    y, state, tape = layer.forward(x, train=True)
    dy = np.ones_like(y)
    dstate = _map_state(state, np.ones_like)
    out = None
    k = c["kind"]
    expected = ValueError
    if k == "dy_shape":
        dy = np.ones(y.shape[:2] + (y.shape[2] + 1,), dt)
    elif k == "dy_dtype":
        dy, expected = dy.astype(np.complex64), TypeError
    elif k == "dstate_shape":
        dstate = _map_state(state, lambda a: np.ones(a.shape[:1] + (a.shape[1] + 1,) + a.shape[2:], dt))
    elif k == "dstate_kind":
        if c["cell"] == "lstm":
            dstate = dstate[0]
        else:
            dstate = np.ones(state.shape + (1,), dt)
    elif k == "out_shape":
        key = next(iter(layer.state_dict()))
        out = {key: np.zeros((1, 1), dt)}
    elif k == "out_dtype":
        key = next(iter(layer.state_dict()))
        out, expected = {key: np.zeros(getattr(layer, key).shape, F64 if dt == F32 else F32)}, TypeError
    elif k == "out_readonly":
        key = next(iter(layer.state_dict()))
        a = np.zeros(getattr(layer, key).shape, dt)
        a.flags.writeable = False
        out = {key: a}
    elif k == "out_extra":
        out = {"weight_xx_l9": np.zeros(1, dt)}
    elif k == "out_not_mapping":
        out, expected = [np.zeros(1, dt)], TypeError
    elif k == "tape_type":
        tape, expected = object(), TypeError
    elif k == "tape_other_layer":
        tape = cls(c["I"], c["H"], bidirectional=c["bidirectional"], batch_first=c["batch_first"],
                   dtype=dt).forward(x, train=True)[2]
    elif k == "tape_reloaded":
        layer.load_state_dict(layer.state_dict())
    elif k == "tape_inference":
        tape, expected = layer.forward(x, train=False)[2], TypeError
    with _no_kernels(), pytest.raises(expected):
        layer.backward(tape, dy, dstate, out=out)


@given(kw=st.fixed_dictionaries({}, optional={
    "input_size": st.sampled_from([0, -1, 2.5, True, "3", None]),
    "hidden_size": st.sampled_from([0, -3, 1.0, False, "8"]),
    "num_layers": st.sampled_from([0, -1, 1.5]),
    "dropout": st.sampled_from([-0.1, 1.0, 2, "0.5", True, float("nan")]),
    "proj_size": st.sampled_from([-1, 8, 9, 2.0]),
    "dtype": st.sampled_from([np.float16, np.int32, "complex64", object]),
}).filter(bool), cell=st.sampled_from(["rnn", "lstm", "gru"]))
def test_bad_constructor_arguments_raise(kw, cell):
    """Any bad constructor argument, alone or combined, is a ValueError or TypeError."""
    args = dict(input_size=4, hidden_size=8)
    args.update(kw)
    if cell != "lstm":
        args.pop("proj_size", None)
        if "proj_size" in kw and len(kw) == 1:
            return
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    with pytest.raises((ValueError, TypeError)):
        cls(**args)
