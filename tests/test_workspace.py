"""The kernels' work buffers kept between calls (csrc/workspace.c): bounded, released on request, and
reused without changing a result (the whole suite also runs with every buffer poisoned with NaN first:
conftest.poisoned_workspace)."""
import numpy as np
import pytest

import fastrnn

CAP = 256 << 20


def _train(layer, x):
    """y and every array backward returns (dx, the initial state's gradients, the parameters')."""
    y, _, tape = layer.forward(x, train=True)
    dx, dstate, dparams = layer.backward(tape, np.ones_like(y))
    dstate = dstate if isinstance(dstate, tuple) else (dstate,)
    return y, [dx, *dstate, *(dparams[k] for k in sorted(dparams))]


def test_large_buffers_are_kept_and_released():
    fastrnn.release_workspace()
    assert fastrnn.workspace_bytes() == 0
    layer = fastrnn.LSTM(64, 256, seed=0)  # 1.3 MB of packed weights
    x = np.random.default_rng(0).standard_normal((20, 16, 64)).astype(np.float32)
    layer(x)
    kept = fastrnn.workspace_bytes()
    assert 1 << 20 <= kept <= CAP
    layer(x)
    assert fastrnn.workspace_bytes() == kept, "a second identical call should reuse, not add"
    assert fastrnn.release_workspace() == kept
    assert fastrnn.workspace_bytes() == 0


def test_reused_buffers_give_the_same_results():
    """A call after other shapes have left their buffers gives exactly what it gave on fresh memory,
    forward and backward, for each cell and with lengths."""
    rng = np.random.default_rng(1)
    for make in (lambda: fastrnn.LSTM(48, 200, seed=2), lambda: fastrnn.GRU(48, 200, seed=2),
                 lambda: fastrnn.RNN(48, 400, seed=2)):
        layer = make()
        x = rng.standard_normal((12, 9, 48)).astype(np.float32)
        fastrnn.release_workspace()
        y0, g0 = _train(layer, x)
        other = make()
        _train(other, rng.standard_normal((30, 5, 48)).astype(np.float32))
        other(rng.standard_normal((7, 20, 48)).astype(np.float32))
        y1, g1 = _train(layer, x)
        np.testing.assert_array_equal(y0, y1)
        for a, b in zip(g0, g1):
            np.testing.assert_array_equal(a, b)


def test_forked_child_computes_the_same():
    """A child forked after calls that left buffers kept starts with a fresh cache (workspace.c's atfork
    handler) and gives the parent's results."""
    import os
    layer = fastrnn.LSTM(64, 256, seed=0)
    x = np.random.default_rng(3).standard_normal((20, 16, 64)).astype(np.float32)
    y0 = layer(x)[0]
    assert fastrnn.workspace_bytes() > 0
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit code
        code = 3
        try:
            code = 0 if fastrnn.workspace_bytes() == 0 and np.array_equal(layer(x)[0], y0) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child exit status {status}"


def test_cap_from_the_environment(tmp_path):
    """The cap on kept bytes: FASTRNN_WORKSPACE_MB=0 keeps nothing; 3 keeps something but never more than 3
    MB, although the calls below leave ~27 MB of buffers under the default cap (the oldest are evicted);
    the default keeps them, within 256 MB.  The child imports the fastrnn this process uses (installed or
    built in place), from a directory of its own."""
    import os
    import subprocess
    import sys
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    code = ("import numpy as np, fastrnn\n"
            "fastrnn.LSTM(64, 256, seed=0)(np.ones((20, 16, 64), np.float32))\n"
            "most = 0\n"
            "for H in (256, 512, 1024):\n"
            "    g = fastrnn.GRU(H, H, seed=0)\n"
            "    y, _, t = g.forward(np.ones((4, 8, H), np.float32), train=True)\n"
            "    g.backward(t, np.ones_like(y))\n"
            "    most = max(most, fastrnn.workspace_bytes())\n"
            "print(most, fastrnn.workspace_bytes())\n")
    for mb, least, most in (("0", 0, 0), ("3", 1, 3 << 20), ("", 20 << 20, CAP)):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([home] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        env.pop("FASTRNN_WORKSPACE_MB", None)
        if mb:
            env["FASTRNN_WORKSPACE_MB"] = mb
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        peak, last = (int(v) for v in out.stdout.split())
        assert least <= last and peak <= most, (mb, out.stdout)


def test_returned_arrays_come_from_the_cache_and_go_back_to_it():
    """The outputs the numpy API returns are 64-byte aligned, writable, C-contiguous views of workspace
    memory (nn/buffers.py): dropping one gives its block back to the cache, and the next call's output is
    written into that same, already faulted-in block."""
    from fastrnn import _core
    a = _core.empty((3, 1000, 100), np.dtype(np.float64))
    assert a.shape == (3, 1000, 100) and a.dtype == np.float64
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 64 == 0
    a[...] = 1.5
    assert a.sum() == 1.5 * 300000
    assert _core.empty((0, 4), np.dtype(np.float32)).shape == (0, 4)
    with pytest.raises(ValueError, match="negative"):
        _core.empty((2, -1), np.dtype(np.float32))
    del a
    fastrnn.release_workspace()
    layer = fastrnn.RNN(8, 64, batch_first=True, seed=0)  # small weights: the output is the call's only large block
    x = np.random.default_rng(0).standard_normal((32, 50, 8)).astype(np.float32)
    y, _ = layer(x)
    ref, ptr = y.copy(), y.ctypes.data
    before = fastrnn.workspace_bytes()
    del y
    assert fastrnn.workspace_bytes() >= before + ref.nbytes
    y2, _ = layer(x)
    assert y2.ctypes.data == ptr
    np.testing.assert_array_equal(y2, ref)
