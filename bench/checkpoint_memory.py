"""Training with checkpoint=k on a long sequence: peak memory of the numpy arrays of a training step
(tracemalloc, which sees numpy's allocations; the kernels' own work buffers are the same either way) and
the time of the step, whole tape against checkpoints, in one process, calls alternated.

    python bench/checkpoint_memory.py [--T 10000] [--B 16] [--I 64] [--H 128] [--k 100] [--cell lstm]
"""
import argparse
import statistics
import time
import tracemalloc

import numpy as np

import fastrnn


def step(layer, x, dy, k):
    y, _, tape = layer.forward(x, checkpoint=k)
    kept = sum(a.nbytes for a in tape.tapes) + sum(c.h0.nbytes + (c.c0.nbytes if c.c0 is not None else 0)
                                                   for chunks in tape.chunks for c in chunks)
    layer.backward(tape, dy)
    return kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=10000)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--I", type=int, default=64)
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--pairs", type=int, default=7)
    a = ap.parse_args()
    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[a.cell]
    layer = cls(a.I, a.H, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.T, a.B, a.I)).astype(np.float32)
    dy = rng.standard_normal((a.T, a.B, a.H)).astype(np.float32)
    print(f"{a.cell} T={a.T} B={a.B} I={a.I} H={a.H}, k={a.k}, threads={fastrnn.get_num_threads()}, "
          f"isa={fastrnn.get_isa()}")
    for k in (None, a.k):
        step(layer, x, dy, k)  # warm the workspace cache
        tracemalloc.start()
        kept = step(layer, x, dy, k)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  {'whole tape' if k is None else f'checkpoint={k}':>16}: tape kept {kept / 2**20:8.1f} MiB, "
              f"peak of the step's arrays {peak / 2**20:8.1f} MiB")
    ratios, t_tape, t_ck = [], [], []
    for _ in range(a.pairs):
        t0 = time.perf_counter(); step(layer, x, dy, None); t1 = time.perf_counter()
        step(layer, x, dy, a.k); t2 = time.perf_counter()
        t_tape.append(t1 - t0); t_ck.append(t2 - t1); ratios.append((t2 - t1) / (t1 - t0))
    print(f"  time: whole tape {statistics.median(t_tape) * 1e3:.1f} ms, checkpoint {statistics.median(t_ck) * 1e3:.1f}"
          f" ms, ratio checkpoint/tape x{statistics.median(ratios):.2f} (median of {a.pairs} pairs)")


if __name__ == "__main__":
    main()
