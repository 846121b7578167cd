"""fastrnn.layers against hand-written Keras-layout references (Keras 3's documented math and mask rules), and
finite-difference checks of the layers, losses and masks in float64."""
import numpy as np
import pytest

from fastrnn import layers as L
from fastrnn import losses
from fastrnn.models import Sequential


def sig(x):
    return 1 / (1 + np.exp(-x))


def ref_rnn(cell, x, ws, mask=None, act="tanh", reset_after=True, go_backwards=False):
    """Keras's recurrence, one step at a time: (outputs (B, T, U) in Keras's order, h, c)."""
    k, rk = ws[0], ws[1]
    b = ws[2] if len(ws) > 2 else None
    B, T, _ = x.shape
    U = rk.shape[0]
    h = np.zeros((B, U))
    c = np.zeros((B, U))
    m = np.ones((B, T), bool) if mask is None else mask
    if go_backwards:
        x, m = x[:, ::-1], m[:, ::-1]
    outs, prev = [], np.zeros((B, U))
    for t in range(T):
        xt = x[:, t]
        if cell == "rnn":
            z = xt @ k + h @ rk + (0 if b is None else b)
            hn, cn = (np.tanh(z) if act == "tanh" else np.maximum(z, 0)), c
        elif cell == "lstm":
            z = xt @ k + h @ rk + (0 if b is None else b)
            i, f, g, o = np.split(z, 4, axis=1)
            cn = sig(f) * c + sig(i) * np.tanh(g)
            hn = sig(o) * np.tanh(cn)
        else:
            kz, kr, kh = np.split(k, 3, axis=1)
            rz, rr, rh = np.split(rk, 3, axis=1)
            if reset_after:
                bi, br = (b[0], b[1]) if b is not None else (0, 0)
                xz, xr, xh = np.split(xt @ k + bi, 3, axis=1)
                iz, ir, ih = np.split(h @ rk + br, 3, axis=1)
                zg, rg = sig(xz + iz), sig(xr + ir)
                hh = np.tanh(xh + rg * ih)
            else:
                bz, br_, bh = np.split(b, 3) if b is not None else (0, 0, 0)
                zg = sig(xt @ kz + bz + h @ rz)
                rg = sig(xt @ kr + br_ + h @ rr)
                hh = np.tanh(xt @ kh + bh + (rg * h) @ rh)
            hn, cn = zg * h + (1 - zg) * hh, c
        keep = m[:, t:t + 1]
        h = np.where(keep, hn, h)
        c = np.where(keep, cn, c)
        prev = np.where(keep, hn, prev)
        outs.append(prev)
    return np.stack(outs, 1), h, c


CASES = [("rnn", L.SimpleRNN, {}), ("rnn", L.SimpleRNN, {"activation": "relu"}), ("lstm", L.LSTM, {}),
         ("gru", L.GRU, {}), ("gru", L.GRU, {"reset_after": False}), ("lstm", L.LSTM, {"use_bias": False})]


@pytest.mark.parametrize("cell,cls,kw", CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_layer_matches_keras_recurrence(cell, cls, kw, masked, go_backwards):
    rng = np.random.default_rng(0)
    B, T, F, U = 4, 7, 3, 5
    x = rng.standard_normal((B, T, F))
    mask = np.arange(T)[None] < np.array([7, 3, 5, 1])[:, None] if masked else None
    layer = cls(U, return_sequences=True, return_state=True, go_backwards=go_backwards, dtype="float64", seed=1, **kw)
    layer(x)
    ws = [w + 0.1 * rng.standard_normal(w.shape) for w in layer.get_weights()]  # non-zero biases too
    layer.set_weights(ws)
    np.testing.assert_allclose(layer.get_weights()[0], ws[0])
    out = layer(x, mask=mask)
    ys, h, c = ref_rnn(cell, x, ws, mask, kw.get("activation", "tanh"), kw.get("reset_after", True), go_backwards)
    np.testing.assert_allclose(out[0], ys, atol=1e-10)
    np.testing.assert_allclose(out[1], h, atol=1e-10)
    if cell == "lstm":
        np.testing.assert_allclose(out[2], c, atol=1e-10)


def test_keras_weight_layout_and_defaults():
    lstm = L.LSTM(4, seed=0)
    lstm(np.zeros((2, 3, 6), np.float32))
    k, rk, b = lstm.get_weights()
    assert k.shape == (6, 16) and rk.shape == (4, 16) and b.shape == (16,)
    np.testing.assert_array_equal(b, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])  # unit_forget_bias
    np.testing.assert_allclose(rk @ rk.T, np.eye(4), atol=1e-5)  # orthogonal rows
    assert np.abs(k).max() <= np.sqrt(6 / (6 + 16)) + 1e-6  # glorot_uniform
    gru = L.GRU(4)
    gru(np.zeros((2, 3, 6), np.float32))
    assert [w.shape for w in gru.get_weights()] == [(6, 12), (4, 12), (2, 12)]
    gru0 = L.GRU(4, reset_after=False)
    gru0(np.zeros((2, 3, 6), np.float32))
    assert gru0.get_weights()[2].shape == (12,)
    # Keras's z block is the kernels' second (torch's r, z, n)
    w = [np.arange(72.0).reshape(6, 12), np.zeros((4, 12)), np.zeros((2, 12))]
    gru.set_weights(w)
    np.testing.assert_array_equal(gru.params["weight_ih_l0"][4:8], w[0][:, 0:4].T)


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_matches_two_keras_recurrences(mode):
    rng = np.random.default_rng(1)
    B, T, F, U = 3, 6, 2, 4
    x = rng.standard_normal((B, T, F))
    mask = np.arange(T)[None] < np.array([6, 2, 4])[:, None]
    bi = L.Bidirectional(L.LSTM(U, return_sequences=True, dtype="float64"), merge_mode=mode)
    bi(x)
    ws = [w + 0.1 * rng.standard_normal(w.shape) for w in bi.get_weights()]
    bi.set_weights(ws)
    y = bi(x, mask=mask)
    yf, _, _ = ref_rnn("lstm", x, ws[:3], mask)
    yb, _, _ = ref_rnn("lstm", x, ws[3:], mask, go_backwards=True)
    yb = yb[:, ::-1]
    keep = mask[..., None]
    yf, yb = yf * keep, np.where(keep, yb, 0)  # Keras's zero_output_for_mask inside Bidirectional
    want = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mul": yf * yb, "ave": (yf + yb) / 2}[mode]
    np.testing.assert_allclose(y, want, atol=1e-10)


def test_mask_not_a_prefix_is_a_value_error():
    layer = L.LSTM(3)
    x = np.ones((2, 4, 2), np.float32)
    with pytest.raises(ValueError, match="right-padded"):
        layer(x, mask=np.array([[1, 0, 1, 0], [1, 1, 1, 1]], bool))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="activation"):
        L.LSTM(3, activation="relu")
    with pytest.raises(ValueError, match="recurrent_activation"):
        L.GRU(3, recurrent_activation="hard_sigmoid")
    with pytest.raises(ValueError, match="activation"):
        L.SimpleRNN(3, activation="gelu")
    with pytest.raises(ValueError, match="dropout together with recurrent_dropout"):
        L.GRU(3, dropout=0.1, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="kernel_initializer"):
        L.Dense(3, kernel_initializer="nope")
    with pytest.raises(TypeError, match="units"):
        L.Dense("3")
    with pytest.raises(ValueError, match="merge_mode"):
        L.Bidirectional(L.LSTM(3), merge_mode="max")


def _grad_check(model, x, y, loss, n=25, seed=0):
    model.compile(optimizer="sgd", loss=loss)
    model.build((None,) + x.shape[1:])
    yp, mask, caches = model._forward(x, True)
    _, g, _ = model._loss_and_grad(y, yp, mask, None)
    model._backward(caches, g)
    ana = model._flat_g.copy()
    w = model._flat_w
    rng = np.random.default_rng(seed)
    idx = rng.choice(w.size, size=min(n, w.size), replace=False)
    eps = 1e-6
    for i in idx:
        old = w[i]
        w[i] = old + eps
        yp1, m1, _ = model._forward(x, False)
        lp = model._loss_and_grad(y, yp1, m1, None)[0]
        w[i] = old - eps
        yp2, m2, _ = model._forward(x, False)
        lm = model._loss_and_grad(y, yp2, m2, None)[0]
        w[i] = old
        num = (lp - lm) / (2 * eps)
        assert abs(num - ana[i]) <= 1e-6 + 1e-4 * abs(num), (i, num, ana[i])


D = "float64"


def test_gradcheck_embedding_mask_lstm_sequence_dense_sparse_ce():
    rng = np.random.default_rng(2)
    x = rng.integers(1, 9, size=(4, 6))
    for b, n in enumerate([6, 2, 4, 1]):
        x[b, n:] = 0
    y = rng.integers(0, 5, size=(4, 6))
    m = Sequential([L.Embedding(9, 3, mask_zero=True, dtype=D), L.LSTM(4, return_sequences=True, dtype=D),
                    L.Dense(5, dtype=D)])
    _grad_check(m, x, y, losses.SparseCategoricalCrossentropy(from_logits=True))


@pytest.mark.parametrize("cell", [L.GRU, L.LSTM, L.SimpleRNN])
def test_gradcheck_bidirectional_masked(cell):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 2))
    x[1, 3:] = 0
    x[2, 1:] = 0
    y = rng.random((3, 2))
    m = Sequential([L.Masking(0.0, dtype=D), L.Bidirectional(cell(3, dtype=D), merge_mode="concat"),
                    L.Dense(2, activation="sigmoid", dtype=D)])
    _grad_check(m, x, y, "binary_crossentropy")


@pytest.mark.parametrize("kw", [{"go_backwards": True}, {"return_sequences": True}, {"reset_after": False}])
def test_gradcheck_gru_options_with_mask(kw):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2))
    x[0, 2:] = 0
    rs = kw.get("return_sequences", False)
    y = rng.random((3, 5, 2) if rs else (3, 2))
    m = Sequential([L.Masking(dtype=D), L.GRU(3, dtype=D, **kw), L.Dense(2, activation="tanh", dtype=D)])
    _grad_check(m, x, y, "mse")


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", losses.CategoricalCrossentropy(),
                                  losses.CategoricalCrossentropy(from_logits=True),
                                  losses.BinaryCrossentropy(from_logits=True)])
def test_gradcheck_losses(loss):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4, 2))
    if isinstance(loss, losses.CategoricalCrossentropy):
        y = np.eye(3)[rng.integers(0, 3, 5)]
        act = None if loss.from_logits else "softmax"
    else:
        y = rng.random((5, 3))
        act = None
    m = Sequential([L.SimpleRNN(4, dtype=D), L.Dense(3, activation=act, dtype=D)])
    _grad_check(m, x, y, loss)


def test_loss_values_match_textbook():
    t = np.array([[0.0, 1.0], [1.0, 0.0]])
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert losses.get("mse")(t, p) == pytest.approx(np.mean((p - t) ** 2))
    assert losses.get("categorical_crossentropy")(t, p) == pytest.approx(-np.mean(np.log([0.8, 0.6])))
    assert losses.get("sparse_categorical_crossentropy")(np.array([1, 0]), p) == pytest.approx(
        -np.mean(np.log([0.8, 0.6])))
    h = losses.Huber(delta=0.5)(np.array([[0.0], [0.0]]), np.array([[0.2], [2.0]]))
    assert h == pytest.approx(np.mean([0.5 * 0.04, 0.5 * 2.0 - 0.125]))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("mean_squared_eror")


# ---- recurrent_dropout (docs/keras.md): Keras 3's formula with a given mask, finite differences, Keras itself

def ref_rnn_recdrop(cell, x, ws, rmask, go_backwards=False):
    """Keras 3's SimpleRNNCell / LSTMCell (implementation 1, which recurrent_dropout forces) with recurrent
    dropout masks given: SimpleRNN `prev_output * rec_dp_mask` before the recurrent matmul; LSTM
    `h_tm1_q = h_tm1 * rec_dp_mask[q]` for the gates q = i, f, c, o, each in its own recurrent matmul."""
    k, rk = ws[0], ws[1]
    b = ws[2] if len(ws) > 2 else 0
    B, T, _ = x.shape
    U = rk.shape[0]
    h, c = np.zeros((B, U)), np.zeros((B, U))
    if go_backwards:
        x = x[:, ::-1]
    outs = []
    for t in range(T):
        xt = x[:, t]
        if cell == "rnn":
            h = np.tanh(xt @ k + b + (h * rmask) @ rk)
        else:
            ki, rki, bi = np.split(k, 4, axis=1), np.split(rk, 4, axis=1), np.split(np.broadcast_to(b, (4 * U,)), 4)
            z = [xt @ ki[q] + bi[q] + (h * rmask[q]) @ rki[q] for q in range(4)]
            c = sig(z[1]) * c + sig(z[0]) * np.tanh(z[2])
            h = sig(z[3]) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, 1), h, c


def ref_gru_recdrop(x, ws, rmask, reset_after=True, go_backwards=False):
    """Keras 3's GRUCell, implementation 1 (which recurrent_dropout forces), with the masks rmask (3, B, U) in
    Keras's order z, r, h: h_tm1_q = h_tm1 * rec_dp_mask[q] in gate q's recurrent matmul (reset_after=False:
    matmul(r * h_tm1_h, ...)), the carry h = z * h_tm1 + (1 - z) * hh on the unmasked h_tm1."""
    k, rk = ws[0], ws[1]
    B, T, _ = x.shape
    U = rk.shape[0]
    if len(ws) > 2:
        bi, br = (ws[2][0], ws[2][1]) if reset_after else (ws[2], np.zeros(3 * U))
    else:
        bi = br = np.zeros(3 * U)
    ks, rks, bis, brs = (np.split(a, 3, axis=-1) for a in (k, rk, bi, br))
    h = np.zeros((B, U))
    if go_backwards:
        x = x[:, ::-1]
    outs = []
    for t in range(T):
        xt = x[:, t]
        xz, xr, xh = (xt @ ks[q] + bis[q] for q in range(3))
        z = sig(xz + (h * rmask[0]) @ rks[0] + brs[0])
        r = sig(xr + (h * rmask[1]) @ rks[1] + brs[1])
        if reset_after:
            hh = np.tanh(xh + r * ((h * rmask[2]) @ rks[2] + brs[2]))
        else:
            hh = np.tanh(xh + (r * (h * rmask[2])) @ rks[2])
        h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1), h


def _fixed_mask(layer, mask):
    layer._recurrent_mask = lambda B: mask.astype(layer.dtype)


def _fixed_keras_mask(layer, mask):
    """The layer's masks fixed in Keras's gate order (the layer reorders them for the kernels)."""
    layer._draw_recurrent_mask = lambda B: mask.astype(layer.dtype)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_recurrent_dropout_matches_keras_formula(reset_after, go_backwards, use_bias):
    rng = np.random.default_rng(17)
    B, T, F, U = 4, 6, 3, 5
    x = rng.standard_normal((B, T, F))
    layer = L.GRU(U, return_sequences=True, return_state=True, recurrent_dropout=0.4, go_backwards=go_backwards,
                  reset_after=reset_after, use_bias=use_bias, dtype="float64", seed=1)
    layer(x)
    ws = [w + 0.1 * rng.standard_normal(w.shape) for w in layer.get_weights()]
    layer.set_weights(ws)
    mask = (rng.random((3, B, U)) < 0.6) / 0.6
    _fixed_keras_mask(layer, mask)
    out = layer(x, training=True)
    ys, h = ref_gru_recdrop(x, ws, mask, reset_after, go_backwards)
    np.testing.assert_allclose(out[0], ys, atol=1e-10)
    np.testing.assert_allclose(out[1], h, atol=1e-10)
    # the gate order matters: z's and r's masks swapped give another result
    assert np.abs(ref_gru_recdrop(x, ws, mask[[1, 0, 2]], reset_after, go_backwards)[0] - ys).max() > 1e-3
    # inference never applies it
    out = layer(x)
    ys0, _ = ref_gru_recdrop(x, ws, np.ones((3, B, U)), reset_after, go_backwards)
    np.testing.assert_allclose(out[0], ys0, atol=1e-10)
    assert np.abs(ys0 - ys).max() > 1e-3


@pytest.mark.parametrize("cell,cls", [("rnn", L.SimpleRNN), ("lstm", L.LSTM)])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_recurrent_dropout_matches_keras_formula(cell, cls, go_backwards):
    rng = np.random.default_rng(7)
    B, T, F, U = 4, 6, 3, 5
    x = rng.standard_normal((B, T, F))
    layer = cls(U, return_sequences=True, return_state=True, recurrent_dropout=0.4, go_backwards=go_backwards,
                dtype="float64", seed=1)
    layer(x)
    ws = [w + 0.1 * rng.standard_normal(w.shape) for w in layer.get_weights()]
    layer.set_weights(ws)
    shape = (B, U) if cell == "rnn" else (4, B, U)
    mask = (rng.random(shape) < 0.6) / 0.6
    _fixed_mask(layer, mask)
    out = layer(x, training=True)
    ys, h, c = ref_rnn_recdrop(cell, x, ws, mask, go_backwards)
    np.testing.assert_allclose(out[0], ys, atol=1e-10)
    np.testing.assert_allclose(out[1], h, atol=1e-10)
    if cell == "lstm":
        np.testing.assert_allclose(out[2], c, atol=1e-10)
    # inference never applies it: the plain recurrence
    out = layer(x)
    ys0, _, _ = ref_rnn(cell, x, ws, go_backwards=go_backwards)
    np.testing.assert_allclose(out[0], ys0, atol=1e-10)
    assert np.abs(ys0 - ys).max() > 1e-3


@pytest.mark.parametrize("cls,seed", [(L.LSTM, 8), (L.GRU, 18), (L.SimpleRNN, 28)])
def test_recurrent_dropout_masks_per_batch_seeded_and_training_only(cls, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 5, 3))
    a, b = cls(4, recurrent_dropout=0.5, seed=3), cls(4, recurrent_dropout=0.5, seed=3)
    ya1, ya2 = a(x, training=True), a(x, training=True)
    yb1 = b(x, training=True)
    np.testing.assert_array_equal(ya1, yb1)       # the same seed, the same masks
    assert np.abs(ya1 - ya2).max() > 1e-6         # a new mask per call (per batch)
    np.testing.assert_array_equal(a(x), a(x))     # inference: no mask
    np.testing.assert_array_equal(a(x), a(x, training=False))


def test_recurrent_dropout_unsupported_combinations():
    L.GRU(3, recurrent_dropout=0.2)
    L.GRU(3, recurrent_dropout=0.2, reset_after=False)
    for cls in (L.LSTM, L.GRU):  # Keras then draws one input mask per gate
        with pytest.raises(ValueError, match="dropout together with recurrent_dropout"):
            cls(3, dropout=0.1, recurrent_dropout=0.2)
    L.SimpleRNN(3, dropout=0.1, recurrent_dropout=0.2)  # SimpleRNN: one mask each in Keras too


def _grad_check_fixed(model, x, y, loss, n=25, seed=0):
    """_grad_check with the training forward on both sides (the layers' recurrent masks fixed)."""
    model.compile(optimizer="sgd", loss=loss)
    model.build((None,) + x.shape[1:])
    yp, mask, caches = model._forward(x, True)
    _, g, _ = model._loss_and_grad(y, yp, mask, None)
    model._backward(caches, g)
    ana = model._flat_g.copy()
    w = model._flat_w
    rng = np.random.default_rng(seed)
    eps = 1e-6
    for i in rng.choice(w.size, size=min(n, w.size), replace=False):
        old = w[i]
        w[i] = old + eps
        yp1, m1, _ = model._forward(x, True)
        lp = model._loss_and_grad(y, yp1, m1, None)[0]
        w[i] = old - eps
        yp2, m2, _ = model._forward(x, True)
        lm = model._loss_and_grad(y, yp2, m2, None)[0]
        w[i] = old
        num = (lp - lm) / (2 * eps)
        assert abs(num - ana[i]) <= 1e-6 + 1e-4 * abs(num), (i, num, ana[i])


@pytest.mark.parametrize("cell", [L.LSTM, L.SimpleRNN, L.GRU])
def test_gradcheck_recurrent_dropout_bidirectional_masked(cell):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 2))
    x[1, 3:] = 0
    x[2, 1:] = 0
    y = rng.random((3, 2))
    bi = L.Bidirectional(cell(3, recurrent_dropout=0.5, dtype=D), merge_mode="concat")
    m = Sequential([L.Masking(0.0, dtype=D), bi, L.Dense(2, activation="sigmoid", dtype=D)])
    m.build((None, 5, 2))
    for k, layer in enumerate((bi.forward_layer, bi.backward_layer)):
        shape = (3, 3) if cell is L.SimpleRNN else (3 if cell is L.GRU else 4, 3, 3)
        _fixed_mask(layer, (np.random.default_rng(k).random(shape) < 0.5) / 0.5)
    _grad_check_fixed(m, x, y, "binary_crossentropy", n=40)


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU])
def test_recurrent_dropout_model_learns(cell):
    """A small task with recurrent_dropout=0.2: the sum of the sequence's first feature's sign."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((512, 8, 2))
    y = (x[:, :, 0].sum(1) > 0).astype(float)[:, None]
    L.set_random_seed(0)
    m = Sequential([cell(16, recurrent_dropout=0.2, input_shape=(8, 2)), L.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    before = m.evaluate(x, y, verbose=0)
    m.fit(x, y, epochs=15, batch_size=32, verbose=0)
    after = m.evaluate(x, y, verbose=0)
    assert after[0] < 0.5 * before[0] and after[1] > 0.85, (before, after)


@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM", "GRU", "GRU_reset_before"])
def test_recurrent_dropout_against_keras_itself(cell):
    """The same weights and an injected recurrent mask into Keras's own cell (skipped without keras)."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(11)
    B, T, F, U = 3, 5, 2, 4
    x = rng.standard_normal((B, T, F)).astype("float32")
    kw = dict(reset_after=False) if cell == "GRU_reset_before" else {}
    cell = cell.split("_")[0]
    kl = getattr(keras.layers, cell)(U, return_sequences=True, recurrent_dropout=0.5, seed=0, **kw)
    kl(x)
    ws = [w + 0.1 * rng.standard_normal(w.shape).astype("float32") for w in kl.get_weights()]
    kl.set_weights(ws)
    masks = [((rng.random((B, U)) < 0.5) / 0.5).astype("float32")
             for _ in range({"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[cell])]
    kl.cell._recurrent_dropout_mask = masks[0] if cell == "SimpleRNN" else list(masks)
    want = np.asarray(kl(x, training=True))
    ours = getattr(L, cell)(U, return_sequences=True, recurrent_dropout=0.5, **kw)
    ours(x)
    ours.set_weights(ws)
    _fixed_keras_mask(ours, masks[0] if cell == "SimpleRNN" else np.stack(masks))
    np.testing.assert_allclose(ours(x, training=True), want, atol=2e-5)
