"""Bad input: every case asserts the exception type AND that the message says what was expected.

Message contract (README "Errors"): a shape error names the argument (x, hx, h0, c0, dy, dstate, lengths, or
the state_dict key) and the expected shape as a Python-style tuple, with letters for the dims the layer
cannot know, e.g. (T, B, 64) for x of a layer with input_size 64, (1, 3, 20) for its hx at batch 3; a dtype
error names the accepted dtypes, float32 and float64."""

import re

import numpy as np
import pytest

import fastrnn

F32 = np.float32


def _has_name(msg, name):
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", msg) is not None


def raises(exc, fn, names=(), contains=()):
    """fn() raises exc; its message names one of `names` (when given) and contains every `contains`
    (each entry a string or a tuple of acceptable alternatives)."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    if names:
        assert any(_has_name(msg, n) for n in names), f"message does not name any of {names}: {msg!r}"
    for c in contains:
        alts = (c,) if isinstance(c, str) else c
        assert any(a in msg for a in alts), f"message does not contain {' or '.join(map(repr, alts))}: {msg!r}"
    return msg


def rnd(*shape, dtype=F32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(params=["RNN", "LSTM", "GRU"])
def cls(request):
    return getattr(fastrnn, request.param)


# ---- x -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 3, 64, 1), (64,), (1, 5, 3, 64), ()])
def test_x_wrong_ndim(cls, shape):
    layer = cls(64, 20)
    raises(ValueError, lambda: layer(np.zeros(shape, F32)), names=["x"], contains=["(T, B, 64)"])


def test_x_wrong_last_dim(cls):
    layer = cls(64, 20)
    raises(ValueError, lambda: layer(rnd(5, 3, 63)), names=["x"], contains=["(T, B, 64)"])
    raises(ValueError, lambda: layer.forward(rnd(5, 3, 65), train=True), names=["x"], contains=["(T, B, 64)"])
    raises(ValueError, lambda: layer(rnd(5, 63)), names=["x"], contains=[("(T, 64)", "(T, B, 64)")])


def test_x_wrong_last_dim_batch_first(cls):
    layer = cls(64, 20, batch_first=True)
    raises(ValueError, lambda: layer(rnd(3, 5, 32)), names=["x"], contains=["(B, T, 64)"])


@pytest.mark.parametrize("bad", [
    np.zeros((5, 3, 64), np.complex64),
    np.zeros((5, 3, 64), np.float16),
    np.empty((5, 3, 64), dtype=object),
    np.full((5, 3, 64), "a"),
    "not an array",
], ids=["complex", "float16", "object", "str_array", "str"])
def test_x_bad_dtype_is_type_error(cls, bad):
    layer = cls(64, 20)
    raises(TypeError, lambda: layer(bad), contains=["float32", "float64"])
    raises(TypeError, lambda: layer.forward(bad, train=True), contains=["float32", "float64"])


@pytest.mark.parametrize("kind", [np.int32, np.int64, np.uint8, bool])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_x_int_and_bool_are_converted(cls, kind, dtype):
    layer = cls(4, 6, dtype=dtype, seed=0)
    x = (np.random.default_rng(0).integers(0, 3, size=(5, 2, 4)) > 0 if kind is bool else
         np.random.default_rng(0).integers(0, 3, size=(5, 2, 4))).astype(kind)
    y, _ = layer(x)
    y_ref, _ = layer(x.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, y_ref)


def test_float64_input_is_cast_to_float32_layer(cls):
    layer = cls(4, 6, seed=0)
    x = rnd(5, 2, 4, dtype=np.float64)
    y, _ = layer(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, layer(x.astype(F32))[0])


@pytest.mark.parametrize("name,relu", [("RNN", False), ("RNN", True), ("LSTM", False), ("GRU", False)],
                         ids=["RNN", "RNN_relu", "LSTM", "GRU"])
def test_nan_in_x_propagates(name, relu):
    layer = getattr(fastrnn, name)(4, 6, seed=0, **(dict(nonlinearity="relu") if relu else {}))
    x = rnd(5, 2, 4)
    x[2, 1, 0] = np.nan
    y, _ = layer(x)
    assert np.all(np.isnan(y[2:, 1])), "NaN did not propagate forward in time"
    assert np.all(np.isfinite(y[:, 0])) and np.all(np.isfinite(y[:2, 1])), "NaN leaked into other entries"
    y, st, tape = layer.forward(x, train=True)
    dx, dhx, grads = layer.backward(tape, np.ones_like(y))   # no crash
    if not relu:   # relu'(NaN) is 0 (torch too): NaN gradients are only guaranteed through tanh/sigmoid
        assert np.isnan(dx[:3, 1]).any()


# ---- hx --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_hx_wrong_shape(name):
    cls = getattr(fastrnn, name)
    layer = cls(10, 20)
    x = rnd(5, 3, 10)
    for bad in [(1, 2, 20), (1, 3, 19), (2, 3, 20), (3, 20), (1, 1, 3, 20)]:
        raises(ValueError, lambda: layer(x, np.zeros(bad, F32)), names=["hx", "h0"], contains=["(1, 3, 20)"])
    layer2 = cls(10, 20, num_layers=2, bidirectional=True)
    raises(ValueError, lambda: layer2(x, np.zeros((2, 3, 20), F32)), names=["hx", "h0"],
           contains=["(4, 3, 20)"])
    # unbatched x takes an unbatched state
    raises(ValueError, lambda: layer(rnd(5, 10), np.zeros((1, 3, 20), F32)), names=["hx", "h0"],
           contains=["(1, 20)"])


def test_lstm_hx_wrong_shape():
    layer = fastrnn.LSTM(10, 20)
    x = rnd(5, 3, 10)
    h, c = np.zeros((1, 3, 20), F32), np.zeros((1, 3, 20), F32)
    raises(ValueError, lambda: layer(x, (np.zeros((1, 2, 20), F32), c)), names=["h0", "hx"],
           contains=["(1, 3, 20)"])
    raises(ValueError, lambda: layer(x, (h, np.zeros((1, 3, 21), F32))), names=["c0", "hx"],
           contains=["(1, 3, 20)"])
    proj = fastrnn.LSTM(10, 20, proj_size=5)
    raises(ValueError, lambda: proj(x, (h, c)), names=["h0", "hx"], contains=["(1, 3, 5)"])
    raises(ValueError, lambda: proj(x, (np.zeros((1, 3, 5), F32), np.zeros((1, 3, 5), F32))),
           names=["c0", "hx"], contains=["(1, 3, 20)"])


@pytest.mark.parametrize("bad", ["array", "1-tuple", "3-tuple"])
def test_lstm_hx_not_a_pair(bad):
    layer = fastrnn.LSTM(10, 20)
    x = rnd(5, 3, 10)
    h = np.zeros((1, 3, 20), F32)
    hx = {"array": h, "1-tuple": (h,), "3-tuple": (h, h, h)}[bad]
    raises((ValueError, TypeError), lambda: layer(x, hx), names=["hx"], contains=["tuple"])


def test_hx_bad_dtype(cls):
    layer = cls(10, 20)
    x = rnd(5, 3, 10)
    bad = np.zeros((1, 3, 20), np.complex64)
    hx = (bad, bad) if cls is fastrnn.LSTM else bad
    raises(TypeError, lambda: layer(x, hx), contains=["float32", "float64"])


# ---- dy, dstate ------------------------------------------------------------------------------------------

def test_dy_wrong_shape(cls):
    layer = cls(10, 20)
    x = rnd(5, 3, 10)
    y, st, tape = layer.forward(x, train=True)
    for bad in [(5, 3, 19), (4, 3, 20), (5, 2, 20), (5, 3), (5, 3, 20, 1)]:
        raises(ValueError, lambda: layer.backward(tape, np.zeros(bad, F32)), names=["dy"],
               contains=["(5, 3, 20)"])
    raises(TypeError, lambda: layer.backward(tape, np.zeros((5, 3, 20), np.complex128)),
           contains=["float32", "float64"])


def test_dy_wrong_shape_batch_first_bidirectional(cls):
    layer = cls(10, 20, batch_first=True, bidirectional=True)
    x = rnd(3, 5, 10)
    y, st, tape = layer.forward(x, train=True)
    assert y.shape == (3, 5, 40)
    raises(ValueError, lambda: layer.backward(tape, np.zeros((5, 3, 40), F32)), names=["dy"],
           contains=["(3, 5, 40)"])


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_dstate_wrong_shape(name):
    layer = getattr(fastrnn, name)(10, 20, num_layers=2)
    y, st, tape = layer.forward(rnd(5, 3, 10), train=True)
    dy = np.zeros_like(y)
    for bad in [(1, 3, 20), (2, 3, 19), (2, 20)]:
        raises(ValueError, lambda: layer.backward(tape, dy, np.zeros(bad, F32)), names=["dstate", "dh_n"],
               contains=["(2, 3, 20)"])


def test_lstm_dstate_wrong_shape():
    layer = fastrnn.LSTM(10, 20, proj_size=4)
    y, st, tape = layer.forward(rnd(5, 3, 10), train=True)
    dy = np.zeros_like(y)
    raises(ValueError, lambda: layer.backward(tape, dy, (np.zeros((1, 3, 20), F32), None)),
           names=["dstate", "dh_n"], contains=["(1, 3, 4)"])
    raises(ValueError, lambda: layer.backward(tape, dy, (None, np.zeros((1, 3, 4), F32))),
           names=["dstate", "dc_n"], contains=["(1, 3, 20)"])
    raises((ValueError, TypeError), lambda: layer.backward(tape, dy, np.zeros((1, 3, 4), F32)),
           names=["dstate"], contains=["tuple"])


# ---- state_dict --------------------------------------------------------------------------------------------

def test_state_dict_missing_key(cls):
    layer = cls(10, 20)
    sd = layer.state_dict()
    del sd["weight_hh_l0"]
    raises(ValueError, lambda: layer.load_state_dict(sd), contains=["weight_hh_l0"])


def test_state_dict_extra_key(cls):
    layer = cls(10, 20)
    sd = layer.state_dict()
    sd["weight_ih_l1"] = sd["weight_ih_l0"]
    raises(ValueError, lambda: layer.load_state_dict(sd), contains=["weight_ih_l1"])


def test_state_dict_wrong_shape_is_atomic(cls):
    layer = cls(10, 20, seed=0)
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[cls.__name__]
    before = layer.state_dict()
    sd = layer.state_dict()
    sd["weight_ih_l0"] = sd["weight_ih_l0"] + 1          # a valid change ...
    sd["bias_hh_l0"] = np.zeros(G * 20 + 1, F32)         # ... and an invalid one
    raises(ValueError, lambda: layer.load_state_dict(sd), names=["bias_hh_l0"], contains=[f"({G * 20},)"])
    sd = layer.state_dict()
    sd["weight_ih_l0"] = sd["weight_ih_l0"].T
    raises(ValueError, lambda: layer.load_state_dict(sd), names=["weight_ih_l0"], contains=[f"({G * 20}, 10)"])
    after = layer.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed by a failed load")


def test_state_dict_bad_dtype(cls):
    layer = cls(10, 20)
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"].astype(np.complex64)
    raises(TypeError, lambda: layer.load_state_dict(sd), contains=["float32", "float64"])


# ---- tapes -------------------------------------------------------------------------------------------------

def test_tape_from_another_layer(cls):
    a, b = cls(10, 20, seed=0), cls(10, 20, seed=0)
    y, st, tape = a.forward(rnd(5, 3, 10), train=True)
    raises(ValueError, lambda: b.backward(tape, np.zeros_like(y)), names=["tape"])


def test_tape_from_layer_of_other_shapes(cls):
    a, b = cls(10, 20), cls(10, 24)
    y, st, tape = a.forward(rnd(5, 3, 10), train=True)
    raises(ValueError, lambda: b.backward(tape, np.zeros((5, 3, 24), F32)), names=["tape"])
    c = cls(12, 20)
    raises(ValueError, lambda: c.backward(tape, np.zeros_like(y)), names=["tape"])


@pytest.mark.parametrize("not_a_tape", [None, "tape", 3, (), {"masks": []}])
def test_backward_on_something_not_a_tape(cls, not_a_tape):
    layer = cls(10, 20)
    raises((TypeError, ValueError), lambda: layer.backward(not_a_tape, np.zeros((5, 3, 20), F32)),
           names=["tape"])


def test_inference_forward_gives_no_tape(cls):
    layer = cls(10, 20)
    out = layer.forward(rnd(5, 3, 10), train=False)
    tape = out[2] if isinstance(out, tuple) and len(out) == 3 else None
    raises((TypeError, ValueError), lambda: layer.backward(tape, np.zeros((5, 3, 20), F32)), names=["tape"])


# ---- lengths -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [[5, 3], [5, 3, 2, 1], [5, 0, 2], [5, -1, 2], [5, 6, 2], [5, 2.5, 1],
                                     ["5", "3", "2"], [[5, 3, 2]]],
                         ids=["too_few", "too_many", "zero", "negative", "gt_T", "non_integer", "strings",
                              "2d"])
def test_bad_lengths(cls, lengths):
    layer = cls(10, 20)
    x = rnd(5, 3, 10)
    raises(ValueError, lambda: layer(x, lengths=lengths), names=["lengths"])
    raises(ValueError, lambda: layer.forward(x, lengths=lengths, train=True), names=["lengths"])


def test_lengths_wrong_count_names_shape(cls):
    layer = cls(10, 20)
    raises(ValueError, lambda: layer(rnd(5, 3, 10), lengths=[5, 3]), names=["lengths"], contains=["(3,)"])


# ---- constructor -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,exc,name", [
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(hidden_size=-3), ValueError, "hidden_size"),
    (dict(input_size=0), ValueError, "input_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dtype=np.int32), (TypeError, ValueError), "dtype"),
    (dict(dtype=np.float16), (TypeError, ValueError), "dtype"),
    (dict(dtype=np.complex64), (TypeError, ValueError), "dtype"),
])
def test_bad_constructor_args(cls, kw, exc, name):
    args = dict(input_size=10, hidden_size=20)
    args.update(kw)
    contains = [("float32", "np.float32")] if name == "dtype" else []
    raises(exc, lambda: cls(**args), names=[name], contains=contains)


def test_bad_nonlinearity():
    raises(ValueError, lambda: fastrnn.RNN(10, 20, nonlinearity="sigmoid"), names=["nonlinearity"],
           contains=["tanh", "relu"])


@pytest.mark.parametrize("proj", [20, 21, -1])
def test_bad_proj_size(proj):
    raises(ValueError, lambda: fastrnn.LSTM(10, 20, proj_size=proj), names=["proj_size"])


# ---- step ------------------------------------------------------------------------------------------------

def test_step_bad_input(cls):
    layer = cls(10, 20)
    raises(ValueError, lambda: layer.step(rnd(3, 9)), names=["x_t", "x"], contains=["10"])
    raises(ValueError, lambda: layer.step(rnd(2, 3, 10)), names=["x_t", "x"], contains=["(B, 10)"])
    raises(TypeError, lambda: layer.step(np.zeros((3, 10), np.complex64)), contains=["float32", "float64"])
    raises(ValueError, lambda: cls(10, 20, bidirectional=True).step(rnd(3, 10)))


# ---- every torch option is implemented ------------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    dict(num_layers=3), dict(bidirectional=True), dict(bias=False), dict(batch_first=True),
    dict(dropout=0.2, num_layers=2), dict(num_layers=2, bidirectional=True, bias=False, batch_first=True),
])
def test_no_option_is_unimplemented(cls, opts):
    variants = [dict()]
    if cls is fastrnn.RNN:
        variants.append(dict(nonlinearity="relu"))
    if cls is fastrnn.LSTM:
        variants.append(dict(proj_size=3))
    if cls is fastrnn.GRU:
        variants.append(dict(reset_after=False))
    for v in variants:
        for dtype in (np.float32, np.float64):
            layer = cls(4, 6, dtype=dtype, seed=0, **opts, **v)
            x = rnd(5, 3, 4)
            if opts.get("batch_first"):
                x = np.ascontiguousarray(x.transpose(1, 0, 2))
            lengths = [5, 2, 4]
            y, st = layer(x, lengths=lengths)
            y, st, tape = layer.forward(x, lengths=lengths, train=True)
            layer.backward(tape, np.ones_like(y), st)
