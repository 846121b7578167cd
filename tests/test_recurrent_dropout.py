"""Recurrent dropout masks in the kernels (Keras's recurrent_dropout: docs/keras.md; csrc/fastrnn.h, rmask):
the RNN's (B, P) mask, the LSTM's (4, B, P) and the GRU's (3, B, H), one per gate, through fastrnn.nn.functional's rmasks=.
Kernels against the float64 reference on every ISA and dtype, backward against finite differences with a
fixed mask, checkpoint recomputation, all-ones masks, and bad masks refused before any C code runs."""

import numpy as np
import pytest

import fastrnn
from fastrnn import reference as ref
from fastrnn.nn import LayerSpec
from fastrnn.nn import functional as F
from helpers import (FD_RTOL, FD_STEP, Case, assert_close, assert_grads_close, assert_state_close,
                     random_data, random_lengths, random_params)

DTYPES = [np.float32, np.float64]
DT_IDS = ["f32", "f64"]
MASKED = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_reset_before"]
REC = "recurrent dropout vs reference"


def spec_of(case, dtype):
    kw = dict(num_layers=case.num_layers, bidirectional=case.bidirectional, bias=case.bias, dtype=dtype)
    if case.cell == "rnn":
        kw["nonlinearity"] = case.nonlinearity
    if case.cell == "lstm" and case.proj_size:
        kw["proj_size"] = case.proj_size
    if case.cell == "gru":
        kw["reset_after"] = case.reset_after
    return LayerSpec(case.cell, case.I, case.H, **kw)


def random_rmasks(case, dtype, rate=0.4, seed=5):
    """One mask per (layer, direction): entries 0 or 1/(1-rate), in the kernels' shape."""
    rng = np.random.default_rng(seed)
    shape = (case.B, case.P) if case.cell == "rnn" else ({"lstm": 4, "gru": 3}[case.cell], case.B, case.P)
    keep = 1.0 - rate
    return [((rng.random(shape) < keep) / keep).astype(dtype) for _ in range(case.num_layers * case.D)]


def run_fastrnn(case, dtype, params, data, rmasks, checkpoint=None):
    spec = spec_of(case, dtype)
    p = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    hx = None
    if data.hx is not None:
        hx = tuple(h.astype(dtype) for h in data.hx) if case.cell == "lstm" else data.hx.astype(dtype)
    y, state, tape = F.forward(spec, p, data.x.astype(dtype), hx,
                               lengths=None if case.lengths is None else np.asarray(case.lengths), train=True,
                               rmasks=rmasks, checkpoint=checkpoint)
    ds = tuple(d.astype(dtype) for d in data.dstate) if case.cell == "lstm" else data.dstate.astype(dtype)
    dx, dhx, grads = F.backward(tape, data.dy.astype(dtype), ds)
    return dict(y=y, state=state, dx=dx, dhx=dhx, grads=grads)


def run_reference(case, params, data, rmasks):
    rm = None if rmasks is None else [None if m is None else m.astype(np.float64) for m in rmasks]
    y, state, cache = ref.ref_forward(case.cell, params, data.x, data.hx, rmasks=rm, **case.ref_kwargs())
    dx, dhx, grads = ref.ref_backward(cache, data.dy, data.dstate)
    return dict(y=y, state=state, dx=dx, dhx=dhx, grads=grads)


def compare(case, dtype, got, want):
    d = case.depth
    assert_close(got["y"], want["y"], dtype, d, f"{case} y", record=REC)
    assert_state_close(got["state"], want["state"], dtype, d, f"{case} state", record=REC)
    assert_close(got["dx"], want["dx"], dtype, d, f"{case} dx", record=REC)
    if case.with_hx:
        assert_state_close(got["dhx"], want["dhx"], dtype, d, f"{case} dhx", record=REC)
    assert_grads_close(got["grads"], want["grads"], dtype, d, f"{case} grads", record=REC)


def check(case, dtype, seed=0, rate=0.4, checkpoint=None):
    params = random_params(case, dtype, seed=seed)
    data = random_data(case, dtype, seed=seed + 1)
    rmasks = random_rmasks(case, dtype, rate, seed=seed + 2)
    got = run_fastrnn(case, dtype, params, data, rmasks, checkpoint)
    want = run_reference(case, params, data, rmasks)
    compare(case, dtype, got, want)
    # the mask matters: the same call without it is far from the masked reference
    plain = run_reference(case, params, data, None)
    assert np.abs(plain["y"] - want["y"]).max() > 1e-3, "the test's mask changes nothing"
    return got




SHAPES = [  # (T, B, I, H): direct mode (T*B <= 4), tails past the SIMD widths, partial blocks, many rows
    (1, 1, 3, 5), (2, 2, 24, 29), (5, 4, 7, 13), (4, 3, 8, 16), (3, 2, 17, 32), (6, 1, 9, 24),
    (3, 16, 12, 40), (2, 40, 8, 70),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", MASKED)
@pytest.mark.parametrize("shape", SHAPES, ids=["T{}_B{}_I{}_H{}".format(*s) for s in SHAPES])
def test_kernels_match_reference(isa, dtype, variant, shape, threads):
    T, B, I, H = shape
    check(Case.variant(variant, T=T, B=B, I=I, H=H), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", MASKED)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_lengths_stacked_bidirectional(isa, dtype, variant, bidirectional, threads):
    rng = np.random.default_rng(3)
    T, B = 6, 5
    case = Case.variant(variant, T=T, B=B, I=7, H=12, num_layers=2, bidirectional=bidirectional,
                        lengths=random_lengths(rng, T, B))
    check(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", MASKED)
def test_no_bias_no_hx_and_stealing(isa, dtype, variant):
    previous_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    from fastrnn import _core
    old = _core._set_steal_mode(2)  # every block of a step taken from another thread's range
    try:
        check(Case.variant(variant, T=4, B=9, I=10, H=48, bias=False, with_hx=False), dtype)
    finally:
        _core._set_steal_mode(old)
        fastrnn.set_num_threads(previous_threads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", MASKED)
def test_weight_gradients_in_small_chunks(isa, dtype, variant):
    """The masked dW_hh is a gather of masked rows in chunks of steps: many chunks, with and without lengths."""
    from fastrnn import _core
    old = _core._set_chunking(4096, 1)
    try:
        rng = np.random.default_rng(4)
        check(Case.variant(variant, T=9, B=6, I=5, H=20), dtype)
        check(Case.variant(variant, T=9, B=6, I=5, H=20, lengths=random_lengths(rng, 9, 6)), dtype)
    finally:
        _core._set_chunking(*old)


@pytest.mark.parametrize("variant", MASKED)
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_checkpoint_recomputes_with_the_same_masks(variant, k, bidirectional):
    """checkpoint=k re-runs each chunk's forward in backward: it must read the same masks (float64: the two
    runs agree to the reference's tolerance, and both match the reference)."""
    rng = np.random.default_rng(6)
    case = Case.variant(variant, T=7, B=5, I=6, H=10, bidirectional=bidirectional,
                        lengths=random_lengths(rng, 7, 5))
    check(case, np.float64, checkpoint=k)
    check(case.but(lengths=None), np.float64, checkpoint=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", MASKED)
def test_all_ones_mask_is_no_mask(isa, dtype, variant):
    case = Case.variant(variant, T=5, B=4, I=6, H=20, bidirectional=True)
    params = random_params(case, dtype)
    data = random_data(case, dtype, seed=1)
    ones = [np.ones(m.shape, dtype) for m in random_rmasks(case, dtype)]
    masked = run_fastrnn(case, dtype, params, data, ones)
    plain = run_fastrnn(case, dtype, params, data, None)
    d = case.depth
    assert_close(masked["y"], plain["y"], dtype, d, f"{case} y")
    assert_state_close(masked["state"], plain["state"], dtype, d, f"{case} state")
    assert_close(masked["dx"], plain["dx"], dtype, d, f"{case} dx")
    assert_state_close(masked["dhx"], plain["dhx"], dtype, d, f"{case} dhx")
    assert_grads_close(masked["grads"], plain["grads"], dtype, d, f"{case} grads")
    if case.cell == "rnn":  # the same products on the same numbers: bitwise
        assert np.array_equal(masked["y"], plain["y"])
    # None entries are no mask too
    nones = run_fastrnn(case, dtype, params, data, [None, None])
    assert np.array_equal(nones["y"], plain["y"]) and np.array_equal(nones["dx"], plain["dx"])


@pytest.mark.parametrize("variant", MASKED)
@pytest.mark.parametrize("lengths", [None, (5, 2, 4)], ids=["full", "lengths"])
def test_finite_differences(variant, lengths):
    """float64 kernels with a fixed mask: the analytic gradients of L = sum(y R) + sum(state S) against
    central differences of the kernels' own forward, for every parameter entry, x and the initial state."""
    case = Case.variant(variant, T=5, B=3, I=3, H=5, bidirectional=True, lengths=lengths)
    dt = np.float64
    params = random_params(case, dt, seed=2)
    data = random_data(case, dt, seed=3)
    rmasks = random_rmasks(case, dt, rate=0.5, seed=4)
    spec = spec_of(case, dt)
    lens = None if lengths is None else np.asarray(lengths)

    def loss(p, x, hx):
        y, state, _ = F.forward(spec, p, x, hx, lengths=lens, train=True, rmasks=rmasks)
        return ref.ref_loss(y, state, data.dy, data.dstate)

    p = {k: v.copy() for k, v in params.items()}
    x = data.x.copy()
    hx = tuple(h.copy() for h in data.hx) if case.cell == "lstm" else data.hx.copy()
    got = run_fastrnn(case, dt, params, data, rmasks)

    def fd(arr, analytic, name):
        flat, g = arr.reshape(-1), np.asarray(analytic).reshape(-1)
        num = np.empty_like(g)
        for i in range(flat.size):
            v = flat[i]
            flat[i] = v + FD_STEP
            lp = loss(p, x, hx)
            flat[i] = v - FD_STEP
            lm = loss(p, x, hx)
            flat[i] = v
            num[i] = (lp - lm) / (2 * FD_STEP)
        err = np.abs(num - g).max()
        assert err <= FD_RTOL * max(1.0, np.abs(g).max()), f"{case} {name}: max |fd - analytic| = {err:.3e}"

    for k in p:
        fd(p[k], got["grads"][k], k)
    fd(x, got["dx"], "dx")
    if case.cell == "lstm":
        fd(hx[0], got["dhx"][0], "dh0")
        fd(hx[1], got["dhx"][1], "dc0")
    else:
        fd(hx, got["dhx"], "dh0")


# ---- bad masks: refused before any C code runs ----------------------------------------------------------

def _setup(cell="lstm", dtype=np.float32, **kw):
    spec = LayerSpec(cell, 4, 6, dtype=dtype, **kw)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in spec.param_shapes()}
    x = rng.standard_normal((5, 3, 4)).astype(dtype)
    return spec, params, x


@pytest.mark.parametrize("cell,shape", [("rnn", (3, 6)), ("lstm", (4, 3, 6)), ("gru", (3, 3, 6))])
def test_bad_masks(cell, shape, monkeypatch):
    spec, params, x = _setup(cell)
    from fastrnn import _core

    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran")
    for name in ("rnn_forward", "lstm_forward", "gru_forward"):
        monkeypatch.setattr(_core, name, no_kernel)
    good = np.ones(shape, np.float32)
    bad_shape = np.ones(shape[:-1] + (7,), np.float32)
    cases = [
        (ValueError, [bad_shape]),
        (ValueError, [np.ones((3,) + shape, np.float32)]),
        (ValueError, [np.ones((2,) + shape[-2:], np.float32)]),  # too few gates (LSTM, GRU) or a 3-D RNN mask
        (ValueError, [good, good]),                           # one layer, one direction: one entry
        (TypeError, [good.astype(np.float64)]),               # dtype of the layer
        (TypeError, [good.tolist()]),                         # not an ndarray
        (TypeError, good),                                    # not a list
    ]
    for err, rm in cases:
        with pytest.raises(err):
            F.forward(spec, params, x, train=True, rmasks=rm)
    with pytest.raises(ValueError, match="training"):
        F.forward(spec, params, x, train=False, rmasks=[good])


def test_gru_mask_order_per_gate():
    """The GRU's masks are per gate r, z, n (the kernels' order): zeroing one gate's mask changes the output,
    and each gate's mask alone matches the reference's (not another gate's)."""
    case = Case.variant("gru", T=4, B=3, I=5, H=8)
    dt = np.float64
    params = random_params(case, dt)
    data = random_data(case, dt, seed=1)
    for g in range(3):
        m = np.ones((3, case.B, case.H))
        m[g] = 0
        got = run_fastrnn(case, dt, params, data, [m])
        want = run_reference(case, params, data, [m])
        compare(case, dt, got, want)
        other = m[[1, 0, 2]] if g < 2 else m[[2, 1, 0]]
        assert np.abs(run_reference(case, params, data, [other])["y"] - got["y"]).max() > 1e-3
