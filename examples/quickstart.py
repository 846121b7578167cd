"""fastrnn quickstart: an LSTM forward and training step on numpy data, checked against torch.nn when it
is installed, and timed beside it.

    pip install . && python examples/quickstart.py
"""
import time

import numpy as np

import fastrnn

T, B, I, H = 100, 16, 64, 128


def median_ms(fn, repeat=20):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lstm = fastrnn.LSTM(I, H, seed=0)

    y, (h_n, c_n) = lstm(x)                                   # inference
    y, state, tape = lstm.forward(x, train=True)              # training forward
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, (dh0, dc0), grads = lstm.backward(tape, dy)           # backward through time
    print(f"fastrnn {fastrnn.__version__}, kernels: {fastrnn.get_isa()}")
    print(f"LSTM T={T} B={B} I={I} H={H}: y {y.shape}, h_n {h_n.shape}, dx {dx.shape}, "
          f"{len(grads)} parameter gradients")

    def train_step():
        y, _, tape = lstm.forward(x, train=True)
        lstm.backward(tape, dy)

    fwd_ms, step_ms = median_ms(lambda: lstm(x)), median_ms(train_step)
    print(f"fastrnn : forward {fwd_ms:7.2f} ms   training step {step_ms:7.2f} ms")

    try:
        import torch
    except ImportError:
        print("(torch not installed: no comparison)")
        return
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    lstm.load_state_dict(ref.state_dict())
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = ref(xt)
    yt.backward(torch.from_numpy(dy))
    y, _, tape = lstm.forward(x, train=True)
    dx, _, grads = lstm.backward(tape, dy)
    err_y = float(np.max(np.abs(y - yt.detach().numpy())))
    err_dx = float(np.max(np.abs(dx - xt.grad.numpy())))
    err_w = float(np.max(np.abs(grads["weight_hh_l0"] - ref.weight_hh_l0.grad.numpy())))
    print(f"vs torch.nn.LSTM: max |dy| {err_y:.2e}, max |d dx| {err_dx:.2e}, max |d dW_hh| {err_w:.2e}")

    def torch_fwd():
        with torch.no_grad():
            ref(torch.from_numpy(x))

    def torch_step():
        xt = torch.from_numpy(x)
        yt, _ = ref(xt)
        yt.backward(torch.from_numpy(dy))

    t_fwd, t_step = median_ms(torch_fwd), median_ms(torch_step)
    print(f"torch   : forward {t_fwd:7.2f} ms   training step {t_step:7.2f} ms "
          f"(threads {torch.get_num_threads()})")
    print(f"ratio   : forward {t_fwd / fwd_ms:5.2f}x   training step {t_step / step_ms:5.2f}x")


if __name__ == "__main__":
    main()
