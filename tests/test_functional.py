"""fastrnn.nn's functional core: forward/backward over caller-owned parameter arrays, gradients written into
caller-owned buffers (out=), dropout masks from the caller (mask_fn), go_backwards, and its argument checks;
each against the module API (which wraps it) or the float64 reference."""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference as ref
from fastrnn.nn import LayerSpec, functional as F

F64 = np.float64


def _layer(cell, **kw):
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    return cls(5, 7, dtype=F64, seed=3, **kw)


@pytest.mark.parametrize("cell,kw", [("rnn", {}), ("lstm", {"proj_size": 3}), ("gru", {}),
                                     ("lstm", {"num_layers": 2, "bidirectional": True}),
                                     ("gru", {"bias": False, "batch_first": True})])
def test_functional_equals_module(cell, kw):
    layer = _layer(cell, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 5) if kw.get("batch_first") else (6, 4, 5))
    params = layer.state_dict()  # other arrays than the module's own
    y0, s0, t0 = layer.forward(x)
    y1, s1, t1 = F.forward(layer.spec, params, x, train=True)
    np.testing.assert_array_equal(y0, y1)
    dy = rng.standard_normal(y0.shape)
    dx0, _, g0 = layer.backward(t0, dy)
    out = {k: np.full(v.shape, np.nan) for k, v in params.items()}
    dx1, _, g1 = F.backward(t1, dy, out=out)
    np.testing.assert_array_equal(dx0, dx1)
    for k in g0:
        assert g1[k] is out[k], k  # written into the caller's buffer, not a copy
        np.testing.assert_array_equal(g0[k], out[k])


def test_params_read_in_place_at_every_call():
    spec = LayerSpec("gru", 3, 4, dtype=F64)
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s) for k, s in spec.param_shapes()}
    x = rng.standard_normal((5, 2, 3))
    y0, _, _ = F.forward(spec, params, x)
    params["weight_hh_l0"] *= 0.5  # an optimizer's in-place update
    y1, _, _ = F.forward(spec, params, x)
    y_ref, _, _ = ref.ref_forward("gru", params, x)
    assert not np.allclose(y0, y1)
    np.testing.assert_allclose(y1, y_ref, rtol=1e-12, atol=1e-12)


def test_out_partial_and_bad():
    spec = LayerSpec("rnn", 3, 4, dtype=F64)
    params = {k: np.ones(s) * 0.1 for k, s in spec.param_shapes()}
    _, _, tape = F.forward(spec, params, np.ones((2, 1, 3)), train=True)
    buf = np.zeros((4, 3))
    _, _, g = F.backward(tape, np.ones((2, 1, 4)), out={"weight_ih_l0": buf})
    assert g["weight_ih_l0"] is buf and np.any(buf != 0) and g["weight_hh_l0"].shape == (4, 4)
    with pytest.raises(ValueError, match="weight_ih_l0"):
        F.backward(tape, np.ones((2, 1, 4)), out={"weight_ih_l0": np.zeros((3, 4))})
    with pytest.raises(TypeError, match="float64"):
        F.backward(tape, np.ones((2, 1, 4)), out={"weight_ih_l0": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match="C-contiguous"):
        F.backward(tape, np.ones((2, 1, 4)), out={"weight_ih_l0": np.zeros((3, 4)).T})
    with pytest.raises(ValueError, match="unexpected"):
        F.backward(tape, np.ones((2, 1, 4)), out={"weight_xx": buf})
    ro = np.zeros((4, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        F.backward(tape, np.ones((2, 1, 4)), out={"weight_ih_l0": ro})


def test_bad_params_refused_before_c():
    spec = LayerSpec("lstm", 3, 4)
    good = {k: np.zeros(s, np.float32) for k, s in spec.param_shapes()}
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="bias_hh_l0"):
        F.forward(spec, {k: v for k, v in good.items() if k != "bias_hh_l0"}, x)
    with pytest.raises(ValueError, match=r"\(16, 4\)"):
        F.forward(spec, dict(good, weight_hh_l0=np.zeros((16, 5), np.float32)), x)
    with pytest.raises(TypeError, match="float32"):
        F.forward(spec, dict(good, weight_hh_l0=np.zeros((16, 4))), x)
    with pytest.raises(TypeError, match="ndarray"):
        F.forward(spec, dict(good, weight_hh_l0=[[0.0] * 4] * 16), x)
    with pytest.raises(TypeError, match="LayerSpec"):
        F.forward("lstm", good, x)


def test_mask_fn_is_used_and_checked():
    spec = LayerSpec("lstm", 3, 4, num_layers=2, dropout=0.5, dtype=F64)
    rng = np.random.default_rng(2)
    params = {k: rng.standard_normal(s) * 0.3 for k, s in spec.param_shapes()}
    x = rng.standard_normal((5, 2, 3))
    masks = [(rng.random((5, 2, 4)) < 0.5) * 2.0]
    calls = []

    def mask_fn(k, shape):
        calls.append((k, shape))
        return masks[k]

    y, _, tape = F.forward(spec, params, x, train=True, mask_fn=mask_fn)
    assert calls == [(0, (5, 2, 4))] and tape.masks[0] is masks[0]
    y_ref, _, _ = ref.ref_forward("lstm", params, x, num_layers=2, masks=masks)
    np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-12)
    with pytest.raises(ValueError, match="mask_fn"):
        F.forward(spec, params, x, train=True, mask_fn=lambda k, s: np.ones((1, 1)))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_go_backwards_is_the_reverse_direction(cell):
    """go_backwards runs a unidirectional layer from each sequence's own end: the reverse half of a
    bidirectional layer with the same weights (y, h_n and every gradient)."""
    rng = np.random.default_rng(4)
    bi = LayerSpec(cell, 3, 4, bidirectional=True, dtype=F64)
    back = LayerSpec(cell, 3, 4, go_backwards=True, dtype=F64)
    pb = {k: rng.standard_normal(s) * 0.4 for k, s in bi.param_shapes()}
    p1 = {k.replace("_reverse", ""): v for k, v in pb.items() if k.endswith("_reverse")}
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    yb, sb, tb = F.forward(bi, pb, x, lengths=lengths, train=True)
    y1, s1, t1 = F.forward(back, p1, x, lengths=lengths, train=True)
    np.testing.assert_allclose(y1, yb[:, :, 4:], rtol=1e-12, atol=1e-13)
    h_b = sb[0] if isinstance(sb, tuple) else sb
    h_1 = s1[0] if isinstance(s1, tuple) else s1
    np.testing.assert_allclose(h_1[0], h_b[1], rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(y1.shape)
    dyb = np.concatenate([np.zeros_like(dy), dy], axis=2)
    dxb, _, gb = F.backward(tb, dyb)
    dx1, _, g1 = F.backward(t1, dy)
    np.testing.assert_allclose(dx1, dxb, rtol=1e-11, atol=1e-12)
    for k, v in g1.items():
        np.testing.assert_allclose(v, gb[k.replace("_l0", "_l0_reverse")], rtol=1e-11, atol=1e-12)


def test_layer_spec_validation_and_shapes():
    s = LayerSpec("LSTM", 10, 20, num_layers=2, bidirectional=True, proj_size=5)
    assert s.cell.name == "lstm" and s.G == 4 and s.P == 5 and s.D == 2 and s.output_size == 10
    shapes = dict(s.param_shapes())
    assert shapes["weight_ih_l1_reverse"] == (80, 10) and shapes["weight_hr_l0"] == (5, 20)
    assert list(shapes) == list(fastrnn.LSTM(10, 20, num_layers=2, bidirectional=True, proj_size=5).state_dict())
    assert hash(s) == hash(LayerSpec("lstm", 10, 20, num_layers=2, bidirectional=True, proj_size=5))
    assert s.replace(num_layers=1).num_layers == 1 and s.replace(cell="gru", proj_size=0).G == 3
    with pytest.raises(ValueError, match="cell"):
        LayerSpec("transformer", 1, 1)
    with pytest.raises(ValueError, match="proj_size"):
        LayerSpec("gru", 4, 8, proj_size=2)
    with pytest.raises(ValueError, match="go_backwards"):
        LayerSpec("gru", 4, 8, bidirectional=True, go_backwards=True)
    with pytest.raises(TypeError, match="hidden_size"):
        LayerSpec("rnn", 4, 8.0)
    with pytest.raises(TypeError, match="dtype"):
        LayerSpec("rnn", 4, 8, dtype=np.float16)


@pytest.mark.parametrize("cell,kw", [("rnn", {}), ("lstm", {"num_layers": 2, "bidirectional": True}),
                                     ("gru", {"batch_first": True}), ("lstm", {"checkpoint": 2})])
@pytest.mark.parametrize("dt", [np.float32, F64])
def test_backward_without_dx_gives_the_same_gradients(cell, kw, dt):
    """need_dx=False skips the input's gradient and leaves every other gradient as it was."""
    kw = dict(kw)
    ck = kw.pop("checkpoint", None)
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    layer = cls(5, 7, dtype=dt, seed=3, **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 6, 5) if kw.get("batch_first") else (6, 4, 5)).astype(dt)
    lengths = np.array([6, 3, 5, 1])
    y, _, tape = F.forward(layer.spec, layer.state_dict(), x, lengths=lengths, train=True, checkpoint=ck)
    dy = rng.standard_normal(y.shape).astype(dt)
    dx0, dh0, g0 = F.backward(tape, dy)
    dx1, dh1, g1 = F.backward(tape, dy, need_dx=False)
    assert dx0 is not None and dx1 is None
    np.testing.assert_array_equal(dh0, dh1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)
