"""fastrnn.torch against torch.nn in whole training loops, and the autograd wrapper's per-call overhead.

    fastrnn bench --torch-loop [--quick]     (or python -m fastrnn.bench.torch_loop, or run(...) from Python)

1. Overhead: LSTM(128, 128), T = 1, B = 1: the numpy API (fastrnn.nn) against fastrnn.torch on the same
   kernels, inference (no_grad) and forward + backward; the difference is what the wrapper adds (us a call).
   Beside it, torch's own floor: a custom autograd.Function with the same inputs that does no work, and that
   node followed by the numpy API's forward + backward in one callable (what any Python-level wrapper must
   at least cost: the two evict each other's code and data, so it is more than the sum); and below any
   wrapper, torch's autograd engine on one built-in op of one leaf (x * 1).  Each figure is a median over
   blocks of 100 consecutive calls, the eight callables' blocks interleaved; the
   forward + backward calls set the gradients to None first, as zero_grad() does in a training loop.
2. Training steps: Embedding + 2-layer LSTM or GRU (I = H) + Linear + cross-entropy + Adam, converted against
   torch.nn, same run, interleaved; and the bare 2-layer network's training step (forward + backward of the
   recurrent layers alone: fastrnn.nn against torch.nn), to report how much of the kernels' lead the
   drop-in keeps (loop speedup / bare speedup); and the converted step with the kernels on fastrnn's own
   thread pool rather than torch's OpenMP threads (the oversubscription that sharing avoids).
"""
import argparse
import statistics
import time

import numpy as np

SHAPES = [("LSTM", 100, 16, 128), ("GRU", 100, 16, 128), ("LSTM", 50, 64, 512), ("GRU", 50, 64, 512)]
VOCAB = 256


def _median_time(fns, reps, warmup=2):
    """Interleaved timing of several callables: their median seconds."""
    for f in fns:
        for _ in range(warmup):
            f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def _block_time(fns, calls, samples, warmup=50):
    """Per-call seconds of several callables, each sample a block of `calls` consecutive calls (as timeit
    times), the callables' blocks interleaved in a rotating order: their medians over the samples.  A
    module called in a loop (a decoder at B = 1) runs hot in caches; one call timed between other
    functions' calls pays for its weights and code coming back into cache, which is not the wrapper's cost."""
    for f in fns:
        for _ in range(warmup):
            f()
    ts = [[] for _ in fns]
    n = len(fns)
    for s in range(samples):
        for j in range(n):
            i = (j + s) % n
            f = fns[i]
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            ts[i].append((time.perf_counter() - t0) / calls)
    return [statistics.median(t) for t in ts]


def overhead(reps=2000, H=128):
    import torch
    import fastrnn.torch as ft
    from fastrnn.nn import LSTM as NpLSTM
    torch.manual_seed(0)
    tl = ft.LSTM(H, H)
    nl = NpLSTM(H, H)
    nl.load_state_dict(tl.state_dict())
    x = torch.randn(1, 1, H)
    xn = x.numpy().copy()
    xg = x.clone().requires_grad_(True)
    dy = np.ones((1, 1, H), np.float32)
    dyt = torch.from_numpy(dy)

    def np_inf():
        nl(xn)

    def t_inf():
        with torch.no_grad():
            tl(x)

    def np_train():
        y, s, tape = nl.forward(xn, train=True)
        nl.backward(tape, dy)

    def t_train():
        # as a training loop's zero_grad() (set_to_none): autograd adopts the gradients instead of adding them
        for p in leaves:
            p.grad = None
        y, _ = tl(xg)
        y.backward(dyt)
    # torch's own floor: one custom autograd node with the same inputs (x and the four Parameters) and outputs
    # whose forward and backward do no work (fresh outputs and gradients of the right shapes, as the wrapper
    # hands autograd): what autograd itself costs a call, which no Python-level wrapper can go under.
    params = [p for p in tl.parameters()]
    leaves = [xg] + params  # the graph's leaves, whose .grad the training calls reset
    y0, h0, c0 = [np.zeros((1, 1, H), np.float32) for _ in range(3)]
    shapes = [tuple(p.shape) for p in params]

    class _Nothing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *ps):
            return torch.from_numpy(y0.copy()), torch.from_numpy(h0.copy()), torch.from_numpy(c0.copy())

        @staticmethod
        def backward(ctx, dy, dh, dc):
            return (torch.from_numpy(np.empty((1, 1, H), np.float32)),) + tuple(
                torch.from_numpy(np.empty(s, np.float32)) for s in shapes)

    def floor_inf():
        with torch.no_grad():
            _Nothing.apply(x, *params)

    def floor_train():
        for p in leaves:
            p.grad = None
        y, _, _ = _Nothing.apply(xg, *params)
        y.backward(dyt)

    # Below any wrapper, Python or C++: torch's autograd engine on its smallest graph, one built-in C++ op
    # (x * 1) on one leaf, forward and backward.  A C++ autograd node for the kernels would pay at least this
    # (19.5-19.8 us on the Xeon VMs of 2026-12-04: more than the wrapper's 15 us budget on its own; a Python no-op node
    # on one leaf costs the same, so the node's language is not what the floor is made of).
    def floor_cpp_train():
        xg.grad = None
        xg.mul(1.0).backward(dyt)

    # The least a Python-level wrapper can cost: the floor's node and the numpy API's work, one after the other
    # in each call.  Not the sum of the two figures above: run alternately, each evicts the other's code and
    # data from the caches and branch predictors (the numpy API's own forward + backward measured ~50% slower
    # so, 2026-12-03), and a wrapper, which runs both, pays that too.
    def floor_np_train():
        floor_train()
        np_train()
    calls = 100
    a, b, c, d, e, f, g, h = _block_time([np_inf, t_inf, np_train, t_train, floor_inf, floor_train, floor_np_train,
                                         floor_cpp_train], calls, max(5, reps // calls))
    return {"numpy_forward_us": a * 1e6, "torch_forward_us": b * 1e6, "forward_overhead_us": (b - a) * 1e6,
            "numpy_train_us": c * 1e6, "torch_train_us": d * 1e6, "train_overhead_us": (d - c) * 1e6,
            "torch_floor_forward_us": e * 1e6, "torch_floor_train_us": f * 1e6,
            "train_overhead_above_floor_us": (d - c - f) * 1e6,
            "floor_and_numpy_train_us": g * 1e6, "train_overhead_own_us": (d - g) * 1e6,
            "torch_engine_floor_train_us": h * 1e6}


def _model(kind, H):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, H)
            self.rnn = getattr(nn, kind)(H, H, num_layers=2)
            self.head = nn.Linear(H, VOCAB)

        def forward(self, tokens):
            y, _ = self.rnn(self.emb(tokens))
            return self.head(y)
    torch.manual_seed(0)
    return Net()


def batch(T, B):
    """Random tokens and targets, (T, B) each."""
    import torch
    return torch.randint(0, VOCAB, (T, B)), torch.randint(0, VOCAB, (T, B))


def training_step(model, tokens, target):
    """One Adam training step of `model` on (tokens, target) as a callable; it returns the loss (a tensor)."""
    import torch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, VOCAB), target.reshape(-1))
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def training_steps(kind, T, B, H, reps):
    import torch
    import fastrnn.torch as ft
    from fastrnn import nn as fnn
    ref = _model(kind, H)
    fast = _model(kind, H)
    fast.load_state_dict(ref.state_dict())
    ft.convert(fast)
    tokens, target = batch(T, B)
    # the bare recurrent layers: torch.nn's autograd against fastrnn.nn's forward + backward
    x = torch.randn(T, B, H)
    xg = x.clone().requires_grad_(True)
    dy = torch.randn(T, B, H)
    tr = ref.rnn
    nr = getattr(fnn, kind)(H, H, num_layers=2)
    nr.load_state_dict(tr.state_dict())
    xn, dyn = x.numpy().copy(), dy.numpy().copy()

    def bare_torch():
        tr.zero_grad()
        y, _ = tr(xg)
        y.backward(dy)

    def bare_np():
        y, s, tape = nr.forward(xn, train=True)
        nr.backward(tape, dyn)
    # The converted step once more with the kernels on fastrnn's own thread pool instead of torch's OpenMP
    # threads (fastrnn.runtime.use_openmp): what sharing torch's threads saves (docs/torch.md, Threads).
    from fastrnn import runtime as rt
    shared = rt.thread_pool()
    fast_step = training_step(fast, tokens, target)

    def on(pool, f):
        def g():
            rt.use_openmp(None if pool == "fastrnn" else pool)
            f()
        return g
    try:
        t_ref, t_fast, t_own, b_ref, b_np = _median_time(
            [training_step(ref, tokens, target), on(shared, fast_step), on("fastrnn", fast_step), on(shared, bare_torch),
             on(shared, bare_np)], reps)
    finally:
        rt.use_openmp(None if shared == "fastrnn" else shared)
    return {"cell": kind, "T": T, "B": B, "H": H, "torch_ms": t_ref * 1e3, "fastrnn_ms": t_fast * 1e3,
            "own_pool_ms": t_own * 1e3, "pool": shared,
            "loop_speedup": t_ref / t_fast, "bare_torch_ms": b_ref * 1e3, "bare_fastrnn_ms": b_np * 1e3,
            "bare_speedup": b_ref / b_np, "kept": (t_ref / t_fast) / (b_ref / b_np)}


def run(shapes=None, reps=5, overhead_reps=2000, quick=False, out=print):
    """Print (and return) the overhead figures and the training-loop table."""
    import torch
    from fastrnn.runtime import machine_info
    if quick:
        shapes, reps, overhead_reps = shapes or SHAPES[:2], min(reps, 3), min(overhead_reps, 300)
    shapes = shapes or SHAPES
    info = machine_info()
    out(f"# {info['cpu']}, {info['usable_cpus']} usable CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fastrnn ISA {info['fastrnn_isa']}")
    ov = overhead(overhead_reps)
    out(f"wrapper overhead, LSTM(128, 128), T=1, B=1: forward {ov['forward_overhead_us']:.1f} us "
        f"({ov['numpy_forward_us']:.1f} numpy API -> {ov['torch_forward_us']:.1f} fastrnn.torch), "
        f"forward+backward {ov['train_overhead_us']:.1f} us ({ov['numpy_train_us']:.1f} -> "
        f"{ov['torch_train_us']:.1f}); torch's own floor for one custom autograd node with these inputs "
        f"(no work): forward {ov['torch_floor_forward_us']:.1f} us, forward+backward "
        f"{ov['torch_floor_train_us']:.1f} us; that node and the numpy API's forward+backward run one after the "
        f"other: {ov['floor_and_numpy_train_us']:.1f} us, so the wrapper's own share of forward+backward is "
        f"{ov['train_overhead_own_us']:.1f} us; torch's autograd alone on one built-in op of one leaf (x * 1), "
        f"forward+backward: {ov['torch_engine_floor_train_us']:.1f} us")
    out("| cell | T, B, H | torch.nn step ms | converted step ms | loop speedup | bare speedup | kept | "
        "converted, own pool ms |")
    out("|---|---|---|---|---|---|---|---|")
    rows = []
    for kind, T, B, H in shapes:
        r = training_steps(kind, T, B, H, reps)
        rows.append(r)
        out(f"| {kind} | {T}, {B}, {H} | {r['torch_ms']:.1f} | {r['fastrnn_ms']:.1f} | {r['loop_speedup']:.2f} | "
            f"{r['bare_speedup']:.2f} | {r['kept']:.2f} | {r['own_pool_ms']:.1f} |")
    out(f"(kernels on {rows[0]['pool'] if rows else '?'}; 'own pool': the same converted step with the kernels on "
        f"fastrnn's own threads beside torch's)")
    return {"overhead": ov, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two shapes, fewer repetitions")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    run(reps=a.reps, quick=a.quick)


if __name__ == "__main__":
    main()
