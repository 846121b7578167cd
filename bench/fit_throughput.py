"""fit throughput (samples/s) of the Keras-style API on the issue's workflow, beside an idiomatic torch.nn
training loop and Keras 3 (TensorFlow backend) when they are installed, in the same run.

    python bench/fit_throughput.py [--n 10000] [--t 50] [--f 8] [--units 64] [--batch 32] [--cells lstm gru rnn]

One epoch of fit (Adam, MSE, shuffled batches) per engine; the best of --repeat epochs is kept.  Also reports
what fastrnn's framework costs beside the kernels: the kernels' forward + backward alone on the same batches
against the whole training step (batching, Dense, loss, optimizer, Python).
"""
import argparse
import time

import numpy as np


def fastrnn_fit(cell, X, y, units, batch, repeat):
    from fastrnn import layers as L
    from fastrnn.models import Sequential
    L.set_random_seed(0)
    cls = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[cell]
    m = Sequential([cls(units, input_shape=X.shape[1:]), L.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    m.fit(X[:batch * 4], y[:batch * 4], batch_size=batch, epochs=1, verbose=0)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        m.fit(X, y, batch_size=batch, epochs=1, verbose=0)
        best = min(best, time.perf_counter() - t0)
    # the kernels alone: the RNN layer's forward + backward on the same batches (no loss, Dense, optimizer)
    rnn = m.layers[0]
    kbest = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(0, len(X), batch):
            xb = X[s:s + batch]
            out, _, cache = rnn.forward(xb, None, True)
            rnn.backward(cache, np.ones_like(out))
        kbest = min(kbest, time.perf_counter() - t0)
    return len(X) / best, len(X) / kbest


def torch_fit(cell, X, y, units, batch, repeat):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    rnn = cls(X.shape[2], units, batch_first=True)
    head = torch.nn.Linear(units, 1)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def epoch(n):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            opt.zero_grad()
            out, _ = rnn(Xt[idx])
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), yt[idx])
            loss.backward()
            opt.step()
    epoch(batch * 4)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        epoch(len(X))
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def keras_fit(cell, X, y, units, batch, repeat):
    try:
        import keras
    except ImportError:
        return None
    cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[cell]
    m = keras.Sequential([keras.Input(X.shape[1:]), cls(units), keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    m.fit(X[:batch * 4], y[:batch * 4], batch_size=batch, epochs=1, verbose=0)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        m.fit(X, y, batch_size=batch, epochs=1, verbose=0)
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--t", type=int, default=50)
    p.add_argument("--f", type=int, default=8)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"], choices=["lstm", "gru", "rnn"])
    a = p.parse_args(argv)
    import fastrnn
    rng = np.random.default_rng(0)
    X = rng.random((a.n, a.t, a.f), dtype=np.float32)
    y = rng.random((a.n, 1), dtype=np.float32)
    print(f"fit, one epoch, samples/s: N={a.n}, T={a.t}, F={a.f}, units={a.units}, batch {a.batch}, "
          f"{fastrnn.get_num_threads()} threads, kernels {fastrnn.get_isa()}")
    print("| cell | fastrnn fit | fastrnn kernels only | framework share | torch.nn loop | Keras 3 | x torch | x Keras |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in a.cells:
        fit, kern = fastrnn_fit(cell, X, y, a.units, a.batch, a.repeat)
        tr = torch_fit(cell, X, y, a.units, a.batch, a.repeat)
        kr = keras_fit(cell, X, y, a.units, a.batch, a.repeat)
        share = 1 - fit / kern
        f = (lambda v: "-" if v is None else f"{v:,.0f}")
        r = (lambda v: "-" if v is None else f"{fit / v:.2f}")
        print(f"| {cell} | {fit:,.0f} | {kern:,.0f} | {share:.0%} | {f(tr)} | {f(kr)} | {r(tr)} | {r(kr)} |")


if __name__ == "__main__":
    main()
