"""fastrnn against torch.nn.RNN/LSTM/GRU with the same weights (loaded from the torch module's state_dict),
float32 and float64: y, final states, dx, dhx and every parameter gradient (torch autograd of
sum(y*dy) + sum(h_n*dh_n) (+ sum(c_n*dc_n))).  Fixed shapes on both ISA paths, then seeded random
combinations of every option torch has (dropout excluded: torch's masks cannot be reproduced).
The largest error per dtype is printed at the end of the run (conftest.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import (TORCH_VARIANTS, Case, assert_close, assert_grads_close, assert_state_close,  # noqa: E402
                     fastrnn_layer, fastrnn_run, random_case, random_data, torch_module, torch_run)

DTYPES = [np.float32, np.float64]
DT_IDS = ["f32", "f64"]
REC = "torch parity"
N_RANDOM = 24   # random option combinations per variant and dtype


def parity(case, dtype, seed):
    torch.manual_seed(seed)
    module = torch_module(case, dtype)            # torch's own initialisation
    layer = fastrnn_layer(case, dtype)
    layer.load_state_dict(module.state_dict())    # torch tensors load directly
    data = random_data(case, dtype, seed=seed + 1)
    want = torch_run(case, module, data, dtype)
    got = fastrnn_run(case, layer, data, dtype)
    d, kw = case.depth, dict(sources=2, record=REC)   # both sides round: the sum of the two bounds
    assert_close(got["infer_y"], want["y"], dtype, d, f"{case} inference y", **kw)
    assert_state_close(got["infer_state"], want["state"], dtype, d, f"{case} inference state", **kw)
    assert_close(got["y"], want["y"], dtype, d, f"{case} y", **kw)
    assert_state_close(got["state"], want["state"], dtype, d, f"{case} state", **kw)
    assert_close(got["dx"], want["dx"], dtype, d, f"{case} dx", **kw)
    if case.with_hx:
        assert_state_close(got["dhx"], want["dhx"], dtype, d, f"{case} dhx", **kw)
    assert_grads_close(got["grads"], want["grads"], dtype, d, f"{case} grads", **kw)


SHAPES = [(1, 1, 3, 5), (6, 2, 7, 12), (4, 5, 16, 32), (9, 3, 2, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", TORCH_VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=["T{}_B{}_I{}_H{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_parity_shapes(isa, dtype, variant, shape, with_hx):
    T, B, I, H = shape
    parity(Case.variant(variant, T=T, B=B, I=I, H=H, with_hx=with_hx), dtype, seed=sum(shape))


def _random_cases():
    out = []
    for variant in TORCH_VARIANTS:
        rng = np.random.default_rng(1000 + TORCH_VARIANTS.index(variant))
        for i in range(N_RANDOM):
            case = random_case(variant, rng)
            out.append(pytest.param(case, 100 * i + 7, id=f"{variant}-{i}-{case}", marks=pytest.mark.options))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case,seed", _random_cases())
def test_parity_random_options(dtype, case, seed):
    parity(case, dtype, seed)
