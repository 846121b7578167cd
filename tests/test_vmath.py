"""The kernels' own sigmoid and tanh (vectorised approximations on the AVX2 path) against float64 libm."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _core

ISAS = (["portable"] + (["avx2"] if fastrnn.cpu_has_avx2() else [])
        + (["avx512"] if fastrnn.cpu_has_avx512() else []))
# A few ulps of the float32-rounded exact value: the polynomial exp is within ~1 ulp, the division adds
# one rounding.  Where the exact value is below FLT_MIN the kernels may flush it to zero.
MAX_ULP = 4


def _points():
    grid = np.linspace(-100, 100, 400001)
    tiny = np.logspace(-30, 2, 20001)
    return np.concatenate([grid, tiny, -tiny, [0.0, -0.0, 0.625, -0.625, 9.1, 88.0, -87.3]]).astype(np.float32)


@pytest.fixture(params=ISAS)
def isa(request):
    before = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    yield request.param
    fastrnn.set_isa(before)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activation_ulps(isa, name):
    x = _points()
    exact = {"sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "tanh": np.tanh}[name]
    with np.errstate(over="ignore"):
        ref = exact(x.astype(np.float64)).astype(np.float32)
    y = _core.activation(name, x)
    normal = np.abs(ref) >= np.finfo(np.float32).tiny
    ulps = np.abs(y[normal].astype(np.float64) - ref[normal]) / np.spacing(np.abs(ref[normal]))
    assert ulps.max() <= MAX_ULP, f"{name} on {isa}: {ulps.max()} ulp at x={x[normal][ulps.argmax()]}"
    assert np.all(np.abs(y[~normal]) <= np.finfo(np.float32).tiny)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activation_special_values(isa, name):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0] * 3, dtype=np.float32)  # 15: vector and tail lanes
    y = _core.activation(name, x)
    lo = 0.0 if name == "sigmoid" else -1.0
    mid = 0.5 if name == "sigmoid" else 0.0
    np.testing.assert_array_equal(y, np.array([np.nan, 1.0, lo, mid, mid] * 3, dtype=np.float32))


def test_activation_float64_is_libm(isa):
    x = np.linspace(-30, 30, 1001)
    np.testing.assert_allclose(_core.activation("tanh", x), np.tanh(x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(_core.activation("sigmoid", x), 1 / (1 + np.exp(-x)), rtol=1e-15, atol=0)
