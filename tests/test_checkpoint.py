"""forward(..., checkpoint=k): the state kept every k steps and the rest recomputed in backward gives the
same outputs, states and gradients as the whole tape, for every cell and option (lengths included), and
keeps only about T/k states plus one chunk's tape."""
import numpy as np
import pytest

import fastrnn
from fastrnn.nn import LayerSpec, functional as F

F64 = np.float64

CASES = [
    ("rnn", {}), ("rnn", {"nonlinearity": "relu", "bias": False}),
    ("lstm", {}), ("lstm", {"proj_size": 3}), ("lstm", {"num_layers": 2, "bidirectional": True}),
    ("gru", {}), ("gru", {"reset_after": False, "bidirectional": True}), ("gru", {"go_backwards": True}),
    ("lstm", {"num_layers": 2, "dropout": 0.3, "batch_first": True}),
]


def _compare(spec, k, lengths, seed=0, hx_given=True):
    rng = np.random.default_rng(seed)
    T, B = 11, 4
    params = {n: rng.standard_normal(s) * 0.5 for n, s in spec.param_shapes()}
    x = rng.standard_normal((B, T, spec.input_size) if spec.batch_first else (T, B, spec.input_size))
    hs, cs = spec.state_shapes(B)
    hx = None
    if hx_given:
        hx = (rng.standard_normal(hs), rng.standard_normal(cs)) if spec.cell.has_cell_state else \
            rng.standard_normal(hs)
    masks = {}

    def mask_fn(j, shape):
        if j not in masks:
            masks[j] = (rng.random(shape) > spec.dropout) / (1 - spec.dropout)
        return masks[j]

    y0, s0, t0 = F.forward(spec, params, x, hx, lengths, train=True, mask_fn=mask_fn)
    y1, s1, t1 = F.forward(spec, params, x, hx, lengths, train=True, mask_fn=mask_fn, checkpoint=k)
    assert t1.checkpoint == (k if k < T else None)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-13)
    for a, b in zip(np.atleast_1d(s0) if not isinstance(s0, tuple) else s0,
                    np.atleast_1d(s1) if not isinstance(s1, tuple) else s1):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(y0.shape)
    ds = (rng.standard_normal(hs), rng.standard_normal(cs)) if spec.cell.has_cell_state else rng.standard_normal(hs)
    dx0, dh0, g0 = F.backward(t0, dy, ds)
    out = {n: np.full(s, np.nan) for n, s in spec.param_shapes()}
    dx1, dh1, g1 = F.backward(t1, dy, ds, out=out)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-10, atol=1e-11)
    for a, b in zip(dh0 if isinstance(dh0, tuple) else (dh0,), dh1 if isinstance(dh1, tuple) else (dh1,)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-11)
    for n in g0:
        assert g1[n] is out[n]
        np.testing.assert_allclose(g1[n], g0[n], rtol=1e-10, atol=1e-11, err_msg=n)


@pytest.mark.parametrize("cell,kw", CASES)
@pytest.mark.parametrize("k", [1, 3, 5, 10, 11])
def test_checkpoint_equals_whole_tape(cell, kw, k):
    spec = LayerSpec(cell, 3, 5, dtype=F64, **kw)
    _compare(spec, k, None, seed=k)


@pytest.mark.parametrize("cell,kw", CASES)
@pytest.mark.parametrize("k", [1, 4, 6])
def test_checkpoint_with_lengths(cell, kw, k):
    spec = LayerSpec(cell, 3, 5, dtype=F64, **kw)
    _compare(spec, k, np.array([11, 3, 7, 1]), seed=10 + k, hx_given=k != 4)


def test_checkpoint_float32_and_module(isa):
    layer = fastrnn.LSTM(8, 16, num_layers=2, seed=1)
    x = np.random.default_rng(0).standard_normal((40, 3, 8)).astype(np.float32)
    y0, _, t0 = layer.forward(x)
    y1, _, t1 = layer.forward(x, checkpoint=8)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    dy = np.ones_like(y0)
    _, _, g0 = layer.backward(t0, dy)
    _, _, g1 = layer.backward(t1, dy)
    for n in g0:
        np.testing.assert_allclose(g1[n], g0[n], rtol=2e-4, atol=2e-5, err_msg=n)
    assert not t1.tapes and len(t1.chunks) == 2 and len(t1.chunks[0]) == 5


def test_checkpoint_keeps_less():
    spec = LayerSpec("lstm", 4, 32)
    params = {n: np.zeros(s, np.float32) for n, s in spec.param_shapes()}
    x = np.zeros((400, 8, 4), np.float32)
    _, _, t0 = F.forward(spec, params, x, train=True)
    _, _, t1 = F.forward(spec, params, x, train=True, checkpoint=20)
    kept_tape = sum(a.nbytes for a in t0.tapes)
    kept_ckpt = sum(c.h0.nbytes + c.c0.nbytes for chunks in t1.chunks for c in chunks)
    assert kept_ckpt * 40 < kept_tape  # 20 states of (8, 32) x 2 against 400 steps of (8, 5*32)


def test_checkpoint_bad_values():
    layer = fastrnn.GRU(3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match="checkpoint"):
        layer.forward(x, checkpoint=0)
    with pytest.raises(TypeError, match="checkpoint"):
        layer.forward(x, checkpoint=2.5)
    with pytest.raises(ValueError, match="checkpoint"):
        layer.forward(x, train=False, checkpoint=2)
