"""fit throughput (samples/s) of the Keras-style API on the issue's workflow, beside an idiomatic torch.nn
training loop and Keras 3 (TensorFlow backend) when they are installed, in the same process.

    python bench/fit_throughput.py [--n 10000] [--t 50] [--f 8] [--units 64] [--batch 32] [--threads 2]
                                   [--repeat 2] [--cells lstm gru rnn]

Per cell, each engine builds `RNN(units)` + `Dense(1)` with Adam (learning rate 0.001) and MSE and is warmed up
by one epoch on a slice (4 batches and the final partial batch: Keras traces its train function, and once more
for the last batch's shape, there); then the timed epochs of the engines are interleaved (fastrnn, torch,
Keras, fastrnn, ...), so that a change of the machine's load hits them alike, and the best of --repeat epochs
is kept (--pause seconds idle before each timed epoch).  One epoch is:

    fastrnn   model.fit(X, y, batch_size=32, epochs=1, verbose=0, shuffle=True)
    Keras 3   model.fit(X, y, batch_size=32, epochs=1, verbose=0, shuffle=True)   (TensorFlow backend)
    torch     the loop a torch user writes: randperm, per batch zero_grad / forward / mse_loss / backward / step

Every engine runs on --threads threads: fastrnn.set_num_threads, torch.set_num_threads, and TensorFlow's
intra-op and inter-op pools (set before TensorFlow runs any op).  Also reports what fastrnn's framework costs
beside its kernels: the recurrent layer's forward + backward alone on the same batches against the whole
training step (batching, Dense, loss, optimizer, Python).
"""
import argparse
import os
import time

import numpy as np


def _warm_slice(n, batch):
    return min(n, batch * 4 + n % batch)


def fastrnn_engine(cell, X, y, units, batch):
    from fastrnn import layers as L
    from fastrnn.models import Sequential
    L.set_random_seed(0)
    cls = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[cell]
    m = Sequential([cls(units, input_shape=X.shape[1:]), L.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    w = _warm_slice(len(X), batch)
    m.fit(X[:w], y[:w], batch_size=batch, epochs=1, verbose=0)

    def epoch():
        m.fit(X, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)

    def kernels_epoch():  # the recurrent layer's forward + backward alone (no loss, Dense, optimizer)
        rnn = m.layers[0]
        for s in range(0, len(X), batch):
            out, _, cache = rnn.forward(X[s:s + batch], None, True)
            rnn.backward(cache, np.ones_like(out))
    return epoch, kernels_epoch


def torch_engine(cell, X, y, units, batch):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    rnn = cls(X.shape[2], units, batch_first=True)
    head = torch.nn.Linear(units, 1)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run(n):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            opt.zero_grad()
            out, _ = rnn(Xt[idx])
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), yt[idx])
            loss.backward()
            opt.step()
    run(_warm_slice(len(X), batch))
    return lambda: run(len(X))


def keras_engine(cell, X, y, units, batch):
    try:
        import keras
    except ImportError:
        return None
    keras.utils.set_random_seed(0)
    cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[cell]
    m = keras.Sequential([keras.Input(X.shape[1:]), cls(units), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    w = _warm_slice(len(X), batch)
    m.fit(X[:w], y[:w], batch_size=batch, epochs=1, verbose=0, shuffle=True)

    def epoch():
        m.fit(X, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    return epoch


def set_threads(n):
    """Every engine on n threads; TensorFlow's pools must be sized before it runs its first op."""
    import fastrnn
    fastrnn.set_num_threads(n)
    info = {"fastrnn": fastrnn.get_num_threads()}
    try:
        import torch
        torch.set_num_threads(n)
        info["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
        info["tensorflow"] = (tf.config.threading.get_intra_op_parallelism_threads(),
                              tf.config.threading.get_inter_op_parallelism_threads())
    except ImportError:
        pass
    return info


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _load():
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--t", type=int, default=50)
    p.add_argument("--f", type=int, default=8)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.5, help="seconds idle before each timed epoch")
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"], choices=["lstm", "gru", "rnn"])
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    import fastrnn
    rng = np.random.default_rng(0)
    X = rng.random((a.n, a.t, a.f), dtype=np.float32)
    y = rng.random((a.n, 1), dtype=np.float32)
    versions = {"fastrnn": fastrnn.__version__}
    for mod in ("torch", "keras", "tensorflow"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    print(f"fit, one epoch, samples/s: N={a.n}, T={a.t}, F={a.f}, units={a.units}, batch {a.batch}, "
          f"best of {a.repeat} interleaved epochs, kernels {fastrnn.get_isa()}")
    print("threads: " + ", ".join(f"{k} {v}" for k, v in threads.items()))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"start: {_load()}")
    print("| cell | fastrnn fit | fastrnn kernels only | framework share | torch.nn loop | Keras 3 | x torch | x Keras |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in a.cells:
        fit_epoch, kern_epoch = fastrnn_engine(cell, X, y, a.units, a.batch)
        engines = {"fastrnn": fit_epoch, "kernels": kern_epoch,
                   "torch": torch_engine(cell, X, y, a.units, a.batch),
                   "keras": keras_engine(cell, X, y, a.units, a.batch)}
        best = {k: float("inf") for k, fn in engines.items() if fn is not None}
        for _ in range(a.repeat):
            for k in best:
                time.sleep(a.pause)  # the previous engine's spinning threads (libgomp, Eigen) go to sleep
                best[k] = min(best[k], _timed(engines[k]))
        sps = {k: a.n / v for k, v in best.items()}
        fit, kern = sps["fastrnn"], sps["kernels"]
        f = (lambda k: f"{sps[k]:,.0f}" if k in sps else "-")
        r = (lambda k: f"{fit / sps[k]:.2f}" if k in sps else "-")
        print(f"| {cell} | {fit:,.0f} | {kern:,.0f} | {max(0.0, 1 - fit / kern):.0%} | {f('torch')} | {f('keras')} "
              f"| {r('torch')} | {r('keras')} |", flush=True)
    print(f"end: {_load()}")


if __name__ == "__main__":
    main()
