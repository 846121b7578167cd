"""The cost of recurrent dropout masks (Keras's recurrent_dropout, docs/keras.md) on a training step, in ONE
process and one build: median of paired ratios t_masked / t_plain (above 1: the mask costs that factor).

    python bench/recdrop_cost.py [--cells lstm,rnn,gru,gru_reset_before] [--shapes 100,16,64,128 50,64,512,512] [--threads 2]
                                 [--pairs 15] [--rate 0.2]

A training step is fastrnn.nn.functional.forward(train=True) then backward, float32, one layer, with and
without `rmasks=` (the same inputs), the two alternated in ABBA order; quote the ratios, not the times (the
machines are shared).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastrnn
from fastrnn.nn import LayerSpec
from fastrnn.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_compare import timed  # noqa: E402


def make(cell, T, B, I, H, rate, masked):
    kw = dict(reset_after=False) if cell == "gru_reset_before" else {}
    spec = LayerSpec(cell.split("_")[0], I, H, dtype=np.float32, **kw)
    rng = np.random.default_rng(0)
    params = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in spec.param_shapes()}
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    shape = spec.cell.rmask_shape(B, H)
    rm = [((rng.random(shape) < 1 - rate) / (1 - rate)).astype(np.float32)] if masked else None

    def run():
        y, _, tape = F.forward(spec, params, x, train=True, rmasks=rm)
        F.backward(tape, dy)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="lstm,rnn")
    ap.add_argument("--shapes", nargs="+", default=["100,16,64,128", "50,64,512,512"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--rate", type=float, default=0.2)
    a = ap.parse_args()
    fastrnn.set_num_threads(a.threads)
    print(f"isa {fastrnn.get_isa()}, {fastrnn.get_num_threads()} threads; t_masked / t_plain, median of "
          f"{a.pairs} ABBA pairs")
    for cell in a.cells.split(","):
        for sh in a.shapes:
            T, B, I, H = map(int, sh.split(","))
            plain, masked = make(cell, T, B, I, H, a.rate, False), make(cell, T, B, I, H, a.rate, True)
            t0 = time.perf_counter()
            plain()
            n = max(1, int(0.15 / max(time.perf_counter() - t0, 1e-6)))
            masked()
            ratios = []
            for i in range(a.pairs):
                if i % 2 == 0:
                    tp, tm = timed(plain, n), timed(masked, n)
                else:
                    tm, tp = timed(masked, n), timed(plain, n)
                ratios.append(tm / tp)
            print(f"{cell:5s} T,B,I,H = {sh:>14s}: masked / plain x{statistics.median(ratios):.2f} "
                  f"(quartiles {np.percentile(ratios, 25):.2f} .. {np.percentile(ratios, 75):.2f})")


if __name__ == "__main__":
    main()
