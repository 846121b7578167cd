"""Sequential end to end: the README example verbatim, optimizers against their textbook updates, gradient
clipping, learning tasks that must succeed, callbacks, save/load, and clear errors."""
import math
import os
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import callbacks as C
from fastrnn import layers as L
from fastrnn import optimizers as O
from fastrnn.models import Sequential, load_model


@pytest.mark.skipif(not hasattr(fastrnn, "__getattr__"), reason="fastrnn.Sequential forwarding (lead's __init__)")
def test_readme_example_verbatim():
    import numpy as np
    from fastrnn import Sequential
    from fastrnn.layers import SimpleRNN, LSTM, GRU, Dense
    X = np.random.rand(10, 5, 1)  # 10 samples, 5 time steps, 1 feature
    y = np.random.rand(10, 1)
    model = Sequential()
    model.add(SimpleRNN(32, input_shape=(5, 1)))
    model.add(Dense(1))
    model.compile(optimizer="adam", loss="mean_squared_error")
    history = model.fit(X, y, epochs=10)
    pred = model.predict(X)
    assert pred.shape == (10, 1) and len(history.history["loss"]) == 10
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_example_through_fastrnn_models(capsys):
    X = np.random.rand(10, 5, 1)
    y = np.random.rand(10, 1)
    model = Sequential()
    model.add(L.SimpleRNN(32, input_shape=(5, 1)))
    model.add(L.Dense(1))
    model.compile(optimizer="adam", loss="mean_squared_error")
    history = model.fit(X, y, epochs=10)
    assert model.predict(X).shape == (10, 1)
    assert history.history["loss"][-1] < history.history["loss"][0]
    out = capsys.readouterr().out
    assert "Epoch 10/10" in out and "samples/s" in out and "\r" not in out and "\x1b" not in out
    model.summary()
    assert "Total params: 1,121" in capsys.readouterr().out


def _step(opt, w, g):
    w = w.copy()
    opt.apply(w, g.copy(), [(0, w.size)])
    return w


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_fused_adam_is_the_numpy_form_bit_for_bit(dt, amsgrad):
    """Adam's C loop (csrc/optim.c) against its numpy form, over steps with large, tiny, NaN and Inf
    gradients, with weight decay and a schedule; a strided or float16 vector takes the numpy form."""
    from fastrnn.nn import updates
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1001).astype(dt)
    out = []
    for fused in (True, False):
        o = O.AdamW(O.ExponentialDecay(0.01, 3, 0.9), weight_decay=0.01, amsgrad=amsgrad)
        o._fused = fused
        w = w0.copy()
        r = np.random.default_rng(1)
        with np.errstate(all="ignore"):
            for s in range(12):
                g = r.standard_normal(w.size).astype(dt) * (30 if s % 3 else 1e-4)
                if s == 7:
                    g[3], g[4], g[5] = np.nan, np.inf, -np.inf
                o.apply(w, g)
        out.append(w)
    np.testing.assert_array_equal(out[0], out[1])
    assert np.isnan(out[0][3]) and np.isfinite(out[0][10])
    a = np.zeros(8, dt)
    assert not updates.adam(a[::2], a[::2].copy(), a[1::2], a[1::2].copy(), None, 0.1, 0.001, 0.01, 1e-7)
    h = np.zeros(4, np.float16)
    assert not updates.adam(h, h.copy(), h.copy(), h.copy(), None, 0.1, 0.001, 0.01, 1e-7)
    assert not updates.adam(np.zeros(4, dt), np.zeros(3, dt), np.zeros(4, dt), np.zeros(4, dt), None, 0.1, 0.001,
                            0.01, 1e-7)


def test_optimizers_textbook_updates():
    w0 = np.array([1.0, -2.0, 0.5])
    g = np.array([0.1, -0.3, 2.0])
    np.testing.assert_allclose(_step(O.SGD(0.1), w0, g), w0 - 0.1 * g)
    opt = O.SGD(0.1, momentum=0.9)
    w = w0.copy()
    m = np.zeros(3)
    for _ in range(3):
        opt.apply(w, g.copy())
        m = 0.9 * m - 0.1 * g
    w_ref = w0.copy()
    m = np.zeros(3)
    for _ in range(3):
        m = 0.9 * m - 0.1 * g
        w_ref = w_ref + m
    np.testing.assert_allclose(w, w_ref)
    opt = O.SGD(0.1, momentum=0.9, nesterov=True)
    w = w0.copy()
    w_ref = w0.copy()
    m = np.zeros(3)
    for _ in range(2):
        opt.apply(w, g.copy())
        m = 0.9 * m - 0.1 * g
        w_ref = w_ref + 0.9 * m - 0.1 * g
    np.testing.assert_allclose(w, w_ref)
    # Adam, two steps (textbook form with bias correction)
    opt = O.Adam(0.01)
    w = w0.copy()
    m = v = np.zeros(3)
    w_ref = w0.copy()
    for t in (1, 2):
        opt.apply(w, g.copy())
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w_ref = w_ref - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(w, w_ref)
    # amsgrad: the step uses the running maximum of v
    opt = O.Adam(0.01, amsgrad=True)
    w = w0.copy()
    m = v = vh = np.zeros(3)
    w_ref = w0.copy()
    for t, gt in ((1, g), (2, 0.1 * g)):
        opt.apply(w, gt.copy())
        m = 0.9 * m + 0.1 * gt
        v = 0.999 * v + 0.001 * gt * gt
        vh = np.maximum(vh, v)
        w_ref = w_ref - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(vh) + 1e-7)
    np.testing.assert_allclose(w, w_ref)
    # AdamW: decoupled decay first
    aw = _step(O.AdamW(0.01, weight_decay=0.1), w0, g)
    np.testing.assert_allclose(aw, w0 * (1 - 0.01 * 0.1) - 0.01 * g / (np.abs(g) + 1e-7), rtol=1e-6)
    # RMSprop
    np.testing.assert_allclose(_step(O.RMSprop(0.01), w0, g), w0 - 0.01 * g / np.sqrt(0.1 * g * g + 1e-7))
    # Adagrad
    np.testing.assert_allclose(_step(O.Adagrad(0.1), w0, g), w0 - 0.1 * g / np.sqrt(0.1 + g * g + 1e-7))


def test_clipping_bounds():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(100) * 10
    segs = [(0, 30), (30, 70)]
    cg = O.SGD(1.0, clipnorm=1.0).clip(g.copy(), segs)
    for o, s in segs:
        assert np.linalg.norm(cg[o:o + s]) <= 1.0 + 1e-9
        np.testing.assert_allclose(cg[o:o + s] / np.linalg.norm(cg[o:o + s]), g[o:o + s] / np.linalg.norm(g[o:o + s]))
    cg = O.SGD(1.0, global_clipnorm=2.0).clip(g.copy(), segs)
    assert np.linalg.norm(cg) == pytest.approx(2.0)
    cg = O.SGD(1.0, clipvalue=0.5).clip(g.copy(), segs)
    assert np.abs(cg).max() <= 0.5
    small = np.full(10, 0.01)
    np.testing.assert_array_equal(O.SGD(1.0, global_clipnorm=5.0).clip(small.copy()), small)
    with pytest.raises(ValueError, match="Only one of"):
        O.Adam(clipnorm=1.0, clipvalue=1.0)


def test_schedules():
    s = O.ExponentialDecay(0.1, 10, 0.5)
    assert s(20) == pytest.approx(0.025)
    c = O.CosineDecay(1.0, 100, alpha=0.1)
    assert c(0) == pytest.approx(1.0) and c(100) == pytest.approx(0.1) and c(50) == pytest.approx(0.55)
    opt = O.SGD(learning_rate=s)
    w = np.ones(2)
    for _ in range(10):
        opt.apply(w, np.ones(2))
    assert opt.current_learning_rate() == pytest.approx(0.05)


def _sine(n, T, seed):
    rng = np.random.default_rng(seed)
    ph = rng.uniform(0, 2 * np.pi, n)
    fr = rng.uniform(0.1, 0.3, n)
    t = np.arange(T + 1)
    s = np.sin(ph[:, None] + fr[:, None] * t[None]) + 0.05 * rng.standard_normal((n, T + 1))
    return s[:, :T, None].astype(np.float32), s[:, T:].astype(np.float32)


def test_learning_sine_forecaster_beats_persistence():
    L.set_random_seed(0)
    X, y = _sine(1200, 30, 0)
    Xt, yt = _sine(300, 30, 1)
    m = Sequential([L.LSTM(32, input_shape=(30, 1)), L.Dense(1)])
    m.compile(optimizer=O.Adam(0.01), loss="mse", metrics=["mae"])
    m.fit(X, y, epochs=8, batch_size=32, verbose=0, validation_split=0.1)
    mse = np.mean((m.predict(Xt) - yt) ** 2)
    persistence = np.mean((Xt[:, -1] - yt) ** 2)
    assert mse < 0.5 * persistence, (mse, persistence)


def test_learning_masked_embedding_gru_classifier():
    # class = whether token 1 appears in a variable-length sequence (padding 0 after it)
    L.set_random_seed(1)
    rng = np.random.default_rng(1)
    N, T = 1500, 20
    lens = rng.integers(3, T + 1, N)
    X = rng.integers(2, 10, (N, T))
    yb = rng.random(N) < 0.5
    pos = (rng.random(N) * lens).astype(int)
    X[yb, pos[yb]] = 1
    X[np.arange(T)[None] >= lens[:, None]] = 0
    y = yb.astype(np.float32)
    m = Sequential([L.Embedding(10, 8, mask_zero=True), L.GRU(16), L.Dense(1, activation="sigmoid")])
    m.compile(optimizer=O.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    h = m.fit(X[:1200], y[:1200], epochs=6, verbose=0, validation_data=(X[1200:], y[1200:]))
    assert h.history["val_accuracy"][-1] > 0.9, h.history


def test_learning_adding_problem_lstm():
    L.set_random_seed(2)
    rng = np.random.default_rng(2)
    N, T = 4000, 50

    def data(n):
        v = rng.random((n, T))
        mk = np.zeros((n, T))
        a = rng.integers(0, T // 2, n)
        b = rng.integers(T // 2, T, n)
        mk[np.arange(n), a] = 1
        mk[np.arange(n), b] = 1
        return np.stack([v, mk], -1).astype(np.float32), (v * mk).sum(1, keepdims=True).astype(np.float32)
    X, y = data(N)
    Xt, yt = data(500)
    m = Sequential([L.LSTM(32, input_shape=(T, 2)), L.Dense(1)])
    m.compile(optimizer=O.Adam(0.01, clipnorm=1.0), loss="mse")
    m.fit(X, y, epochs=12, batch_size=64, verbose=0)
    mse = float(np.mean((m.predict(Xt) - yt) ** 2))
    assert mse < 0.02, mse  # predicting the mean gives ~0.167


def test_tbptt_trains_with_carried_state():
    L.set_random_seed(3)
    X, _ = _sine(256, 41, 3)
    Xin, Y = X[:, :40], X[:, 1:41]
    m = Sequential([L.LSTM(16, return_sequences=True, input_shape=(None, 1)), L.Dense(1)])
    m.compile(optimizer=O.Adam(0.01), loss="mse")
    h = m.fit(Xin, Y, epochs=5, tbptt=10, verbose=0)
    assert h.history["loss"][-1] < 0.3 * h.history["loss"][0]
    assert m.layers[0]._carry is None


def test_callbacks_early_stopping_checkpoint_csv(tmp_path):
    L.set_random_seed(4)
    X, y = _sine(200, 10, 4)
    m = Sequential([L.GRU(8, input_shape=(10, 1)), L.Dense(1)])
    m.compile(optimizer=O.SGD(1e-9), loss="mse")
    seen = []
    es = C.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True, min_delta=1.0)
    ck = C.ModelCheckpoint(str(tmp_path / "m{epoch:02d}.fastrnn"), monitor="val_loss")
    lg = C.CSVLogger(str(tmp_path / "log.csv"))
    lc = C.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))
    rl = C.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, min_delta=1.0)
    h = m.fit(X, y, epochs=10, validation_split=0.2, verbose=0, callbacks=[es, ck, lg, lc, rl])
    assert len(h.history["loss"]) == 2 and seen == [0, 1]  # no epoch improves by 1.0
    assert os.path.exists(tmp_path / "m01.fastrnn") and os.path.exists(tmp_path / "m02.fastrnn")
    lines = open(tmp_path / "log.csv").read().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3
    assert m.optimizer.current_learning_rate() < 1e-9


def test_save_load_round_trip_and_bad_files(tmp_path):
    L.set_random_seed(5)
    m = Sequential([L.Embedding(20, 4, mask_zero=True, input_shape=(7,)),
                    L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="sum"),
                    L.Dropout(0.2), L.GRU(3, reset_after=False), L.Dense(2, activation="softmax")])
    m.compile(optimizer=O.Adam(0.003, clipnorm=1.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).integers(1, 20, (9, 7))
    x[np.arange(7)[None] >= np.array([7, 3, 5, 1, 7, 2, 6, 4, 7])[:, None]] = 0
    m.fit(x, np.arange(9) % 2, epochs=1, verbose=0)
    p = tmp_path / "m.fastrnn"
    m.save(p)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    m2 = load_model(p)
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    assert m2.optimizer.clipnorm == 1.0 and m2.loss.name == "sparse_categorical_crossentropy"
    raw = p.read_bytes()
    (tmp_path / "trunc.fastrnn").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.fastrnn"):
        load_model(tmp_path / "trunc.fastrnn")
    (tmp_path / "junk.fastrnn").write_bytes(b"hello world" * 10)
    with pytest.raises(ValueError, match="junk.fastrnn"):
        load_model(tmp_path / "junk.fastrnn")
    with zipfile.ZipFile(tmp_path / "foreign.fastrnn", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="not a fastrnn model"):
        load_model(tmp_path / "foreign.fastrnn")
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="w.npz"):
        load_model(tmp_path / "w.npz")


def test_set_get_weights_model_round_trip():
    m = Sequential([L.LSTM(4, input_shape=(3, 2)), L.Dense(1)])
    m.build()
    ws = [w + 1 for w in m.get_weights()]
    m.set_weights(ws)
    for a, b in zip(m.get_weights(), ws):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 5 arrays"):
        m.set_weights(ws[:2])


def test_clear_errors_before_any_work():
    m = Sequential([L.LSTM(4, input_shape=(5, 2)), L.Dense(1)])
    with pytest.raises(ValueError, match="unknown loss"):
        m.compile(optimizer="adam", loss="msee")
    with pytest.raises(ValueError, match="unknown optimizer"):
        m.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="unknown metric"):
        m.compile(optimizer="adam", loss="mse", metrics=["acuracy"])
    m.compile(optimizer="adam", loss="mse")
    X = np.zeros((8, 5, 2))
    with pytest.raises(ValueError, match="x: expected shape"):
        m.fit(np.zeros((8, 5)), np.zeros((8, 1)), verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        m.fit(X, np.zeros((7, 1)), verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(X, np.zeros((8, 1)), batch_size=0, verbose=0)
    with pytest.raises(TypeError, match="callbacks"):
        m.fit(X, np.zeros((8, 1)), callbacks=["early"], verbose=0)
    with pytest.raises(ValueError, match="y: expected targets"):
        m.fit(X, np.zeros((8, 1, 2, 3)), verbose=0)


def test_nan_loss_stops_without_corrupting_weights(capsys):
    m = Sequential([L.SimpleRNN(4, input_shape=(5, 2)), L.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    X = np.ones((64, 5, 2), np.float32)
    y = np.ones((64, 1), np.float32)
    y[40] = np.nan
    before = None

    class Snap(C.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            nonlocal before
            before = self.model.get_weights()
    h = m.fit(X, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[Snap()])
    assert "training stopped" in capsys.readouterr().err
    assert len(h.history["loss"]) == 1
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))


def test_stateful_layer_carries_state():
    m = Sequential([L.GRU(3, stateful=True, input_shape=(4, 1), seed=0)])
    x = np.random.default_rng(0).random((2, 8, 1)).astype(np.float32)
    m.build()
    whole = L.GRU(3, seed=0)
    whole(x)
    whole.set_weights(m.get_weights())
    m.predict(x[:, :4], batch_size=2)
    second = m.predict(x[:, 4:], batch_size=2)
    np.testing.assert_allclose(second, whole(x), atol=1e-6)
    m.reset_states()
    np.testing.assert_allclose(m.predict(x[:, :4], batch_size=2), whole(x[:, :4]), atol=1e-6)


def test_class_and_sample_weight():
    m = Sequential([L.Dense(1, input_shape=(2,), activation="sigmoid")])
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((6, 2))
    y = np.array([0, 1, 0, 1, 0, 1.0])
    l1 = m.evaluate(x, y, sample_weight=np.array([1, 2, 1, 2, 1, 2.0]), verbose=0)
    pred = m.predict(x)[:, 0]
    bce = -(y * np.log(pred) + (1 - y) * np.log(1 - pred))
    assert l1 == pytest.approx(np.sum(bce * [1, 2, 1, 2, 1, 2]) / 6, rel=1e-5)


def test_keras_packages_import_no_framework_and_no_torch_frontend():
    import subprocess
    import sys
    import tempfile
    code = ("import sys, fastrnn.layers, fastrnn.models, fastrnn.optimizers, fastrnn.losses, fastrnn.metrics, "
            "fastrnn.callbacks; bad = [m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'fastrnn.torch', "
            "'fastrnn.cli', 'fastrnn.bench') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tempfile.gettempdir())  # not the checkout: it would shadow the installed package
    assert r.returncode == 0, r.stdout + r.stderr


def test_rnn_input_dropout_one_mask_per_sequence():
    layer = L.SimpleRNN(3, dropout=0.5, return_sequences=True, seed=0, dtype="float64")
    x = np.ones((4, 6, 5))
    layer(x)
    y, _, cache = layer.forward(x, None, True)
    m = cache.dmask
    assert m.shape == (4, 5) and set(np.unique(m)) <= {0.0, 2.0}
    ref = L.SimpleRNN(3, return_sequences=True, dtype="float64")
    ref(x)
    ref.set_weights(layer.get_weights())
    np.testing.assert_allclose(y, ref(x * m[:, None, :]))
    np.testing.assert_allclose(layer(x), ref(x))  # inference: no dropout


def test_no_input_gradient_for_the_first_trainable_layer(monkeypatch):
    """Sequential's backward does not compute the gradient of the model's input: the first layer with
    trainable weights is asked for no dx (the layers before it are not run backward); a stack of two RNN
    layers still passes dx from the second to the first; the weight gradients are unchanged."""
    from fastrnn.layers import _engine as E
    seen = []
    real = E.backward

    def spy(*a, **k):
        seen.append(k.get("need_dx", True))
        return real(*a, **k)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5, 3))
    x[2, 3:] = 0
    y = rng.standard_normal((8, 1))
    m = Sequential([L.Masking(0.0), L.LSTM(4, return_sequences=True, dtype="float64"),
                    L.GRU(3, dtype="float64"), L.Dense(1, dtype="float64")])
    m.compile(optimizer="sgd", loss="mse")
    m.build((None, 5, 3))
    yp, mask, caches = m._forward(x, True)
    _, g, _ = m._loss_and_grad(y, yp, mask, None)
    monkeypatch.setattr(E, "backward", spy)
    m._backward(caches, g)
    assert seen == [True, False]  # the GRU's dx feeds the LSTM; the LSTM's would go nowhere
    fast = m._flat_g.copy()
    for l in m.layers:  # the same gradients when every layer computes its dx
        l._need_dx = True
    m._flat_g[...] = 0
    for l, c in zip(reversed(m.layers), reversed(caches)):
        g = l.backward(c, g)
    np.testing.assert_allclose(m._flat_g, fast, rtol=1e-12, atol=0)
