"""A/B of fastrnn.torch's per-call cost in ONE process: two builds' wrappers on the same kernels' shape.

    python bench/ab_torch_overhead.py OLD_PKG NEW_PKG [--h 128] [--threads 1] [--calls 200] [--pairs 41]

LSTM(H, H), T = 1, B = 1 (the wrapper's cost dominates): inference (torch.no_grad) and forward + backward
(y.backward), each build's fastrnn.torch.LSTM and, for reference, the numpy API (fastrnn.nn) of the new build
and torch.nn.LSTM.  Calls alternate old / new in ABBA order, each sample a batch of --calls calls; reported:
the medians in us a call and the median of the paired ratios old / new (above 1: new faster).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_compare import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--h", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=41)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    (old, _), (new, _) = load(a.old, "fastrnn_old"), load(a.new, "fastrnn_new")
    import importlib
    ft_old = importlib.import_module("fastrnn_old.torch")
    ft_new = importlib.import_module("fastrnn_new.torch")
    H = a.h
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H)
    mods = {"old": ft_old.LSTM(H, H), "new": ft_new.LSTM(H, H)}
    for m in mods.values():
        m.load_state_dict(ref.state_dict())
    nl = new.nn.LSTM(H, H)
    nl.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, H)
    xg = x.clone().requires_grad_(True)
    dyt = torch.ones(1, 1, H)
    xn, dyn = x.numpy().copy(), dyt.numpy().copy()

    def inf(m):
        def f():
            with torch.no_grad():
                m(x)
        return f

    def train(m):
        def f():
            y, _ = m(xg)
            y.backward(dyt)
        return f

    def np_inf():
        nl(xn)

    def np_train():
        y, s, tape = nl.forward(xn, train=True)
        nl.backward(tape, dyn)

    def sample(f):
        t0 = time.perf_counter()
        for _ in range(a.calls):
            f()
        return (time.perf_counter() - t0) / a.calls * 1e6

    y_old, _ = mods["old"](x)
    y_new, _ = mods["new"](x)
    # the builds' kernels may sum in another order (a small-call path): equal to float32 rounding
    assert torch.allclose(y_old, y_new, rtol=1e-5, atol=1e-6), "the two builds disagree"
    print(f"# LSTM({H}, {H}), T = 1, B = 1, {a.threads} thread(s), torch {torch.__version__}, "
          f"pools: old {old.runtime.thread_pool()}, new {new.runtime.thread_pool()}")
    for mode, make, npf, ref_f in (("inference", inf, np_inf, inf(ref)), ("forward+backward", train, np_train,
                                                                          train(ref))):
        fo, fn = make(mods["old"]), make(mods["new"])
        for f in (fo, fn, npf, ref_f):
            sample(f)
        to, tn, tnp, tref, ratios = [], [], [], [], []
        for i in range(a.pairs):
            if i % 2:
                b, c = sample(fn), sample(fo)
            else:
                c, b = sample(fo), sample(fn)
            to.append(c)
            tn.append(b)
            ratios.append(c / b)
            if i % 4 == 0:
                tnp.append(sample(npf))
                tref.append(sample(ref_f))
        m = statistics.median
        print(f"{mode:17s} old {m(to):7.1f} us  new {m(tn):7.1f} us  x{m(ratios):.2f}  | numpy API {m(tnp):7.1f} us"
              f" (new wrapper adds {m(tn) - m(tnp):+.1f})  torch.nn {m(tref):7.1f} us")


if __name__ == "__main__":
    main()
