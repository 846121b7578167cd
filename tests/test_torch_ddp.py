"""fastrnn.torch inside DistributedDataParallel (gloo, CPU): two local processes (file:// rendezvous in a tmp
dir) train a model holding converted modules on halves of a batch; the parameters after the steps equal one
process's training on the whole batch with torch.nn.  The worker doubles as a timing script:
    python tests/test_torch_ddp.py time WORLD STEPS     (the 2-process step against 1 process, docs/torch.md)
"""
import os
import subprocess
import sys
import time

import pytest

WORKER = os.path.abspath(__file__)
VOCAB, B, T, STEPS = 30, 8, 10, 3


def build(seed=0, hidden=24):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 12)
            self.rnn = nn.LSTM(12, hidden, num_layers=2, batch_first=True)
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
            self.head = nn.Linear(hidden, VOCAB)

        def forward(self, tokens):
            y, _ = self.rnn(self.emb(tokens))
            y, _ = self.gru(y)
            return self.head(y)
    torch.manual_seed(seed)
    return Net()


def batches(steps, b=B, t=T):
    import torch
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, VOCAB, (b, t), generator=g) for _ in range(steps)]


def step(model, opt, tokens):
    import torch
    opt.zero_grad()
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.roll(tokens, 1, 1).reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()


def worker(rank, world, init, out, steps, b=B, t=T, hidden=24):
    import torch
    import torch.distributed as dist
    import fastrnn.torch as ft
    torch.set_num_threads(1 if world > 1 else int(os.environ.get("FASTRNN_DDP_THREADS", "1")))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = ft.convert(build(hidden=hidden))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    data = batches(steps, b, t)
    per = b // world
    times = []
    for tokens in data:
        t0 = time.perf_counter()
        step(ddp, opt, tokens[rank * per:(rank + 1) * per])
        times.append(time.perf_counter() - t0)
    if out:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    dist.barrier()
    dist.destroy_process_group()
    return times


def _spawn(tmp_path, world, steps, extra=()):
    init = "file://" + str(tmp_path / "rendezvous")
    procs = [subprocess.Popen([sys.executable, WORKER, "worker", str(r), str(world), init,
                               str(tmp_path / f"params{r}.pt"), str(steps), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, o, e))
    return outs


def test_ddp_two_processes_equal_one(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    outs = _spawn(tmp_path, 2, STEPS)
    for rc, o, e in outs:
        assert rc == 0, e[-3000:]
    # one process, the whole batch, plain torch.nn
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for tokens in batches(STEPS):
        step(model, opt, tokens)
    want = model.state_dict()
    start = build().state_dict()
    for r in range(2):
        got = torch.load(tmp_path / f"params{r}.pt")
        for k, v in want.items():
            assert not torch.equal(v, start[k]) or k.startswith("emb"), f"{k} did not train"
            assert torch.allclose(got[k], v, atol=2e-6, rtol=1e-5), (r, k, (got[k] - v).abs().max())


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        r, w, init, out, steps = sys.argv[2:7]
        shape = [int(a) for a in sys.argv[7:]]
        times = worker(int(r), int(w), init, out if out != "-" else None, int(steps), *shape)
        print("TIMES", " ".join(f"{x:.6f}" for x in times))
    elif sys.argv[1] == "time":   # python tests/test_torch_ddp.py time  (2 processes x 1 thread vs 1 x 1, 1 x 2)
        import pathlib
        import statistics
        import tempfile
        steps = int(sys.argv[2]) if len(sys.argv) > 2 else 12
        shape = ["64", "50", "128"]   # B, T, H
        for world, threads in ((1, "1"), (1, "2"), (2, "1")):
            os.environ["FASTRNN_DDP_THREADS"] = threads
            with tempfile.TemporaryDirectory() as d:
                res = _spawn(pathlib.Path(d), world, steps, shape)
            ts = [float(x) for x in res[0][1].split("TIMES")[1].split()][2:]
            print(f"world {world} x {threads} thread(s): step {statistics.median(ts) * 1e3:.1f} ms "
                  f"(B={shape[0]} total, T={shape[1]}, H={shape[2]})")
