"""A/B of two builds in whole torch training steps, in ONE process, beside torch.nn.

    python bench/ab_torch_loop.py OLD_PKG NEW_PKG [--cell LSTM] [--shape 50,64,512] [--threads 2] [--pairs 7]

The model of `fastrnn bench --torch-loop` (fastrnn/bench/torch_loop.py: Embedding + 2-layer cell (I = H) +
Linear + cross-entropy + Adam, T, B, H = --shape), three copies from one initialisation: torch.nn's, and one
convert()ed by each build.  Steps run in rounds torch.nn / old / new (the order of old and new alternating
between rounds); reported: the median step of each, the median of the paired ratios old / new (above 1: new
faster), and each build's speedup over torch.nn (the median of its rounds' torch / build ratios).
"""
import argparse
import importlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_compare import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--shape", default="50,64,512", help="T,B,H")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=7)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    load(a.old, "fastrnn_old")   # imported under these names
    load(a.new, "fastrnn_new")
    ft = {"old": importlib.import_module("fastrnn_old.torch"), "new": importlib.import_module("fastrnn_new.torch")}
    from fastrnn_new.bench.torch_loop import _model, batch, training_step
    T, B, H = (int(v) for v in a.shape.split(","))
    models = {"torch": _model(a.cell, H)}
    for k in ("old", "new"):
        models[k] = _model(a.cell, H)  # the same seed: the same initialisation
        ft[k].convert(models[k])
    tokens, target = batch(T, B)
    steps = {k: training_step(m, tokens, target) for k, m in models.items()}
    first = {k: f().item() for k, f in steps.items()}
    assert abs(first["old"] - first["torch"]) < 1e-4 and abs(first["new"] - first["torch"]) < 1e-4, first
    for f in steps.values():
        f()

    def timed(f):
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0
    t = {k: [] for k in steps}
    for i in range(a.pairs):
        order = ("torch", "old", "new") if i % 2 == 0 else ("torch", "new", "old")
        for k in order:
            t[k].append(timed(steps[k]))
    m = statistics.median
    ratio = m([o / n for o, n in zip(t["old"], t["new"])])
    sp = {k: m([r / b for r, b in zip(t["torch"], t[k])]) for k in ("old", "new")}
    print(f"# {a.cell} {T},{B},{H}, {a.threads} thread(s), torch {torch.__version__}, {a.pairs} rounds")
    print(f"torch.nn {m(t['torch']) * 1e3:7.1f} ms  old {m(t['old']) * 1e3:7.1f} ms  new {m(t['new']) * 1e3:7.1f} ms"
          f"  old/new x{ratio:.3f}  speedup over torch.nn: old {sp['old']:.2f}, new {sp['new']:.2f}")


if __name__ == "__main__":
    main()
