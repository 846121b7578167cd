"""Reading Keras 3's own `.keras` files: a Sequential model of layers fastrnn has, its weights and (when fastrnn
has them) its compile settings, as a fastrnn Sequential.  `fastrnn.load_model("model.keras")` comes here.

A `.keras` file is a zip of

    metadata.json      {"keras_version": "3.x.y", ...}
    config.json        the model's serialised config: {"class_name": "Sequential", "config": {"layers": [...]},
                       "compile_config": {...}}
    model.weights.h5   the variables, an HDF5 file (read with h5py: the "keras" extra)

Where Keras 3's saving code puts the variables in model.weights.h5: a Sequential's layers are groups under
`layers/`, named after their class in snake case and numbered from the second of a class on (`layers/dense`,
`layers/dense_1`, ...; the InputLayer is not among them); a layer's own variables are the datasets `0, 1, ...`
of its `vars` group, whose attribute `name` is the layer's name.  A recurrent layer's are its cell's
(`layers/lstm/cell/vars`), Bidirectional's those of `forward_layer/cell` then `backward_layer/cell`,
TimeDistributed's those of `layer`.  The arrays are in Keras's layout, which set_weights takes as it is
(docs/keras.md, Weight layout).

Every option of a layer's config is carried over to fastrnn's layer of the same name, or checked to have the
one value fastrnn implements (a constraint must be None, ...), or refused: a layer class, an option or a value
fastrnn does not have is a ValueError naming the file, the layer and the option -- never a silent substitute.
The optimizer's settings are carried over, its state (Adam's moments, the step count) is not.
"""
import io
import json
import os
import zipfile

import numpy as np

from .. import layers as _layers
from .. import losses as _losses
from .. import optimizers as _optimizers
from ..layers import L1L2, Input

__all__ = ["is_keras_file", "load_keras_model", "EXTRA_HINT"]

EXTRA_HINT = 'pip install "fastrnn[keras]"'
_CONFIG, _METADATA, _WEIGHTS = "config.json", "metadata.json", "model.weights.h5"


class _Refused(ValueError):
    """A reason a file is not loaded; load_keras_model prefixes the file's name."""


def is_keras_file(path):
    """True for a name ending in .keras, or a zip holding config.json and model.weights.h5 (Keras's layout)
    rather than fastrnn.json."""
    if os.fspath(path).endswith(".keras"):
        return True
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        return False
    return "fastrnn.json" not in names and _CONFIG in names and _WEIGHTS in names


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading Keras's .keras files needs h5py: {EXTRA_HINT}") from None
    return h5py


# ---- the archive ----------------------------------------------------------------------------------------------

def _read_archive(path):
    """(config dict, metadata dict, weights bytes) of a .keras zip."""
    if not os.path.isfile(path):
        raise _Refused("no such file")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "fastrnn.json" in names:
                raise _Refused("a fastrnn model file, not a Keras one (load it under a name without .keras)")
            if _CONFIG not in names:
                raise _Refused(f"not a Keras model file (no {_CONFIG} inside)")
            if _WEIGHTS not in names:
                if "model.weights.json" in names:
                    raise _Refused("the weights are sharded (model.weights.json); fastrnn reads a .keras file "
                                   "with one model.weights.h5")
                raise _Refused(f"not a Keras 3 model file, or one saved without weights (no {_WEIGHTS} inside)")
            config = json.loads(z.read(_CONFIG).decode("utf-8"))
            metadata = json.loads(z.read(_METADATA).decode("utf-8")) if _METADATA in names else {}
            weights = z.read(_WEIGHTS)
    except _Refused:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, UnicodeDecodeError,
            json.JSONDecodeError) as e:
        raise _Refused(f"not a Keras model file, or a damaged or truncated one ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise _Refused(f"not a Keras model file ({_CONFIG} / {_METADATA} are not JSON objects)")
    version = str(metadata.get("keras_version", "3"))
    if not version.startswith("3."):
        raise _Refused(f"saved by Keras {version}; fastrnn reads the .keras files of Keras 3")
    return config, metadata, weights


# ---- option values -----------------------------------------------------------------------------------------------

def _dtype(v, where):
    """A layer's dtype: "float32" / "float64", or Keras 3's DTypePolicy of one of them."""
    name = v
    if isinstance(v, dict):
        if v.get("class_name") != "DTypePolicy":
            raise _Refused(f"{where}: dtype policy {v.get('class_name')!r} is not supported (fastrnn computes "
                           f"in float32 or float64)")
        name = (v.get("config") or {}).get("name")
    if v is None:
        return None
    if name not in ("float32", "float64"):
        raise _Refused(f"{where}: dtype {name!r} is not supported (fastrnn computes in float32 or float64)")
    return name


def _activation(v, where):
    if v is None or isinstance(v, str):
        return v  # the layer checks the name against what it computes
    name = v.get("config") if isinstance(v, dict) and v.get("class_name") == "function" else None
    if isinstance(name, str) and v.get("module") in ("keras.activations", "builtins", None):
        return name
    raise _Refused(f"{where}: a custom activation ({json.dumps(v)[:120]}) is not supported")


# Keras 3's initializer classes -> fastrnn's names, with the arguments that make them equal
_INITIALIZERS = {"GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal", "HeUniform": "he_uniform",
                 "HeNormal": "he_normal", "LecunUniform": "lecun_uniform", "LecunNormal": "lecun_normal",
                 "Orthogonal": "orthogonal", "Zeros": "zeros", "Ones": "ones", "RandomUniform": "uniform",
                 "RandomNormal": "normal"}
_INIT_ARGS = {"Orthogonal": {"gain": 1.0}, "RandomUniform": {"minval": -0.05, "maxval": 0.05},
              "RandomNormal": {"mean": 0.0, "stddev": 0.05}}
_INIT_IGNORED = ("seed",)  # where the initial values come from: the file's weights replace them


def _initializer(v, where):
    if isinstance(v, str):
        return v
    if not isinstance(v, dict) or v.get("class_name") not in _INITIALIZERS:
        raise _Refused(f"{where}: initializer {v.get('class_name') if isinstance(v, dict) else v!r} is not "
                       f"supported (fastrnn has {sorted(_INITIALIZERS)})")
    cls = v["class_name"]
    want = _INIT_ARGS.get(cls, {})
    for k, val in (v.get("config") or {}).items():
        if k in _INIT_IGNORED or (k in ("input_axes", "output_axes") and val is None):
            continue
        if k not in want or not isinstance(val, (int, float)) or not np.isclose(val, want[k], rtol=1e-6, atol=0):
            raise _Refused(f"{where}: {cls}({k}={val!r}) is not supported (fastrnn's {_INITIALIZERS[cls]!r} is "
                           f"{cls}({', '.join(f'{a}={b}' for a, b in want.items())}))")
    return _INITIALIZERS[cls]


def _regularizer(v, where):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, dict) and v.get("class_name") in ("L1", "L2", "L1L2"):
        cfg = v.get("config") or {}
        return L1L2(l1=float(cfg.get("l1", 0.0)), l2=float(cfg.get("l2", 0.0)))
    raise _Refused(f"{where}: regularizer {v.get('class_name') if isinstance(v, dict) else v!r} is not supported "
                   f"(fastrnn has L1, L2, L1L2)")


def _carry(v, where):
    return v


def _must(value):
    """An option fastrnn implements with one value only."""
    def check(v, where):
        if v != value:
            raise _Refused(f"{where}={v!r} is not supported (fastrnn implements {value!r} only)")
        return _SKIP
    return check


def _skip(v, where):
    return _SKIP


_SKIP = object()
_NONE = _must(None)

# per Keras class: config key -> handler (the value to pass to fastrnn's layer, or _SKIP); a key not listed is
# refused, so an option of a later Keras that fastrnn does not know is never dropped unseen
_BASE = {"name": _carry, "trainable": _carry, "dtype": _dtype}
_RNN = dict(_BASE, units=_carry, activation=_activation, use_bias=_carry, kernel_initializer=_initializer,
            recurrent_initializer=_initializer, bias_initializer=_initializer, kernel_regularizer=_regularizer,
            recurrent_regularizer=_regularizer, bias_regularizer=_regularizer, activity_regularizer=_NONE,
            kernel_constraint=_NONE, recurrent_constraint=_NONE, bias_constraint=_NONE, dropout=_carry,
            recurrent_dropout=_carry, seed=_carry, return_sequences=_carry, return_state=_carry,
            go_backwards=_carry, stateful=_carry, unroll=_carry, zero_output_for_mask=_carry, use_cudnn=_skip)
_OPTIONS = {
    "SimpleRNN": _RNN,
    "LSTM": dict(_RNN, recurrent_activation=_activation, unit_forget_bias=_carry),
    "GRU": dict(_RNN, recurrent_activation=_activation, reset_after=_carry),
    "Dense": dict(_BASE, units=_carry, activation=_activation, use_bias=_carry, kernel_initializer=_initializer,
                  bias_initializer=_initializer, kernel_regularizer=_regularizer, bias_regularizer=_regularizer,
                  activity_regularizer=_NONE, kernel_constraint=_NONE, bias_constraint=_NONE, lora_rank=_NONE,
                  lora_alpha=_skip, quantization_config=_NONE),
    "Embedding": dict(_BASE, input_dim=_carry, output_dim=_carry, embeddings_initializer=_initializer,
                      embeddings_regularizer=_regularizer, activity_regularizer=_NONE, embeddings_constraint=_NONE,
                      mask_zero=_carry, sparse=_must(False), lora_rank=_NONE, lora_alpha=_skip,
                      quantization_config=_NONE, input_length=_NONE),
    "Masking": dict(_BASE, mask_value=_carry),
    "Dropout": dict(_BASE, rate=_carry, noise_shape=_carry, seed=_carry),
    "Activation": dict(_BASE, activation=_activation),
    "Flatten": dict(_BASE, data_format=_must("channels_last")),
    "Bidirectional": dict(_BASE, merge_mode=_carry),  # + layer / backward_layer, converted on their own
    "TimeDistributed": dict(_BASE),                   # + layer
}
_FASTRNN_CLASS = {"SimpleRNN": _layers.SimpleRNN, "LSTM": _layers.LSTM, "GRU": _layers.GRU, "Dense": _layers.Dense,
                  "Embedding": _layers.Embedding, "Masking": _layers.Masking, "Dropout": _layers.Dropout,
                  "Activation": _layers.Activation, "Flatten": _layers.Flatten,
                  "Bidirectional": _layers.Bidirectional, "TimeDistributed": _layers.TimeDistributed}
# Keras's name of a layer's group under layers/ (its class in snake case)
_GROUP = {"SimpleRNN": "simple_rnn", "LSTM": "lstm", "GRU": "gru", "Dense": "dense", "Embedding": "embedding",
          "Masking": "masking", "Dropout": "dropout", "Activation": "activation", "Flatten": "flatten",
          "Bidirectional": "bidirectional", "TimeDistributed": "time_distributed"}
_RECURRENT = ("SimpleRNN", "LSTM", "GRU")


# ---- layers ------------------------------------------------------------------------------------------------

class _Converted:
    """One Keras layer: the fastrnn layer and where its variables are in model.weights.h5 (vars groups
    relative to the layer's group, in get_weights order)."""

    def __init__(self, keras_class, keras_name, layer, var_groups):
        self.keras_class, self.keras_name, self.layer, self.var_groups = keras_class, keras_name, layer, var_groups


def _describe(d):
    if isinstance(d, dict):
        name = (d.get("config") or {}).get("name") if isinstance(d.get("config"), dict) else None
        return f"layer {name!r} ({d.get('class_name')})" if name else f"a {d.get('class_name')} layer"
    return "a layer"


def _convert_layer(d):
    """A Keras layer description {"class_name", "config", ...} -> _Converted."""
    if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
        raise _Refused(f"config.json: expected a layer description {{'class_name', 'config'}}, got {str(d)[:80]}")
    cls, cfg = d.get("class_name"), d["config"]
    who = _describe(d)
    if cls not in _OPTIONS:
        raise _Refused(f"{who}: fastrnn has no {cls!r} layer (it reads {sorted(_OPTIONS)} and InputLayer)")
    if d.get("registered_name") not in (None, cls) or d.get("module", "keras.layers") not in ("keras.layers",
                                                                                              "keras.src.layers"):
        raise _Refused(f"{who}: a custom layer ({d.get('module')}.{d.get('registered_name') or cls}) is not "
                       f"supported")
    options = _OPTIONS[cls]
    kwargs = {}
    for k, v in cfg.items():
        if k in ("layer", "backward_layer") and cls in ("Bidirectional", "TimeDistributed"):
            continue
        handler = options.get(k)
        if handler is None:
            raise _Refused(f"{who}: option {k}={v!r} is not supported by fastrnn")
        out = handler(v, f"{who}: {k}")
        if out is not _SKIP and out is not None or handler is _carry:
            kwargs[k] = out
    if kwargs.get("dtype") is None:
        kwargs.pop("dtype", None)
    try:
        if cls == "Bidirectional":
            fw = _convert_layer(cfg.get("layer"))
            bw = _convert_layer(cfg["backward_layer"]) if cfg.get("backward_layer") is not None else None
            for sub in (fw,) + ((bw,) if bw else ()):
                if sub.keras_class not in _RECURRENT:
                    raise _Refused(f"{who}: wraps a {sub.keras_class}; fastrnn's Bidirectional takes SimpleRNN, "
                                   f"LSTM or GRU")
            layer = _layers.Bidirectional(fw.layer, backward_layer=None if bw is None else bw.layer, **kwargs)
            groups = ["forward_layer/cell", "backward_layer/cell"]
        elif cls == "TimeDistributed":
            inner = _convert_layer(cfg.get("layer"))
            layer = _layers.TimeDistributed(inner.layer, **kwargs)
            groups = ["layer"] if inner.var_groups else []
        else:
            layer = _FASTRNN_CLASS[cls](**kwargs)
            groups = ["cell"] if cls in _RECURRENT else ["."] if cls in ("Dense", "Embedding") else []
    except _Refused:
        raise
    except (ValueError, TypeError) as e:
        raise _Refused(f"{who}: {e}") from None
    return _Converted(cls, cfg.get("name"), layer, groups)


def _input_shape(layer_descs, model_cfg):
    """The input shape without the batch dimension: the InputLayer's batch_shape, else build_input_shape."""
    if layer_descs and isinstance(layer_descs[0], dict) and layer_descs[0].get("class_name") == "InputLayer":
        cfg = layer_descs[0].get("config") or {}
        for k in ("sparse", "ragged", "optional"):
            if cfg.get(k):
                raise _Refused(f"the InputLayer: {k}=True is not supported")
        shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
        if shape is None and cfg.get("shape") is not None:
            shape = [None] + list(cfg["shape"])
        return (None if shape is None else tuple(shape[1:])), layer_descs[1:]
    shape = model_cfg.get("build_input_shape")
    return (None if shape is None else tuple(shape[1:])), layer_descs


def _convert_model(config):
    """config.json -> (name, input shape, [_Converted], model trainable)."""
    cls = config.get("class_name")
    if cls == "Functional" or cls == "Model":
        raise _Refused("a functional model (keras.Model(inputs, outputs)); fastrnn reads Sequential models only")
    if cls != "Sequential" or config.get("registered_name") not in (None, "Sequential"):
        raise _Refused(f"a {cls or 'non-model'!s} ({config.get('registered_name') or config.get('module')}); "
                       f"fastrnn reads keras.Sequential models only")
    cfg = config.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
        raise _Refused("config.json: a Sequential without a list of layers")
    _dtype(cfg.get("dtype"), "the model: dtype")
    shape, descs = _input_shape(cfg["layers"], cfg)
    if shape is None:
        raise _Refused("the model was saved before it was built (no input shape, no weights)")
    converted = []
    for d in descs:
        if isinstance(d, dict) and d.get("class_name") == "InputLayer":
            raise _Refused("an InputLayer after the first layer is not supported")
        converted.append(_convert_layer(d))
    if not converted:
        raise _Refused("the Sequential has no layers")
    return cfg.get("name"), shape, converted, bool(cfg.get("trainable", True))


# ---- weights -------------------------------------------------------------------------------------------------------

def _weights(h5, converted):
    """[[arrays] per converted layer] from model.weights.h5, checked against the config's layer names."""
    h5py = _import_h5py()
    counts, used = {}, set()
    out = []
    for c in converted:
        base = _GROUP[c.keras_class]
        n = counts.get(base, -1) + 1
        counts[base] = n
        group = "layers/" + (base if n == 0 else f"{base}_{n}")
        own = h5.get(group + "/vars")
        if isinstance(own, h5py.Group) and "name" in own.attrs:
            saved = own.attrs["name"]
            saved = saved.decode() if isinstance(saved, bytes) else str(saved)
            if c.keras_name is not None and saved != c.keras_name:
                raise _Refused(f"{_WEIGHTS}: {group} holds the weights of layer {saved!r}, the config puts "
                               f"layer {c.keras_name!r} there (a file put together from two models?)")
        arrays = []
        for sub in c.var_groups:
            path = group + "/vars" if sub == "." else f"{group}/{sub}/vars"
            g = h5.get(path)
            if not isinstance(g, h5py.Group):
                raise _Refused(f"{_WEIGHTS}: no {path} (the weights of layer {c.keras_name!r})")
            keys = list(g.keys())
            if not all(k.isdigit() for k in keys):
                raise _Refused(f"{_WEIGHTS}: {path} holds {keys}, expected datasets 0, 1, ...")
            for k in sorted(keys, key=int):
                ds = g[k]
                if not isinstance(ds, h5py.Dataset):
                    raise _Refused(f"{_WEIGHTS}: {path}/{k} is not a dataset")
                if ds.attrs.get("dtype") == "bfloat16" or ds.dtype.kind != "f":
                    raise _Refused(f"{_WEIGHTS}: {path}/{k} has dtype {ds.attrs.get('dtype', ds.dtype)}; fastrnn "
                                   f"loads float weights")
                arrays.append(np.asarray(ds[()]))
                used.add(ds.name)
        out.append(arrays)
    # a variable of the layers that no fastrnn weight takes (a Keras feature this reader does not know)
    layers = h5.get("layers")
    if isinstance(layers, h5py.Group):
        left = []
        layers.visititems(lambda k, o: left.append(o.name) if isinstance(o, h5py.Dataset) and o.name not in used
                          else None)
        if left:
            raise _Refused(f"{_WEIGHTS}: variables fastrnn's layers have no place for: {', '.join(left[:5])}"
                           f"{' ...' if len(left) > 5 else ''}")
    return out


def _open_h5(data):
    h5py = _import_h5py()
    try:
        return h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as e:
        raise _Refused(f"{_WEIGHTS} is not an HDF5 file, or a damaged one ({e})") from None


# ---- compile settings -------------------------------------------------------------------------------------------

_OPT_CLASSES = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "RMSprop": "rmsprop", "Adagrad": "adagrad"}


def _optimizer(v):
    if isinstance(v, str):
        return v
    if not isinstance(v, dict) or v.get("class_name") not in _OPT_CLASSES:
        raise _Refused(f"optimizer {v.get('class_name') if isinstance(v, dict) else v!r} is not supported "
                       f"(fastrnn has {sorted(_OPT_CLASSES)})")
    cfg = dict(v.get("config") or {})
    if not cfg.get("use_ema"):  # meaningful only with use_ema
        cfg.pop("ema_momentum", None)
        cfg.pop("ema_overwrite_frequency", None)
    lr = cfg.get("learning_rate")
    if isinstance(lr, dict):
        sched = dict(lr.get("config") or {})
        cfg["learning_rate"] = {"class_name": lr.get("class_name"), "config": sched}
    return {"class_name": v["class_name"], "config": cfg}


def _loss(v):
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        if v.get("class_name") == "function" and isinstance(v.get("config"), str):
            return v["config"]
        cfg = dict(v.get("config") or {})
        if cfg.get("axis", -1) != -1:
            raise _Refused(f"loss {v.get('class_name')}(axis={cfg['axis']}) is not supported (fastrnn reduces "
                           f"over the last axis)")
        cfg.pop("axis", None)
        if cfg.get("dtype") in (None, "float32", "float64"):
            cfg.pop("dtype", None)
        return {"class_name": v.get("class_name"), "config": cfg}
    raise _Refused(f"loss {v!r} is not supported")


def _compile_args(cc):
    """Keras's compile_config -> fastrnn compile()'s arguments, or None when the model was not compiled."""
    if not isinstance(cc, dict) or cc.get("loss") is None:
        return None
    for k in ("loss_weights", "weighted_metrics"):
        if cc.get(k) is not None:
            raise _Refused(f"{k}={cc[k]!r} is not supported")
    metrics = cc.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _Refused(f"metrics {metrics!r} are not supported (fastrnn takes metric names)")
    args = {"optimizer": _optimizer(cc.get("optimizer", "rmsprop")), "loss": _loss(cc["loss"]), "metrics": metrics}
    args["optimizer"] = _optimizers.get(args["optimizer"])  # fastrnn's own checks of the values
    args["loss"] = _losses.get(args["loss"])
    return args


# ---- the whole file -------------------------------------------------------------------------------------------

def load_keras_model(filepath, compile=True):
    """A fastrnn Sequential from a .keras file Keras 3 saved: the architecture, the weights, and with
    compile=True the optimizer, loss and metrics when fastrnn has them (a setting it lacks is a ValueError;
    compile=False loads the model uncompiled).  Needs h5py (`pip install "fastrnn[keras]"`)."""
    path = os.fspath(filepath)
    try:
        return _load(path, compile)
    except _Refused as e:
        raise ValueError(f"{path}: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:  # malformed JSON or HDF5
        raise ValueError(f"{path}: not a valid Keras model file ({type(e).__name__}: {e})") from None


def _load(path, compile):
    from . import Sequential  # the package imports this module lazily, on load_model
    config, _, weight_bytes = _read_archive(path)
    name, shape, converted, trainable = _convert_model(config)
    with _open_h5(weight_bytes) as h5:
        weights = _weights(h5, converted)
    if not trainable:  # keras's model.trainable = False freezes every layer
        for c in converted:
            c.layer.trainable = False
    model = Sequential([Input(shape)] + [c.layer for c in converted], name=name)
    try:
        model.build()
    except (ValueError, TypeError) as e:
        raise _Refused(f"the layers do not fit together in fastrnn ({e})") from None
    for c, w in zip(converted, weights):
        try:
            c.layer.set_weights(w)
        except (ValueError, TypeError) as e:
            raise _Refused(f"layer {c.keras_name!r} ({c.keras_class}): the saved weights do not fit ({e})") from None
    if compile:
        try:
            args = _compile_args(config.get("compile_config"))
            if args is not None:
                model.compile(**args)
        except (ValueError, TypeError, KeyError) as e:
            raise _Refused(f"compile settings: {e}; load_model(..., compile=False) loads the model without "
                           f"them") from None
    return model
