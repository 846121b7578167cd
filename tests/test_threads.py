"""Threads: the numpy API called from many Python threads at once, the GIL released during the kernels,
set_num_threads racing a computation, fork, and reproducibility across runs and thread counts."""
import os
import pickle
import threading
import time

import numpy as np
import pytest

import fastrnn
from fastrnn.nn import LayerSpec
from fastrnn.nn import functional as F

import helpers

F32 = np.dtype(np.float32)


@pytest.fixture
def threads2():
    old = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(old)


def _layer(cell, I=24, H=40, **kw):
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    return cls(I, H, seed=3, **kw)


def _inputs(layer, T=30, B=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size)).astype(layer.dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    return x, lengths


def _train_step(layer, x, lengths, dy_seed=5):
    y, state, tape = layer.forward(x, lengths=lengths, train=True)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(layer.dtype)
    dx, dhx, grads = layer.backward(tape, dy)
    return [y] + list(state if isinstance(state, tuple) else (state,)) + [dx] + [grads[k] for k in sorted(grads)]


def _run_threads(fns, n_rounds):
    """Start one Python thread per fn, each calling it n_rounds times at once (behind a barrier); returns
    {thread index: [results]} and re-raises the first exception of any thread."""
    barrier = threading.Barrier(len(fns))
    out, errors = {}, []

    def body(i, fn):
        try:
            barrier.wait()
            out[i] = [fn() for _ in range(n_rounds)]
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    ts = [threading.Thread(target=body, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
        assert not t.is_alive(), "a thread did not finish within 120 s"
    if errors:
        raise errors[0]
    return out


def _assert_bitwise(a, b, what):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u, v, equal_nan=True), f"{what}: result {i} differs (max diff {np.abs(u - v).max()})"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_layer_from_many_threads_is_bitwise_sequential(cell, threads2):
    """Six Python threads call one layer's training step at once (inference and training, each on its own
    input): every result equals bitwise the one computed alone."""
    layer = _layer(cell, bidirectional=True, num_layers=2)
    inputs = [_inputs(layer, seed=s) for s in range(6)]
    sequential = [_train_step(layer, x, ln) for x, ln in inputs]
    seq_infer = [layer(x, lengths=ln)[0] for x, ln in inputs]
    fns = []
    for i, (x, ln) in enumerate(inputs):
        fns.append(lambda x=x, ln=ln: (_train_step(layer, x, ln), layer(x, lengths=ln)[0]))
    got = _run_threads(fns, n_rounds=4)
    for i, rounds in got.items():
        for train, infer in rounds:
            _assert_bitwise(train, sequential[i], f"thread {i} training step")
            _assert_bitwise([infer], [seq_infer[i]], f"thread {i} inference")


def test_many_layers_from_many_threads(threads2):
    """Different layers (every cell, both dtypes, projections, batch_first) at once from six threads."""
    layers = [_layer("lstm", proj_size=7), _layer("gru", dtype=np.float64), _layer("rnn", nonlinearity="relu"),
              _layer("lstm", H=17, dtype=np.float64, bidirectional=True), _layer("gru", reset_after=False),
              _layer("rnn", H=33, num_layers=3)]
    inputs = [_inputs(lay, seed=i) for i, lay in enumerate(layers)]
    expected = [_train_step(lay, x, ln) for lay, (x, ln) in zip(layers, inputs)]
    got = _run_threads([lambda lay=lay, x=x, ln=ln: _train_step(lay, x, ln)
                        for lay, (x, ln) in zip(layers, inputs)], n_rounds=4)
    for i, rounds in got.items():
        for r in rounds:
            _assert_bitwise(r, expected[i], f"layer {i}")


def test_gil_is_released_during_the_kernels(threads2):
    """While one thread runs a long forward (about a second of kernel time), another Python thread keeps
    running: it takes time samples all through the call.  A kernel holding the GIL would leave a gap as
    long as the call."""
    lstm = fastrnn.LSTM(256, 256, seed=0)
    x = np.random.default_rng(0).standard_normal((64, 16, 256)).astype(np.float32)
    lstm(x)  # warm the workspace
    t0 = time.perf_counter()
    lstm(x)
    one = time.perf_counter() - t0
    reps = max(1, int(0.5 / max(one, 1e-4)))
    xl = np.concatenate([x] * reps)  # one call of about half a second
    span = {}

    def work():
        span["start"] = time.perf_counter()
        lstm(xl)
        span["end"] = time.perf_counter()

    th = threading.Thread(target=work)
    samples = []
    th.start()
    while th.is_alive():
        samples.append(time.perf_counter())
        time.sleep(0.001)
    th.join()
    dur = span["end"] - span["start"]
    inside = np.array([s for s in samples if span["start"] < s < span["end"]])
    assert dur > 0.05, f"the call took only {dur * 1e3:.1f} ms: too short to show anything"
    edges = np.concatenate([[span["start"]], inside, [span["end"]]])
    gap = float(np.max(np.diff(edges)))
    assert len(inside) >= 10 and gap < 0.5 * dur, \
        (f"the other thread ran {len(inside)} times during a {dur * 1e3:.0f} ms call; longest gap "
         f"{gap * 1e3:.0f} ms: the GIL is held by the kernels")


def test_set_num_threads_while_another_thread_computes(threads2):
    """One thread switches the kernels' thread count between 1 and 2 as fast as it can while two others run
    training steps: nothing crashes or hangs, and every result is within tolerance of the float64
    reference (results may differ in rounding between thread counts, never more)."""
    case = helpers.Case("lstm", T=20, B=8, I=16, H=36)
    params = helpers.random_params(case, np.float32)
    data = helpers.random_data(case, np.float32)
    expect = helpers.reference_run(case, params, data)
    layer = helpers.fastrnn_layer(case, np.float32, params=params)
    stop = threading.Event()
    switches = [0]

    def switcher():
        n = 1
        while not stop.is_set():
            fastrnn.set_num_threads(n)
            n = 3 - n
            switches[0] += 1
            time.sleep(0)

    def step():
        out = helpers.fastrnn_run(case, layer, data, np.float32)
        for key in ("y", "dx"):
            helpers.assert_close(out[key], expect[key], np.float32, case.depth, f"racing {key}")
        helpers.assert_grads_close(out["grads"], expect["grads"], np.float32, case.depth)
        return None

    sw = threading.Thread(target=switcher)
    sw.start()
    try:
        _run_threads([step, step], n_rounds=25)
    finally:
        stop.set()
        sw.join(30)
    assert switches[0] > 10, f"only {switches[0]} switches of the thread count during the computation"


def _child_compute(w):
    """In a forked child: compute a training step and send it to the parent."""
    try:
        lstm = fastrnn.LSTM(24, 40, seed=3, bidirectional=True)
        fastrnn.set_num_threads(2)
        x, ln = _inputs(lstm)
        res = _train_step(lstm, x, ln)
        os.write(w, pickle.dumps(("ok", res)))  # our own arrays: the parent reads them back
    except BaseException as e:  # noqa: BLE001
        os.write(w, pickle.dumps(("error", repr(e))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("pool", ["fastrnn", "openmp"])
def test_child_after_fork_computes_correctly(threads2, pool, request):
    """After the parent used the kernels' thread pool (or an OpenMP runtime's threads) and workspace,
    os.fork(): the child (one thread, the pool's threads gone) computes the same training step bitwise, with
    2 threads, and does not hang."""
    if pool == "openmp":
        fastrnn.runtime.use_openmp(request.getfixturevalue("openmp_pool"))
    lstm = fastrnn.LSTM(24, 40, seed=3, bidirectional=True)
    x, ln = _inputs(lstm)
    expected = _train_step(lstm, x, ln)  # the pool and the workspace are live now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            _child_compute(w)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    chunks = []
    os.set_blocking(r, False)
    status = None
    while time.monotonic() < deadline:
        try:
            part = os.read(r, 1 << 20)
            if part:
                chunks.append(part)
        except BlockingIOError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish in 60 s (a hang in the thread pool after fork?)")
    os.set_blocking(r, True)
    while True:
        part = os.read(r, 1 << 20)
        if not part:
            break
        chunks.append(part)
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    kind, res = pickle.loads(b"".join(chunks))
    assert kind == "ok", f"the child raised {res}"
    _assert_bitwise(res, expected, "forked child")


def test_multiprocessing_fork_workers():
    """A multiprocessing pool started with fork (what DataLoader workers do) computes in its workers."""
    import multiprocessing as mp
    lstm = fastrnn.GRU(8, 12, seed=1)
    x = np.random.default_rng(2).standard_normal((10, 3, 8)).astype(np.float32)
    expected = lstm(x)[0]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.map_async(_pool_task, [x, x, x]).get(60)
    for g in got:
        np.testing.assert_array_equal(g, expected)


def _pool_task(x):
    return fastrnn.GRU(8, 12, seed=1)(x)[0]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bitwise_reproducible_for_a_thread_count_and_close_across_counts(cell):
    """Ten runs at a fixed thread count are bitwise identical (1 and 2 threads, every ISA path); 1 and 2
    threads agree within the tolerance of two rounding sources."""
    old_t, old_isa = fastrnn.get_num_threads(), fastrnn.get_isa()
    isas = ["portable"] + (["avx2"] if fastrnn.cpu_has_avx2() else []) + \
        (["avx512"] if fastrnn.cpu_has_avx512() else [])
    layer = _layer(cell, I=64, H=67, num_layers=2, bidirectional=True)
    x, ln = _inputs(layer, T=40, B=19)
    try:
        for isa in isas:
            fastrnn.set_isa(isa)
            per_count = {}
            for n in (1, 2):
                fastrnn.set_num_threads(n)
                first = _train_step(layer, x, ln)
                for _ in range(9):
                    _assert_bitwise(_train_step(layer, x, ln), first, f"{isa}, {n} threads, repeated")
                per_count[n] = first
            depth = helpers.accumulation_depth(40, 19, 64, 67, {"lstm": 4, "gru": 3, "rnn": 1}[cell], L=2, D=2)
            for i, (a, b) in enumerate(zip(per_count[1], per_count[2])):
                helpers.assert_close(a, b, F32, depth, f"{isa} result {i}: 1 vs 2 threads", sources=2)
    finally:
        fastrnn.set_num_threads(old_t)
        fastrnn.set_isa(old_isa)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_backward_is_bitwise_the_same_on_1_and_2_threads(cell, lengths):
    """Steps of 40K .. 2M multiply-adds: the weight gradients are reduced in pieces of steps in an order
    fixed by the shape (seq.h, seq_backward: beside the loop on 2 threads, after it on 1), so the backward of
    one tape gives the same bits on 1 and 2 threads, every ISA path."""
    old_t, old_isa = fastrnn.get_num_threads(), fastrnn.get_isa()
    isas = ["portable"] + (["avx2"] if fastrnn.cpu_has_avx2() else []) + \
        (["avx512"] if fastrnn.cpu_has_avx512() else [])
    layer = _layer(cell, I=16, H=72, num_layers=2, bidirectional=True)
    x, ln = _inputs(layer, T=45, B=12)
    ln = ln if lengths else None
    dy = np.random.default_rng(5).standard_normal((45, 12, 144)).astype(layer.dtype)
    try:
        for isa in isas:
            fastrnn.set_isa(isa)
            fastrnn.set_num_threads(2)
            _, _, tape = layer.forward(x, lengths=ln, train=True)
            got = {}
            for n in (2, 1, 2):
                fastrnn.set_num_threads(n)
                dx, dhx, grads = layer.backward(tape, dy)
                res = [dx] + list(dhx if isinstance(dhx, tuple) else (dhx,)) + [grads[k] for k in sorted(grads)]
                if n in got:
                    _assert_bitwise(res, got[n], f"{isa}, {n} threads, repeated")
                got[n] = res
            _assert_bitwise(got[1], got[2], f"{isa}: backward on 1 vs 2 threads")
    finally:
        fastrnn.set_num_threads(old_t)
        fastrnn.set_isa(old_isa)


def test_functional_core_shared_params_from_threads(threads2):
    """The functional core over one params dict from many threads (what an optimizer's workers share)."""
    spec = LayerSpec("gru", 16, 24, num_layers=2, dtype=np.float64)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) * 0.2 for k, s in spec.param_shapes()}
    xs = [rng.standard_normal((12, 5, 16)) for _ in range(4)]
    expected = [F.forward(spec, params, x)[0] for x in xs]
    got = _run_threads([lambda x=x: F.forward(spec, params, x)[0] for x in xs], n_rounds=10)
    for i, rounds in got.items():
        for r in rounds:
            np.testing.assert_array_equal(r, expected[i])


# ---- the kernels on an OpenMP runtime's threads (fastrnn.runtime.use_openmp) -----------------------------------

def _gomp():
    import ctypes.util
    for p in fastrnn.runtime.loaded_openmp():
        if "gomp" in os.path.basename(p):
            return p
    name = ctypes.util.find_library("gomp")
    if name is None:
        pytest.skip("no libgomp on this machine")
    return name


@pytest.fixture
def openmp_pool():
    lib = _gomp()
    old = fastrnn.runtime.thread_pool()
    yield lib
    fastrnn.runtime.use_openmp(None if old == "fastrnn" else old)


def _train(layer, x, lengths):
    y, s, tape = layer.forward(x, lengths=lengths, train=True)
    dx, dh, g = layer.backward(tape, np.ones_like(y))
    return y, dx, g


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_openmp_threads_give_the_pools_results_bitwise(cell, threads2, openmp_pool):
    layer = _layer(cell, num_layers=2, bidirectional=True)
    x, lengths = _inputs(layer, T=40, B=33)
    fastrnn.runtime.use_openmp(None)
    assert fastrnn.runtime.thread_pool() == "fastrnn"
    y0, dx0, g0 = _train(layer, x, lengths)
    fastrnn.runtime.use_openmp(openmp_pool)
    assert fastrnn.runtime.thread_pool() == openmp_pool
    y1, dx1, g1 = _train(layer, x, lengths)
    assert np.array_equal(y0, y1) and np.array_equal(dx0, dx1)
    for k in g0:
        assert np.array_equal(g0[k], g1[k]), k
    # and from many Python threads at once: one region at a time on the runtime's threads, the others run
    # alone (so equal to the 1-thread results' tolerance, not bitwise: the split of a step differs)
    out = [None] * 4

    def work(i):
        out[i] = _train(layer, x, lengths)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for y, dx, g in out:
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-5)


def test_openmp_team_smaller_than_asked_runs_on_the_pool(tmp_path):
    """OMP_THREAD_LIMIT=1: GOMP_parallel gives a team of one; the region must not wait for a missing peer."""
    import subprocess
    import sys
    lib = _gomp()
    code = f"""
import numpy as np, fastrnn, fastrnn.runtime as rt
fastrnn.set_num_threads(2)
layer = fastrnn.LSTM(24, 40, seed=3, num_layers=2)
x = np.random.default_rng(0).standard_normal((30, 9, 24)).astype(np.float32)
y0, s, tape = layer.forward(x, train=True); g0 = layer.backward(tape, np.ones_like(y0))[2]
rt.use_openmp({lib!r})
y1, s, tape = layer.forward(x, train=True); g1 = layer.backward(tape, np.ones_like(y1))[2]
assert np.array_equal(y0, y1) and all(np.array_equal(g0[k], g1[k]) for k in g0)
print("ok", rt.thread_pool())
"""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_use_openmp_bad_arguments():
    import ctypes.util
    with pytest.raises(TypeError, match="library path"):
        fastrnn.runtime.use_openmp(3)
    with pytest.raises(ValueError, match="not an OpenMP runtime"):
        fastrnn.runtime.use_openmp("/nonexistent/libgomp.so.1")
    libm = ctypes.util.find_library("m")
    if libm:
        with pytest.raises(ValueError, match="GOMP_parallel"):
            fastrnn.runtime.use_openmp(libm)
    assert fastrnn.runtime.thread_pool() in ("fastrnn",) + tuple(fastrnn.runtime.loaded_openmp())


@pytest.mark.parametrize("spin_us", ["0", None, "20000"])
def test_idle_workers_spin_a_bounded_while_then_sleep(tmp_path, spin_us):
    """After a call the pool's idle worker spins at most FASTRNN_SPIN_US (default 1 ms) and then sleeps:
    over the next 0.5 s of idleness the process uses little CPU (a worker that never stopped spinning
    would use ~0.5 s), and the results are the same bits whatever the spin."""
    import subprocess
    import sys
    code = """
import resource, time, numpy as np, fastrnn
fastrnn.set_num_threads(2)
layer = fastrnn.LSTM(24, 64, seed=3)
x = np.random.default_rng(0).standard_normal((40, 32, 24)).astype(np.float32)
y = layer(x)[0]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu(); time.sleep(0.5); idle = cpu() - c0
print(repr(float(y.astype(np.float64).sum())), idle)
"""
    env = dict(os.environ)
    env.pop("FASTRNN_SPIN_US", None)
    if spin_us is not None:
        env["FASTRNN_SPIN_US"] = spin_us
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    total, idle = r.stdout.split()
    bound = 0.02 + (int(spin_us) * 1e-6 if spin_us else 0.001)
    assert float(idle) < bound + 0.1, f"{idle} s of CPU over 0.5 s idle (spin {spin_us} us)"
    if spin_us != "0":
        ref = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(env, FASTRNN_SPIN_US="0"),
                             capture_output=True, text=True, timeout=120)
        assert ref.returncode == 0, ref.stderr
        assert ref.stdout.split()[0] == total
