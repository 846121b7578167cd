"""fastrnn.torch in programs written for torch.nn: convert / revert, optimizers built before the conversion,
torch.save / load, the fallback paths (each warns once and gives torch's result), jit trace / script,
torch.onnx.export, torch.compile, real training loops against torch.nn, the thread rule, and the import rule."""
import io
import os
import subprocess
import tempfile
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from torch import nn  # noqa: E402


class Net(nn.Module):
    """Embedding -> 2-layer recurrent net -> Linear head (the model of the issue's training loop)."""

    def __init__(self, kind="LSTM", vocab=40, emb=16, hidden=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = getattr(nn, kind)(emb, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.head(y)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 5)), nn.LSTM(5, 6)])
        self.inner = nn.ModuleDict({"cell": nn.LSTMCell(4, 3), "rnn": nn.RNN(4, 2, nonlinearity="relu")})
        self.cells = nn.Sequential(nn.GRUCell(3, 3), nn.RNNCell(3, 3))


def test_convert_and_revert_nested():
    m = Nested()
    params = {n: p for n, p in m.named_parameters()}
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    out = ft.convert(m)
    assert out is m
    assert type(m.blocks[0][1]) is ft.GRU and type(m.blocks[1]) is ft.LSTM
    assert type(m.inner["cell"]) is ft.LSTMCell and type(m.inner["rnn"]) is ft.RNN
    assert type(m.cells[0]) is ft.GRUCell and type(m.cells[1]) is ft.RNNCell
    assert type(m.blocks[0][0]) is nn.Linear
    assert all(p is params[n] for n, p in m.named_parameters())        # the very same Parameter objects
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    ft.revert(m)
    assert type(m.blocks[1]) is nn.LSTM and type(m.cells[1]) is nn.RNNCell
    assert all(p is params[n] for n, p in m.named_parameters())
    # a converted root, and a copy
    g = nn.GRU(2, 3)
    assert type(ft.convert(g)) is ft.GRU
    c = ft.convert(nn.LSTM(2, 3), inplace=False)
    assert type(c) is ft.LSTM
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ft.convert("not a module")


def test_optimizer_built_before_convert_keeps_working():
    torch.manual_seed(0)
    a = Net("GRU")
    b = Net("GRU")
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    ft.convert(b)                      # after the optimizer was built
    tokens = torch.randint(0, 40, (3, 7))
    for m, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            m(tokens).logsumexp(-1).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_save_load_into_plain_torch():
    torch.manual_seed(0)
    m = ft.convert(Net("LSTM"))
    tokens = torch.randint(0, 40, (2, 5))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    plain = Net("LSTM")
    plain.load_state_dict(torch.load(buf))
    assert type(plain.rnn) is nn.LSTM
    assert torch.allclose(plain(tokens), m(tokens), atol=1e-6)
    # the whole converted module pickles and loads back (as fastrnn's class, reverted to torch.nn on demand)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert type(m2.rnn) is ft.LSTM and torch.equal(m2(tokens), m(tokens))
    assert type(ft.revert(m2).rnn) is nn.LSTM


def _warns_once_and_equals(fast, ref, call):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = call(fast)
        a2 = call(fast)
    ours = [x for x in w if issubclass(x.category, ft.FastRNNWarning)]
    assert len(ours) == 1, [str(x.message) for x in w]
    b = call(ref)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        u, v = (u[0], v[0]) if isinstance(u, tuple) else (u, v)
        assert torch.equal(u, v)
    return a2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fallback_low_precision(dtype):
    torch.manual_seed(0)
    ref = nn.GRU(3, 4).to(dtype)
    fast = ft.convert(nn.GRU(3, 4), inplace=True).to(dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3).to(dtype)
    try:
        ref(x)
    except RuntimeError:
        pytest.skip(f"torch has no CPU GRU in {dtype}")
    _warns_once_and_equals(fast, ref, lambda m: m(x)[0])


def test_fallback_meta_and_cells():
    fast = ft.LSTM(3, 4, device="meta")
    with pytest.warns(ft.FastRNNWarning, match="meta"):
        y, (h, c) = fast(torch.empty(5, 2, 3, device="meta"))
    assert y.device.type == "meta" and y.shape == (5, 2, 4)
    cell = ft.LSTMCell(3, 4).to(torch.bfloat16)
    ref = nn.LSTMCell(3, 4).to(torch.bfloat16)
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(2, 3).to(torch.bfloat16)
    _warns_once_and_equals(cell, ref, lambda m: m(x)[0])


def test_fallback_trace_and_script():
    torch.manual_seed(0)
    fast = ft.LSTM(3, 4, num_layers=2)
    ref = nn.LSTM(3, 4, num_layers=2)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's tracer warnings
        traced = torch.jit.trace(fast, (x,))
    assert torch.allclose(traced(x)[0], ref(x)[0], atol=1e-6)
    # torch.jit.script scripts torch.nn's forward (a twin sharing the Parameters): whatever torch does with
    # its own module (torch 2.13 cannot run a scripted nn.LSTM), ours does the same.
    try:
        want = torch.jit.script(ref)(x)[0]
    except Exception as e:
        with pytest.raises(type(e)):
            torch.jit.script(fast)(x)
    else:
        scripted = torch.jit.script(fast)
        assert torch.allclose(scripted(x)[0], want, atol=1e-6)
        with torch.no_grad():
            fast.weight_ih_l0.mul_(0.5)
            ref.weight_ih_l0.mul_(0.5)
        assert torch.allclose(scripted(x)[0], ref(x)[0], atol=1e-6)


def test_onnx_export_gives_standard_rnn_ops(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = ft.convert(Net("LSTM")).eval()
    tokens = torch.randint(0, 40, (2, 6))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (tokens,), str(path), dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "LSTM" in ops, ops
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: tokens.numpy()})[0]
    np.testing.assert_allclose(got, model(tokens).detach().numpy(), atol=1e-5)


def test_compile_traces_the_custom_ops():
    from fastrnn.torch import ops
    torch.manual_seed(0)
    m = ft.convert(Net("LSTM", vocab=20, emb=8, hidden=16))
    ref = Net("LSTM", vocab=20, emb=8, hidden=16)
    ref.load_state_dict(m.state_dict())
    tokens = torch.randint(0, 20, (3, 5))
    with torch._dynamo.config.patch(allow_rnn=True):
        cm = torch.compile(m, fullgraph=True, backend="aot_eager")   # the whole model in one graph
        before = ops.CALLS[0]
        out = cm(tokens)
        assert ops.CALLS[0] == before + 1                            # our kernels, not torch's LSTM
        out.square().mean().backward()
    ref(tokens).square().mean().backward()
    assert torch.allclose(out, ref(tokens), atol=1e-5)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)
    assert not ops._TAPES or len(ops._TAPES) <= 1


def test_compile_default_graph_breaks_onto_the_kernels():
    """Without allow_rnn, Dynamo breaks the graph at every RNN module (torch's rule for torch.nn's too): the
    module then runs eagerly, on fastrnn's kernels, and the rest of the model is compiled."""
    from fastrnn.torch import autograd as A, ops
    torch.manual_seed(0)
    m = ft.convert(Net("GRU", vocab=20, emb=8, hidden=16))
    ref = Net("GRU", vocab=20, emb=8, hidden=16)
    ref.load_state_dict(m.state_dict())
    tokens = torch.randint(0, 20, (3, 5))
    cm = torch.compile(m, backend="aot_eager")
    before = A.CALLS[0] + ops.CALLS[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FastRNNWarning)
        out = cm(tokens)
    assert A.CALLS[0] + ops.CALLS[0] == before + 1     # the module's own frame may be traced (custom ops)
    assert torch.allclose(out, ref(tokens), atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_training_loop_matches_torch(kind):
    """The same model trained with torch.nn and with a convert()ed copy, same initialisation and seed:
    Embedding + 2-layer net + Linear, cross-entropy, gradient clipping, Adam; losses agree step by step."""
    torch.manual_seed(0)
    ref = Net(kind)
    fast = Net(kind)
    fast.load_state_dict(ref.state_dict())
    ft.convert(fast)
    losses = {}
    for name, model in (("torch", ref), ("fastrnn", fast)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(20):
            tokens = torch.randint(0, 40, (8, 12), generator=g)
            target = torch.roll(tokens, 1, dims=1)      # a learnable task: predict the previous token
            opt.zero_grad()
            logits = model(tokens)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 40), target.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            out.append(loss.item())
        losses[name] = np.array(out)
    np.testing.assert_allclose(losses["fastrnn"], losses["torch"], rtol=2e-5, atol=0)
    assert losses["torch"][-1] < losses["torch"][0] - 0.05        # it learns


def test_threads_follow_torch():
    lstm = ft.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        lstm(x)
        assert fastrnn.runtime.get_num_threads() == 1
        torch.set_num_threads(2)
        lstm(x)
        assert fastrnn.runtime.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_kernels_run_on_torchs_openmp_threads():
    """fastrnn.torch puts the kernels on torch's OpenMP threads (one set of threads, no spinners beside the
    kernels' own); FASTRNN_TORCH_OPENMP=0 keeps fastrnn's pool."""
    from fastrnn.torch.autograd import torch_openmp
    lib = torch_openmp()
    if lib is None:
        pytest.skip("this torch does not run on OpenMP")
    assert fastrnn.runtime.thread_pool() == lib
    assert os.path.basename(lib).startswith(("libgomp", "libiomp5", "libomp"))
    r = _run_py("import fastrnn.torch, fastrnn.runtime as rt; print(rt.thread_pool())")
    assert r.returncode == 0 and r.stdout.strip() == lib, (r.stdout, r.stderr)
    r = _run_py("import os; os.environ['FASTRNN_TORCH_OPENMP'] = '0'\n"
                "import fastrnn.torch, fastrnn.runtime as rt; print(rt.thread_pool())")
    assert r.returncode == 0 and r.stdout.strip() == "fastrnn", (r.stdout, r.stderr)
    # a converted module's results do not depend on whose threads ran them
    lstm = ft.LSTM(6, 9, num_layers=2)
    x = torch.randn(7, 5, 6)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y1, _ = lstm(x)
        fastrnn.runtime.use_openmp(None)
        y0, _ = lstm(x)
    finally:
        fastrnn.runtime.use_openmp(lib)
        torch.set_num_threads(old)
    assert torch.equal(y0, y1)


def _run_py(code):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tempfile.gettempdir())  # not the checkout: it would shadow the installed package


def test_import_rules():
    r = _run_py("import sys, fastrnn; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = _run_py("import sys; sys.modules['torch'] = None\n"
                "try:\n    import fastrnn.torch\nexcept ImportError as e:\n    print('IE', e)\n")
    assert 'pip install "fastrnn[torch]"' in r.stdout, (r.stdout, r.stderr)


def test_torch_loop_bench_runs():
    # `fastrnn bench --torch-loop` on a user's machine: every figure it prints is there and positive (a smoke
    # test on tiny shapes; the figures themselves live in docs/torch.md, measured, not asserted)
    from fastrnn.bench import torch_loop
    lines = []
    r = torch_loop.run(shapes=[("LSTM", 3, 2, 8), ("GRU", 3, 2, 8)], reps=1, overhead_reps=200, out=lines.append)
    ov = r["overhead"]
    for k in ("numpy_forward_us", "torch_forward_us", "numpy_train_us", "torch_train_us", "torch_floor_train_us",
              "floor_and_numpy_train_us", "torch_engine_floor_train_us"):
        assert ov[k] > 0, k
    assert [row["cell"] for row in r["rows"]] == ["LSTM", "GRU"]
    for row in r["rows"]:
        assert row["torch_ms"] > 0 and row["fastrnn_ms"] > 0 and row["bare_speedup"] > 0
    assert len(lines) == 7 and "x * 1" in lines[1]  # header, overhead, table head (2), 2 rows, pool
