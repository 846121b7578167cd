"""Numerics: NaN and Inf in inputs, states, weights and incoming gradients propagate as IEEE arithmetic says
(the float64 reference, plain numpy, is the IEEE oracle: the same NaN and +-Inf positions, the finite values
within tolerance) -- no crash, no hang, no silent replacement; the saturating activations are exact at +-Inf;
the kernels' flush-to-zero mode does not leak into the caller's thread."""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import reference as ref

import helpers
from helpers import Case

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}
# Where a special value is put: (which array, index builder from the case).
SITES = ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "weight_hr_l0", "dy", "dh_n", "dc_n"]


def _ieee_compare(actual, expected, dtype, depth, name):
    """Same NaN positions, same infinities, finite values within tolerance (scale floored at 1)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} vs {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (f"{name}: NaN at {np.argwhere(nan_a & ~nan_e)[:5].tolist()} where IEEE "
                                          f"gives a number, numbers at {np.argwhere(nan_e & ~nan_a)[:5].tolist()} "
                                          f"where IEEE gives NaN")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    assert np.array_equal(inf_a, inf_e) and np.array_equal(a[inf_a], e[inf_e]), \
        f"{name}: infinities differ: {np.argwhere(inf_a != inf_e)[:5].tolist()}"
    fin = np.isfinite(e)
    if fin.any():
        err = float(np.abs(a[fin] - e[fin]).max())
        scale = max(1.0, float(np.abs(e[fin]).max()))
        tol = helpers.tolerance(dtype, depth)
        assert err <= tol * scale, f"{name}: finite values off by {err:.3e} > {tol * scale:.3e}"


def _packed_reference(case, params, data):
    """The reference run sequence by sequence, each over its own length only (torch's packed-sequence
    semantics: a finished sequence has no more steps), its weight gradients summed.  With lengths, the
    batched reference (fastrnn/reference.py) multiplies the zero gradient of a finished sequence's padded
    steps by its held state, which is exact for finite numbers but turns a held Inf or NaN into NaN weight
    gradients that no real step produces; fastrnn, like torch, does not compute those steps."""
    if case.lengths is None:
        return helpers.reference_run(case, params, data)
    T, B = case.T, case.B
    sel = (lambda s, b: None if s is None else
           (tuple(p[:, b:b + 1] for p in s) if isinstance(s, tuple) else s[:, b:b + 1]))
    out = dict(y=np.zeros((T, B, case.D * case.P)), dx=np.zeros((T, B, case.I)), grads=None)
    states, dhxs = [], []
    for b in range(B):
        n = case.lengths[b]
        cb = case.but(T=n, B=1, lengths=None)
        db = helpers.Data(data.x[:n, b:b + 1], sel(data.hx, b), data.dy[:n, b:b + 1], sel(data.dstate, b))
        r = helpers.reference_run(cb, params, db)
        out["y"][:n, b:b + 1] = r["y"]
        out["dx"][:n, b:b + 1] = r["dx"]
        states.append(r["state"])
        dhxs.append(r["dhx"])
        out["grads"] = r["grads"] if out["grads"] is None else \
            {k: out["grads"][k] + v for k, v in r["grads"].items()}
    cat = (lambda parts: tuple(np.concatenate([p[i] for p in parts], axis=1) for i in range(len(parts[0])))
           if isinstance(parts[0], tuple) else np.concatenate(parts, axis=1))
    out["state"], out["dhx"] = cat(states), cat(dhxs)
    return out


def _rnn_step_backward_select(p, x_t, h, saved, dh_new, nonlinearity, rm=None):
    """The reference's RNN step backward with relu's derivative applied as a select, da = dh where a > 0
    else 0 (torch's threshold_backward and fastrnn's kernel), instead of the product dh * (a > 0): the two
    differ only when dh is not finite where relu is inactive (NaN * 0 = NaN against 0).  No recurrent
    dropout masks here (rm None)."""
    assert rm is None
    if nonlinearity != "relu":
        return _REF_RNN_STEP_BACKWARD(p, x_t, h, saved, dh_new, nonlinearity)
    da = np.where(saved["a"] > 0, dh_new, 0.0)
    grads = dict(w_ih=da.T @ x_t, w_hh=da.T @ h, b_ih=da.sum(0), b_hh=da.sum(0))
    return da @ p["w_ih"], da @ p["w_hh"], None, grads


_REF_RNN_STEP_BACKWARD = ref.rnn_step_backward


def _isas():
    return ["portable"] + (["avx2"] if fastrnn.cpu_has_avx2() else []) + \
        (["avx512"] if fastrnn.cpu_has_avx512() else [])


@pytest.fixture(params=_isas())
def each_isa(request):
    old = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    yield request.param
    fastrnn.set_isa(old)


def _inject(case, params, data, site, value, rng):
    """Put `value` at one random element of `site`; False when the case has no such array."""
    if site in ("x", "dy"):
        arr = getattr(data, site)
    elif site in ("h0", "c0"):
        if data.hx is None or (site == "c0" and case.cell != "lstm"):
            return False
        arr = data.hx[0 if site == "h0" else 1] if case.cell == "lstm" else data.hx
    elif site in ("dh_n", "dc_n"):
        if site == "dc_n" and case.cell != "lstm":
            return False
        arr = data.dstate[0 if site == "dh_n" else 1] if case.cell == "lstm" else data.dstate
    else:
        if site not in params:
            return False
        arr = params[site]
    idx = tuple(int(rng.integers(n)) for n in arr.shape)
    arr[idx] = value
    return True


@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("variant", sorted(helpers.VARIANTS))
def test_nan_and_inf_propagate_as_ieee(variant, special, each_isa, monkeypatch):
    """A NaN, +Inf or -Inf at one element of each input in turn (x, h0, c0, each weight, a bias, dy,
    dh_n, dc_n): every output and gradient has NaN and Inf exactly where the float64 reference has them,
    and the rest within tolerance; both dtypes, with lengths and bidirectional.  Two conventions, torch's
    (fastrnn.nn imitates it): a finished sequence computes no more steps (_packed_reference), and relu's
    derivative is a select (_rnn_step_backward_select)."""
    monkeypatch.setattr(ref, "rnn_step_backward", _rnn_step_backward_select)
    rng = np.random.default_rng(7)
    base = Case.variant(variant, T=6, B=3, I=5, H=7, bidirectional=True, lengths=(6, 2, 4))
    checked = 0
    for dtype in (F32, F64):
        for site in SITES:
            case = base
            params = helpers.random_params(case, dtype, seed=1)
            data = helpers.random_data(case, dtype, seed=2)
            if not _inject(case, params, data, site, SPECIALS[special], rng):
                continue
            with np.errstate(all="ignore"):
                expect = _packed_reference(case, params, data)
            with np.errstate(all="ignore"):
                layer = helpers.fastrnn_layer(case, dtype, params=params)
                got = helpers.fastrnn_run(case, layer, data, dtype)
            name = f"{case} {dtype.name} {each_isa} {special} in {site}"
            d = case.depth
            _ieee_compare(got["y"], expect["y"], dtype, d, name + ": y")
            _ieee_compare(got["infer_y"], expect["y"], dtype, d, name + ": inference y")
            for part, a, e in zip("hc", _parts(got["state"]), _parts(expect["state"])):
                _ieee_compare(a, e, dtype, d, f"{name}: state {part}")
            _ieee_compare(got["dx"], expect["dx"], dtype, d, name + ": dx")
            for part, a, e in zip("hc", _parts(got["dhx"]), _parts(expect["dhx"])):
                _ieee_compare(a, e, dtype, d, f"{name}: dhx {part}")
            for k in expect["grads"]:
                _ieee_compare(got["grads"][k], expect["grads"][k], dtype, d, f"{name}: grad {k}")
            checked += 1
    assert checked >= 12


def _parts(s):
    return s if isinstance(s, tuple) else (s,)


def test_nan_in_one_sequence_stays_in_it(each_isa):
    """Sequences are independent: a NaN in sequence 1's input makes its outputs NaN from that step on (the
    reverse direction up to it) and leaves the other sequences' results exactly as without it."""
    for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
        layer = cls(8, 19, bidirectional=True, seed=0)
        x = np.random.default_rng(0).standard_normal((12, 4, 8)).astype(np.float32)
        y_clean = layer(x)[0]
        x[5, 1, 3] = np.nan
        y = layer(x)[0]
        P = 19
        assert np.isnan(y[5:, 1, :P]).all() and np.isfinite(y[:5, 1, :P]).all(), cls.__name__
        assert np.isnan(y[:6, 1, P:]).all() and np.isfinite(y[6:, 1, P:]).all(), cls.__name__
        keep = [0, 2, 3]
        np.testing.assert_array_equal(y[:, keep], y_clean[:, keep])


@pytest.mark.parametrize("dtype", [F32, F64])
def test_activations_exact_at_infinities_and_nan(dtype, each_isa):
    """sigmoid and tanh of the kernels: exactly 1/0 and +-1 at +-Inf, NaN at NaN, in [0, 1] / [-1, 1] and
    monotone over huge finite arguments, never NaN for a number -- on every ISA path, on every lane (the
    values are placed at every position of a vector's width and its tail)."""
    core = fastrnn._core
    for n in (1, 7, 16, 17, 33):
        for pos in range(n):
            x = np.zeros(n, dtype)
            for v, s, t in ((np.inf, 1.0, 1.0), (-np.inf, 0.0, -1.0)):
                x[pos] = v
                assert core.activation("sigmoid", x)[pos] == s, (n, pos, v)
                assert core.activation("tanh", x)[pos] == t, (n, pos, v)
            x[pos] = np.nan
            assert np.isnan(core.activation("sigmoid", x)[pos]) and np.isnan(core.activation("tanh", x)[pos])
            others = np.delete(core.activation("tanh", x), pos)
            assert np.all(others == 0), "a NaN leaked into the neighbouring lanes"
    big = np.array([-np.finfo(dtype).max, -1e30, -1e4, -200, -90, -50, -20, 0, 20, 50, 90, 200, 1e4, 1e30,
                    np.finfo(dtype).max], dtype)
    s = core.activation("sigmoid", big)
    t = core.activation("tanh", big)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(t))
    assert np.all((s >= 0) & (s <= 1)) and np.all((t >= -1) & (t <= 1))
    assert np.all(np.diff(s) >= 0) and np.all(np.diff(t) >= 0)
    assert s[0] == 0 and s[-1] == 1 and t[0] == -1 and t[-1] == 1


def test_saturated_gates_give_exact_states(each_isa):
    """An input of +-Inf with weights of one sign drives every gate to exactly 0 or 1: the LSTM state is
    then exactly computable (c = i*g + f*c with i, f, g, o in {0, 1, -1}), and fastrnn gives it exactly."""
    lstm = fastrnn.LSTM(1, 5, bias=False, seed=0)
    sd = lstm.state_dict()
    H = 5
    sd["weight_ih_l0"][:] = 1.0                   # all gates' preactivation = x
    sd["weight_hh_l0"][:] = 0.0
    lstm.load_state_dict(sd)
    x = np.array([np.inf, np.inf, -np.inf, np.inf], np.float32).reshape(4, 1, 1)
    y, (h, c) = lstm(x)
    # +Inf: i = f = o = 1, g = 1 -> c = c + 1, h = tanh(c); -Inf: i = f = o = 0, g = -1 -> c = 0, h = 0
    cs = np.array([1.0, 2.0, 0.0, 1.0])
    assert np.all(c == 1.0), c                      # exact: the gates are exactly 0 and 1
    assert np.all(y[2] == 0.0), y[2]                # o = 0 exactly at -Inf
    np.testing.assert_allclose(y[:, 0, :], np.tanh(cs)[:, None] * np.ones(H), rtol=1e-6, atol=0)


def test_relu_rnn_propagates_nan_not_zero(each_isa):
    """relu(NaN) is NaN (np.maximum's IEEE semantics), not 0 as fmax would give."""
    rnn = fastrnn.RNN(3, 9, nonlinearity="relu", seed=0)
    x = np.ones((3, 2, 3), np.float32)
    x[1, 0, 0] = np.nan
    y, h = rnn(x)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()


def test_flush_to_zero_does_not_leak_into_the_caller():
    """The kernels run with denormals flushed (a speed choice, README), but the caller's floating-point
    mode is restored: numpy computes subnormals after a call, also on the calling thread of a threaded run."""
    tiny = np.float32(1e-38)
    before = np.float32(tiny * np.float32(1e-3))
    assert before != 0  # subnormal arithmetic works here to begin with
    fastrnn.LSTM(16, 32)(np.ones((5, 3, 16), np.float32))
    after = np.multiply(tiny, np.float32(1e-3))
    assert after == before and after != 0
    d = np.array([5e-324])
    assert d[0] != 0 and (d * 1.0)[0] != 0


def test_huge_finite_inputs_do_not_make_nan(each_isa):
    """Inputs of 1e30 saturate the gates: outputs are finite, in range, never NaN (no inf - inf inside an
    activation's range reduction)."""
    for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
        layer = cls(4, 33, seed=1)
        x = np.where(np.random.default_rng(0).random((7, 3, 4)) < 0.5, -1e30, 1e30).astype(np.float32)
        y = layer(x)[0]
        assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1), cls.__name__
