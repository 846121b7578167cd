"""A/B timing of two builds of fastrnn in ONE process: median of paired ratios old / new.

    python bench/ab_compare.py OLD_PKG NEW_PKG [--cells lstm,gru,rnn] [--shapes 100,1,64,128 100,16,64,128]
                               [--threads 2] [--isa avx512,avx2] [--modes fwd,train] [--pairs 31]

OLD_PKG and NEW_PKG are the `fastrnn` package directories of two builds (each with its built _core*.so),
e.g. a baseline worktree's /tmp/base/fastrnn and this one's fastrnn/.  Copy a package elsewhere first if
it may be rebuilt while this runs.  Both are imported under distinct top-level names (fastrnn_old,
fastrnn_new), so each runs its own C code; the script checks that the two _core modules are different
files and that both give the same outputs on the same inputs (same seed), then alternates the calls
old / new (ABBA order, each sample a batch of calls of about --sample-ms), and reports per case the median
of the paired ratios t_old / t_new: x1.00 even, above 1 the new build is faster.  On a shared, noisy
machine use many pairs and repeat a case that looks off.

Modes: fwd = layer(x) (inference); tape = layer.forward(x, train=True) alone (the training forward);
train = layer.forward(x, train=True) then layer.backward(tape, dy).
"""
import argparse
import glob
import importlib.util
import os
import statistics
import sys
import time

import numpy as np


def load(pkg_dir, alias):
    """Import the fastrnn package at pkg_dir under the top-level name alias."""
    pkg_dir = os.path.abspath(pkg_dir)
    if not os.path.exists(os.path.join(pkg_dir, "__init__.py")) and os.path.exists(
            os.path.join(pkg_dir, "fastrnn", "__init__.py")):
        pkg_dir = os.path.join(pkg_dir, "fastrnn")
    if not glob.glob(os.path.join(pkg_dir, "_core*.so")):
        sys.exit(f"{pkg_dir}: no built _core*.so (run `python setup.py build_ext --inplace` there)")
    spec = importlib.util.spec_from_file_location(alias, os.path.join(pkg_dir, "__init__.py"),
                                                  submodule_search_locations=[pkg_dir])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[alias] = mod
    spec.loader.exec_module(mod)
    core = sys.modules[alias + "._core"]
    return mod, os.path.realpath(core.__file__)


def make_case(fr, cell, T, B, I, H, mode):
    cls = {"lstm": fr.LSTM, "gru": fr.GRU, "rnn": fr.RNN}[cell]
    layer = cls(I, H, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    if mode == "fwd":
        def run():
            return layer(x)[0]
    elif mode == "tape":
        def run():
            return layer.forward(x, train=True)[0]
    else:
        def run():
            y, _, tape = layer.forward(x, train=True)
            dx, _, grads = layer.backward(tape, dy)
            return dx
    return run


def timed(run, n):
    t = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - t) / n


def check_case(fr, cell, T, B, I, H, opts):
    """Every output and gradient of one training forward + backward and one inference call."""
    cls = {"lstm": fr.LSTM, "gru": fr.GRU, "rnn": fr.RNN}[cell]
    kw = {k: v for k, v in opts.items() if k != "lengths"}
    layer = cls(I, H, seed=0, **kw)
    dt = kw.get("dtype", np.float32)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(dt)
    lengths = opts.get("lengths")
    yi = layer(x, lengths=lengths)[0] if lengths is not None else layer(x)[0]
    y, state, tape = layer.forward(x, lengths=lengths) if lengths is not None else layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dt)
    dx, dstate, grads = layer.backward(tape, dy)
    flat = [("y_infer", yi), ("y", y), ("dx", dx)]
    for name, v in (("state", state), ("dstate", dstate)):
        for i, a in enumerate(v if isinstance(v, tuple) else (v,)):
            flat.append((f"{name}{i}", a))
    flat += sorted(grads.items()) if isinstance(grads, dict) else [(f"grad{i}", g) for i, g in enumerate(grads)]
    return flat


def check(old, new, isas, a):
    variants = [{}, {"bias": False}, {"dtype": np.float64}, {"bidirectional": True}, {"num_layers": 2}]
    shapes = [(5, 3, 7, 13), (9, 16, 24, 40), (6, 1, 33, 64), (4, 20, 16, 72), (3, 64, 32, 128), (8, 2, 128, 256),
              (6, 32, 256, 256)]
    bad = 0
    for isa in isas:
        for fr in (old, new):
            fr.set_isa(isa)
        for nth in [int(t) for t in a.threads.split(",")]:
            for fr in (old, new):
                fr.set_num_threads(nth)
            for cell in a.cells.split(","):
                vs = variants + {"lstm": [{"proj_size": 5}], "gru": [{"reset_after": False}]}.get(cell, [])
                for (T, B, I, H) in shapes:
                    lens = np.maximum(1, T - np.arange(B) % T).astype(np.int64)
                    for opts in vs + [{"lengths": lens}]:
                        ro = check_case(old, cell, T, B, I, H, opts)
                        rn = check_case(new, cell, T, B, I, H, opts)
                        diff = [n for (n, u), (_, v) in zip(ro, rn) if not np.array_equal(u, v)]
                        if diff:
                            bad += 1
                            print(f"DIFFER {isa} {nth}thr {cell} {T},{B},{I},{H} {opts if 'lengths' not in opts else 'lengths'}: {diff}")
    print(f"check: {'all bitwise equal' if not bad else f'{bad} cases differ'}")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--shapes", nargs="+", default=["100,1,64,128", "100,16,64,128", "50,64,512,512"],
                    help="T,B,I,H each")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts")
    ap.add_argument("--isa", default="", help="comma-separated ISA paths (default: the best of this CPU)")
    ap.add_argument("--modes", default="fwd,train")
    ap.add_argument("--pairs", type=int, default=31)
    ap.add_argument("--sample-ms", type=float, default=20.0)
    ap.add_argument("--check", action="store_true",
                    help="no timing: compare every output and gradient of both builds bit for bit over a grid of "
                         "options (lengths, projection, bidirectional, float64, no bias) on each --isa")
    a = ap.parse_args()

    old, f_old = load(a.old, "fastrnn_old")
    new, f_new = load(a.new, "fastrnn_new")
    if f_old == f_new:
        sys.exit(f"both builds load the same {f_old}")
    print(f"old: {f_old}\nnew: {f_new}")
    isas = [s for s in a.isa.split(",") if s] or [new.get_isa()]
    if a.check:
        sys.exit(check(old, new, isas, a))
    print(f"{'isa':<8} {'thr':>3} {'cell':<5} {'mode':<6} {'T,B,I,H':<16} {'old ms':>8} {'new ms':>8}  old/new")
    for isa in isas:
        for fr in (old, new):
            fr.set_isa(isa)
            if fr.get_isa() != isa:
                sys.exit(f"ISA {isa} not available here")
        for nth in [int(t) for t in a.threads.split(",")]:
            for fr in (old, new):
                fr.set_num_threads(nth)
            for cell in a.cells.split(","):
                for mode in a.modes.split(","):
                    for shape in a.shapes:
                        T, B, I, H = (int(v) for v in shape.split(","))
                        r_old = make_case(old, cell, T, B, I, H, mode)
                        r_new = make_case(new, cell, T, B, I, H, mode)
                        o, n_ = r_old(), r_new()  # warm-up, and the numbers of both
                        same = "" if np.array_equal(o, n_) else f"  (outputs differ: max {np.max(np.abs(o - n_)):.3g})"
                        reps = max(1, int(a.sample_ms / 1e3 / max(timed(r_new, 1), 1e-6)))
                        ratios, to, tn = [], [], []
                        for p in range(a.pairs):
                            if p % 2:
                                t_n = timed(r_new, reps)
                                t_o = timed(r_old, reps)
                            else:
                                t_o = timed(r_old, reps)
                                t_n = timed(r_new, reps)
                            ratios.append(t_o / t_n)
                            to.append(t_o)
                            tn.append(t_n)
                        print(f"{isa:<8} {nth:>3} {cell:<5} {mode:<6} {shape:<16} {statistics.median(to) * 1e3:8.3f} "
                              f"{statistics.median(tn) * 1e3:8.3f}  x{statistics.median(ratios):.3f}{same}", flush=True)


if __name__ == "__main__":
    main()
