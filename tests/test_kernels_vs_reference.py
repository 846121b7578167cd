"""fastrnn layers against the numpy float64 reference (tests/reference.py), on both ISA paths, in float32
and float64: inference forward, training forward, backward (dx, dhx, every parameter gradient)."""

import threading

import numpy as np
import pytest

import fastrnn
from helpers import (VARIANTS, Case, assert_close, assert_grads_close, assert_state_close, fastrnn_layer,
                     fastrnn_run, from_api_seq, random_data, random_lengths, random_params,
                     reference_run, to_api_seq, to_api_state)

DTYPES = [np.float32, np.float64]
DT_IDS = ["f32", "f64"]
REC = "kernels vs reference"


def _check_dtype(value, dtype, name):
    if isinstance(value, tuple):
        for v in value:
            _check_dtype(v, dtype, name)
    else:
        assert isinstance(value, np.ndarray) and value.dtype == np.dtype(dtype), \
            f"{name}: expected an ndarray of {np.dtype(dtype).name}, got {getattr(value, 'dtype', type(value))}"


def _state_shape_of(value):
    return tuple(v.shape for v in value) if isinstance(value, tuple) else value.shape


def compare(case, dtype, got, want, masks_used=False):
    d = case.depth
    if not masks_used:
        assert_close(got["infer_y"], want["y"], dtype, d, f"{case} inference y", record=REC)
        assert_state_close(got["infer_state"], want["state"], dtype, d, f"{case} inference state", record=REC)
    assert_close(got["y"], want["y"], dtype, d, f"{case} train y", record=REC)
    assert_state_close(got["state"], want["state"], dtype, d, f"{case} train state", record=REC)
    if "dx" in got:
        assert_close(got["dx"], want["dx"], dtype, d, f"{case} dx", record=REC)
        if case.with_hx:
            assert_state_close(got["dhx"], want["dhx"], dtype, d, f"{case} dhx", record=REC)
        else:   # zeros-shaped: like the state
            assert _state_shape_of(got["dhx"]) == _state_shape_of(want["dhx"]), f"{case} dhx shape"
        assert_grads_close(got["grads"], want["grads"], dtype, d, f"{case} grads", record=REC)
        for k in ("dx", "dhx"):
            _check_dtype(got[k], dtype, f"{case} {k}")
        for k, g in got["grads"].items():
            _check_dtype(g, dtype, f"{case} grads[{k}]")
    for k in ("infer_y", "infer_state", "y", "state"):
        _check_dtype(got[k], dtype, f"{case} {k}")


def check(case, dtype, seed=0):
    params = random_params(case, dtype, seed=seed)
    data = random_data(case, dtype, seed=seed + 1)
    want = reference_run(case, params, data)
    layer = fastrnn_layer(case, dtype, params)
    got = fastrnn_run(case, layer, data, dtype)
    compare(case, dtype, got, want)
    return layer, data, got


# ---- single layer, one direction: every cell, varied shapes ------------------------------------------------



SHAPES = [  # (T, B, I, H)
    (1, 1, 3, 5),
    (7, 1, 5, 8),
    (4, 3, 8, 16),
    (5, 4, 7, 13),
    (3, 2, 17, 32),
    (2, 5, 1, 9),
    (6, 3, 9, 2),
    # T * B <= 4: the weights are read unpacked (recurrent.h's direct mode); sizes past a SIMD width with
    # tails, and a partial last block of units.
    (1, 1, 19, 45),
    (1, 4, 33, 37),
    (2, 2, 24, 29),
    (1, 5, 16, 24),  # just past the direct-mode threshold: packed
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", SHAPES, ids=["T{}_B{}_I{}_H{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_single_layer(isa, dtype, variant, shape, with_hx):
    T, B, I, H = shape
    check(Case.variant(variant, T=T, B=B, I=I, H=H, with_hx=with_hx), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_bias(isa, dtype, variant):
    check(Case.variant(variant, T=4, B=3, I=5, H=7, bias=False), dtype)


LARGER = [(5, 1, 24, 128), (3, 1, 16, 256), (4, 33, 20, 40), (3, 64, 16, 96)]


# ---- calls of T*B <= 4 rows: nothing packed (recurrent.h's direct mode, forward and backward; gemm_kernel.h's
# thin products for the weight gradients and dx) -----------------------------------------------------------
# Boundaries: T*B 1 and 4 (direct, thin: K and M <= GK_THIN_K / GK_THIN_M = 4) against 5 (packed, the GEMM);
# full blocks of units and a partial last one (AVX-512 W_hh^T blocks of 32 units: H 40, 64 + 7; the LSTM's
# blocks of 8: the 8-row dot of the forward), K not a multiple of the vector width (I 19, 33, H 31, 71),
# I past GK_THIN_NB = 256 columns of a thin product (300); 1 and 2 threads.
SMALL_CALLS = [(1, 1, 40, 40), (1, 1, 19, 71), (1, 2, 300, 40), (2, 2, 33, 64), (4, 1, 16, 31), (1, 4, 17, 70),
               (1, 5, 33, 40), (5, 1, 300, 40)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", SMALL_CALLS, ids=["T{}_B{}_I{}_H{}".format(*s) for s in SMALL_CALLS])
def test_small_calls_unpacked(isa, dtype, variant, shape, threads):
    T, B, I, H = shape
    check(Case.variant(variant, T=T, B=B, I=I, H=H, with_hx=B != 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["rnn_tanh", "lstm", "lstm_proj", "gru", "gru_reset_before"])
def test_small_calls_options(isa, dtype, variant, threads):
    """The unpacked paths with two layers, both directions, lengths (N = 3 rows of a T*B = 4 call) and a
    projection (W_hr^T read in place too: proj_size 33 and 3)."""
    proj = {"proj_size": 33} if variant == "lstm_proj" else {}
    check(Case.variant(variant, T=2, B=2, I=20, H=40, lengths=(2, 1), bidirectional=True, num_layers=2, **proj),
          dtype)
    check(Case.variant(variant, T=1, B=1, I=9, H=48, bidirectional=True, **proj), dtype)
    check(Case.variant(variant, T=4, B=1, I=36, H=40, num_layers=2, with_hx=False), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["rnn_tanh", "lstm", "lstm_proj", "gru", "gru_reset_before"])
@pytest.mark.parametrize("shape", LARGER, ids=["T{}_B{}_I{}_H{}".format(*s) for s in LARGER])
def test_larger_shapes_and_threads(isa, dtype, variant, shape, threads):
    """Shapes big enough for the blocked / threaded paths (hidden-unit split at B=1, batch split)."""
    T, B, I, H = shape
    proj = dict(proj_size=37) if variant == "lstm_proj" else {}
    check(Case.variant(variant, T=T, B=B, I=I, H=H, **proj), dtype)


# Steps of 40K .. 2M multiply-adds (every cell) over 1M in all: on 2 threads the backward's loop runs on one
# thread beside the weight gradients' reduction on the other, in pieces of steps from the top (seq.h,
# seq_backward); on 1 thread the same pieces after the loop.  Several pieces (T = 60 at B = 5), lengths,
# both directions, 2 layers (dx accumulated into the layer below), no hx.
OVERLAP = [(40, 16, 8, 70), (60, 5, 33, 130)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["rnn_tanh", "lstm", "lstm_proj", "gru", "gru_reset_before"])
@pytest.mark.parametrize("shape", OVERLAP, ids=["T{}_B{}_I{}_H{}".format(*s) for s in OVERLAP])
def test_backward_overlapped(isa, dtype, variant, shape, threads):
    T, B, I, H = shape
    proj = dict(proj_size=37) if variant == "lstm_proj" else {}
    rng = np.random.default_rng(T + B)
    check(Case.variant(variant, T=T, B=B, I=I, H=H, **proj), dtype)
    check(Case.variant(variant, T=T, B=B, I=I, H=H, lengths=random_lengths(rng, T, B), bidirectional=True,
                       num_layers=2, with_hx=False, **proj), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "lstm", "lstm_proj"])
@pytest.mark.parametrize("B", [16, 23, 32])
def test_single_step_by_gemm(isa, dtype, variant, B, threads):
    """One step of 16 to 32 rows: the GRU (reset_after) and the LSTM with x projected by GEMM (over 128 KB
    of weights a row: H = 513, or 520 projected to 500) take h0 W_hh^T from the GEMM's transposed path (gru_single_step,
    lstm_single_step), each thread its units, H leaving a partial block; every length 1 of T = 3 is a
    single step too, and bidirectional runs it in both directions."""
    H = {"lstm": 513, "lstm_proj": 520}.get(variant, 40)
    proj = dict(proj_size=500) if variant == "lstm_proj" else {}
    check(Case.variant(variant, T=1, B=B, I=24, H=H, **proj), dtype)
    check(Case.variant(variant, T=1, B=B, I=24, H=H, with_hx=False, **proj), dtype)
    check(Case.variant(variant, T=3, B=B, I=24, H=H, lengths=(1,) * B, bidirectional=True, **proj), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj"])
def test_narrow_input_either_side_of_the_split_rule(isa, dtype, variant, threads):
    """More than 128 KB of [W_ih | W_hh] per row of a step: with a narrow input (4 I <= P) the LSTM forward
    stays fused (lstm_split's LSTM_NARROW_X_BYTES), with a wider one it projects x by GEMM; both, with and
    without lengths, and past REC_DIRECT_ROWS rows."""
    P = 128 if variant == "lstm_proj" else 256
    proj = dict(proj_size=P) if variant == "lstm_proj" else {}
    for I in (P // 4, P // 4 + 1):
        check(Case.variant(variant, T=5, B=3, I=I, H=256, **proj), dtype)
        check(Case.variant(variant, T=5, B=4, I=I, H=256, lengths=(5, 2, 4, 1), **proj), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj"])
def test_rows_split_across_threads(isa, dtype, variant, threads):
    """B >= 8 per thread and small weights: on 2 threads the LSTM forward splits the rows, not the units
    (lstm_rowsplit), with no barrier; B = 19 splits 9 + 10, and the lengths end sequences in both halves
    (each thread carries its own ended rows), the longest first and last.  Then weights the training
    forward alone splits by rows (AVX-512)."""
    base = (9, 3, 7, 9, 1, 5, 9, 2, 8, 6, 4, 9, 7, 3, 1, 8, 5, 2, 9)
    lengths = tuple(2 * n + 6 for n in base)
    proj = dict(proj_size=10) if variant == "lstm_proj" else {}
    # T = 24: enough multiply-adds in all for a second thread (rec_threads_for; at T = 9 the call ran on one)
    check(Case.variant(variant, T=24, B=19, I=7, H=24, lengths=lengths, **proj), dtype)
    check(Case.variant(variant, T=24, B=19, I=7, H=24, **proj), dtype)
    # 1.1 MB of float32 weights: on AVX-512 only the training forward splits the rows
    # (LSTM_ROWSPLIT_TRAIN_BYTES), inference splits the units: the two must still agree.
    proj = dict(proj_size=200) if variant == "lstm_proj" else {}
    check(Case.variant(variant, T=4, B=19, I=16, H=256, lengths=tuple(min(n, 4) for n in base), **proj), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["rnn_tanh", "lstm", "lstm_proj", "gru", "gru_reset_before"])
def test_every_tile_height(isa, dtype, variant, threads):
    """Lengths 1 .. 14 (shuffled): the active rows of a step go 14, 13, ..., 1, so every tile kernel height
    (1 .. 12 rows with AVX-512, 1 .. 4 with AVX2) and its tails run, forward and backward, with H past a
    multiple of the blocks (a partial last block)."""
    lengths = tuple(int(v) for v in np.random.default_rng(14).permutation(np.arange(1, 15)))
    proj = dict(proj_size=11) if variant == "lstm_proj" else {}
    check(Case.variant(variant, T=14, B=14, I=9, H=70, lengths=lengths, **proj), dtype)


@pytest.fixture(params=[1, 2], ids=["steal", "steal_all"])
def stealing(request):
    """Steps split by units share their blocks by claims (a testing knob of the kernels,
    fastrnn._core._set_steal_mode): 1 whenever there are 2+ threads (normally only for steps of 4+ MFLOP),
    2 with every block of a step starting in the last thread's range, so the first thread takes all of
    its blocks from the back of that range while the owner takes from the front.  Restored afterwards."""
    previous = fastrnn._core._set_steal_mode(request.param)
    yield request.param
    fastrnn._core._set_steal_mode(previous)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_blocks_stolen_across_threads(isa, dtype, variant, stealing, small_chunks):
    """The steps with their blocks of units claimed (fr_claim): the LSTM and RNN forwards, fused and split
    (B <= 2, and B = 5 with large weights), the RNN backward, the GRU's reset_after forward with the GEMM
    projection (in training, which check runs; steps of 8+ rows); lengths ending sequences mid-way (steps
    of 1 row keep the static split); small chunks, so regions start at odd and even steps.  Every case
    has work enough for 2 threads (rec_threads_for)."""
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    try:
        proj = dict(proj_size=10) if variant == "lstm_proj" else {}
        # B = 15: under the 16 rows from which the LSTM's 2 threads would split rows instead (lstm_rowsplit)
        lengths = (9, 3, 7, 9, 1, 5, 9, 2, 8, 6, 4, 9, 7, 3, 1)
        check(Case.variant(variant, T=9, B=15, I=7, H=70, lengths=lengths, **proj), dtype)
        check(Case.variant(variant, T=12, B=2, I=9, H=160, lengths=(12, 7), bidirectional=True, **proj), dtype)
        check(Case.variant(variant, T=8, B=5, I=100, H=160, lengths=(8, 3, 6, 8, 2), **proj), dtype)
    finally:
        fastrnn.set_num_threads(previous)


@pytest.fixture
def small_chunks():
    """Chunks of few steps (a testing knob of the kernels, fastrnn._core._set_chunking): work buffers of 1
    byte (so seq_chunk gives one step) and GEMM projections of at least 42 rows (odd step counts at B = 2
    and 5, so a chunk may start on either state buffer), restored afterwards."""
    previous = fastrnn._core._set_chunking(chunk_bytes=1, proj_min_rows=42)
    yield
    fastrnn._core._set_chunking(*previous)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "rnn_tanh", "gru", "gru_reset_before"])
def test_projection_in_chunks(isa, dtype, variant, threads, small_chunks):
    """B <= 2 (or large weights per row): the LSTM and RNN forwards project x by GEMM a chunk of steps at a
    time (lstm_split, rnn_split, seq_proj_chunk: here 42 rows, so T = 150 runs 8 chunks of 21 steps at
    B = 2, with lengths and reversed, and 4 of 42 at B = 1, the last ones partial), and so does the GRU's
    in training and for a large W_ih; otherwise the GRU projects per chunk in tiles (rec_proj_chunk: H
    such that a chunk is its 128-row minimum).  The backward with lengths gathers one step per chunk here."""
    proj = dict(proj_size=13) if variant == "lstm_proj" else {}
    # H so that a tile-projected chunk is the 128-row minimum, not ~192 KB of projection (all 150 steps)
    H = {"lstm": 100, "lstm_proj": 100, "rnn_tanh": 400, "gru": 140, "gru_reset_before": 140}[variant]
    check(Case.variant(variant, T=150, B=2, I=9, H=H, lengths=(150, 97), bidirectional=True, **proj), dtype)
    check(Case.variant(variant, T=150, B=1, I=5, H=H, **proj), dtype)
    # B = 5 with 665 KB of LSTM weights (> 128 KB per row): split too, tiles of 5 rows, 9-step chunks
    check(Case.variant(variant, T=40, B=5, I=100, H=160, lengths=(40, 3, 27, 40, 12), **proj), dtype)
    # W_ih over 1 MB: the GRU's inference forward projects by GEMM too (gru_gemm_projection), 14-step chunks
    check(Case.variant(variant, T=30, B=3, I=400, H=256, lengths=(30, 11, 29), **proj), dtype)


# ---- layouts: batch_first, unbatched, non-contiguous -------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_first(isa, dtype, variant):
    case = Case.variant(variant, T=5, B=3, I=4, H=6, batch_first=True)
    layer, data, got = check(case, dtype)
    # the same numbers as the time-major layer
    tm = case.but(batch_first=False)
    layer_tm = fastrnn_layer(tm, dtype, {k: v for k, v in layer.state_dict().items()})
    got_tm = fastrnn_run(tm, layer_tm, data, dtype)
    for k in ("y", "dx"):
        np.testing.assert_array_equal(got[k], got_tm[k], err_msg=f"{case} {k}: batch_first != time-major")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_unbatched(isa, dtype, variant, with_hx):
    case = Case.variant(variant, T=6, B=1, I=4, H=5, unbatched=True, with_hx=with_hx)
    layer, data, got = check(case, dtype)
    raw_y = got["raw_y"]
    assert raw_y.shape == (case.T, case.D * case.P)


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unbatched_multilayer_bidirectional(isa, dtype, variant):
    check(Case.variant(variant, T=4, B=1, I=3, H=5, unbatched=True, num_layers=2, bidirectional=True), dtype)


def _strided(a, rng):
    """A non-contiguous view holding the same values as `a`: every other element of a wider array, with the
    axes reversed in memory."""
    a = np.asarray(a)
    big = rng.standard_normal(a.shape[::-1] + (2,)).astype(a.dtype)
    view = big[..., 0].T           # transposed: non-contiguous
    view[...] = a
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_noncontiguous_inputs_give_identical_results(isa, dtype, variant, batch_first):
    case = Case.variant(variant, T=5, B=3, I=4, H=6, batch_first=batch_first, num_layers=2)
    params = random_params(case, dtype, seed=2)
    data = random_data(case, dtype, seed=3)
    layer = fastrnn_layer(case, dtype, params)
    rng = np.random.default_rng(0)
    x = to_api_seq(case, data.x, dtype)
    hx = to_api_state(case, data.hx, dtype)
    dy = to_api_seq(case, data.dy, dtype)
    ds = to_api_state(case, data.dstate, dtype)

    def strided_state(s):
        return tuple(_strided(v, rng) for v in s) if isinstance(s, tuple) else _strided(s, rng)

    runs = []
    for xx, hh, dd, ss in [(x, hx, dy, ds), (_strided(x, rng), strided_state(hx), _strided(dy, rng),
                                              strided_state(ds))]:
        y_inf, st_inf = layer(xx, hh)
        y, st, tape = layer.forward(xx, hh, train=True)
        dx, dhx, grads = layer.backward(tape, dd, ss)
        runs.append((y_inf, st_inf, y, st, dx, dhx, grads))
    for name, a, b in zip(("inference y", "inference state", "y", "state", "dx", "dhx", "grads"), *runs):
        if isinstance(a, dict):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{case} grads[{k}]")
        elif isinstance(a, tuple):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v, err_msg=f"{case} {name}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{case} {name}")


@pytest.mark.parametrize("variant", ["rnn_relu", "lstm_proj", "gru"])
def test_inputs_untouched_and_outputs_not_aliased(variant):
    dtype = np.float32
    case = Case.variant(variant, T=4, B=2, I=3, H=5)
    params = random_params(case, dtype, seed=4)
    data = random_data(case, dtype, seed=5)
    layer = fastrnn_layer(case, dtype, params)
    x = to_api_seq(case, data.x, dtype)
    hx = to_api_state(case, data.hx, dtype)
    dy = to_api_seq(case, data.dy, dtype)
    ds = to_api_state(case, data.dstate, dtype)
    keep = [a.copy() for a in (x, dy)]
    y, st, tape = layer.forward(x, hx, train=True)
    # the caller reuses its buffers before backward: the tape must not depend on them
    x_before = x.copy()
    x[...] = 7.0
    if isinstance(hx, tuple):
        for h in hx:
            h[...] = -3.0
    else:
        hx[...] = -3.0
    dx, dhx, grads = layer.backward(tape, dy, ds)
    want = reference_run(case, params, data)
    assert_close(from_api_seq(case, dx), want["dx"], dtype, case.depth, f"{case} dx after x reuse")
    assert_grads_close(grads, want["grads"], dtype, case.depth, f"{case} grads after x reuse")
    np.testing.assert_array_equal(dy, keep[1])
    # outputs never alias inputs
    x[...] = x_before
    y2, st2 = layer(x)
    for out in (y2, dx):
        assert not np.shares_memory(out, x) and not np.shares_memory(out, dy)
    # a second backward on the same tape gives the same gradients
    dx2, _, grads2 = layer.backward(tape, dy, ds)
    np.testing.assert_array_equal(dx2, dx)
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k])


# ---- the options (multi-layer, bidirectional, proj, lengths, dropout): separate tests ----------------------

@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("num_layers", [2, 3])
def test_multilayer(isa, dtype, variant, num_layers):
    check(Case.variant(variant, T=5, B=3, I=4, H=7, num_layers=num_layers), dtype)


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (6, 3, 5, 8)], ids=["T1_B1", "T6_B3"])
def test_bidirectional(isa, dtype, variant, shape):
    T, B, I, H = shape
    check(Case.variant(variant, T=T, B=B, I=I, H=H, bidirectional=True), dtype)


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("P,H", [(1, 2), (3, 8), (7, 8), (5, 17)])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_projection(isa, dtype, P, H, num_layers, bidirectional):
    check(Case(cell="lstm", T=5, B=3, I=4, H=H, proj_size=P, num_layers=num_layers,
               bidirectional=bidirectional), dtype)


LENGTHS = [(5, 1, 3), (1, 1, 1), (5, 5, 5), (2, 5, 4)]


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("lengths", LENGTHS, ids=["len" + "-".join(map(str, v)) for v in LENGTHS])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_lengths(isa, dtype, variant, lengths, bidirectional):
    case = Case.variant(variant, T=5, B=3, I=4, H=6, lengths=lengths, bidirectional=bidirectional)
    _, _, got = check(case, dtype)
    for b, n in enumerate(lengths):   # padded outputs are exactly zero, their dx too
        assert np.all(got["y"][n:, b] == 0) and np.all(got["infer_y"][n:, b] == 0)
        assert np.all(got["dx"][n:, b] == 0)


@pytest.mark.options
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_lengths_accepts_sequences_and_int_arrays(variant):
    case = Case.variant(variant, T=5, B=3, I=4, H=6, lengths=(4, 5, 2), bidirectional=True)
    layer = fastrnn_layer(case, np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    want, _ = layer(x, lengths=np.array([4, 5, 2], dtype=np.int64))
    for lengths in ([4, 5, 2], (4, 5, 2), np.array([4, 5, 2], dtype=np.int32),
                    np.array([4, 5, 2], dtype=np.uint8), [np.int64(4), 5, 2]):
        got, _ = layer(x, lengths=lengths)
        np.testing.assert_array_equal(got, want, err_msg=f"lengths given as {type(lengths).__name__}")
    full, _ = layer(x, lengths=[5, 5, 5])
    assert_close(full, layer(x)[0], np.float32, case.depth, "lengths all T vs no lengths")


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lengths_batch_first_multilayer(isa, dtype, variant):
    check(Case.variant(variant, T=6, B=4, I=3, H=5, lengths=(6, 2, 1, 4), num_layers=2, bidirectional=True,
                       batch_first=True, with_hx=False), dtype)


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_all_options_together(isa, dtype, variant):
    rng = np.random.default_rng(11)
    case = Case.variant(variant, T=6, B=5, I=5, H=9, num_layers=3, bidirectional=True, bias=False,
                        lengths=random_lengths(rng, 6, 5), proj_size=4)
    check(case, dtype)


# ---- dropout ---------------------------------------------------------------------------------------------

def _dropout_case(variant, **kw):
    opts = dict(T=6, B=4, I=5, H=16, num_layers=3, dropout=0.3)
    opts.update(kw)
    return Case.variant(variant, **opts)


@pytest.mark.options
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("opts", [dict(), dict(bidirectional=True, lengths=(6, 2, 5, 1)),
                                  dict(batch_first=True, num_layers=2)],
                         ids=["L3", "L3_bidir_lengths", "L2_batch_first"])
def test_dropout_training_matches_reference_with_tape_masks(isa, dtype, variant, opts):
    case = _dropout_case(variant, **opts)
    params = random_params(case, dtype, seed=21)
    data = random_data(case, dtype, seed=22)
    layer = fastrnn_layer(case, dtype, params, seed=1)
    got = fastrnn_run(case, layer, data, dtype)
    masks = got["tape"].masks
    assert len(masks) == case.num_layers - 1
    p = case.dropout
    for m in masks:
        m = np.asarray(m)
        assert m.shape == (case.T, case.B, case.D * case.P)
        scale = np.asarray(1.0 / (1.0 - p), dtype=dtype)
        assert np.all((m == 0) | (m == scale)), f"mask values {np.unique(m)}"
        frac = float(np.mean(m == 0))
        assert abs(frac - p) < 0.1, f"dropped fraction {frac:.3f}, expected about {p}"
    ref_masks = [np.asarray(m, dtype=np.float64) for m in masks]
    want = reference_run(case, params, data, masks=ref_masks)
    compare(case, dtype, got, want, masks_used=True)
    # inference applies no dropout
    want_inf = reference_run(case, params, data)
    assert_close(got["infer_y"], want_inf["y"], dtype, case.depth, f"{case} inference y", record=REC)
    assert_state_close(got["infer_state"], want_inf["state"], dtype, case.depth, f"{case} inference state")
    assert np.abs(got["y"] - want_inf["y"]).max() > 1e-3, "the training forward applied no dropout"


@pytest.mark.options
@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_dropout_masks_follow_seed(variant):
    dtype = np.float32
    case = _dropout_case(variant)
    data = random_data(case, dtype, seed=23)
    x = to_api_seq(case, data.x, dtype)
    a = fastrnn_layer(case, dtype, seed=1)
    b = fastrnn_layer(case, dtype, seed=1)
    c = fastrnn_layer(case, dtype, seed=2)
    ma = a.forward(x, train=True)[2].masks
    mb = b.forward(x, train=True)[2].masks
    mc = c.forward(x, train=True)[2].masks
    for u, v in zip(ma, mb):
        np.testing.assert_array_equal(u, v, err_msg="same seed, different dropout masks")
    assert any(not np.array_equal(u, v) for u, v in zip(ma, mc)), "different seeds, same dropout masks"
    # fresh masks on every training forward, as torch draws them
    ma2 = a.forward(x, train=True)[2].masks
    assert any(not np.array_equal(u, v) for u, v in zip(ma, ma2)), "two training forwards drew the same masks"


def test_dropout_from_constructor_lstm():
    """The exact form of the brief: fastrnn.LSTM(..., num_layers=2, dropout=0.3, seed=1)."""
    layer = fastrnn.LSTM(4, 8, num_layers=2, dropout=0.3, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    y, (h, c), tape = layer.forward(x, train=True)
    assert len(tape.masks) == 1 and np.asarray(tape.masks[0]).shape == (5, 3, 8)
    y_inf, _ = layer(x)
    y_inf2, _ = layer(x)
    np.testing.assert_array_equal(y_inf, y_inf2)   # inference is deterministic


def test_no_dropout_means_no_masks():
    layer = fastrnn.GRU(3, 4, num_layers=2, seed=0)
    tape = layer.forward(np.ones((2, 1, 3)), train=True)[2]
    assert not tape.masks


# ---- step ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_step_equals_sequence(isa, dtype, variant, num_layers, with_hx, unbatched):
    case = Case.variant(variant, T=5, B=1 if unbatched else 3, I=4, H=6, num_layers=num_layers,
                        with_hx=with_hx, unbatched=unbatched)
    params = random_params(case, dtype, seed=31)
    data = random_data(case, dtype, seed=32)
    layer = fastrnn_layer(case, dtype, params)
    x = to_api_seq(case, data.x, dtype)
    hx = to_api_state(case, data.hx, dtype)
    y, state = layer(x, hx)
    st = hx
    for t in range(case.T):
        y_t, st = layer.step(x[t], st)
        assert y_t.shape == y[t].shape, f"step y_t shape {y_t.shape}, expected {y[t].shape}"
        assert_close(y_t, y[t], dtype, case.depth, f"{case} step {t} y_t", record="step vs sequence")
    assert_state_close(st, state, dtype, case.depth, f"{case} step final state")
    _check_dtype(st, dtype, "step state")


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_step_sees_parameter_updates(cls):
    """Parameters updated in place (an optimiser's step) or reloaded are used by the next call: nothing
    derived from them (packed weights, memoised references) goes stale."""
    layer = cls(24, 40, num_layers=2, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 24)).astype(np.float32)
    y0, _ = layer.step(x)
    for name in layer.state_dict():
        getattr(layer, name)[...] *= 0.5  # in place
    y1, _ = layer.step(x)
    fresh = cls(24, 40, num_layers=2, seed=99)
    fresh.load_state_dict(layer.state_dict())
    want, _ = fresh(x[None])
    np.testing.assert_allclose(y1, want[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y0, y1)
    layer.load_state_dict(cls(24, 40, num_layers=2, seed=5).state_dict())
    y2, _ = layer.step(x)
    want2, _ = cls(24, 40, num_layers=2, seed=5)(x[None])
    np.testing.assert_allclose(y2, want2[0], rtol=1e-5, atol=1e-6)


def test_step_bidirectional_is_value_error():
    layer = fastrnn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(ValueError):
        layer.step(np.zeros((2, 3), np.float32))


# ---- API contract: parameters, floating-point mode, threads ----------------------------------------------

@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_parameters_init_attributes_and_state_dict_copies(name, dtype):
    cls = getattr(fastrnn, name)
    kw = dict(num_layers=2, bidirectional=True, dtype=dtype)
    if name == "LSTM":
        kw["proj_size"] = 3
    a, b, c = cls(5, 9, seed=7, **kw), cls(5, 9, seed=7, **kw), cls(5, 9, seed=8, **kw)
    sd = a.state_dict()
    case = Case(cell=name.lower(), I=5, H=9, num_layers=2, bidirectional=True,
                proj_size=3 if name == "LSTM" else 0)
    assert list(sd) == list(case.shapes()), "state_dict keys or their order differ from torch's"
    bound = 1 / np.sqrt(9)
    for k, v in sd.items():
        assert v.shape == case.shapes()[k] and v.dtype == np.dtype(dtype), k
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.5 * bound, f"{k}: not U(-1/sqrt(H), 1/sqrt(H))"
        np.testing.assert_array_equal(getattr(a, k), v, err_msg=f"attribute {k} != state_dict()[{k!r}]")
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=f"same seed, different {k}")
        assert not np.array_equal(c.state_dict()[k], v), f"different seeds, same {k}"
    # state_dict() returns copies
    sd["weight_hh_l0"][...] = 0
    assert np.abs(a.state_dict()["weight_hh_l0"]).max() > 0
    # load_state_dict copies too
    new = {k: v + 1 for k, v in a.state_dict().items()}
    a.load_state_dict(new)
    new["weight_ih_l0"][...] = 0
    np.testing.assert_array_equal(a.state_dict()["weight_ih_l0"], b.state_dict()["weight_ih_l0"] + 1)


def _denormals_work():
    return (np.float32(1e-38) * np.float32(1e-3) != 0) and (np.float64(1e-307) * 1e-5 != 0)


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_caller_floating_point_mode_is_restored(isa, variant):
    """The kernels flush denormals inside; the caller's mode (no FTZ/DAZ) must be restored on return."""
    assert _denormals_work()
    case = Case.variant(variant, T=4, B=3, I=5, H=8, num_layers=2)
    for dtype in DTYPES:
        layer = fastrnn_layer(case, dtype, seed=0)
        x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(dtype)
        y, st = layer(x)
        assert _denormals_work(), "inference forward left FTZ/DAZ set"
        y, st, tape = layer.forward(x, train=True)
        layer.backward(tape, np.ones_like(y))
        assert _denormals_work(), "training forward/backward left FTZ/DAZ set"


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_denormals_flushed_whatever_the_threads(isa, variant):
    """Denormals are flushed for the whole kernel call, not only inside parallel regions: with denormal
    inputs the gradients are the same on 1 and 2 threads (the small weight-gradient products run on the
    caller alone on 1 thread, side by side in a region on 2: fr_gemm_jobs)."""
    case = Case.variant(variant, T=20, B=1, I=64, H=128)
    x = np.full((20, 1, 64), 1e-39, np.float32)
    previous = fastrnn.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            layer = fastrnn_layer(case, np.float32, seed=0)
            y, st, tape = layer.forward(x, train=True)
            grads.append(layer.backward(tape, np.ones_like(y))[2])
    finally:
        fastrnn.set_num_threads(previous)
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)
    assert _denormals_work()


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_calls_from_python_threads(threads):
    """Layers are safe to call from many threads (README): same results as sequential calls."""
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        case = Case.variant("lstm", T=6, B=4, I=8, H=32, num_layers=2, bidirectional=True)
        layer = fastrnn_layer(case, np.float32, seed=0)
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((6, 4, 8)).astype(np.float32) for _ in range(6)]

        def run(x):
            y, st, tape = layer.forward(x, train=True)
            dx, dhx, grads = layer.backward(tape, np.ones_like(y))
            return y, dx, grads["weight_hh_l1_reverse"]

        want = [run(x) for x in xs]
        got = [None] * len(xs)
        start = threading.Barrier(len(xs))

        def worker(i):
            start.wait()
            for _ in range(3):
                got[i] = run(xs[i])

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for w, g in zip(want, got):
            for a, b in zip(w, g):
                np.testing.assert_array_equal(a, b)
    finally:
        fastrnn.set_num_threads(previous)
