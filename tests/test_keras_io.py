"""fastrnn.load_model on Keras 3's own .keras files (fastrnn/models/keras_format.py).

The fixtures in tests/fixtures/keras were written by Keras 3 itself (tests/fixtures/make_keras_fixtures.py,
with the inputs and Keras's own predictions beside them); these tests need h5py (the "keras" extra, in the
"test" extra) but neither keras nor tensorflow.  Refusals of options and classes are checked on copies of the
fixtures with an edited config.json; without h5py the tests that read weights are skipped and the others
(refusals found before the weights, the ImportError naming the extra) still run.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import layers as L
from fastrnn.models import keras_format

try:
    import h5py
except ImportError:  # the "test" extra installs it; without it only the refusals before the weights run
    h5py = None
needs_h5py = pytest.mark.skipif(h5py is None, reason='h5py is not installed (pip install "fastrnn[keras]")')

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras")
MODELS = ["lstm_dense", "embedding_bigru", "simplernn_seq", "masked_gru_v1", "bidirectional_modes"]
RTOL, ATOL = 1e-5, 1e-6  # float32; measured: max abs error <= 1e-7, max rel error <= 5e-7


def fixture(name):
    return os.path.join(FIX, name + ".keras")


def data(name):
    return np.load(os.path.join(FIX, name + "_x.npy")), np.load(os.path.join(FIX, name + "_y.npy"))


def rewrite(src, dst, config=None, replace=None, drop=()):
    """A copy of the .keras zip `src` at `dst`: config.json passed through `config` (a function editing the
    dict in place), entries replaced by `replace` (name -> bytes), entries in `drop` left out."""
    replace = dict(replace or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if n in drop:
                continue
            b = replace.pop(n, None)
            if b is None:
                b = zin.read(n)
                if n == "config.json" and config is not None:
                    cfg = json.loads(b)
                    config(cfg)
                    b = json.dumps(cfg).encode()
            zout.writestr(n, b)
        for n, b in replace.items():
            zout.writestr(n, b)
    return str(dst)


def layer_cfg(cfg, class_name, k=0):
    """The k-th layer config of class `class_name` in a Sequential's config.json."""
    return [l for l in cfg["config"]["layers"] if l["class_name"] == class_name][k]["config"]


# ---- what loads --------------------------------------------------------------------------------------------

@needs_h5py
@pytest.mark.parametrize("name", MODELS)
def test_predictions_equal_keras(name):
    x, y = data(name)
    model = fastrnn.load_model(fixture(name))
    got = model.predict(x)
    assert got.shape == y.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, y, rtol=RTOL, atol=ATOL)


@needs_h5py
def test_architecture_and_options_carried_over():
    m = fastrnn.load_model(fixture("masked_gru_v1"))
    masking, gru, lstm, dense = m.layers
    assert isinstance(masking, L.Masking) and masking.mask_value == 0.0
    assert isinstance(gru, L.GRU) and gru.units == 7 and not gru.reset_after and gru.return_sequences
    assert isinstance(lstm, L.LSTM) and lstm.go_backwards and not lstm.use_bias and not lstm.return_sequences
    assert isinstance(dense, L.Dense) and dense.activation == "elu"
    assert [l.name for l in m.layers] == ["masking", "gru", "lstm", "dense"]
    assert m.output_shape == (None, 2)

    m = fastrnn.load_model(fixture("embedding_bigru"))
    emb, bi, dense = m.layers
    assert isinstance(emb, L.Embedding) and emb.mask_zero and (emb.input_dim, emb.output_dim) == (30, 6)
    assert isinstance(bi, L.Bidirectional) and bi.merge_mode == "concat"
    assert isinstance(bi.forward_layer, L.GRU) and bi.forward_layer.reset_after
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert dense.activation == "softmax"

    m = fastrnn.load_model(fixture("bidirectional_modes"))
    assert [l.merge_mode for l in m.layers[:2]] == ["ave", "mul"]
    assert m.layers[1].forward_layer.activation == "relu"

    m = fastrnn.load_model(fixture("simplernn_seq"))
    rnn, drop, td, dense = m.layers
    assert isinstance(rnn, L.SimpleRNN) and rnn.return_sequences and drop.rate == pytest.approx(0.2)
    assert isinstance(td, L.TimeDistributed) and td.layer.activation == "tanh"
    assert m.output_shape == (None, 9, 1)


@needs_h5py
def test_compile_settings_carried_over():
    m = fastrnn.load_model(fixture("lstm_dense"))
    assert m.compiled and type(m.optimizer).__name__ == "Adam"
    assert m.optimizer.learning_rate == pytest.approx(0.01, rel=1e-6) and m.loss.name == "mean_squared_error"
    m = fastrnn.load_model(fixture("embedding_bigru"))
    assert type(m.optimizer).__name__ == "RMSprop" and m._metric_names == ["accuracy"]
    assert type(m.loss).__name__ == "SparseCategoricalCrossentropy"
    m = fastrnn.load_model(fixture("simplernn_seq"))
    assert type(m.optimizer).__name__ == "SGD" and m.optimizer.momentum == pytest.approx(0.9)
    assert m.loss.name == "mean_absolute_error"
    assert not fastrnn.load_model(fixture("lstm_dense"), compile=False).compiled


def _targets(name, y):
    if name == "embedding_bigru":
        return np.argmax(y, axis=1)
    if name == "bidirectional_modes":
        return (y > 0.5).astype(np.float32)
    return y + 0.1


@needs_h5py
@pytest.mark.parametrize("name", MODELS)
def test_loaded_model_trains_and_saves_as_fastrnn(name, tmp_path):
    x, y = data(name)
    m = fastrnn.load_model(fixture(name))
    before = [w.copy() for w in m.get_weights()]
    h = m.fit(x, _targets(name, y), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    p = tmp_path / "m.fastrnn"
    m.save(p)
    back = fastrnn.load_model(p)
    assert type(back.optimizer) is type(m.optimizer)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


@needs_h5py
def test_keras_layout_sniffed_without_the_extension(tmp_path):
    p = tmp_path / "model.zip"
    shutil.copy(fixture("lstm_dense"), p)
    x, y = data("lstm_dense")
    np.testing.assert_allclose(fastrnn.load_model(p).predict(x), y, rtol=RTOL, atol=ATOL)


@needs_h5py
def test_stateful_and_unroll_are_carried_over(tmp_path):
    def edit(cfg):
        c = layer_cfg(cfg, "LSTM")
        c["stateful"] = True
        c["unroll"] = True
    m = fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "s.keras", edit))
    assert m.layers[0].stateful and m.layers[0].unroll


@needs_h5py
def test_regularizers_carried_over(tmp_path):
    def edit(cfg):
        layer_cfg(cfg, "LSTM")["kernel_regularizer"] = {"module": "keras.regularizers", "class_name": "L2",
                                                        "config": {"l2": 0.01}, "registered_name": None}
        layer_cfg(cfg, "Dense")["bias_regularizer"] = {"module": "keras.regularizers", "class_name": "L1L2",
                                                       "config": {"l1": 0.001, "l2": 0.002}}
    m = fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "r.keras", edit))
    r = m.layers[0].kernel_regularizer
    assert (r.l1, r.l2) == (0.0, 0.01)
    r = m.layers[1].bias_regularizer
    assert (r.l1, r.l2) == (0.001, 0.002)


@needs_h5py
def test_model_trainable_false_freezes_every_layer(tmp_path):
    def edit(cfg):
        cfg["config"]["trainable"] = False
    m = fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "t.keras", edit))
    assert not any(l.trainable for l in m.layers) and m._flat_w.size == 0


# ---- what is refused ------------------------------------------------------------------------------------------

def test_unsupported_layer_names_it():
    with pytest.raises(ValueError, match=r"unsupported_conv1d\.keras: layer 'conv1d' \(Conv1D\): fastrnn has no "
                                         r"'Conv1D' layer"):
        fastrnn.load_model(fixture("unsupported_conv1d"))


def _lstm(key, value):
    def edit(cfg):
        layer_cfg(cfg, "LSTM")[key] = value
    return edit


def _dense(key, value):
    def edit(cfg):
        layer_cfg(cfg, "Dense")[key] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (_lstm("activation", "relu"), r"layer 'lstm' \(LSTM\): activation: expected one of \['tanh'\], got 'relu'"),
    (_lstm("recurrent_activation", "hard_sigmoid"), r"'lstm' \(LSTM\): recurrent_activation: .*'hard_sigmoid'"),
    (_lstm("kernel_constraint", {"module": "keras.constraints", "class_name": "NonNeg", "config": {}}),
     r"'lstm' \(LSTM\): kernel_constraint=.*NonNeg.* is not supported"),
    (_lstm("activity_regularizer", {"class_name": "L2", "config": {"l2": 0.1}}),
     r"'lstm' \(LSTM\): activity_regularizer=.* is not supported"),
    (_lstm("a_future_option", 3), r"'lstm' \(LSTM\): option a_future_option=3 is not supported"),
    (_lstm("dtype", {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}),
     r"'lstm' \(LSTM\): dtype: dtype 'mixed_float16' is not supported"),
    (_lstm("kernel_initializer", {"class_name": "VarianceScaling", "config": {"scale": 3.0}}),
     r"'lstm' \(LSTM\): kernel_initializer: initializer 'VarianceScaling' is not supported"),
    (_lstm("recurrent_initializer", {"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": None}}),
     r"'lstm' \(LSTM\): recurrent_initializer: Orthogonal\(gain=2.0\) is not supported"),
    (_lstm("kernel_regularizer", {"class_name": "OrthogonalRegularizer", "config": {}}),
     r"'lstm' \(LSTM\): kernel_regularizer: regularizer 'OrthogonalRegularizer' is not supported"),
    (_dense("activation", "gelu"), r"layer 'dense' \(Dense\): activation: expected one of .*, got 'gelu'"),
    (_dense("activation", {"module": "mine", "class_name": "function", "config": "swoosh"}),
     r"'dense' \(Dense\): activation: a custom activation"),
    (_dense("lora_rank", 4), r"'dense' \(Dense\): lora_rank=4 is not supported"),
])
def test_unsupported_option_names_layer_and_option(tmp_path, edit, match):
    p = rewrite(fixture("lstm_dense"), tmp_path / "bad.keras", edit)
    with pytest.raises(ValueError, match=match) as e:
        fastrnn.load_model(p)
    assert str(e.value).startswith(p)


def test_functional_and_subclassed_models_refused(tmp_path):
    def functional(cfg):
        cfg["class_name"] = "Functional"
    with pytest.raises(ValueError, match="functional model.*Sequential models only"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "f.keras", functional))

    def subclassed(cfg):
        cfg["class_name"], cfg["registered_name"] = "MyModel", "Custom>MyModel"
    with pytest.raises(ValueError, match="MyModel.*Sequential models only"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "s.keras", subclassed))


def test_custom_layer_refused(tmp_path):
    def edit(cfg):
        d = [l for l in cfg["config"]["layers"] if l["class_name"] == "Dense"][0]
        d["module"], d["registered_name"] = None, "Custom>Dense"
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): a custom layer"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "c.keras", edit))


def test_keras_2_file_refused(tmp_path):
    meta = json.dumps({"keras_version": "2.15.0"}).encode()
    p = rewrite(fixture("lstm_dense"), tmp_path / "k2.keras", replace={"metadata.json": meta})
    with pytest.raises(ValueError, match="saved by Keras 2.15.0; fastrnn reads the .keras files of Keras 3"):
        fastrnn.load_model(p)


@needs_h5py
def test_compile_settings_fastrnn_lacks(tmp_path):
    def edit(cfg):
        cfg["compile_config"]["optimizer"] = {"module": "keras.optimizers", "class_name": "Lion",
                                              "config": {"learning_rate": 0.001}}
    p = rewrite(fixture("lstm_dense"), tmp_path / "lion.keras", edit)
    with pytest.raises(ValueError, match=r"compile settings: optimizer 'Lion' is not supported .*; load_model\(\.\.\., "
                                         r"compile=False\) loads the model without them"):
        fastrnn.load_model(p)
    assert not fastrnn.load_model(p, compile=False).compiled

    def ema(cfg):
        cfg["compile_config"]["optimizer"]["config"]["use_ema"] = True
    with pytest.raises(ValueError, match="use_ema is not supported"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "ema.keras", ema))

    def metric(cfg):
        cfg["compile_config"]["metrics"] = ["auc"]
    with pytest.raises(ValueError, match=r"m\.keras: compile settings: .*'auc'"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "m.keras", metric))


# ---- damaged, truncated, foreign files ----------------------------------------------------------------------

def test_truncated_file(tmp_path):
    b = open(fixture("lstm_dense"), "rb").read()
    for n in (0, 100, len(b) // 2, len(b) - 30):
        p = tmp_path / f"t{n}.keras"
        p.write_bytes(b[:n])
        with pytest.raises(ValueError, match=r"t%d\.keras: not a Keras model file, or a damaged or truncated" % n):
            fastrnn.load_model(p)


def test_corrupted_bytes(tmp_path):
    b = bytearray(open(fixture("lstm_dense"), "rb").read())
    with zipfile.ZipFile(fixture("lstm_dense")) as z:
        info = z.getinfo("model.weights.h5")
    mid = info.header_offset + 30 + len(info.filename) + info.file_size // 2  # inside the stored h5
    b[mid:mid + 64] = bytes(64)
    p = tmp_path / "c.keras"
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r"c\.keras: .*(damaged|CRC)"):
        fastrnn.load_model(p)


def test_foreign_files(tmp_path):
    p = tmp_path / "noise.keras"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=r"noise\.keras: not a Keras model file"):
        fastrnn.load_model(p)
    p = tmp_path / "other.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"other\.keras: not a Keras model file \(no config.json inside\)"):
        fastrnn.load_model(p)
    with pytest.raises(ValueError, match=r"missing\.keras: no such file"):
        fastrnn.load_model(tmp_path / "missing.keras")


@needs_h5py
def test_fastrnn_file_under_a_keras_name(tmp_path):
    m = fastrnn.load_model(fixture("lstm_dense"))
    m.save(tmp_path / "m.fastrnn")
    shutil.copy(tmp_path / "m.fastrnn", tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"m\.keras: a fastrnn model file, not a Keras one"):
        fastrnn.load_model(tmp_path / "m.keras")


@needs_h5py
def test_damaged_entries(tmp_path):
    src = fixture("lstm_dense")
    p = rewrite(src, tmp_path / "j.keras", replace={"config.json": b'{"class_name": "Seq'})
    with pytest.raises(ValueError, match=r"j\.keras: .*JSONDecodeError"):
        fastrnn.load_model(p)
    p = rewrite(src, tmp_path / "h.keras", replace={"model.weights.h5": b"not hdf5" * 100})
    with pytest.raises(ValueError, match=r"h\.keras: model.weights.h5 is not an HDF5 file"):
        fastrnn.load_model(p)
    p = rewrite(src, tmp_path / "nw.keras", drop=("model.weights.h5",))
    with pytest.raises(ValueError, match=r"nw\.keras: .*no model.weights.h5 inside"):
        fastrnn.load_model(p)


def _edit_h5(src, dst, fn):
    with zipfile.ZipFile(src) as z:
        buf = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(buf, "a") as f:
        fn(f)
    return rewrite(src, dst, replace={"model.weights.h5": buf.getvalue()})


@needs_h5py
def test_weights_that_do_not_fit(tmp_path):
    src = fixture("lstm_dense")

    def missing(f):
        del f["layers/lstm/cell/vars/2"]
    with pytest.raises(ValueError, match=r"layer 'lstm' \(LSTM\): the saved weights do not fit .*expected 3 arrays"):
        fastrnn.load_model(_edit_h5(src, tmp_path / "m.keras", missing))

    def reshaped(f):
        a = f["layers/dense/vars/0"][()]
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = np.concatenate([a, a])
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): the saved weights do not fit .*weight 0 "
                                         r"expected shape \(8, 1\), got \(16, 1\)"):
        fastrnn.load_model(_edit_h5(src, tmp_path / "r.keras", reshaped))

    def no_group(f):
        del f["layers/lstm/cell"]
    with pytest.raises(ValueError, match=r"model.weights.h5: no layers/lstm/cell/vars \(the weights of layer 'lstm'\)"):
        fastrnn.load_model(_edit_h5(src, tmp_path / "g.keras", no_group))

    # another model's weights under this model's config
    with zipfile.ZipFile(fixture("masked_gru_v1")) as z:
        other = z.read("model.weights.h5")
    with pytest.raises(ValueError, match=r"x\.keras: model.weights.h5: variables fastrnn's layers have no "
                                         r"place for: /layers/gru/cell/vars/0"):
        fastrnn.load_model(rewrite(src, tmp_path / "x.keras", replace={"model.weights.h5": other}))

    def extra(f):
        f["layers/dense/extra/vars/0"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"variables fastrnn's layers have no place for: /layers/dense/extra/vars/0"):
        fastrnn.load_model(_edit_h5(src, tmp_path / "e.keras", extra))

    def renamed(f):  # the group's name attribute says whose weights these are
        f["layers/dense/vars"].attrs["name"] = "dense_7"
    with pytest.raises(ValueError, match=r"layers/dense holds the weights of layer 'dense_7', the config puts "
                                         r"layer 'dense' there"):
        fastrnn.load_model(_edit_h5(src, tmp_path / "n.keras", renamed))


def test_without_h5py_an_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fastrnn\[keras\]"'):
        fastrnn.load_model(fixture("lstm_dense"))


def test_reader_imports_no_peer_library():
    code = ("import sys, fastrnn, fastrnn.models, fastrnn.models.keras_format\n"
            "bad = [m for m in ('h5py', 'keras', 'tensorflow', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr


def test_is_keras_file():
    assert keras_format.is_keras_file(fixture("lstm_dense"))
    assert not keras_format.is_keras_file(os.path.join(FIX, "lstm_dense_x.npy"))


def test_malformed_config(tmp_path):
    def edit(cfg):
        cfg["config"]["layers"][0]["config"]["batch_shape"] = 7
    with pytest.raises(ValueError, match=r"b\.keras: not a valid Keras model file \(TypeError"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "b.keras", edit))

    def no_layers(cfg):
        del cfg["config"]["layers"]
    with pytest.raises(ValueError, match=r"l\.keras: config.json: a Sequential without a list of layers"):
        fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "l.keras", no_layers))


@needs_h5py
def test_recurrent_dropout_goes_to_the_layer(tmp_path):
    """Passed through; the layer decides (LSTM / SimpleRNN have it, the GRU refuses it for now)."""
    m = fastrnn.load_model(rewrite(fixture("lstm_dense"), tmp_path / "l.keras", _lstm("recurrent_dropout", 0.25)))
    assert m.layers[0].recurrent_dropout == 0.25
    x, y = data("lstm_dense")
    np.testing.assert_allclose(m.predict(x), y, rtol=RTOL, atol=ATOL)  # inference: no mask

    def gru(cfg):
        layer_cfg(cfg, "GRU")["recurrent_dropout"] = 0.25
    try:
        fastrnn.layers.GRU(3, recurrent_dropout=0.25)
    except ValueError as e:  # not in the GRU yet: the loader says so, naming the layer
        with pytest.raises(ValueError, match=r"layer 'gru' \(GRU\): .*recurrent_dropout"):
            fastrnn.load_model(rewrite(fixture("masked_gru_v1"), tmp_path / "g.keras", gru))
    else:
        assert fastrnn.load_model(rewrite(fixture("masked_gru_v1"), tmp_path / "g.keras", gru)).layers[1] \
            .recurrent_dropout == 0.25
