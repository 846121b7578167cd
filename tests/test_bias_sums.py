"""The bias gradients are column sums of dG over all T*B rows; the three cells share one path for them
(csrc/seq.h, seq_db: a double accumulator per unit, summed in the backward step, converted at the end).
Over many rows of one sign a float running sum loses digits (an LSTM summed in float was ~5e-6 off at
T*B = 25600); summed in double, a float32 layer's bias gradients are as close to the float64 layer's as its
weight gradients are (~5e-8).  Checked on every ISA path, 1 and 2 threads, with and without lengths."""

import numpy as np
import pytest

import fastrnn

T, B, I, H = 400, 64, 8, 16
TOL = 5e-7  # normwise: max |f32 - f64| / max |f64|; float sums were 10x above it, double sums 10x below

VARIANTS = {
    "lstm": (fastrnn.LSTM, {}),
    "lstm_proj": (fastrnn.LSTM, {"proj_size": 8}),
    "gru": (fastrnn.GRU, {}),
    "gru_reset_before": (fastrnn.GRU, {"reset_after": False}),
    "rnn_tanh": (fastrnn.RNN, {}),
}




def _grads(cls, kw, dtype, state, x, dy, lengths):
    layer = cls(I, H, dtype=dtype, seed=3, **kw)
    if state is not None:
        layer.load_state_dict({k: np.asarray(v, dtype=dtype) for k, v in state.items()})
    extra = {} if lengths is None else {"lengths": lengths}
    y, st, tape = layer.forward(x.astype(dtype), None, train=True, **extra)
    dst = tuple(np.zeros_like(s) for s in st) if isinstance(st, tuple) else np.zeros_like(st)
    _, _, grads = layer.backward(tape, dy[..., :y.shape[-1]].astype(dtype), dst)
    return layer, grads


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_bias_gradients_summed_in_double(name, with_lengths, isa, threads):
    cls, kw = VARIANTS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)  # one sign: the sums grow with the rows, as a float sum's error does
    lengths = rng.integers(T // 2, T + 1, size=B) if with_lengths else None
    layer32, g32 = _grads(cls, kw, np.float32, None, x, dy, lengths)
    state = {k: np.asarray(v).astype(np.float64) for k, v in layer32.state_dict().items()}
    _, g64 = _grads(cls, kw, np.float64, state, x, dy, lengths)
    for k in ("bias_ih_l0", "bias_hh_l0", "weight_ih_l0", "weight_hh_l0"):
        assert g32[k].dtype == np.float32, k
        err = np.abs(g32[k].astype(np.float64) - g64[k]).max() / np.abs(g64[k]).max()
        assert err < TOL, f"{name} {k}: normwise error {err:.2e} >= {TOL:.0e}"
    # both biases enter the pre-activations the same way, but for the GRU's recurrent n column
    n_same = H * (2 if cls is fastrnn.GRU else (4 if cls is fastrnn.LSTM else 1))
    np.testing.assert_array_equal(g32["bias_ih_l0"][:n_same], g32["bias_hh_l0"][:n_same])
