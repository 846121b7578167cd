"""Every backward against central finite differences of the layer's own forward, in float64, on both ISA
paths.  Loss L = sum(y*R1) + sum(h_n*R2) (+ sum(c_n*R3) for LSTM); its gradient is
layer.backward(tape, R1, dstate=R2 or (R2, R3)).  A handful of entries is sampled per array."""

import numpy as np
import pytest

from helpers import (FD_RTOL, FD_STEP, VARIANTS, Case, fastrnn_layer, lengths_kw, random_data, random_params,
                     to_api_seq, to_api_state)

F64 = np.float64
N_SAMPLES = 3

CONFIGS = [
    ("base", dict()),
    ("nohx", dict(with_hx=False)),
    ("nobias", dict(bias=False)),
    ("T1_B1", dict(T=1, B=1)),
    ("L2", dict(num_layers=2)),
    ("bidir", dict(bidirectional=True)),
    ("lengths", dict(lengths=(4, 1, 3))),
    ("L2_bidir_lengths", dict(num_layers=2, bidirectional=True, lengths=(2, 4, 3))),
    ("batch_first", dict(batch_first=True, lengths=(3, 4, 1))),
    ("unbatched", dict(unbatched=True, B=1)),
]


def _sum(state, R):
    if isinstance(state, tuple):
        return sum(float(np.sum(s * r)) for s, r in zip(state, R))
    return float(np.sum(state * R))


def _entries(rng, a, n):
    return [np.unravel_index(f, a.shape) for f in rng.choice(a.size, size=min(n, a.size), replace=False)]


def gradcheck(case, seed=0):
    params = random_params(case, F64, seed=seed)
    data = random_data(case, F64, seed=seed + 1)
    layer = fastrnn_layer(case, F64, params)
    x = to_api_seq(case, data.x, F64)
    hx = to_api_state(case, data.hx, F64)
    R1 = to_api_seq(case, data.dy, F64)
    R2 = to_api_state(case, data.dstate, F64)
    lk = lengths_kw(case)

    def loss(x, hx):
        y, state = layer(x, hx, **lk)
        return float(np.sum(y * R1)) + _sum(state, R2)

    _, _, tape = layer.forward(x, hx, train=True, **lk)
    dx, dhx, grads = layer.backward(tape, R1, R2)
    rng = np.random.default_rng(seed)
    failures = []

    def check(name, array, analytic, reload=None):
        scale = max(1.0, float(np.abs(analytic).max()))
        for idx in _entries(rng, array, N_SAMPLES):
            old = array[idx]
            vals = []
            for sign in (+1, -1):
                array[idx] = old + sign * FD_STEP
                if reload:
                    reload()
                vals.append(loss(x, hx))
            array[idx] = old
            if reload:
                reload()
            num = (vals[0] - vals[1]) / (2 * FD_STEP)
            if not abs(num - analytic[idx]) <= FD_RTOL * scale:
                failures.append(f"{name}{tuple(int(i) for i in idx)}: finite difference {num:.10g}, "
                                f"backward {analytic[idx]:.10g}")

    check("dx", x, dx)
    if hx is not None:
        if case.cell == "lstm":
            check("dh0", hx[0], dhx[0])
            check("dc0", hx[1], dhx[1])
        else:
            check("dh0", hx, dhx)
    sd = layer.state_dict()
    assert set(grads) == set(sd), f"grads keys {sorted(grads)} != state_dict keys {sorted(sd)}"
    for k in sd:
        check(k, sd[k], grads[k], reload=lambda: layer.load_state_dict(sd))
    assert not failures, f"{case}:\n  " + "\n  ".join(failures)


def _param(name, cfg):
    is_option = any(k in cfg for k in ("num_layers", "bidirectional", "lengths"))
    return pytest.param(cfg, id=name, marks=[pytest.mark.options] if is_option else [])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cfg", [_param(*c) for c in CONFIGS])
def test_gradcheck(isa, variant, cfg):
    opts = dict(T=4, B=3, I=3, H=5)
    opts.update(cfg)
    gradcheck(Case.variant(variant, **opts))


@pytest.mark.options
@pytest.mark.parametrize("P,H", [(1, 4), (3, 5)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck_projection(isa, P, H, bidirectional):
    gradcheck(Case(cell="lstm", T=4, B=2, I=3, H=H, proj_size=P, num_layers=2, bidirectional=bidirectional,
                   lengths=(4, 2)))


@pytest.mark.options
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_dropout_tape(isa, variant):
    """A dropout forward is random, so it cannot be finite-differenced through the layer.  Its backward is
    checked against the reference driven with the tape's masks (test_kernels_vs_reference.py), whose own
    backward is finite-differenced with masks in test_reference.py.  Here: backward on one dropout tape is
    repeatable and does use the masks."""
    case = Case.variant(variant, T=4, B=3, I=3, H=5, num_layers=2, dropout=0.5)
    params = random_params(case, F64, seed=5)
    data = random_data(case, F64, seed=6)
    layer = fastrnn_layer(case, F64, params, seed=3)
    x = to_api_seq(case, data.x, F64)
    _, _, tape = layer.forward(x, train=True)
    dx1, _, g1 = layer.backward(tape, to_api_seq(case, data.dy, F64))
    dx2, _, g2 = layer.backward(tape, to_api_seq(case, data.dy, F64))
    np.testing.assert_array_equal(dx1, dx2)
    nodrop = fastrnn_layer(case.but(dropout=0.0), F64, params)
    _, _, tape0 = nodrop.forward(x, train=True)
    dx0, _, _ = nodrop.backward(tape0, to_api_seq(case, data.dy, F64))
    assert np.abs(dx1 - dx0).max() > 1e-6
