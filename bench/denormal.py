"""Denormal inputs and weights against normal ones, per ISA path (issue: at most 1.5x).

    python bench/denormal.py [--reps 7]

For LSTM, GRU and RNN (T=50, B=16, I=H=256, float32 and float64), times a forward and a training step
(forward + backward) with normal weights and inputs, then with every weight and input scaled into the
subnormal range (float32 ~1e-39, float64 ~1e-309), and prints the ratio of the medians.  The kernels run
with flush-to-zero / denormals-are-zero (threads.c, fr_fpmode_enter), so the ratio should be ~1.0.
"""
import argparse
import statistics
import time

import numpy as np

import fastrnn


def _time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    isas = ["portable"] + (["avx2"] if fastrnn.cpu_has_avx2() else []) + \
        (["avx512"] if fastrnn.cpu_has_avx512() else [])
    print(f"threads {fastrnn.get_num_threads()}; ratio = denormal median / normal median")
    print(f"{'isa':<9}{'dtype':<9}{'cell':<6}{'mode':<10}{'normal ms':>11}{'denormal ms':>13}{'ratio':>8}")
    worst = 0.0
    for isa in isas:
        fastrnn.set_isa(isa)
        for dtype, scale in ((np.float32, 1e-39 / 0.0625), (np.float64, 1e-309 / 0.0625)):
            for name, cls in (("lstm", fastrnn.LSTM), ("gru", fastrnn.GRU), ("rnn", fastrnn.RNN)):
                layer = cls(256, 256, dtype=dtype, seed=0)
                x = np.random.default_rng(0).standard_normal((50, 16, 256)).astype(dtype)
                sd = layer.state_dict()
                tiny = {k: (v * dtype(scale)).astype(dtype) for k, v in sd.items()}
                x_tiny = (x * dtype(scale / 16)).astype(dtype)
                assert np.all(np.abs(x_tiny[x_tiny != 0]) < np.finfo(dtype).tiny)
                dy = np.ones((50, 16, 256), dtype)
                for mode in ("forward", "training"):
                    def run(xx):
                        if mode == "forward":
                            layer(xx)
                        else:
                            _, _, tape = layer.forward(xx, train=True)
                            layer.backward(tape, dy)
                    layer.load_state_dict(sd)
                    t_n = _time(lambda: run(x), args.reps)
                    layer.load_state_dict(tiny)
                    t_d = _time(lambda: run(x_tiny), args.reps)
                    r = t_d / t_n
                    worst = max(worst, r)
                    print(f"{isa:<9}{np.dtype(dtype).name:<9}{name:<6}{mode:<10}{t_n * 1e3:>11.2f}{t_d * 1e3:>13.2f}"
                          f"{r:>8.2f}")
    print(f"worst ratio {worst:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
