"""The benchmark's correctness gate (fastrnn.bench): the ReLU-tie reference that keeps a float32 rounding
coin-flip at a ReLU kink from failing a correct engine."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from fastrnn import bench  # noqa: E402


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_relu_tie_reference_is_torch_float64_without_ties():
    d = bench.CaseData(bench.Case("rnn", 4, 3, 5, 6, nonlinearity="relu"))
    ref64 = d.reference64
    rt, flipped = d.relu_tie_reference(ref64["y"])
    assert flipped == 0
    _close(rt["y"], ref64["y"])
    _close(rt["dx"], ref64["dx"])
    for k, g in ref64["grads"].items():
        _close(rt["grads"][k], g)


def test_relu_tie_takes_the_engines_side():
    d = bench.CaseData(bench.Case("rnn", 3, 2, 4, 5, nonlinearity="relu"))
    u = 2  # unit u's pre-activation at t = 0 is exactly 0: x_0 = 0, h0 = 0, b_ih[u] + b_hh[u] = 0
    d.x[0] = 0
    d.sd["bias_hh_l0"][u] = -d.sd["bias_ih_l0"][u]
    y_off = d.relu_tie_reference(np.zeros((3, 2, 5)))[0]["y"]
    y_eng = y_off.copy()
    y_eng[0, :, u] = 1e-30  # an engine that put the tie on the "on" side
    off, n_off = d.relu_tie_reference(y_off)
    on, n_on = d.relu_tie_reference(y_eng)
    assert (n_off, n_on) == (0, 2)  # float64 says off (p > 0 is false); the engine's side differs in 2 rows
    _close(on["y"], off["y"])  # p = 0 either way
    # but the gradient flows through the unit only when it is on: db_ih[u] gains sum_b dh_0[b, u]
    assert not np.allclose(on["grads"]["bias_ih_l0"][u], off["grads"]["bias_ih_l0"][u])


def test_check_passes_a_correct_training_step():
    d = bench.CaseData(bench.Case("rnn", 5, 2, 3, 4, nonlinearity="relu"))
    r = d.check("fastrnn", "train", 1)
    assert r.ok and r.err <= r.tol, r
