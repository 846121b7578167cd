"""fastrnn.torch against torch.nn: every module and cell over seeded random option combinations, float32 and
float64, batched / unbatched tensors and PackedSequences (sorted and not): outputs, states, and the gradients
of the input, hx and every parameter through autograd; gradcheck in float64; autograd semantics (in-place
parameter updates, shared parameters, two calls in one graph, no_grad, double backward); dropout from torch's
RNG; torch's own exceptions for bad input."""
import copy
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn.torch as ft  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from helpers import _record, accumulation_depth, tolerance  # noqa: E402

PAIRS = {"RNN": (nn.RNN, ft.RNN), "LSTM": (nn.LSTM, ft.LSTM), "GRU": (nn.GRU, ft.GRU)}
CELLS = {"RNNCell": (nn.RNNCell, ft.RNNCell), "LSTMCell": (nn.LSTMCell, ft.LSTMCell),
         "GRUCell": (nn.GRUCell, ft.GRUCell)}
G = {"RNN": 1, "LSTM": 4, "GRU": 3, "RNNCell": 1, "LSTMCell": 4, "GRUCell": 3}
TDT = {np.float32: torch.float32, np.float64: torch.float64}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / max(scale, 1e-30) if b.numel() else 0.0


def check(a, b, tol, name, dtype):
    r = rel_err(a, b)
    # the largest error per dtype, for the table conftest prints at the end of the run
    _record("torch drop-in cells" if "Cell" in name else "torch drop-in modules", dtype, r, tol, name)
    assert r <= tol, f"{name}: normwise rel error {r:.3e} > {tol:.3e}"


def twins(kind, dtype, **kw):
    tcls, fcls = PAIRS[kind] if kind in PAIRS else CELLS[kind]
    ref = tcls(**kw).to(TDT[dtype])
    fast = fcls(**kw).to(TDT[dtype])
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def random_options(kind, rng):
    opts = dict(input_size=int(rng.integers(1, 9)), hidden_size=int(rng.integers(1, 12)),
                num_layers=int(rng.integers(1, 4)), bias=bool(rng.random() < 0.7),
                batch_first=bool(rng.random() < 0.5), bidirectional=bool(rng.random() < 0.5))
    if kind == "LSTM" and opts["hidden_size"] > 1 and rng.random() < 0.4:
        opts["proj_size"] = int(rng.integers(1, opts["hidden_size"]))
    if kind == "RNN":
        opts["nonlinearity"] = "relu" if rng.random() < 0.4 else "tanh"
    return opts


def grads_of(module, inputs, outs, seed):
    """Autograd of sum(out * w) with fixed random weights w, over the inputs and every parameter."""
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        loss = loss + (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    leaves = list(inputs) + list(module.parameters())
    return torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)


def flat_outs(res):
    y, s = res
    if isinstance(y, nn.utils.rnn.PackedSequence):
        y = y.data
    return [y] + (list(s) if isinstance(s, tuple) else [s])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("seed", range(6))
def test_module_parity(kind, dtype, seed):
    rng = np.random.default_rng(1000 * seed + len(kind))
    opts = random_options(kind, rng)
    torch.manual_seed(seed)
    ref, fast = twins(kind, dtype, **opts)
    T, B, I, H = int(rng.integers(1, 8)), int(rng.integers(1, 5)), opts["input_size"], opts["hidden_size"]
    L, D = opts["num_layers"], 2 if opts["bidirectional"] else 1
    P = opts.get("proj_size") or H
    td = TDT[dtype]
    tol = tolerance(dtype, accumulation_depth(T, B, I, H, G[kind], L, D, P), sources=2)
    mode = ["batched", "unbatched", "packed_sorted", "packed_unsorted"][seed % 4]
    with_hx = bool(rng.random() < 0.6)
    if mode == "unbatched":
        x = torch.randn(T, I, dtype=td)
        hshape, cshape = (L * D, P), (L * D, H)
    else:
        x = torch.randn((B, T, I) if opts["batch_first"] else (T, B, I), dtype=td)
        hshape, cshape = (L * D, B, P), (L * D, B, H)
    x.requires_grad_(True)
    hx, leaves = None, [x]
    if with_hx:
        h0 = torch.randn(hshape, dtype=td, requires_grad=True)
        if kind == "LSTM":
            c0 = torch.randn(cshape, dtype=td, requires_grad=True)
            hx, leaves = (h0, c0), [x, h0, c0]
        else:
            hx, leaves = h0, [x, h0]
    if mode.startswith("packed"):
        lengths = torch.from_numpy(rng.integers(1, T + 1, size=B))
        if mode == "packed_sorted":
            lengths = lengths.sort(descending=True).values
        inp = pack_padded_sequence(x, lengths, batch_first=opts["batch_first"],
                                   enforce_sorted=(mode == "packed_sorted"))
    else:
        inp = x
    want = ref(inp, hx)
    got = fast(inp, hx)
    for a, b, n in zip(flat_outs(got), flat_outs(want), ["y", "h_n", "c_n"]):
        check(a, b, tol, f"{kind} {opts} {mode} {n}", dtype)
    if mode.startswith("packed"):
        assert torch.equal(got[0].batch_sizes, want[0].batch_sizes)
        ya, la = pad_packed_sequence(got[0], batch_first=opts["batch_first"])
        yb, lb = pad_packed_sequence(want[0], batch_first=opts["batch_first"])
        assert torch.equal(la, lb)
        check(ya, yb, tol, f"{kind} {mode} padded y", dtype)
    ga = grads_of(fast, leaves, flat_outs(got), seed)
    gb = grads_of(ref, leaves, flat_outs(want), seed)
    names = ["x", "h0", "c0"][:len(leaves)] + [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(ga, gb, names):
        check(a, b, tol, f"{kind} {opts} {mode} grad {n}", dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_cell_parity(kind, dtype, batched):
    rng = np.random.default_rng(len(kind) + batched)
    td = TDT[dtype]
    for bias in (True, False):
        opts = dict(input_size=5, hidden_size=7, bias=bias)
        if kind == "RNNCell":
            opts["nonlinearity"] = "relu" if bias else "tanh"
        torch.manual_seed(3)
        ref, fast = twins(kind, dtype, **opts)
        shape = (4,) if batched else ()
        x = torch.randn(shape + (5,), dtype=td, requires_grad=True)
        h = torch.randn(shape + (7,), dtype=td, requires_grad=True)
        c = torch.randn(shape + (7,), dtype=td, requires_grad=True)
        hx = (h, c) if kind == "LSTMCell" else h
        leaves = [x, h, c] if kind == "LSTMCell" else [x, h]
        tol = tolerance(dtype, accumulation_depth(1, 4, 5, 7, G[kind]), sources=2)
        for use_hx in (True, False):
            a = fast(x, hx if use_hx else None)
            b = ref(x, hx if use_hx else None)
            a, b = (list(a), list(b)) if kind == "LSTMCell" else ([a], [b])
            for u, v in zip(a, b):
                check(u, v, tol, f"{kind} {opts} out", dtype)
            lv = leaves if use_hx else [x]
            for u, v in zip(grads_of(fast, lv, a, 0), grads_of(ref, lv, b, 0)):
                check(u, v, tol, f"{kind} {opts} grad", dtype)
        assert rng is not None


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_gradcheck_float64(kind):
    torch.manual_seed(0)
    opts = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    if kind == "LSTM":
        opts["proj_size"] = 2
    fast = PAIRS[kind][1](**opts).double()
    P = 2 if kind == "LSTM" else 4
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    params = list(fast.parameters())
    names = [n for n, _ in fast.named_parameters()]

    def f(x, h0, c0, *ps):
        out = torch.func.functional_call(fast, dict(zip(names, ps)), (x, (h0, c0) if kind == "LSTM" else h0))
        return flat_outs(out)
    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_gradcheck_cells(kind):
    torch.manual_seed(0)
    cell = CELLS[kind][1](3, 4).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    if kind == "LSTMCell":
        assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))
    else:
        assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x, h))


def test_one_autograd_node_per_call():
    lstm = ft.LSTM(3, 4, num_layers=3, bidirectional=True)
    y, (h, c) = lstm(torch.randn(5, 2, 3))
    assert type(y.grad_fn).__name__ == "_RNNFunctionBackward"
    assert h.grad_fn is y.grad_fn is c.grad_fn
    fns = [f for f, _ in y.grad_fn.next_functions if f is not None]
    assert all(type(f).__name__ == "AccumulateGrad" for f in fns) and len(fns) == len(list(lstm.parameters()))


def test_no_grad_and_inference_mode_keep_no_tape():
    lstm = ft.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        y, _ = lstm(x)
    assert y.grad_fn is None and not y.requires_grad
    with torch.inference_mode():
        y2, _ = lstm(x)
    assert y2.grad_fn is None
    lstm.requires_grad_(False)
    y3, _ = lstm(x)
    assert y3.grad_fn is None
    assert torch.equal(y, y2) and torch.equal(y, y3)


def test_inplace_parameter_updates_are_seen():
    torch.manual_seed(0)
    ref, fast = twins("GRU", np.float32, input_size=3, hidden_size=5)
    x = torch.randn(4, 2, 3)
    for _ in range(3):
        with torch.no_grad():
            for p, q in zip(ref.parameters(), fast.parameters()):
                noise = torch.randn_like(p)
                p.add_(noise)
                q.add_(noise)
        assert rel_err(fast(x)[0], ref(x)[0]) < 1e-5


def test_shared_parameter_and_two_calls_accumulate():
    torch.manual_seed(0)
    ref, fast = twins("LSTM", np.float64, input_size=4, hidden_size=4, num_layers=2)
    # share one Parameter between two slots, as torch allows
    for m in (ref, fast):
        m.weight_hh_l1 = m.weight_hh_l0
    x1 = torch.randn(3, 2, 4, dtype=torch.float64)
    x2 = torch.randn(5, 2, 4, dtype=torch.float64)
    for m in (ref, fast):
        m.zero_grad()
        ya, (ha, _) = m(x1)
        yb, _ = m(x2, (ha, torch.zeros_like(ha)))   # the second call depends on the first's state
        (ya.pow(2).sum() + yb.sum()).backward()
    for (n, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert rel_err(q.grad, p.grad) < 1e-10, n
    # .grad accumulates across backward calls, as torch does
    g = fast.weight_ih_l0.grad.clone()
    fast(x1)[0].sum().backward()
    ref(x1)[0].sum().backward()
    assert rel_err(fast.weight_ih_l0.grad, ref.weight_ih_l0.grad) < 1e-10
    assert not torch.equal(g, fast.weight_ih_l0.grad)


def test_double_backward_is_a_clear_error():
    lstm = ft.LSTM(3, 4).double()
    x = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(lstm(x)[0].sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(lstm(x)[0].sum(), x)   # first order is fine
    assert gx.shape == x.shape


@pytest.mark.parametrize("x_grad", [True, False])
def test_modified_input_before_backward_is_caught(x_grad):
    # The tape keeps the input's own memory (no copy), so a change in between must be an error, as in torch.nn,
    # also when only the Parameters need gradients (x saved for its version counter alone)
    lstm = ft.LSTM(3, 4)
    x = torch.randn(2, 1, 3, requires_grad=x_grad)
    h = x * 2
    y, _ = lstm(h)
    with torch.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_dropout_from_torch_rng_repeats():
    lstm = ft.LSTM(4, 6, num_layers=3, dropout=0.5)
    x = torch.randn(5, 3, 4, requires_grad=True)
    torch.manual_seed(7)
    a = lstm(x)[0]
    torch.manual_seed(7)
    b = lstm(x)[0]
    c = lstm(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # dropout applies in training mode under no_grad too (as torch's), never in eval mode
    with torch.no_grad():
        torch.manual_seed(7)
        assert torch.equal(lstm(x)[0], a)
    lstm.eval()
    ref = nn.LSTM(4, 6, num_layers=3, dropout=0.5).eval()
    ref.load_state_dict(lstm.state_dict())
    assert rel_err(lstm(x)[0], ref(x)[0]) < 1e-5
    # gradients through the masks equal finite differences of the same masks (float64, fixed seed)
    lstm = ft.GRU(2, 3, num_layers=2, dropout=0.3).double()
    xd = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x):
        torch.manual_seed(11)
        return lstm(x)[0]
    assert torch.autograd.gradcheck(f, (xd,))


# ---- bad input: torch's own exceptions and messages -------------------------------------------------------

def _same_error(fa, fb):
    with pytest.raises(Exception) as ea:
        fa()
    with pytest.raises(Exception) as eb:
        fb()
    assert type(ea.value) is type(eb.value), (ea.value, eb.value)
    assert str(ea.value) == str(eb.value)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_bad_input_same_errors_as_torch(kind):
    ref, fast = twins(kind, np.float32, input_size=3, hidden_size=4, num_layers=2)
    lstm = kind == "LSTM"

    def hx(*shape):
        h = torch.randn(*shape)
        return (h, torch.randn(*shape)) if lstm else h
    cases = [lambda m: m(torch.randn(5, 2, 6)),                    # wrong input size
             lambda m: m(torch.randn(5, 2, 3, 1)),                 # 4-D
             lambda m: m(torch.randn(5, 2, 3), hx(2, 3, 4)),       # hx batch
             lambda m: m(torch.randn(5, 2, 3), hx(1, 2, 4)),       # hx layers
             lambda m: m(torch.randn(5, 2, 3), hx(2, 4)),          # 2-D hx for batched input
             lambda m: m(torch.randn(5, 3), hx(2, 1, 4)),          # 3-D hx for unbatched input
             lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64))]   # dtype
    for case in cases:
        _same_error(lambda: case(fast), lambda: case(ref))


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_bad_input_same_errors_as_torch(kind):
    ref, fast = twins(kind, np.float32, input_size=3, hidden_size=4)
    lstm = kind == "LSTMCell"

    def hx(*shape):
        h = torch.randn(*shape)
        return (h, h) if lstm else h
    cases = [lambda m: m(torch.randn(2, 5)), lambda m: m(torch.randn(2, 3), hx(3, 4)),
             lambda m: m(torch.randn(2, 3), hx(2, 5)), lambda m: m(torch.randn(2, 3, 1)),
             lambda m: m(torch.randn(3), hx(2, 4))]
    for case in cases:
        _same_error(lambda: case(fast), lambda: case(ref))


# ---- module behaviour as torch's ---------------------------------------------------------------------------

def test_module_api_as_torch():
    fast = ft.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True)
    ref = nn.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True)
    assert isinstance(fast, nn.LSTM) and repr(fast) == repr(ref)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    fast.flatten_parameters()
    x = torch.randn(4, 2, 3)
    for m in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert type(m) is ft.LSTM
        assert torch.equal(m(x)[0], fast(x)[0])
    d = fast.double()
    assert d.weight_ih_l0.dtype == torch.float64 and d(x.double())[0].dtype == torch.float64
    fast.float()
    fast.reset_parameters()
    assert all(p.abs().max() <= 1 / math.sqrt(5) for p in fast.parameters())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_fast_path_never_goes_stale(kind):
    """After the first call a module takes a cheaply checked fast path (fastrnn/torch/rnn.py): each change
    that must leave it (dtype, Parameters moved or replaced, functional_call, train/eval with dropout,
    batch_first, hx, requires_grad, bad sizes) gives torch.nn's result or torch's error."""
    cell = "Cell" in kind
    kw = dict(input_size=3, hidden_size=4) if cell else dict(input_size=3, hidden_size=4, num_layers=2,
                                                               dropout=0.5)
    torch.manual_seed(0)
    ref, fast = twins(kind, np.float32, **kw)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)

    def flat(r):
        return [t for u in r for t in flat(u)] if isinstance(r, tuple) else [r]

    def same(*args):
        a, b = flat(fast(*args)), flat(ref(*args))
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and rel_err(u, v) < 1e-5
    for m in (ref, fast):
        m.eval()
    for _ in range(2):
        same(x)                                      # the second call takes the fast path
    assert fast.__dict__.get("_fastrnn_fast") is not None
    with torch.no_grad():                            # a cell's no-autograd step goes straight to its kernel
        same(x)
        if cell:
            h = torch.randn(x.shape[0], 4)
            same(x, (h, torch.randn_like(h)) if kind == "LSTMCell" else h)
            same(x.t().contiguous().t())             # not C-contiguous: the general step
    # Parameters' memory moved (.data =), then replaced by assignment
    for m in (ref, fast):
        name = "weight_hh" if cell else "weight_hh_l0"
        torch.manual_seed(1)
        getattr(m, name).data = torch.randn_like(getattr(m, name))
    same(x)
    for m in (ref, fast):
        torch.manual_seed(2)
        setattr(m, "weight_ih" if cell else "weight_ih_l0",
                nn.Parameter(torch.randn_like(getattr(m, "weight_ih" if cell else "weight_ih_l0"))))
    same(x)
    # functional_call with other tensors, then the module's own again
    torch.manual_seed(3)
    other = {k: torch.randn_like(v) for k, v in ref.named_parameters()}
    a = flat(torch.func.functional_call(fast, other, (x,)))
    b = flat(torch.func.functional_call(ref, other, (x,)))
    assert all(rel_err(u, v) < 1e-5 for u, v in zip(a, b))
    same(x)
    # hx given, then of a wrong shape: torch's error
    B = x.shape[0] if cell else x.shape[1]
    if cell:
        h = torch.randn(B, 4)
        hx = (h, torch.randn(B, 4)) if kind == "LSTMCell" else h
        same(x, hx)
        with pytest.raises(RuntimeError):
            fast(x, (h[:1], h[:1]) if kind == "LSTMCell" else h[:1])
    else:
        h = torch.randn(2, B, 4)
        hx = (h, torch.randn(2, B, 4)) if kind == "LSTM" else h
        same(x, hx)
        with pytest.raises(RuntimeError):
            fast(x, (h[:1], h[:1]) if kind == "LSTM" else h[:1])
    # a wrong input size after the fast path: torch's error
    with pytest.raises(RuntimeError):
        fast(torch.randn(2, 5) if cell else torch.randn(5, 2, 5))
    # requires_grad: an autograd node only when something needs a gradient
    for p in fast.parameters():
        p.requires_grad_(False)
    assert all(t.grad_fn is None for t in flat(fast(x)))
    for p in fast.parameters():
        p.requires_grad_(True)
    assert all(t.grad_fn is not None for t in flat(fast(x)))
    # float64
    ref.double()
    fast.double()
    same(x.double())
    if not cell:
        # train mode with dropout: torch's RNG, repeatable; eval again: deterministic
        for m in (ref, fast):
            m.train()
        torch.manual_seed(5)
        y1 = fast(x.double())[0]
        torch.manual_seed(5)
        y2 = fast(x.double())[0]
        assert torch.equal(y1, y2)
        for m in (ref, fast):
            m.eval()
        same(x.double())
        # batch_first toggled after the fast path was recorded
        for m in (ref, fast):
            m.batch_first = True
        same(x.double().transpose(0, 1).contiguous())
        # unbatched input
        same(x.double()[:, 0])


def test_torch_func_grad_falls_back_to_torch():
    # under a functorch transform the C-level apply is not taken: torch.nn's implementation runs (one warning)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4)
    fast = ft.LSTM(3, 4)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 3)
    with pytest.warns(ft.FastRNNWarning):
        g = torch.func.grad(lambda v: fast(v)[0].sum())(x)
    assert torch.allclose(g, torch.func.grad(lambda v: ref(v)[0].sum())(x), atol=1e-6)
