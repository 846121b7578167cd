/*
 * gemm_kernel.h -- fastrnn's own row-major GEMM, C (M, N) = alpha op(A) op(B) + beta C, for the cells' large
 * products after the time loop (dW = dG^T X, dx = dG W) and rnn.c's input projection.
 *
 * Included by instance.h once per dtype and ISA, after common.h and before the cells, so the AVX2 instances
 * compile it with their avx2+fma target and the f32 AVX-512 instance with its avx512 one (a 14x32 zmm
 * microkernel and packing of its own).  The cells reach it through common.h's fr_gemm macro; the BLAS
 * path of gemm.c stays available (FASTRNN_GEMM=blas, fr_gemm_set_backend) to compare and as a fallback.
 *
 * Why not the BLAS: OpenBLAS's own threads are pathological on the project's 2-vCPU VMs (a 0.37 ms RNN
 * training step takes 5-8 ms with its default 2 threads when another process is busy), and its 2-thread
 * sgemm is slower than its 1-thread one on large products.  Here the threads are the kernels' own pool.
 *
 * Design, after Goto and BLIS:
 *   for jc over N in NC columns                    (the packed B block, KC x NC, lives in L3)
 *     for pc over K in KC                          (beta applies on the first pc only, then 1)
 *       pack op(B)[pc.., jc..] into NR-column micro-panels: Bp[q][k][0..NR)
 *       for ic over M in MC rows                   (the packed A block, MC x KC, lives in L2)
 *         pack op(A)[ic.., pc..] into MR-row micro-panels: Ap[p][k][0..MR)
 *         for jr over NR-wide panels of the block  (one B micro-panel, KC x NR, stays in L1 ...)
 *           for ir over MR-high panels             (... while the A micro-panels stream from L2)
 *             microkernel: an MR x NR tile of C in registers, KC rank-1 updates, then C = alpha*acc + beta*C
 * The transpositions are handled by the packing only, so the microkernel sees one layout for all four
 * combinations and any lda / ldb / ldc.  Packing pads the edge panels with zeros, so the microkernel always
 * runs full tiles; only the write-back of an edge tile is partial.
 *
 * Threads: when M and N are both large, every packed block of B is shared (gk_shared_task: the threads pack
 * it together, then take rows of C from a shared position; two barriers a block).  Otherwise chunks of C
 * along M or N (the larger) handed out dynamically (gk_task), each thread running the whole blocked
 * algorithm on a chunk with its own packing buffers: no barrier.  Small products stay on the calling
 * thread (the hand-over costs several microseconds on these VMs).  C = A B^T with 16 to 32 rows runs
 * transposed, B read in place (gk_small_m).
 */
#ifndef FR_GEMM_INSTANCE
#define FR_GEMM_INSTANCE

#include "threads.h"

#if FR_AVX2
#include <immintrin.h>
#endif

/* ---- register tile and cache blocks ------------------------------------------------------------------
 * MR x NR accumulators: with AVX2, 6 rows x 2 vectors = 12 of the 16 ymm registers, plus 2 for the B row
 * and 1 for the broadcast A element.  KC: a B micro-panel (KC x NR) is 16 KB, half the 32 KB L1d.
 * MC: the A block (MC x KC) is ~240 KB, under half the 512 KB L2.  NC: the B block stays far below L3.
 *
 * AVX-512 (f32 only; the avx512 instance also sets FR_AVX2, so it comes first): 14 rows x 2 zmm vectors =
 * 28 of the 32 zmm registers, plus 2 for the B row and 1 for the broadcast.  Measurements (and
 * the sizes of MC and NC): docs/tuning.md, GEMM register tile and cache blocks. */
#if FR_AVX512 && !FR_DOUBLE
#ifndef GK_MR
#define GK_MR 14 /* or 12 (gk_micro has both), to compare */
#endif
#define GK_NR 32
#ifndef GK_KC
#define GK_KC 384
#endif
#ifndef GK_MC
#define GK_MC 364 /* a multiple of MR */
#endif
#ifndef GK_NC
#define GK_NC 3072
#endif
#elif FR_SIMD
#define GK_MR 6
#define GK_NR 16
#ifndef GK_KC
#define GK_KC 256
#endif
#ifndef GK_MC
#define GK_MC 240
#endif
#define GK_NC 3072
#elif FR_AVX2 && FR_DOUBLE
#define GK_MR 6
#define GK_NR 8
#define GK_KC 256
#define GK_MC 120
#define GK_NC 1536
#elif FR_DOUBLE
/* portable: SSE2 holds 2 doubles; 4 x 4 = 8 of the 16 xmm registers */
#define GK_MR 4
#define GK_NR 4
#define GK_KC 256
#define GK_MC 128
#define GK_NC 1536
#else
/* portable: 4 x 8 floats = 8 xmm accumulators */
#define GK_MR 4
#define GK_NR 8
#define GK_KC 256
#define GK_MC 240
#define GK_NC 3072
#endif

/* Products of fewer flops (2MNK) than this run on one thread.  Measurements: docs/tuning.md, GEMM
 * thresholds: threads. */
#ifndef GK_PAR_FLOPS
#define GK_PAR_FLOPS 2.0e7
#endif

static inline int gk_min(int a, int b) { return a < b ? a : b; }

/* ---- packing ------------------------------------------------------------------------------------------ */

#if FR_AVX512 && !FR_DOUBLE
/* The first n lanes (n clamped to 0 .. 16).  Masked loads do not fault on the lanes left out, so edge rows
 * and columns read nothing past the operand. */
static inline __mmask16 gk_mask16(int n) {
    return n <= 0 ? (__mmask16)0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* dst[j*dld + i] = src[i*ld + j] for i < rows, j < kb (both <= 16): a 16 x 16 block of src, its rows past
 * rows taken as zero, transposed in registers; output row j is written in the lanes of wmask (the panel
 * width, MR or 16), so the rows past `rows` become the zero padding of an edge panel.  The loops have
 * constant bounds and are unrolled, so the arrays stay in zmm registers. */
static inline void gk_tr16(const float *src, size_t ld, int rows, int kb, /* (rows, ld) */
                           float *dst, int dld, __mmask16 wmask)          /* (kb, dld) out */
{
    __mmask16 km = gk_mask16(kb);
    __m512 r[16], t[16], u[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_ps(km, src + i * ld) : _mm512_setzero_ps();
    /* in each 128-bit lane: interleave row pairs, then row quads: u[4q + j] lane L holds column 4L + j of
     * rows 4q .. 4q+3 */
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        u[i + 0] = _mm512_shuffle_ps(t[i + 0], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i + 0], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    /* then gather lane L of u[j], u[4+j], u[8+j], u[12+j]: column 4L + j, all 16 rows */
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m512 x0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), x1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        __m512 y0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88), y1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_f32x4(x0, y0, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(x1, y1, 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
        r[12 + j] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
    }
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++)
        if (j < kb) _mm512_mask_storeu_ps(dst + (size_t)j * dld, wmask, r[j]);
}
#endif

/* Ap (ceil(mc/MR) panels, kc, MR) <- op(A)[i0 .. i0+mc)[k0 .. k0+kc), zero rows past mc.
 * op(A)[i][k] is A[i*lda + k], or A[k*lda + i] when trans_a.  Ap has GK_MR*GK_MR elements of slack at its
 * end (gk_abuf_len): the AVX2 path stores whole vectors whose tail the next store overwrites. */
static void gk_pack_a(int trans_a, const real *A, int lda, /* (M, lda) or (K, lda) when trans_a */
                      int i0, int k0, int mc, int kc,
                      real *restrict Ap)                   /* (ceil(mc/MR)*MR*kc) out */
{
#if FR_AVX512 && !FR_DOUBLE
    /* AVX-512: every panel, the edge one included, through masked loads (zeros past mc) and stores of MR
     * lanes, so no slack is written */
    if (trans_a) {
        /* a panel row is MR consecutive elements of one row of A: one masked load and store.  A few rows
         * of A at a time across all panels, as in the generic path below (walking one panel down all kc
         * rows thrashes L1 sets with the cells' power-of-two lda) */
        enum { KB = 8 };
        for (int k = 0; k < kc; k += KB) {
            int kb = gk_min(KB, kc - k);
            const real *src = A + (size_t)(k0 + k) * lda + i0; /* (kb, lda) */
            for (int p = 0; p < mc; p += GK_MR) {
                __mmask16 in = gk_mask16(mc - p);
                real *dst = Ap + (size_t)p * kc + (size_t)k * GK_MR; /* (kb, MR) */
                for (int kk = 0; kk < kb; kk++)
                    _mm512_mask_storeu_ps(dst + kk * GK_MR, gk_mask16(GK_MR),
                                          _mm512_maskz_loadu_ps(in, src + (size_t)kk * lda + p));
            }
        }
    } else {
        /* a panel is MR rows of A: 16 k at a time through a 16 x 16 register transpose */
        for (int p = 0; p < mc; p += GK_MR) {
            const real *src = A + (size_t)(i0 + p) * lda + k0; /* (mr, lda) */
            real *dst = Ap + (size_t)p * kc;                   /* (kc, MR) */
            for (int k = 0; k < kc; k += 16)
                gk_tr16(src + k, lda, gk_min(GK_MR, mc - p), gk_min(16, kc - k), dst + (size_t)k * GK_MR, GK_MR,
                        gk_mask16(GK_MR));
        }
    }
    return;
#endif
    int full = mc / GK_MR * GK_MR; /* rows in full panels */
    if (trans_a) {
        /* A panel row is MR consecutive elements of one row of A.  A few rows of A at a time, across all
         * panels: the rows are read straight through (with the power-of-two lda the cells have, walking
         * one panel down all kc rows would thrash a few L1 sets: 0.9 ns per element, as slow as the
         * microkernel when N is 64) and each panel gets a contiguous run of kb*MR. */
        enum { KB = 8 };
        for (int k = 0; k < kc; k += KB) {
            int kb = gk_min(KB, kc - k);
            const real *src = A + (size_t)(k0 + k) * lda + i0; /* (kb, lda) */
            for (int p = 0; p < full; p += GK_MR) {
                real *dst = Ap + (size_t)p * kc + (size_t)k * GK_MR; /* (kb, MR) */
                for (int kk = 0; kk < kb; kk++)
                    for (int r = 0; r < GK_MR; r++) dst[kk * GK_MR + r] = src[(size_t)kk * lda + p + r];
            }
        }
    } else {
        /* A panel is MR rows of A, each read contiguously; written interleaved */
        int p = 0;
#if FR_SIMD && GK_MR == 6
        /* 8 k at a time: the 6 x 8 block through an 8 x 8 register transpose, then 8 stores of 6 floats
         * (whole vectors; the next store, or the slack, takes the 2 extra) */
        for (; p < full; p += GK_MR) {
            const real *src = A + (size_t)(i0 + p) * lda + k0; /* (MR, lda) */
            real *dst = Ap + (size_t)p * kc;                   /* (kc, MR) */
            int k = 0;
            for (; k + 8 <= kc; k += 8) {
                __m256 r[8], c[8];
                for (int v = 0; v < 6; v++) r[v] = _mm256_loadu_ps(src + (size_t)v * lda + k);
                r[6] = r[7] = _mm256_setzero_ps();
                vm_transpose8(r, c);
                /* column j of the 8 x 8 block (rows 0-5 valid) */
                real *d = dst + (size_t)k * GK_MR;
                for (int q = 0; q < 8; q++) _mm256_storeu_ps(d + q * GK_MR, c[q]);
            }
            for (; k < kc; k++)
                for (int r = 0; r < GK_MR; r++) dst[(size_t)k * GK_MR + r] = src[(size_t)r * lda + k];
        }
#endif
        for (; p < full; p += GK_MR) {
            const real *src = A + (size_t)(i0 + p) * lda + k0; /* (MR, lda) */
            real *dst = Ap + (size_t)p * kc;                   /* (kc, MR) */
            for (int k = 0; k < kc; k++)
                for (int r = 0; r < GK_MR; r++) dst[(size_t)k * GK_MR + r] = src[(size_t)r * lda + k];
        }
    }
    if (full < mc) { /* the edge panel, zero-padded */
        int mr = mc - full;
        real *dst = Ap + (size_t)full * kc; /* (kc, MR) */
        for (int k = 0; k < kc; k++, dst += GK_MR) {
            int r = 0;
            for (; r < mr; r++)
                dst[r] = trans_a ? A[(size_t)(k0 + k) * lda + i0 + full + r] : A[(size_t)(i0 + full + r) * lda + k0 + k];
            for (; r < GK_MR; r++) dst[r] = 0;
        }
    }
}

/* Bp (ceil(nc/NR) panels, kc, NR) <- op(B)[k0 .. k0+kc)[j0 .. j0+nc), zero columns past nc.
 * op(B)[k][j] is B[k*ldb + j], or B[j*ldb + k] when trans_b. */
static void gk_pack_b(int trans_b, const real *B, int ldb, /* (K, ldb) or (N, ldb) when trans_b */
                      int k0, int j0, int kc, int nc,
                      real *restrict Bp)                   /* (ceil(nc/NR)*NR*kc) out */
{
#if FR_AVX512 && !FR_DOUBLE
    /* AVX-512 (NR = 32, two vectors): masked loads give the edge panel's zero columns */
    for (int q = 0; q < nc; q += GK_NR) {
        int nr = gk_min(GK_NR, nc - q);
        real *dst = Bp + (size_t)q * kc; /* (kc, NR) this panel, 64-byte aligned */
        if (!trans_b) {
            const real *src = B + (size_t)k0 * ldb + j0 + q; /* (kc, ldb) */
            __mmask16 m0 = gk_mask16(nr), m1 = gk_mask16(nr - 16);
            for (int k = 0; k < kc; k++, src += ldb, dst += GK_NR) {
                _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m0, src));
                _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(m1, src + 16));
            }
        } else {
            /* the panel is nr rows of B read along k: each half (16 columns of the panel) 16 k at a time
             * through a 16 x 16 register transpose; a half past nr is all zero rows */
            for (int h = 0; h < GK_NR; h += 16) {
                const real *src = B + (size_t)(j0 + q + h) * ldb + k0; /* (nr - h, ldb) */
                int rows = nr - h < 0 ? 0 : gk_min(16, nr - h);
                for (int k = 0; k < kc; k += 16)
                    gk_tr16(src + k, ldb, rows, gk_min(16, kc - k), dst + (size_t)k * GK_NR + h, GK_NR, 0xFFFF);
            }
        }
    }
    return;
#endif
    for (int q = 0; q < nc; q += GK_NR) {
        int nr = gk_min(GK_NR, nc - q);
        real *dst = Bp + (size_t)q * kc; /* (kc, NR) this panel */
        if (!trans_b) {
            const real *src = B + (size_t)k0 * ldb + j0 + q; /* (kc, ldb) */
            if (nr == GK_NR) {
                for (int k = 0; k < kc; k++, src += ldb, dst += GK_NR) memcpy(dst, src, sizeof(real) * GK_NR);
            } else {
                for (int k = 0; k < kc; k++, src += ldb, dst += GK_NR) {
                    int c = 0;
                    for (; c < nr; c++) dst[c] = src[c];
                    for (; c < GK_NR; c++) dst[c] = 0;
                }
            }
        } else {
            const real *src = B + (size_t)(j0 + q) * ldb + k0; /* (nr, ldb) */
            if (nr == GK_NR) {
                for (int k = 0; k < kc; k++, dst += GK_NR)
                    for (int c = 0; c < GK_NR; c++) dst[c] = src[(size_t)c * ldb + k];
            } else {
                for (int k = 0; k < kc; k++, dst += GK_NR) {
                    int c = 0;
                    for (; c < nr; c++) dst[c] = src[(size_t)c * ldb + k];
                    for (; c < GK_NR; c++) dst[c] = 0;
                }
            }
        }
    }
}

/* ---- write-back of one tile --------------------------------------------------------------------------- */

/* C[0..mr)[0..nr) = alpha * t + beta * C, t a full (MR, NR) tile; C is not read when beta == 0 (it may hold
 * NaN garbage then). */
static void gk_store_edge(int mr, int nr, const real *t, /* (MR, NR) */
                          real alpha, real beta, real *C, int ldc) /* (mr, ldc) */
{
    for (int i = 0; i < mr; i++) {
        real *c = C + (size_t)i * ldc;
        const real *s = t + i * GK_NR;
        if (beta == 0)
            for (int j = 0; j < nr; j++) c[j] = alpha * s[j];
        else
            for (int j = 0; j < nr; j++) c[j] = alpha * s[j] + beta * c[j];
    }
}

/* ---- microkernels ------------------------------------------------------------------------------------- */

#if FR_AVX512 && !FR_DOUBLE

/* AVX-512: MR rows x 2 zmm vectors (NR = 32).  The tile is listed once, in GK_ROWS, and every per-row step
 * is a macro over it: the accumulators are named variables c<r>_0, c<r>_1, not an array (GCC spilled
 * accumulator arrays to the stack in this project before, see csrc/gen/gen_tiles.py).  Per k: 2 loads of the B row,
 * MR broadcasts of A (vbroadcastss from memory is a plain load, no shuffle port) and 2 MR FMAs: 16 loads
 * for 28 FMAs, so the two FMA ports stay the limit, and GCC keeps all 28 accumulators, the B row and one
 * broadcast register in the 32 zmm registers (no spill in the k loop). */
#if GK_MR == 12
#define GK_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#elif GK_MR == 14
#define GK_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#else
#error "the AVX-512 microkernel is written for 12 or 14 rows x 2 vectors"
#endif
#if GK_NR != 32
#error "the AVX-512 microkernel is written for NR = 32 (2 vectors)"
#endif

/* Row r of the tile's rank-1 update at one k: accumulators c<r>_0, c<r>_1 += x * (b0, b1). */
#define GK_FMA_ROW(r, x)                                                                                   \
    {                                                                                                      \
        __m512 xr = _mm512_set1_ps(x);                                                                     \
        c##r##_0 = _mm512_fmadd_ps(xr, b0, c##r##_0);                                                      \
        c##r##_1 = _mm512_fmadd_ps(xr, b1, c##r##_1);                                                      \
    }

/* C (mr x nr of an MR x NR tile) = alpha * Ap Bp + beta * C over kc; the edge tiles' write-back is masked
 * (columns) and skips rows past mr. */
static void gk_micro(int kc, const real *restrict a, /* (kc, MR) packed */
                     const real *restrict b,         /* (kc, NR) packed, 64-byte aligned */
                     real alpha, real beta, real *C, int ldc, /* (mr, ldc) */
                     int mr, int nr)
{
    /* The tile of C is read (or written) only after the k loop: ask for its lines now (a row is 128 bytes,
     * three lines when unaligned). */
    for (int r = 0; r < mr; r++) {
        const char *cr = (const char *)(C + (size_t)r * ldc);
        _mm_prefetch(cr, _MM_HINT_T0);
        _mm_prefetch(cr + 64, _MM_HINT_T0);
        _mm_prefetch(cr + 4 * GK_NR - 1, _MM_HINT_T0);
    }
#define GK_DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
    GK_ROWS(GK_DECL)
#undef GK_DECL
#define GK_RANK1(r) GK_FMA_ROW(r, a[r])
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        GK_ROWS(GK_RANK1)
        a += GK_MR;
        b += GK_NR;
    }
#undef GK_RANK1
    /* write-back: columns through masks (all lanes on full tiles), rows past mr skipped; with beta == 0
     * C is not read */
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m0 = gk_mask16(nr), m1 = gk_mask16(nr - 16);
#define GK_ROW(r)                                                                                          \
    if ((r) < mr) {                                                                                        \
        real *cr = C + (size_t)(r) * ldc;                                                                  \
        __m512 v0 = _mm512_mul_ps(va, c##r##_0), v1 = _mm512_mul_ps(va, c##r##_1);                         \
        if (beta != 0) {                                                                                   \
            v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), v0);                                   \
            v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), v1);                              \
        }                                                                                                  \
        _mm512_mask_storeu_ps(cr, m0, v0);                                                                 \
        _mm512_mask_storeu_ps(cr + 16, m1, v1);                                                            \
    }
    GK_ROWS(GK_ROW)
#undef GK_ROW
}
/* C (mr x nw, mr <= NR) = alpha * X W^T + beta * C over kc, for C with few rows (gk_small_m): the tile is
 * transposed -- nw <= MR rows of W (row stride ldw, read where they are, k along each) times the packed X^T
 * panel (kc, NR) -- so W is streamed once and never packed: for C of a few rows (a single time step's
 * input projection: 32 rows against 1536 of W), packing W cost more than the product, and MR rows of C
 * left the microkernel's last tile mostly padding.  Rows of W past nw repeat the last one (never out of
 * bounds); their sums are dropped. */
static void gk_micro_wt(int kc, const real *w, int ldw, int nw, /* (nw, ldw >= kc) */
                        const real *restrict b,                 /* (kc, NR) packed X^T, 64-byte aligned */
                        real alpha, real beta, real *C, int ldc, /* (mr, ldc) */
                        int mr)
{
#define GK_DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps(); \
    const real *w##r = w + (size_t)((r) < nw ? (r) : nw - 1) * ldw;
    GK_ROWS(GK_DECL)
#undef GK_DECL
#define GK_RANK1(r) GK_FMA_ROW(r, w##r[k])
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        GK_ROWS(GK_RANK1)
        b += GK_NR;
    }
#undef GK_RANK1
    real t[GK_MR * GK_NR] __attribute__((aligned(64))); /* (MR, NR): row r of W, column i of C's rows */
#define GK_PUT(r)                                                                                          \
    _mm512_store_ps(t + (r) * GK_NR, c##r##_0);                                                            \
    _mm512_store_ps(t + (r) * GK_NR + 16, c##r##_1);
    GK_ROWS(GK_PUT)
#undef GK_PUT
    for (int i = 0; i < mr; i++) {
        real *c = C + (size_t)i * ldc;
        if (beta == 0)
            for (int r = 0; r < nw; r++) c[r] = alpha * t[r * GK_NR + i];
        else
            for (int r = 0; r < nw; r++) c[r] = alpha * t[r * GK_NR + i] + beta * c[r];
    }
}
#undef GK_FMA_ROW
#define GK_HAVE_SMALL_M 1
#undef GK_ROWS

#elif FR_AVX2
#if FR_DOUBLE
typedef __m256d gk_vec;
#define GK_VL 4
#define GK_ZERO() _mm256_setzero_pd()
#define GK_LOAD(p) _mm256_load_pd(p)   /* packed panels: 64-byte aligned rows */
#define GK_LOADU(p) _mm256_loadu_pd(p)
#define GK_STOREU(p, v) _mm256_storeu_pd(p, v)
#define GK_BCAST(p) _mm256_broadcast_sd(p)
#define GK_SET1(x) _mm256_set1_pd(x)
#define GK_FMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define GK_MUL(a, b) _mm256_mul_pd(a, b)
#else
typedef __m256 gk_vec;
#define GK_VL 8
#define GK_ZERO() _mm256_setzero_ps()
#define GK_LOAD(p) _mm256_load_ps(p)
#define GK_LOADU(p) _mm256_loadu_ps(p)
#define GK_STOREU(p, v) _mm256_storeu_ps(p, v)
#define GK_BCAST(p) _mm256_broadcast_ss(p)
#define GK_SET1(x) _mm256_set1_ps(x)
#define GK_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define GK_MUL(a, b) _mm256_mul_ps(a, b)
#endif

#if GK_NR != 2 * GK_VL || GK_MR != 6
#error "the AVX2 microkernel is written for 6 rows x 2 vectors"
#endif

/* C (MR x NR tile) = alpha * Ap Bp + beta * C over kc.  The 12 accumulators are named variables, not an
 * array: GCC spilled accumulator arrays to the stack in this project before (see csrc/gen/gen_tiles.py). */
static void gk_micro(int kc, const real *restrict a, /* (kc, MR) packed */
                     const real *restrict b,         /* (kc, NR) packed, 64-byte aligned */
                     real alpha, real beta, real *C, int ldc, /* (mr, ldc) */
                     int mr, int nr)
{
    /* The tile of C is read (or written) only after the k loop: ask for its lines now, so that the loads
     * of a C larger than the caches do not stall the write-back (each row is 64 bytes, two lines when
     * unaligned). */
    for (int r = 0; r < mr; r++) {
        _mm_prefetch((const char *)(C + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + (size_t)r * ldc + GK_NR - 1), _MM_HINT_T0);
    }
    gk_vec c00 = GK_ZERO(), c01 = GK_ZERO(), c10 = GK_ZERO(), c11 = GK_ZERO();
    gk_vec c20 = GK_ZERO(), c21 = GK_ZERO(), c30 = GK_ZERO(), c31 = GK_ZERO();
    gk_vec c40 = GK_ZERO(), c41 = GK_ZERO(), c50 = GK_ZERO(), c51 = GK_ZERO();
#define GK_RANK1(r, v0, v1)                                                                                \
    do {                                                                                                   \
        gk_vec ar = GK_BCAST(a + (r));                                                                     \
        v0 = GK_FMA(ar, b0, v0);                                                                           \
        v1 = GK_FMA(ar, b1, v1);                                                                           \
    } while (0)
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        gk_vec b0 = GK_LOAD(b), b1 = GK_LOAD(b + GK_VL);
        GK_RANK1(0, c00, c01);
        GK_RANK1(1, c10, c11);
        GK_RANK1(2, c20, c21);
        GK_RANK1(3, c30, c31);
        GK_RANK1(4, c40, c41);
        GK_RANK1(5, c50, c51);
        a += GK_MR;
        b += GK_NR;
    }
#undef GK_RANK1
    gk_vec va = GK_SET1(alpha);
    if (mr == GK_MR && nr == GK_NR) {
        /* full tile: straight into C */
#define GK_ROW(r, v0, v1)                                                                                  \
    do {                                                                                                   \
        real *cr = C + (size_t)(r) * ldc;                                                                  \
        if (beta == 0) {                                                                                   \
            GK_STOREU(cr, GK_MUL(va, v0));                                                                 \
            GK_STOREU(cr + GK_VL, GK_MUL(va, v1));                                                         \
        } else {                                                                                           \
            gk_vec vb = GK_SET1(beta);                                                                     \
            GK_STOREU(cr, GK_FMA(vb, GK_LOADU(cr), GK_MUL(va, v0)));                                       \
            GK_STOREU(cr + GK_VL, GK_FMA(vb, GK_LOADU(cr + GK_VL), GK_MUL(va, v1)));                       \
        }                                                                                                  \
    } while (0)
        GK_ROW(0, c00, c01);
        GK_ROW(1, c10, c11);
        GK_ROW(2, c20, c21);
        GK_ROW(3, c30, c31);
        GK_ROW(4, c40, c41);
        GK_ROW(5, c50, c51);
#undef GK_ROW
    } else {
        /* edge tile: through a buffer, only the valid part written */
        real t[GK_MR * GK_NR] __attribute__((aligned(64)));
        GK_STOREU(t + 0 * GK_NR, c00), GK_STOREU(t + 0 * GK_NR + GK_VL, c01);
        GK_STOREU(t + 1 * GK_NR, c10), GK_STOREU(t + 1 * GK_NR + GK_VL, c11);
        GK_STOREU(t + 2 * GK_NR, c20), GK_STOREU(t + 2 * GK_NR + GK_VL, c21);
        GK_STOREU(t + 3 * GK_NR, c30), GK_STOREU(t + 3 * GK_NR + GK_VL, c31);
        GK_STOREU(t + 4 * GK_NR, c40), GK_STOREU(t + 4 * GK_NR + GK_VL, c41);
        GK_STOREU(t + 5 * GK_NR, c50), GK_STOREU(t + 5 * GK_NR + GK_VL, c51);
        gk_store_edge(mr, nr, t, alpha, beta, C, ldc);
    }
}

#else /* portable */

/* Plain loops over a small accumulator array; GCC vectorises the j loops with SSE2. */
static void gk_micro(int kc, const real *restrict a, /* (kc, MR) packed */
                     const real *restrict b,         /* (kc, NR) packed */
                     real alpha, real beta, real *C, int ldc, /* (mr, ldc) */
                     int mr, int nr)
{
    real t[GK_MR * GK_NR] __attribute__((aligned(64)));
    for (int i = 0; i < GK_MR * GK_NR; i++) t[i] = 0;
    for (int k = 0; k < kc; k++, a += GK_MR, b += GK_NR)
        for (int i = 0; i < GK_MR; i++) {
            real ai = a[i];
            for (int j = 0; j < GK_NR; j++) t[i * GK_NR + j] += ai * b[j];
        }
    gk_store_edge(mr, nr, t, alpha, beta, C, ldc);
}

#endif

/* ---- the blocked algorithm on one thread -------------------------------------------------------------- */

typedef struct gk_problem {
    int trans_a, trans_b, M, N, K;
    real alpha, beta;
    const real *A; /* (M, lda) or (K, lda) when trans_a */
    const real *B; /* (K, ldb) or (N, ldb) when trans_b */
    real *C;       /* (M, ldc) */
    int lda, ldb, ldc;
    /* The interrupt flag when the calling thread armed interrupts (threads.h), else NULL: an interrupted
     * product stops between K blocks, its C then meaningless (the binding raises KeyboardInterrupt). */
    const volatile int *stop;
} gk_problem;

/* Workspace of gk_serial for rows [0, mc_max) and columns [0, nc_max) of C. */
static size_t gk_abuf_len(int rows, int K) {
    int mc = gk_min(GK_MC, rows), kc = gk_min(GK_KC, K);
    return (size_t)((mc + GK_MR - 1) / GK_MR * GK_MR) * (size_t)kc + GK_MR * GK_MR; /* + slack, gk_pack_a */
}
static size_t gk_bbuf_len(int cols, int K) {
    int nc = gk_min(GK_NC, cols), kc = gk_min(GK_KC, K);
    return (size_t)((nc + GK_NR - 1) / GK_NR * GK_NR) * (size_t)kc;
}

#if defined(GK_HAVE_SMALL_M)
/* C[m0 .. m1)[n0 .. n1) = alpha A B^T + beta C for at most NR rows (A (M, lda), B (N, ldb) row-major): X^T
 * packed a KC block at a time into bp (gk_bbuf_len's, at least (KC, NR)), B's rows read in place
 * (gk_micro_wt).  gk_serial takes it for NR/2 .. NR rows: below, most of the NR lanes would be padding.
 * Measurements: docs/tuning.md, GEMM thresholds: small M. */
static void gk_small_m(const gk_problem *g, int m0, int m1, int n0, int n1, real *bp) {
    for (int pc = 0; pc < g->K; pc += GK_KC) {
        const int kc = gk_min(GK_KC, g->K - pc);
        const real beta = pc == 0 ? g->beta : (real)1;
        gk_pack_b(1, g->A + (size_t)m0 * g->lda, g->lda, pc, 0, kc, m1 - m0, bp); /* (kc, NR) = A^T, 0 past */
        for (int j = n0; j < n1; j += GK_MR)
            gk_micro_wt(kc, g->B + (size_t)j * g->ldb + pc, g->ldb, gk_min(GK_MR, n1 - j), bp, g->alpha, beta,
                        g->C + (size_t)m0 * g->ldc + j, g->ldc, m1 - m0);
    }
}
#endif

/* C[m0 .. m1)[n0 .. n1) of problem g (K > 0), with packing buffers ap (gk_abuf_len(m1 - m0, K)) and
 * bp (gk_bbuf_len(n1 - n0, K)), both 64-byte aligned. */
static void gk_serial(const gk_problem *g, int m0, int m1, int n0, int n1, real *ap, real *bp) {
#if defined(GK_HAVE_SMALL_M)
    if (!g->trans_a && g->trans_b && m1 - m0 <= GK_NR && m1 - m0 >= GK_NR / 2 && n1 - n0 >= GK_MR) {
        gk_small_m(g, m0, m1, n0, n1, bp);
        return;
    }
#endif
    for (int jc = n0; jc < n1; jc += GK_NC) {
        int nc = gk_min(GK_NC, n1 - jc);
        for (int pc = 0; pc < g->K; pc += GK_KC) {
            int kc = gk_min(GK_KC, g->K - pc);
            real beta = pc == 0 ? g->beta : (real)1; /* later K blocks add to the first one's result */
            gk_pack_b(g->trans_b, g->B, g->ldb, pc, jc, kc, nc, bp);
            for (int ic = m0; ic < m1; ic += GK_MC) {
                if (g->stop && *g->stop) return; /* interrupted (a block of MC rows is ~1 ms at most) */
                int mc = gk_min(GK_MC, m1 - ic);
                gk_pack_a(g->trans_a, g->A, g->lda, ic, pc, mc, kc, ap);
                for (int jr = 0; jr < nc; jr += GK_NR) {
                    int nr = gk_min(GK_NR, nc - jr);
                    const real *bq = bp + (size_t)jr * kc; /* (kc, NR) */
                    real *cc = g->C + (size_t)ic * g->ldc + jc + jr;
                    for (int ir = 0; ir < mc; ir += GK_MR)
                        gk_micro(kc, ap + (size_t)ir * kc, bq, g->alpha, beta, cc + (size_t)ir * g->ldc, g->ldc,
                                 gk_min(GK_MR, mc - ir), nr);
                }
            }
        }
    }
}

/* C[m0 .. m1)[n0 .. n1) = beta * C, not reading C when beta == 0 (K == 0 or alpha == 0). */
static void gk_scale(const gk_problem *g, int m0, int m1, int n0, int n1) {
    for (int i = m0; i < m1; i++) {
        real *c = g->C + (size_t)i * g->ldc;
        if (g->beta == 0)
            for (int j = n0; j < n1; j++) c[j] = 0;
        else if (g->beta != 1)
            for (int j = n0; j < n1; j++) c[j] *= g->beta;
    }
}

/* Without workspace (allocation failed): the plain loop nest, correct and slow. */
static void gk_naive(const gk_problem *g, int m0, int m1, int n0, int n1) {
    gk_scale(g, m0, m1, n0, n1);
    for (int i = m0; i < m1; i++) {
        real *c = g->C + (size_t)i * g->ldc;
        for (int k = 0; k < g->K; k++) {
            real a = g->alpha * (g->trans_a ? g->A[(size_t)k * g->lda + i] : g->A[(size_t)i * g->lda + k]);
            for (int j = n0; j < n1; j++)
                c[j] += a * (g->trans_b ? g->B[(size_t)j * g->ldb + k] : g->B[(size_t)k * g->ldb + j]);
        }
    }
}

/* ---- thin products: no packing ------------------------------------------------------------------------
 * Packing pays when each packed element is used many times: an MR x NR tile reads a packed A element NR
 * times and a B element MR times.  A product with K <= GK_THIN_K (a rank-K update: dW = dG^T X of a
 * call of T*B = 1 .. 4 rows) or M <= GK_THIN_M with op(B) = B (dx = dG W_ih of those rows) uses each
 * element of the larger operand once or a few times, so packing it costs as much as the product (a
 * 512 x 128 x 1 dW_ih and a 1 x 128 x 512 dx were each a pack of 256 KB; the tiles ran 1 of their 14 rows).
 * Both are written here as passes over whole rows of B, which the compiler vectorises for the instance's
 * ISA.  Sums are taken in k order, then C = alpha * sum + beta * C, as the microkernel does; C is not read
 * when beta == 0.  Measurements: docs/tuning.md, Thin products. */
#ifndef GK_THIN_K
#define GK_THIN_K 4
#endif
#ifndef GK_THIN_M
#define GK_THIN_M 4
#endif
#define GK_THIN_NB 256 /* columns of C per pass: the sums of GK_THIN_M rows stay in L1 (4 KB) */

/* sum (GK_THIN_NB) -> C row segment c (n): c = alpha * sum + beta * c. */
static inline void gk_thin_store(int n, const real *restrict sum, real alpha, real beta, real *restrict c) {
    if (beta == 0)
        for (int j = 0; j < n; j++) c[j] = alpha * sum[j];
    else
        for (int j = 0; j < n; j++) c[j] = alpha * sum[j] + beta * c[j];
}

/* Whether gk_thin takes problem g (K > 0, alpha != 0). */
static inline int gk_is_thin(const gk_problem *g) {
    return !g->trans_b && (g->K <= GK_THIN_K || g->M <= GK_THIN_M);
}

/* C = alpha op(A) B + beta C for a thin problem (gk_is_thin): B (K, ldb) is read row by row. */
static void gk_thin(const gk_problem *g) {
    real sum[GK_THIN_M][GK_THIN_NB] __attribute__((aligned(64)));
    const int K = g->K;
#define GK_OPA(i, k) (g->trans_a ? g->A[(size_t)(k) * g->lda + (i)] : g->A[(size_t)(i) * g->lda + (k)])
    if (K <= GK_THIN_K) { /* each row of C: K passes over the K rows of B */
        for (int i = 0; i < g->M; i++) {
            real a[GK_THIN_K];
            for (int k = 0; k < K; k++) a[k] = GK_OPA(i, k);
            real *c = g->C + (size_t)i * g->ldc;
            for (int j0 = 0; j0 < g->N; j0 += GK_THIN_NB) {
                const int n = gk_min(GK_THIN_NB, g->N - j0);
                real *restrict s = sum[0];
                const real *restrict b = g->B + j0;
                for (int j = 0; j < n; j++) s[j] = a[0] * b[j];
                for (int k = 1; k < K; k++) {
                    b = g->B + (size_t)k * g->ldb + j0;
                    const real ak = a[k];
                    for (int j = 0; j < n; j++) s[j] += ak * b[j];
                }
                gk_thin_store(n, s, g->alpha, g->beta, c + j0);
            }
        }
        return;
    }
    /* M <= GK_THIN_M rows of C: one pass over B for all of them, GK_THIN_NB columns at a time */
    const int M = g->M;
    for (int j0 = 0; j0 < g->N; j0 += GK_THIN_NB) {
        const int n = gk_min(GK_THIN_NB, g->N - j0);
        for (int i = 0; i < M; i++) {
            real *restrict s = sum[i];
            const real ai = GK_OPA(i, 0);
            const real *restrict b = g->B + j0;
            for (int j = 0; j < n; j++) s[j] = ai * b[j];
        }
        for (int k = 1; k < K; k++) {
            const real *restrict b = g->B + (size_t)k * g->ldb + j0;
            for (int i = 0; i < M; i++) {
                real *restrict s = sum[i];
                const real ai = GK_OPA(i, k);
                for (int j = 0; j < n; j++) s[j] += ai * b[j];
            }
        }
        for (int i = 0; i < M; i++) gk_thin_store(n, sum[i], g->alpha, g->beta, g->C + (size_t)i * g->ldc + j0);
    }
#undef GK_OPA
}

/* Threads take chunks of C -- blocks of rows (when M >= N) or of columns, all of the other dimension --
 * from a shared position, so a thread whose core is shared with another process (common on these VMs: a
 * static split there ran no faster than one thread) simply takes fewer.  Guided sizes: each take is the
 * remainder / (4 nth), within [least, most], so the chunks shrink towards the end and the threads finish
 * close together (equal fixed chunks can leave one thread a whole chunk behind).  Each chunk runs gk_serial with the thread's own buffers; the price is re-packing the operand
 * all chunks share, once per chunk: 2 * least flops or more per packed element. */
#define GK_CHUNK_MIN 96 /* rows or columns; rounded up to a multiple of MR or NR (gk_gemm) */

typedef struct gk_task_ctx {
    const gk_problem *g;
    int split_m;     /* chunks are row blocks (1) or column blocks (0) */
    int D, step;     /* the dimension chunked; chunks are multiples of step (MR or NR) but the last */
    int least, most; /* chunk size bounds */
    atomic_int next; /* the first row / column not taken yet */
} gk_task_ctx;

static void gk_task(void *ctx, int tid, int nth) {
    gk_task_ctx *t = (gk_task_ctx *)ctx;
    const gk_problem *g = t->g;
    (void)tid;
    real *ap = NULL, *bp = NULL;
    int ok = 0;
    for (;;) {
        int pos = atomic_load_explicit(&t->next, memory_order_relaxed), take;
        do {
            if (pos >= t->D) break;
            take = (t->D - pos + 4 * nth - 1) / (4 * nth);
            take = (take + t->step - 1) / t->step * t->step;
            if (take < t->least) take = t->least;
            if (take > t->most) take = t->most;
            if (take > t->D - pos) take = t->D - pos;
        } while (!atomic_compare_exchange_weak_explicit(&t->next, &pos, pos + take, memory_order_relaxed,
                                                        memory_order_relaxed));
        if (pos >= t->D) break;
        int m0 = 0, m1 = g->M, n0 = 0, n1 = g->N;
        if (t->split_m) m0 = pos, m1 = pos + take;
        else n0 = pos, n1 = pos + take;
        if (g->K == 0 || g->alpha == 0) {
            gk_scale(g, m0, m1, n0, n1);
            continue;
        }
        if (ap == NULL && bp == NULL) { /* first chunk: buffers for the largest chunk */
            ap = fr_alloc(gk_abuf_len(t->split_m ? t->most : g->M, g->K), 0);
            bp = fr_alloc(gk_bbuf_len(t->split_m ? g->N : t->most, g->K), 0);
            ok = ap != NULL && bp != NULL;
        }
        if (ok) gk_serial(g, m0, m1, n0, n1, ap, bp);
        else gk_naive(g, m0, m1, n0, n1);
    }
    fr_free(ap);
    fr_free(bp);
}

/* Threads sharing one packed B block (gk_shared_task), for products large in both M and N: the chunks of
 * gk_task each re-pack the whole operand they share -- all of B for row chunks: (2048)^3 re-packed its 16
 * MB of B 14 times and ran at 1.6x one thread.  Here, per block of B (KC x NC, beside the L3's other
 * data): every thread packs its share of the block's micro-panels, a barrier, then the threads take
 * blocks of `rows` rows of C from a shared position, each packing its rows of A and running them against
 * the whole block; a second barrier before the next block is packed over this one. */
typedef struct gk_shared_ctx {
    const gk_problem *g;
    real *bp;        /* (gk_bbuf_len(N, K)) the B block, shared */
    int rows;        /* rows of C a take: a multiple of MR, at most MC */
    atomic_int next; /* the first row of C not taken yet in this block */
    fr_barrier_t bar;
} gk_shared_ctx;

static void gk_shared_task(void *ctx, int tid, int nth) {
    gk_shared_ctx *t = (gk_shared_ctx *)ctx;
    const gk_problem *g = t->g;
    real *ap = fr_alloc(gk_abuf_len(t->rows, g->K), 0); /* (rows, KC) this thread's A block, or NULL */
    for (int jc = 0; jc < g->N; jc += GK_NC) {
        const int nc = gk_min(GK_NC, g->N - jc), npan = (nc + GK_NR - 1) / GK_NR;
        for (int pc = 0; pc < g->K; pc += GK_KC) {
            const int kc = gk_min(GK_KC, g->K - pc);
            const real beta = pc == 0 ? g->beta : (real)1;
            /* this thread's micro-panels of the block: [q0, q1) */
            const int q0 = (int)((long)npan * tid / nth), q1 = (int)((long)npan * (tid + 1) / nth);
            if (q1 > q0)
                gk_pack_b(g->trans_b, g->B, g->ldb, pc, jc + q0 * GK_NR, kc, gk_min(nc, q1 * GK_NR) - q0 * GK_NR,
                          t->bp + (size_t)q0 * GK_NR * kc);
            fr_barrier_wait(&t->bar, tid); /* the block is whole */
            for (;;) {
                if (g->stop && *g->stop) break; /* interrupted: the barrier below stops every thread */
                const int ic = atomic_fetch_add_explicit(&t->next, t->rows, memory_order_relaxed);
                if (ic >= g->M) break;
                const int mc = gk_min(t->rows, g->M - ic);
                if (ap == NULL) { /* no workspace: the plain loops for these rows and columns */
                    gk_problem part = *g;
                    part.K = kc, part.beta = beta;
                    part.A = g->trans_a ? g->A + (size_t)pc * g->lda : g->A + pc;
                    part.B = g->trans_b ? g->B + pc : g->B + (size_t)pc * g->ldb;
                    gk_naive(&part, ic, ic + mc, jc, jc + nc);
                    continue;
                }
                gk_pack_a(g->trans_a, g->A, g->lda, ic, pc, mc, kc, ap);
                for (int jr = 0; jr < nc; jr += GK_NR) {
                    const real *bq = t->bp + (size_t)jr * kc; /* (kc, NR) */
                    real *cc = g->C + (size_t)ic * g->ldc + jc + jr;
                    for (int ir = 0; ir < mc; ir += GK_MR)
                        gk_micro(kc, ap + (size_t)ir * kc, bq, g->alpha, beta, cc + (size_t)ir * g->ldc, g->ldc,
                                 gk_min(GK_MR, mc - ir), gk_min(GK_NR, nc - jr));
                }
            }
            if (fr_barrier_wait_stop(&t->bar, tid)) break; /* everyone is done with the block; or interrupted */
            /* thread 0 rewinds the rows for the next block: no thread takes any before the barrier that
             * follows the next packing, which thread 0 also has to reach */
            if (tid == 0) atomic_store_explicit(&t->next, 0, memory_order_relaxed);
        }
        if (fr_region_stopped(&t->bar)) break; /* every thread broke at the same barrier */
    }
    fr_free(ap);
}

/* Rows at least this many, and columns at least GK_SHARED_MIN_N, share the B block (gk_shared_task). */
#ifndef GK_SHARED_MIN_M
#define GK_SHARED_MIN_M 256
#endif
#ifndef GK_SHARED_MIN_N
#define GK_SHARED_MIN_N 256
#endif

/* The own GEMM.  nthreads: 0 chooses (1 thread below GK_PAR_FLOPS, else up to fr_get_num_threads(); the
 * shared B block when M and N are both large, else chunks), > 0 asks for that many threads in chunks, < 0
 * for -nthreads sharing the B block (both still capped by fr_get_num_threads() and a busy pool) -- the
 * tests use them. */
static void gk_gemm(int trans_a, int trans_b, int M, int N, int K, real alpha,
                    const real *A, int lda,  /* (M, lda >= K), or (K, lda >= M) when trans_a */
                    const real *B, int ldb,  /* (K, ldb >= N), or (N, ldb >= K) when trans_b */
                    real beta, real *C, int ldc, /* (M, ldc >= N) */
                    int nthreads)
{
    if (M <= 0 || N <= 0) return;
    if (K < 0) K = 0;
    gk_problem g = {trans_a, trans_b, M, N, K, alpha, beta, A, B, C, lda, ldb, ldc, NULL};
    if (fr_interrupt_armed()) g.stop = &fr_interrupt_flag; /* the caller's own products only */
    int nth = nthreads > 0 ? nthreads
              : nthreads < 0 ? (nthreads < -FR_MAX_THREADS ? FR_MAX_THREADS : -nthreads)
                             : (2.0 * M * N * K >= GK_PAR_FLOPS ? fr_get_num_threads() : 1);
    if (nth > 1 && K > 0 && alpha != 0 &&
        (nthreads < 0 || (nthreads == 0 && M >= GK_SHARED_MIN_M && N >= GK_SHARED_MIN_N))) {
        /* large in both: one packed B block shared by the threads (nthreads < 0: the tests ask for it) */
        gk_shared_ctx t;
        t.g = &g;
        t.rows = M / (4 * nth) / GK_MR * GK_MR;
        if (t.rows < 4 * GK_MR) t.rows = 4 * GK_MR;
        if (t.rows > GK_MC / GK_MR * GK_MR) t.rows = GK_MC / GK_MR * GK_MR;
        if (nthreads < 0) t.rows = GK_MR; /* tests: many small takes */
        atomic_init(&t.next, 0);
        t.bp = fr_alloc(gk_bbuf_len(N, K), 0);
        if (t.bp != NULL) {
            fr_parallel(nth, gk_shared_task, &t, &t.bar);
            fr_free(t.bp);
            return;
        }
    }
    if (nth > 1) {
        /* chunk the larger dimension: the operand every chunk re-packs is then the smaller one */
        gk_task_ctx t;
        t.g = &g;
        t.split_m = M >= N;
        t.D = t.split_m ? M : N;
        t.step = t.split_m ? GK_MR : GK_NR;
        t.most = (t.split_m ? GK_MC : GK_NC) / t.step * t.step;
        t.least = (GK_CHUNK_MIN + t.step - 1) / t.step * t.step; /* chunks of whole tiles (MR 14 on AVX-512) */
        if (nthreads > 0) t.least = t.step, t.most = gk_min(t.most, (t.D + 1) / 2); /* tests: small chunks */
        atomic_init(&t.next, 0);
        if (t.D >= 2 * t.least) { /* else one chunk: no work for a second thread */
            fr_parallel(nth, gk_task, &t, NULL);
            return;
        }
    }
    /* one thread: the whole product as one chunk */
    if (K > 0 && alpha != 0 && nthreads >= 0 && gk_is_thin(&g)) { /* (nthreads < 0: tests of the shared path) */
        gk_thin(&g);
        return;
    }
    real *ap = NULL, *bp = NULL;
    if (K > 0 && alpha != 0) {
        ap = fr_alloc(gk_abuf_len(M, K), 0);
        bp = fr_alloc(gk_bbuf_len(N, K), 0);
    }
    if (K == 0 || alpha == 0) gk_scale(&g, 0, M, 0, N);
    else if (ap && bp) gk_serial(&g, 0, M, 0, N, ap, bp);
    else gk_naive(&g, 0, M, 0, N);
    fr_free(ap);
    fr_free(bp);
}

/* The own GEMM on the calling thread alone, whatever the size: for a thread of a parallel region computing
 * its share of a product (the cells' input projections, seq.h). */
static void gk_gemm_here(int trans_a, int trans_b, int M, int N, int K, real alpha,
                         const real *A, int lda, const real *B, int ldb, real beta, real *C, int ldc) {
    gk_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1);
}

/* The cells' fr_gemm (common.h): the own GEMM, or the BLAS path of gemm.c when FASTRNN_GEMM=blas. */
static void gk_gemm_cell(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A, int lda,
                         const real *B, int ldb, real beta, real *C, int ldc) {
    if (fr_gemm_backend() == FR_GEMM_BLAS) fr_gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else gk_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0);
}

/* Independent products, each too small to split across threads (GK_PAR_FLOPS), run side by side: each
 * thread takes whole products, the largest first, from a shared position, so a late thread just takes
 * fewer.  A backward at B = 1 ends with three such products (dW_ih, dW_hh, dx: 26 MFLOP for LSTM(64, 128)
 * at T = 100), which otherwise ran one after the other on the calling thread while the other waited.
 * A job may name one more product to run after it on the same thread (then: one that adds into its C). */
typedef struct gk_job {
    int trans_a, trans_b, M, N, K;
    real alpha;
    const real *A; /* (M, lda >= K), or (K, lda >= M) when trans_a */
    int lda;
    const real *B; /* (K, ldb >= N), or (N, ldb >= K) when trans_b */
    int ldb;
    real beta;
    real *C;       /* (M, ldc >= N) */
    int ldc;
    const struct gk_job *then; /* or NULL */
} gk_job;

typedef struct gk_jobs_ctx {
    const gk_job *const *jobs; /* (n) largest first */
    int n;
    atomic_int next;
} gk_jobs_ctx;

static double gk_job_flops(const gk_job *j) {
    double f = 0;
    for (; j; j = j->then) f += 2.0 * j->M * j->N * j->K;
    return f;
}

static void gk_jobs_task(void *arg, int tid, int nth) {
    gk_jobs_ctx *c = (gk_jobs_ctx *)arg;
    (void)tid;
    (void)nth;
    for (int i; (i = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < c->n;)
        for (const gk_job *j = c->jobs[i]; j; j = j->then)
            gk_gemm_here(j->trans_a, j->trans_b, j->M, j->N, j->K, j->alpha, j->A, j->lda, j->B, j->ldb, j->beta,
                         j->C, j->ldc);
}

/* The cells' fr_gemm_jobs: runs the n jobs (NULL entries skipped) as above when there are 2+ threads, at
 * most GK_JOBS_MAX of them, and every product is below GK_PAR_FLOPS; else one after the other through
 * gk_gemm_cell (each split across the threads if large; the BLAS path when FASTRNN_GEMM=blas). */
#define GK_JOBS_MAX 8
/* Jobs of fewer flops in all than this run one after the other on the calling thread: handing a region to
 * the pool costs a few microseconds, as much as the products of a call of a few rows (LSTM(128) at T*B = 1:
 * three products of 0.13 MFLOP).  Measurements: docs/tuning.md, Thin products. */
#ifndef GK_JOBS_MIN_FLOPS
#define GK_JOBS_MIN_FLOPS 1.0e6
#endif
static void gk_gemm_jobs(const gk_job **jobs, int n) {
    const gk_job *list[GK_JOBS_MAX];
    int m = 0, small = 1;
    double total = 0;
    for (int i = 0; i < n; i++) {
        if (jobs[i] == NULL) continue;
        if (m < GK_JOBS_MAX) list[m] = jobs[i];
        m++;
        for (const gk_job *j = jobs[i]; j; j = j->then) {
            if (2.0 * j->M * j->N * j->K >= GK_PAR_FLOPS) small = 0;
            total += 2.0 * j->M * j->N * j->K;
        }
    }
    if (m > 1 && m <= GK_JOBS_MAX && small && total >= GK_JOBS_MIN_FLOPS && fr_get_num_threads() > 1 &&
        fr_gemm_backend() != FR_GEMM_BLAS) {
        for (int i = 1; i < m; i++) /* largest first: insertion sort of a few */
            for (int k = i; k > 0 && gk_job_flops(list[k]) > gk_job_flops(list[k - 1]); k--) {
                const gk_job *t = list[k];
                list[k] = list[k - 1];
                list[k - 1] = t;
            }
        gk_jobs_ctx c;
        c.jobs = list;
        c.n = m;
        atomic_init(&c.next, 0);
        fr_parallel(m, gk_jobs_task, &c, NULL);
        return;
    }
    for (int i = 0; i < n; i++)
        for (const gk_job *j = jobs[i]; j; j = j->then)
            gk_gemm_cell(j->trans_a, j->trans_b, j->M, j->N, j->K, j->alpha, j->A, j->lda, j->B, j->ldb, j->beta,
                         j->C, j->ldc);
}

#endif /* FR_GEMM_INSTANCE */
