"""Memory: thousands of training steps do not grow the process (RSS), a dropped tape frees its memory at
once (no reference cycles), and an exception inside a call frees everything it took."""
import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import fastrnn
from fastrnn.nn import LayerSpec
from fastrnn.nn import functional as F


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _steps(layer, x, lengths, n):
    dy = None
    for _ in range(n):
        y, state, tape = layer.forward(x, lengths=lengths, train=True)
        if dy is None:
            dy = np.ones_like(y)
        layer.backward(tape, dy)
        layer(x, lengths=lengths)


@pytest.mark.parametrize("cell, kw", [("lstm", dict(proj_size=24, bidirectional=True)),
                                      ("gru", dict(num_layers=2, dropout=0.2)),
                                      ("rnn", dict(nonlinearity="relu", num_layers=2, bidirectional=True))])
def test_thousands_of_training_steps_do_not_grow_the_process(cell, kw):
    """3000 training steps (forward with tape, backward, an inference call) after a warm-up of 300: the
    resident set grows by less than 4 MiB (a leak of one array per step would be ~100 MiB here)."""
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    layer = cls(16, 48, seed=0, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 6, 16)).astype(np.float32)
    lengths = np.array([20, 3, 11, 20, 7, 1])
    _steps(layer, x, lengths, 300)
    gc.collect()
    before = _rss()
    _steps(layer, x, lengths, 3000)
    gc.collect()
    grown = _rss() - before
    assert grown < 4 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 3000 steps"


def test_streaming_steps_do_not_grow_the_process():
    lstm = fastrnn.LSTM(8, 32, num_layers=2, seed=0)
    x = np.ones((4, 8), np.float32)
    state = None
    for _ in range(500):
        _, state = lstm.step(x, state)
    before = _rss()
    for _ in range(20000):
        _, state = lstm.step(x, state)
    assert _rss() - before < 2 << 20


def test_a_dropped_tape_frees_its_memory():
    """The tape of a training forward (~30 MiB here) is freed as soon as its last reference goes: no cycle
    keeps it (a weak reference dies without gc), and the traced memory returns to where it was."""
    lstm = fastrnn.LSTM(64, 256, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((100, 32, 64)).astype(np.float32)
    lstm.forward(x, train=True)  # warm-up: the kernels' workspace (C memory, not traced) is kept
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y, state, tape = lstm.forward(x, train=True)
        held = tracemalloc.get_traced_memory()[0] - base
        ref = weakref.ref(tape)
        del tape
        assert ref() is None, "the tape is still alive: a reference cycle or a hidden reference"
        del y, state
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held > 20 << 20, f"the tape held only {held / 2**20:.1f} MiB"
    assert left < 64 << 10, f"{left} bytes still held after dropping the tape and the outputs"


def test_a_tape_does_not_keep_its_layer_alive():
    lstm = fastrnn.GRU(4, 8)
    _, _, tape = lstm.forward(np.ones((3, 2, 4), np.float32), train=True)
    r = weakref.ref(lstm)
    del lstm
    assert r() is None
    with pytest.raises(ValueError, match="another layer"):  # its layer is gone: refused cleanly
        fastrnn.GRU(4, 8).backward(tape, np.ones((3, 2, 8), np.float32))


class _Boom(Exception):
    pass


def test_an_exception_inside_a_call_frees_everything():
    """A mask_fn raising after the first layer ran (its output, tape and the kernels' buffers allocated):
    the exception propagates and, once it is dropped, nothing the call took stays (traced memory, and RSS
    over 500 such calls)."""
    spec = LayerSpec("lstm", 32, 128, num_layers=3, dropout=0.5)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in spec.param_shapes()}
    x = rng.standard_normal((50, 16, 32)).astype(np.float32)
    calls = []

    def mask_fn(k, shape):
        calls.append(k)
        raise _Boom("mask")

    def failing_call():
        try:
            F.forward(spec, params, x, train=True, mask_fn=mask_fn)
        except _Boom:
            pass
        else:
            raise AssertionError("no exception")

    failing_call()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        failing_call()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert left < 64 << 10, f"{left} bytes kept after a failed call"
    before = _rss()
    for _ in range(500):
        failing_call()
    assert _rss() - before < 4 << 20
    assert len(calls) == 502


def test_refused_calls_do_not_leak():
    """Calls refused by validation (bad dy in backward, bad hx) 5000 times: no growth."""
    gru = fastrnn.GRU(8, 16, seed=0)
    x = np.ones((10, 4, 8), np.float32)
    y, _, tape = gru.forward(x, train=True)
    bad_dy = np.ones((10, 4, 17), np.float32)
    bad_hx = np.ones((1, 4, 15), np.float32)

    def refused():
        for fn in (lambda: gru.backward(tape, bad_dy), lambda: gru(x, bad_hx)):
            try:
                fn()
            except ValueError:
                pass

    for _ in range(200):
        refused()
    before = _rss()
    for _ in range(5000):
        refused()
    assert _rss() - before < 2 << 20


def test_release_workspace_returns_the_kept_buffers():
    """The kernels' kept work buffers (C memory) are counted and freed on request; a call afterwards works."""
    lstm = fastrnn.LSTM(256, 512, seed=0)
    x = np.ones((50, 32, 256), np.float32)
    y0 = lstm(x)[0]
    kept = fastrnn.workspace_bytes()
    freed = fastrnn.release_workspace()
    assert freed == kept and fastrnn.workspace_bytes() == 0
    np.testing.assert_array_equal(lstm(x)[0], y0)
