"""Peak memory of one training step (forward with tape + backward) for the DESIGN shapes.

    python bench/memory_peak.py [--cells lstm gru rnn]

Each shape runs in a fresh subprocess: the numpy arrays of the step (x, y, tape, dy, dx, gradients) are
traced with tracemalloc (peak of the step), the kernels' own C work buffers are read from
fastrnn.workspace_bytes() after the step (kept for the next call, capped at 256 MB), and the process's
resident-set high-water mark (ru_maxrss) is reported before and after.  float32, one layer, 2 threads.
"""
import argparse
import json
import subprocess
import sys

SHAPES = [(100, 1, 64, 128), (100, 16, 64, 128), (100, 32, 128, 256), (50, 64, 512, 512), (25, 64, 1024, 1024)]

CHILD = r"""
import json, resource, sys, tracemalloc
import numpy as np, fastrnn
cell, T, B, I, H = sys.argv[1], *map(int, sys.argv[2:6])
cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
layer = cls(I, H, seed=0)
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
dy = np.ones((T, B, H), np.float32)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fastrnn.release_workspace()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
y, state, tape = layer.forward(x, train=True)
after_fwd = tracemalloc.get_traced_memory()[0] - base
dx, dhx, grads = layer.backward(tape, dy)
peak = tracemalloc.get_traced_memory()[1] - base
tracemalloc.stop()
tape_bytes = sum(a.nbytes for a in tape.tapes)
ws = fastrnn.workspace_bytes()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = sum(v.nbytes for v in layer.state_dict().values())
print(json.dumps(dict(cell=cell, shape=[T, B, I, H], tape=tape_bytes, after_forward=after_fwd, step_peak=peak,
                      workspace=ws, params=params, x=x.nbytes, rss_peak_growth=(rss1 - rss0) * 1024)))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    mib = 2.0 ** 20
    print(f"{'cell':<5}{'T, B, I, H':<20}{'params':>9}{'tape':>9}{'fwd kept':>10}{'step peak':>11}{'C workspace':>13}"
          f"{'RSS peak +':>12}   (MiB)")
    for cell in args.cells:
        for shape in SHAPES:
            out = subprocess.run([sys.executable, "-c", CHILD, cell, *map(str, shape)], capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(r)
            print(f"{cell:<5}{', '.join(map(str, shape)):<20}{r['params'] / mib:>9.2f}{r['tape'] / mib:>9.2f}"
                  f"{r['after_forward'] / mib:>10.2f}{r['step_peak'] / mib:>11.2f}{r['workspace'] / mib:>13.2f}"
                  f"{r['rss_peak_growth'] / mib:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
