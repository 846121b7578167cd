"""The kernels' own GEMM (csrc/gemm_kernel.h) against numpy, through the test hook _core.gemm, on every ISA:
all four transpositions, edge sizes around the register tiles (14x32 f32 on AVX-512, 6x16 / 6x8 on AVX2,
4x8 / 4x4 portable) and the cache blocks (KC 256-384, MC 120-364), leading dimensions larger than needed,
alpha/beta, 1 and 2 threads."""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import _core

DTYPES = [np.float32, np.float64]
# Normwise relative tolerance per dtype for sums over up to ~600 terms (the reference is float64).
TOL = {np.float32: 2e-5, np.float64: 1e-13}


def _operand(rng, rows, cols, dtype, pad):
    """A (rows, cols) array whose rows are `pad` elements longer than needed (leading dimension cols + pad),
    the padding NaN so that reading it shows."""
    full = np.full((rows, cols + pad), np.nan, dtype=dtype)
    full[:, :cols] = rng.standard_normal((rows, cols))
    return full[:, :cols]


def _check(isa, dtype, ta, tb, M, N, K, alpha=1.0, beta=0.0, pad=0, nthreads=1, seed=0):
    rng = np.random.default_rng(seed)
    A = _operand(rng, *((K, M) if ta else (M, K)), dtype, pad)
    B = _operand(rng, *((N, K) if tb else (K, N)), dtype, pad + 3 if pad else 0)
    C_full = np.full((M, N + pad), np.nan, dtype=dtype)  # NaN: beta == 0 must not read C
    C = C_full[:, :N]
    if beta != 0:
        C[...] = rng.standard_normal((M, N))
    C0 = C.astype(np.float64)
    _core.gemm(ta, tb, alpha, A, B, beta, C, nthreads)
    opA = (A.T if ta else A).astype(np.float64)
    opB = (B.T if tb else B).astype(np.float64)
    ref = alpha * (opA @ opB) + (beta * C0 if beta != 0 else 0)
    assert np.all(np.isfinite(C)), f"non-finite output ({isa}, {dtype.__name__}, ta={ta} tb={tb} {M}x{N}x{K})"
    scale = np.abs(alpha) * (np.abs(opA) @ np.abs(opB)).max() + (np.abs(beta) * np.abs(C0).max() if beta else 0)
    err = np.abs(C - ref).max() / scale
    assert err <= TOL[dtype], f"{isa} {dtype.__name__} ta={ta} tb={tb} {M}x{N}x{K}: rel err {err:.2e}"
    if pad:  # the padding of C is untouched
        assert np.all(np.isnan(C_full[:, N:]))


SIZES = [1, 7, 13, 17, 100, 257]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], [0, 1])))
def test_gemm_odd_sizes(isa, dtype, ta, tb):
    for M, N, K in itertools.product(SIZES, SIZES, [1, 13, 257]):
        _check(isa, dtype, ta, tb, M, N, K)


@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("beta,pad", [(0.0, 0), (1.0, 5)])
def test_gemm_avx512_tile_edges(isa, ta, tb, beta, pad):
    """f32 around the AVX-512 tile (14 x 32: masked write-back of 1-31 columns, 1-13 rows) and its packing
    (16 x 16 transposes: k and row remainders of 16), on every ISA since the sizes cost little."""
    for M, N, K in itertools.product([13, 14, 15, 29], [15, 16, 17, 31, 33, 65], [1, 15, 16, 17, 40]):
        _check(isa, np.float32, ta, tb, M, N, K, beta=beta, pad=pad)
    # past KC (384) and MC (364) with a partial tile at each end
    _check(isa, np.float32, ta, tb, 743, 47, 801, beta=beta, pad=pad)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (-0.5, 0.0), (2.5, 1.0), (0.75, -1.5)])
@pytest.mark.parametrize("pad", [0, 5])
def test_gemm_alpha_beta_ld(isa, dtype, ta, tb, alpha, beta, pad):
    for M, N, K in [(7, 17, 13), (37, 45, 300), (100, 33, 520)]:
        _check(isa, dtype, ta, tb, M, N, K, alpha=alpha, beta=beta, pad=pad)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("nthreads", [1, 2, -2])
def test_gemm_blocks_and_threads(isa, dtype, ta, tb, nthreads):
    """Past the cache blocks (several MC, KC blocks) and over threads: chunked along M or along N (2), or
    sharing each packed block of B, with rows taken MR at a time (-2)."""
    for M, N, K, beta in [(257, 100, 600, 0.0), (100, 257, 300, 1.0), (500, 31, 257, 1.0), (13, 700, 64, 0.0),
                          (2, 2, 5, 1.0), (1, 1, 1, 0.0), (20, 300, 1000, 1.0), (32, 45, 390, 0.0), (16, 29, 41, 1.0)]:
        _check(isa, dtype, ta, tb, M, N, K, alpha=1.5, beta=beta, pad=3, nthreads=nthreads, seed=M + N + K)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("alpha,beta,pad", [(1.0, 0.0, 0), (1.0, 1.0, 3), (-0.5, 2.0, 5)])
def test_gemm_thin(isa, dtype, ta, tb, alpha, beta, pad):
    """The thin products without packing (gk_thin: K <= 4, or M <= 4 with op(B) = B) and just past them
    (K, M = 5: packed), C's columns across GK_THIN_NB = 256 (255, 256, 257, 600), 1 thread and 2."""
    for M, N, K in itertools.product([1, 3, 4, 5, 70], [1, 17, 255, 256, 257, 600], [1, 2, 4, 5, 300]):
        if M > 5 and K > 5:
            continue  # not thin
        for nthreads in (1, 2):
            _check(isa, dtype, ta, tb, M, N, K, alpha=alpha, beta=beta, pad=pad, nthreads=nthreads,
                   seed=M * 1000 + N + K)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("nthreads", [1, 2, -2])
def test_gemm_large(isa, dtype, nthreads):
    """The cells' typical product dW = dG^T X across several NC blocks (f64 NC 1536) and the automatic
    thread choice (nthreads = 0): chunks for a narrow C, the shared B block when M and N are both large."""
    _check(isa, dtype, 1, 0, 300, 3100 if dtype == np.float64 else 700, 400, beta=1.0, nthreads=nthreads)
    _check(isa, dtype, 0, 0, 1600, 64, 512, nthreads=0)
    _check(isa, dtype, 1, 0, 520, 300, 900, beta=1.0, nthreads=0)
    _check(isa, dtype, 0, 1, 300, 3100 if dtype == np.float64 else 3500, 500, nthreads=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gemm_k_zero_and_alpha_zero(isa, dtype):
    """K = 0 or alpha = 0: C = beta C, without reading C when beta == 0 (BLAS semantics)."""
    for K, alpha in [(0, 1.0), (5, 0.0)]:
        for beta in (0.0, 2.0):
            A = np.ones((4, K), dtype)
            B = np.ones((K, 3), dtype)
            C = np.full((4, 3), np.nan if beta == 0 else 1.5, dtype)
            _core.gemm(0, 0, alpha, A, B, beta, C, 1)
            np.testing.assert_array_equal(C, np.full((4, 3), 0.0 if beta == 0 else 3.0, dtype))


def test_gemm_nan_propagates(isa):
    """NaN in an operand reaches the output (no -ffast-math in the kernel)."""
    A = np.ones((7, 9), np.float32)
    A[3, 4] = np.nan
    B = np.ones((9, 20), np.float32)
    C = np.zeros((7, 20), np.float32)
    _core.gemm(0, 0, 1.0, A, B, 0.0, C, 1)
    assert np.all(np.isnan(C[3])) and np.all(np.isfinite(np.delete(C, 3, axis=0)))


def test_gemm_bad_arguments():
    A = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError):
        _core.gemm(0, 0, 1.0, A, np.ones((5, 2), np.float32), 0.0, np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError):
        _core.gemm(0, 0, 1.0, A, np.ones((4, 2), np.float64), 0.0, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError):
        _core.gemm(0, 0, 1.0, A[:, ::2], np.ones((2, 2), np.float32), 0.0, np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_nn_matmul_matches_numpy(dtype, ta, tb):
    """fastrnn.nn.linalg.matmul (what Dense runs on): op(a) @ op(b) on the kernels' GEMM, into a fresh array
    or `out`, also for column slices and non-contiguous inputs; other dtypes and empty shapes go to numpy."""
    from fastrnn.nn.linalg import matmul
    rng = np.random.default_rng(3)
    for M, K, N in [(4096, 64, 100), (3, 5, 7), (1, 1, 1), (0, 3, 4), (5, 0, 2), (37, 129, 33)]:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        tol = (1e-5 if dtype == np.float32 else 1e-13) * max(K, 1) ** 0.5 * max(1.0, np.abs(want).max(initial=0))
        got = matmul(a, b, ta, tb)
        assert got.shape == (M, N) and got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        out = np.full((M, N), np.nan, dtype)
        assert matmul(a, b, ta, tb, out=out) is out
        np.testing.assert_allclose(out, want, rtol=0, atol=tol)
        wide = np.repeat(a, 2, axis=1)[:, ::2]   # every other column: rows not contiguous
        np.testing.assert_allclose(matmul(wide, b, ta, tb), want, rtol=0, atol=tol)
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(matmul(ints, ints, trans_b=True), ints @ ints.T)
    with pytest.raises(ValueError, match="out has shape"):
        matmul(np.ones((2, 3), dtype), np.ones((3, 4), dtype), out=np.empty((2, 5), dtype))
