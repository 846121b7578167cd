"""The reliability rules extended to the two front ends: the torch drop-in and the Keras-style API called
from many Python threads give bitwise the sequential results, thousands of their training steps do not grow
the process, and random option combinations of the drop-in match torch.nn (hypothesis, bounded in CI)."""
import threading

import numpy as np
import pytest

from test_memory import _rss


def _in_threads(fn, n=4):
    out, errs = [None] * n, []

    def run(i):
        try:
            out[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errs.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    return out


# ---- the torch drop-in --------------------------------------------------------------------------------------
def test_torch_module_from_many_threads_is_bitwise_sequential():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    m = ft.GRU(12, 20, num_layers=2, bidirectional=True)
    xs = [torch.randn(30, 5, 12, requires_grad=True) for _ in range(4)]

    def step(i):
        y, h = m(xs[i])
        g = torch.autograd.grad((y.square().sum() + h.sum()), [xs[i]] + list(m.parameters()))
        return [y.detach()] + [t.detach() for t in g]
    seq = [step(i) for i in range(4)]
    par = _in_threads(step)
    for a, b in zip(seq, par):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def test_torch_training_steps_do_not_grow_the_process():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    m = ft.LSTM(8, 16, num_layers=2, dropout=0.1)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.randn(15, 4, 8)

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            y, _ = m(x)
            y.square().mean().backward()
            opt.step()
    steps(200)
    before = _rss()
    steps(1500)
    assert _rss() - before < 6 * 2**20


def test_torch_drop_in_random_options_match_torch_nn():
    torch = pytest.importorskip("torch")
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st
    import fastrnn.torch as ft

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(cell=st.sampled_from(["RNN", "LSTM", "GRU"]), T=st.integers(1, 6), B=st.integers(1, 4),
           I=st.integers(1, 9), H=st.integers(1, 17), L=st.integers(1, 2), bidir=st.booleans(),
           bias=st.booleans(), batch_first=st.booleans(), proj=st.booleans(), seed=st.integers(0, 10**6))
    def check(cell, T, B, I, H, L, bidir, bias, batch_first, proj, seed):
        kw = dict(num_layers=L, bidirectional=bidir, bias=bias, batch_first=batch_first)
        if cell == "LSTM" and proj and H > 1:
            kw["proj_size"] = max(1, H // 2)
        torch.manual_seed(seed)
        ref = getattr(torch.nn, cell)(I, H, **kw).double()
        ours = getattr(ft, cell)(I, H, **kw).double()
        ours.load_state_dict(ref.state_dict())
        x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y1, h1 = ref(x1)
        y2, h2 = ours(x2)
        torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-12)
        (y1.sin().sum()).backward()
        (y2.sin().sum()).backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-11)
        for (n, p), q in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-11, msg=n)
    check()


# ---- the Keras-style API ------------------------------------------------------------------------------------
def _model(seed=0):
    from fastrnn import Sequential
    from fastrnn.layers import GRU, LSTM, Dense
    m = Sequential([LSTM(16, return_sequences=True, input_shape=(12, 3), seed=seed), GRU(8, seed=seed + 1),
                    Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    return m


def test_keras_predict_from_many_threads_is_bitwise_sequential():
    m = _model()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((9, 12, 3)).astype(np.float32) for _ in range(4)]
    seq = [m.predict(x, verbose=0) for x in xs]
    par = _in_threads(lambda i: m.predict(xs[i], verbose=0))
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(a, b)


def test_keras_training_does_not_grow_the_process():
    m = _model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 12, 3)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    for _ in range(100):
        m.train_on_batch(x, y)
    before = _rss()
    for _ in range(1500):
        m.train_on_batch(x, y)
    assert _rss() - before < 6 * 2**20
