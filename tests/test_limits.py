"""Limits: sizes past the kernels' 32-bit counts are a ValueError before anything is allocated or run,
allocations the machine cannot give are a MemoryError, never a crash; a case past 2^31 elements runs
correctly when the memory is there; initialising a layer needs about its final memory, not twice it."""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import reference as ref
from fastrnn.nn import LayerSpec, cells
from fastrnn.nn import functional as F
from fastrnn.nn.validation import INT_MAX, check_kernel_sizes
from fastrnn.runtime import mem_available


class _NoKernels:
    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name.endswith(("_forward", "_backward")):
            raise AssertionError(f"kernel {name} reached")
        return getattr(self._real, name)


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(cells, "_core", _NoKernels(cells._core))


def _mem_available():
    return mem_available() or 0


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_size_arithmetic_past_int_max_is_refused_without_running(cell):
    """The check on shapes alone (nothing allocated): T*B, G*H, D*P and the weight elements at and just
    past 2^31 - 1."""
    spec = LayerSpec(cell, 8, 16)
    check_kernel_sizes(spec, INT_MAX, 1)                      # at the limit: fine
    check_kernel_sizes(spec, 1, INT_MAX)
    check_kernel_sizes(spec, 46340, 46340)                    # T*B = 2147395600 < 2^31
    for T, B, what in ((INT_MAX + 1, 1, "T"), (1, INT_MAX + 1, "B"), (46341, 46341, "T\\*B"),
                       (2**20, 2**12, "T\\*B")):
        with pytest.raises(ValueError, match=what):
            check_kernel_sizes(spec, T, B)
    G = spec.G
    big = LayerSpec.__new__(LayerSpec)  # sizes only: a spec whose parameters would not fit in memory
    object.__setattr__(big, "_cell", spec.cell)
    for name, v in (("hidden_size", INT_MAX // G + 1), ("input_size", INT_MAX + 1)):
        fields = dict(hidden_size=16, input_size=8, _P=16, _D=1, dtype=np.dtype(np.float32))
        fields[name] = v
        if name == "hidden_size":
            fields["_P"] = v
        for k, val in fields.items():
            object.__setattr__(big, k, val)
        with pytest.raises(ValueError):
            check_kernel_sizes(big, 1, 1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_forward_refuses_rows_past_int_max_before_allocating(cell, no_kernels):
    """x of T*B > 2^31 - 1 rows (a zero-strided view: 4 bytes of memory) is a ValueError naming T*B, before
    the contiguous copy of x or any output is allocated and before any kernel."""
    spec = LayerSpec(cell, 4, 8)
    params = {k: np.zeros(s, np.float32) for k, s in spec.param_shapes()}
    x = np.broadcast_to(np.float32(0), (2**16, 2**15 + 1, 4))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="T\\*B"):
            F.forward(spec, params, x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated before the refusal"
    layer = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](4, 8)
    with pytest.raises(ValueError, match="T\\*B"):
        layer(x)
    with pytest.raises(ValueError, match="T\\*B"):
        layer.forward(np.broadcast_to(np.float32(0), (2**16 + 1, 2**15, 4)), train=True)


def test_allocation_the_machine_cannot_give_is_memory_error():
    """A call whose arrays need ~1 TB (x a zero-strided view of 2^31 - 1 rows, the copy and y ~8 TB): a
    MemoryError (or ValueError), and the layer works afterwards."""
    lstm = fastrnn.LSTM(64, 512)
    x = np.broadcast_to(np.float32(1), (2**15, 2**16 - 1, 64))
    with pytest.raises((MemoryError, ValueError)):
        lstm(x)
    with pytest.raises((MemoryError, ValueError)):
        lstm.forward(x, train=True)
    y, _ = lstm(np.ones((3, 2, 64), np.float32))
    assert np.isfinite(y).all()


def test_constructor_of_impossible_size_is_memory_error_or_value_error():
    """A layer whose parameters need ~4 PB: MemoryError/ValueError from the allocation, never a crash."""
    with pytest.raises((MemoryError, ValueError)):
        fastrnn.LSTM(2**24, 2**26)
    with pytest.raises((MemoryError, ValueError)):
        fastrnn.GRU(2**40, 2**40)


def test_kernel_int_arguments_overflow_is_an_error_not_a_wrap():
    """The binding's int arguments refuse values past INT_MAX (Cython's checked conversion), so a caller
    bypassing fastrnn.nn cannot wrap a size silently."""
    with pytest.raises(OverflowError):
        fastrnn._core.gru_tape_len(2**31, 1, 1, False)
    assert fastrnn._core.gru_tape_len(2**16, 2**15, 2**10, False) == 4 * 2**16 * 2**15 * 2**10  # 64-bit count


def test_initialising_a_layer_needs_about_its_final_memory():
    """An LSTM(1024, 1024, num_layers=2, bidirectional) of 50 MiB float32 parameters: the peak traced
    during construction is the parameters plus one draw chunk (8 MiB of float64), not twice them."""
    gc.collect()
    tracemalloc.start()
    try:
        lstm = fastrnn.LSTM(1024, 1024, num_layers=2, bidirectional=True, seed=0)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    final = sum(v.nbytes for v in lstm._params.values())
    assert final > 40 << 20
    assert peak <= final + (9 << 20), f"peak {peak / 2**20:.1f} MiB for {final / 2**20:.1f} MiB of parameters"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FASTRNN_SLOW"), reason="slow (3 min, 13 GiB): set FASTRNN_SLOW=1")
@pytest.mark.skipif(_mem_available() < 16 << 30, reason="needs ~13 GiB of free memory")
def test_gru_inference_past_2_31_elements():
    """GRU(1, 2) over T = 32768, B = 32776: y has T*B*H = 2,147,745,792 > 2^31 elements (the last rows' offsets
    pass 2^31), x 1.07e9.  The first and the last sequences equal the float64 reference."""
    T, B, H = 32768, 32776, 2
    assert T * B * H > 2**31
    gru = fastrnn.GRU(1, H, seed=0)
    x = np.empty((T, B, 1), np.float32)
    b_idx = np.arange(B, dtype=np.float32)
    for t0 in range(0, T, 1024):  # a cheap deterministic pattern, chunk by chunk (no float64 temporary)
        t = np.arange(t0, min(t0 + 1024, T), dtype=np.float32)[:, None]
        x[t0:t0 + len(t), :, 0] = np.sin(t * np.float32(0.01) + b_idx[None, :] * np.float32(0.37))
    y, h = gru(x)
    assert y.shape == (T, B, H) and y.size > 2**31
    params = {k: v.astype(np.float64) for k, v in gru.state_dict().items()}
    for b in (0, B - 1):
        yr, hr, _ = ref.ref_forward("gru", params, x[:, b:b + 1].astype(np.float64))
        err = np.abs(y[:, b:b + 1] - yr).max()
        assert err < 1e-4, f"sequence {b}: max error {err}"
        np.testing.assert_allclose(h[:, b:b + 1], hr, atol=1e-4)
    del x, y


def test_load_state_dict_refuses_foreign_content_and_changes_nothing():
    """Foreign or corrupted state dicts (objects, strings, ragged lists, wrong keys or shapes, a truncated
    dict) are a TypeError/ValueError and leave the parameters as they were; nothing is unpickled or read."""
    lstm = fastrnn.LSTM(3, 4, seed=0)
    before = lstm.state_dict()
    good = lstm.state_dict()
    key = next(iter(good))
    bad = [dict(good, **{key: np.array([object()] * good[key].size).reshape(good[key].shape)}),
           dict(good, **{key: np.full(good[key].shape, "1.0")}),
           dict(good, **{key: [[1.0, 2.0], [3.0]]}),
           dict(good, **{key: good[key][:-1]}),
           {k: v for k, v in list(good.items())[:-1]},
           dict(good, extra=np.zeros(1)),
           b"\x80\x04\x95 pickle bytes",
           [("weight_ih_l0", good[key])]]
    for sd in bad:
        with pytest.raises((TypeError, ValueError)):
            lstm.load_state_dict(sd)
        for k, v in before.items():
            np.testing.assert_array_equal(getattr(lstm, k), v)
    nan_sd = {k: np.full_like(v, np.nan) for k, v in good.items()}
    lstm.load_state_dict(nan_sd)  # NaN weights are legal: they propagate
    assert np.isnan(lstm(np.ones((2, 1, 3), np.float32))[0]).all()
