/*
 * recurrent.h -- the recurrent product of a time step, h_{t-1} W^T, for one block of hidden units and all
 * G gates of those units at once, out of weights packed so that block is contiguous (docs/design.md,
 * Kernel recipe).
 *
 * Included by instance.h once per dtype and ISA, after common.h; the cells call it from their fused
 * time loops.  Packing happens once per kernel call; the step then reads each panel straight through.
 *
 * Panel layout.  W (G*H, K) row-major, torch's weight_hh (row g*H + u is gate g of unit u), or
 * [weight_ih | weight_hh] side by side when the step also computes the input projection:
 *   block j covers units [j*NB, j*NB + NB); its panel is (K, G, NB):
 *     panel_j[k][g][v] = W[g*H + j*NB + v][k]   (0 past H: the last block is zero-padded)
 *   so a row of the panel, G*NB numbers, is what one k contributes to every gate of the block, and the
 *   product of mr rows of h with the panel is an (mr, G*NB) tile.
 * NB is chosen so that a panel row is a few SIMD vectors: with float32 AVX2, G*NB = 32 (4 vectors) for
 * the RNN (NB 32) and LSTM (NB 8), 24 (3 vectors) for the GRU (NB 8), 16 (2) for the GRU's r, z alone.
 */
#ifndef FR_RECURRENT_INSTANCE
#define FR_RECURRENT_INSTANCE

#include "threads.h"

/* Most accumulator rows of a tile: 12 of the 16 AVX2 registers hold accumulators (rows x vectors); with
 * AVX-512's 32 registers, 24 hold up to 12 rows of a panel row of 2 vectors. */
#if FR_AVX512
#define REC_MR_MAX 12
#else
#define REC_MR_MAX 4
#endif
/* Widest panel row, in elements (float32 LSTM: 4 gates x 8 units). */
#define REC_W_MAX 64

typedef struct rec_pack {
    int G, H;      /* W is (G*H, K) */
    int K1, K;     /* K = K1 + K2: the first K1 columns multiply the first operand (x), the rest the second (h) */
    int NB;        /* units per block */
    int W;         /* G*NB: a panel row */
    int nblk;      /* ceil(H / NB) */
    real *panels;  /* (nblk, K, W), or NULL in direct mode */
    /* Direct mode (rec_pack_init for a call with few operand rows): no panels, the tiles read the weights
     * where they are, one dot product per output.  Packing reads and writes all of W to save work on every
     * later pass over it; a call that passes over W once or twice (streaming step(), T = 1) does not earn
     * that back: LSTM(64, 128) at T = B = 1 spends 26 us packed, ~10 us direct. */
    const real *w1, *w2; /* (G*H, ld1), (G*H, ld2) or NULL; rec_pack_transposed: w1 (K, ld1), w2 NULL */
    int ld1, ld2;
    int trans;           /* rec_pack_transposed's: the tiles multiply by W^T (out[v] = sum_k a[k] W[k][u]) */
} rec_pack;

/* Operand rows per call (T * B) up to which rec_pack_init and rec_pack_transposed leave the weights
 * unpacked (direct mode). */
#ifndef REC_DIRECT_ROWS
#define REC_DIRECT_ROWS 4
#endif

static int rec_units_per_block(int G) {
#if FR_DOUBLE
    return G == 1 ? 16 : 4; /* 4 doubles = one AVX2 vector per gate */
#elif FR_AVX512
    /* one zmm per gate for the GRU (3 or 2 gates: panel rows of 48 / 32), half of one for the LSTM (32);
     * the GRU's 24 of AVX2 would leave a ymm FMA costing a zmm slot in every row */
    return G == 1 ? 32 : G <= 3 ? 16 : 8;
#else
    return G == 1 ? 32 : 8; /* 8 floats = one AVX2 vector per gate */
#endif
}

static void rec_pack_free(rec_pack *p) {
    fr_free(p->panels);
    p->panels = NULL;
}

/* One gate g of one block, [k0, k0 + K) of its panel rows, from nu rows of a weight segment: panel row by
 * panel row (contiguous stores); with float32 AVX2, 8 units x 8 columns at a time through an 8x8 register
 * transpose (GRU(64, 128) packs in 8 us instead of 29 us with the scalar gather). */
static void rec_pack_segment(real *pj, int W, int NB, int g, int nu,
                             const real *src, int ld, int K, /* (nu, ld >= K) rows of the block */
                             int k0)                         /* first panel row of the segment */
{
    int k = 0;
#if FR_SIMD
    if (nu == 8 && NB % 8 == 0) {
        for (; k + 8 <= K; k += 8) {
            __m256 r[8], c[8];
            for (int v = 0; v < 8; v++) r[v] = _mm256_loadu_ps(src + (size_t)v * ld + k);
            vm_transpose8(r, c);
            real *d = pj + (size_t)(k0 + k) * W + g * NB;
            for (int q = 0; q < 8; q++) _mm256_storeu_ps(d + (size_t)q * W, c[q]);
        }
    }
#endif
    for (; k < K; k++) {
        real *d = pj + (size_t)(k0 + k) * W + g * NB;
        for (int v = 0; v < nu; v++) d[v] = src[(size_t)v * ld + k];
    }
}

/* Units of block j that exist (the last block may be partial). */
static inline int rec_block_units(const rec_pack *p, int j) {
    int u = p->H - j * p->NB;
    return u < p->NB ? u : p->NB;
}

/* Blocks [*j0, *j1) of thread tid out of nth: contiguous, balanced. */
static inline void rec_thread_blocks(int nblk, int tid, int nth, int *j0, int *j1) {
    *j0 = (int)((long)nblk * tid / nth);
    *j1 = (int)((long)nblk * (tid + 1) / nth);
}

/* Blocks [j0, j1) of rec_pack_init's panels. */
static void rec_pack_blocks(const rec_pack *p, int j0, int j1) {
    const int G = p->G, H = p->H, K1 = p->K1, K2 = p->K - p->K1, ld1 = p->ld1, ld2 = p->ld2;
    const real *w1 = p->w1, *w2 = p->w2;
    for (int j = j0; j < j1; j++) {
        real *pj = p->panels + (size_t)j * p->K * p->W; /* (K, G, NB) */
        const int nu = rec_block_units(p, j);
        for (int g = 0; g < G; g++) {
            const size_t row = (size_t)g * H + (size_t)j * p->NB;
            if (nu % 8 == 0 || !FR_SIMD) {
                for (int v0 = 0; v0 < nu; v0 += 8) { /* 8 units at a time (the transpose's width) */
                    int nv = nu - v0 < 8 ? nu - v0 : 8;
                    rec_pack_segment(pj + v0, p->W, p->NB, g, nv, w1 + (row + v0) * ld1, ld1, K1, 0);
                    if (w2) rec_pack_segment(pj + v0, p->W, p->NB, g, nv, w2 + (row + v0) * ld2, ld2, K2, K1);
                }
            } else {
                rec_pack_segment(pj, p->W, p->NB, g, nu, w1 + row * ld1, ld1, K1, 0);
                if (w2) rec_pack_segment(pj, p->W, p->NB, g, nu, w2 + row * ld2, ld2, K2, K1);
            }
            if (nu < p->NB) /* the padding of a partial last block is zero */
                for (int k = 0; k < p->K; k++) memset(pj + (size_t)k * p->W + g * p->NB + nu, 0, (size_t)(p->NB - nu) * sizeof(real));
        }
    }
}

/* Sets up the panels of [W1 | W2] ((G*H, K1) beside (G*H, K2), row strides ld1, ld2) along K; w2 may be
 * NULL (K2 = 0).  Only allocates them: the forward's first parallel region packs them, each thread its
 * own blocks (rec_pack_own).  FR_ENOMEM when the panels cannot be allocated. */
static int rec_pack_init(rec_pack *p, int G, int H,
                         const real *w1, int K1, int ld1, /* (G*H, ld1 >= K1) */
                         const real *w2, int K2, int ld2, /* (G*H, ld2 >= K2) or NULL */
                         size_t rows)                     /* operand rows the call will multiply (T * B) */
{
    p->G = G;
    p->H = H;
    p->K1 = K1;
    p->K = K1 + (w2 ? K2 : 0);
    p->NB = rec_units_per_block(G);
    p->W = G * p->NB;
    p->nblk = (H + p->NB - 1) / p->NB;
    p->w1 = w1;
    p->w2 = w2;
    p->ld1 = ld1;
    p->ld2 = ld2;
    p->trans = 0;
    if (rows <= REC_DIRECT_ROWS) {
        p->panels = NULL;
        return FR_OK;
    }
    const size_t n = (size_t)p->nblk * p->K * p->W;
    p->panels = fr_alloc(n, 0);
    return p->panels == NULL ? FR_ENOMEM : FR_OK;
}

/* In a forward's first parallel region (s_begin == 0), before any step: thread tid of nth packs the blocks
 * it owns in the steps (rec_thread_blocks).  The panels are then first written, and left in cache, by the
 * thread that reads them every step, and the packing is shared: packed by the calling thread before the
 * region, the other threads fetched their panels from its cache at the first step of every call, and it
 * packed alone while they waited (LSTM(2048): 64 MB, ~7% of a 25-step forward).  Where a thread may read
 * another's blocks (claims, rows split) the region passes a barrier before. */
static void rec_pack_own(const rec_pack *p, int tid, int nth) {
    if (p == NULL || p->panels == NULL) return;
    int j0, j1;
    rec_thread_blocks(p->nblk, tid, nth, &j0, &j1);
    rec_pack_blocks(p, j0, j1);
}

/* Blocks [j0, j1) of rec_pack_transposed's panels, from W = p->w1 (K, ld1). */
static void rec_pack_transposed_blocks(const rec_pack *p, int j0, int j1) {
    const int K = p->K;
    for (int j = j0; j < j1; j++) {
        real *pj = p->panels + (size_t)j * K * p->W; /* (K, NB) */
        const int nu = rec_block_units(p, j);
        for (int k = 0; k < K; k++) {
            memcpy(pj + (size_t)k * p->W, p->w1 + (size_t)k * p->ld1 + (size_t)j * p->NB, (size_t)nu * sizeof(real));
            if (nu < p->NB) memset(pj + (size_t)k * p->W + nu, 0, (size_t)(p->NB - nu) * sizeof(real));
        }
    }
}

/* rec_pack_own for rec_pack_transposed's panels, in a backward's parallel region before its first step:
 * each thread packs the blocks it owns in the steps (where another thread may take one, a barrier passes
 * before). */
static void rec_pack_transposed_own(const rec_pack *p, int tid, int nth) {
    if (p == NULL || p->panels == NULL) return;
    int j0, j1;
    rec_thread_blocks(p->nblk, tid, nth, &j0, &j1);
    rec_pack_transposed_blocks(p, j0, j1);
}

/* Packs W^T for the backward product dh_{t-1} = dG_t W: W is (K, H) row-major (torch's weight_hh, K = G*H
 * gate rows, H = its input width P), and the panels are those of the (H, K) matrix W^T with G = 1: block j
 * covers output units [j*NB, j*NB + NB), panel_j[k][v] = W[k][j*NB + v] (0 past H).  Only allocates them,
 * as rec_pack_init does: the backward's region packs them (rec_pack_transposed_own).  A backward of at most
 * REC_DIRECT_ROWS rows (`rows`, T * B) passes over W once or a few times: no panels then (direct mode,
 * rec_tile_direct_t reads W in place; packing LSTM(128)'s 256 KB W_hh was ~20% of its backward at
 * T = B = 1).  FR_ENOMEM on failure. */
static int rec_pack_transposed(rec_pack *p, int H, int K,
                               const real *w, int ldw, /* (K, ldw >= H) */
                               size_t rows)            /* operand rows the call will multiply (T * B) */
{
    p->G = 1;
    p->H = H;
    p->K1 = K;
    p->K = K;
    p->w1 = w; /* for the packing, and the tiles of direct mode */
    p->ld1 = ldw;
    p->w2 = NULL;
    p->trans = 1;
    p->NB = rec_units_per_block(1);
    p->W = p->NB;
    p->nblk = (H + p->NB - 1) / p->NB;
    if (rows <= REC_DIRECT_ROWS) {
        p->panels = NULL;
        return FR_OK;
    }
    const size_t n = (size_t)p->nblk * K * p->W;
    p->panels = fr_alloc(n, 0);
    return p->panels == NULL ? FR_ENOMEM : FR_OK;
}

/* The tile kernels compute out (mr, W) = sum_k a(r, k) panel(k, :), where row r of the operand is a1[r]
 * for k < K1 and a2[r] for the rest (x_t then h_{t-1}: the input projection and the recurrent product in
 * one pass).  Rows come as pointers, so the permuted / per-sequence-time rows of variable lengths cost
 * nothing. */
#if FR_SIMD
/* rec_k4_row, rec_k4_2, rec_k4_3 (4 vectors per panel row: LSTM, RNN), rec_k3_row .. rec_k3_4 (3: GRU) and
 * rec_k2_row .. rec_k2_4 (2: the GRU's r, z of reset_after = 0):
 * MR rows x NV vectors of accumulators in registers over the whole K loop (at most 12 of the 16); one row
 * alone would chain every FMA on the previous one (4 cycles of latency, 2 issued per cycle), so the row
 * kernels keep even and odd k apart. */
#include "gen/tiles_avx2.h"
#endif
#if FR_AVX512
/* rec_z32[mr], rec_z24[mr], rec_z16[mr] for mr = 1 .. 12 and rec_z48[mr] for mr = 1 .. 8: the panels in
 * zmm registers, twice the FMA width of AVX2 and 32 registers, so a tile takes 12 rows (B = 16 passes a
 * panel twice per step, not 6 times) */
#include "gen/tiles_avx512.h"
#endif

/* Recurrent dropout (docs/keras.md, recurrent_dropout): dst (n) = src * mask, a row of h_{t-1} as the
 * recurrent product reads it (forward), or a row of dh_{t-1} that reached h_{t-1} through that product
 * (backward).  dst may be src. */
static inline void rec_mask_row(int n, const real *src, const real *mask, real *dst) {
    for (int i = 0; i < n; i++) dst[i] = src[i] * mask[i];
}

/* Rows of one tile: as many as keep the accumulators in registers. */
static inline int rec_tile_rows(const rec_pack *p) {
#if FR_AVX512
    return p->W == 48 ? Z_MR48 : p->W == 32 || p->W == 24 || p->W == 16 ? Z_MR : REC_MR_MAX;
#elif FR_SIMD
    return p->W == 24 || p->W == 16 ? 4 : 3;
#else
    (void)p;
    return REC_MR_MAX;
#endif
}

/* o[i] += a . w_i for the 4 weight rows w_i = w + i*ldw, over n elements.  Four rows at once: one load of
 * a serves four independent FMA chains (one row alone would wait on the FMA latency every k). */
static inline void rec_dot4(const real *a, /* (n) */
                            const real *w, size_t ldw, /* (4, ldw >= n) */
                            int n, real *o) /* (4) in/out */
{
    int k = 0;
#if FR_SIMD
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; k + 8 <= n; k += 8) {
        const __m256 av = _mm256_loadu_ps(a + k);
        s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + k), s0);
        s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + ldw + k), s1);
        s2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + 2 * ldw + k), s2);
        s3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + 3 * ldw + k), s3);
    }
    /* hadd twice leaves row i's sum of lanes 0-3 in lane i and of lanes 4-7 in lane 4 + i. */
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    _mm_storeu_ps(o, _mm_add_ps(_mm_loadu_ps(o), sum));
#endif
    for (int i = 0; i < 4; i++) {
        const real *wi = w + i * ldw;
        real acc = 0;
        for (int kk = k; kk < n; kk++) acc += a[kk] * wi[kk];
        o[i] += acc;
    }
}

#if FR_AVX512
/* o[i] = a1 . w1_i + a2 . w2_i for the 8 weight rows w1_i = w1 + i*ld1 (n1 elements), w2_i = w2 + i*ld2 (n2;
 * w2 may be NULL when n2 is 0): the AVX-512 rec_dot4, with both segments in the same 8 accumulators and one
 * reduction of them at the end (the dot4s' two reductions per row and half-width loads were most of
 * LSTM(128)'s single step). */
static inline void rec_dot8_z(const real *a1, const real *w1, size_t ld1, int n1,
                              const real *a2, const real *w2, size_t ld2, int n2,
                              real *o) /* (8) out */
{
    __m512 s[8];
    for (int i = 0; i < 8; i++) s[i] = _mm512_setzero_ps();
    for (int seg = 0; seg < 2; seg++) {
        const real *a = seg ? a2 : a1, *w = seg ? w2 : w1;
        const size_t ld = seg ? ld2 : ld1;
        const int n = seg ? n2 : n1;
        int k = 0;
        for (; k + 16 <= n; k += 16) {
            const __m512 av = _mm512_loadu_ps(a + k);
            for (int i = 0; i < 8; i++) s[i] = _mm512_fmadd_ps(av, _mm512_loadu_ps(w + i * ld + k), s[i]);
        }
        if (k < n) {
            const __mmask16 m = gk_mask16(n - k);
            const __m512 av = _mm512_maskz_loadu_ps(m, a + k);
            for (int i = 0; i < 8; i++) s[i] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, w + i * ld + k), s[i]);
        }
    }
    /* 8 x 16 lanes -> 8 sums: halves, then hadd twice (row i's quarters in lane i and 4 + i), then the two
     * 128-bit lanes */
    __m256 t[8];
    for (int i = 0; i < 8; i++) t[i] = _mm256_add_ps(_mm512_castps512_ps256(s[i]), _mm512_extractf32x8_ps(s[i], 1));
    const __m256 v0 = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
    const __m256 v1 = _mm256_hadd_ps(_mm256_hadd_ps(t[4], t[5]), _mm256_hadd_ps(t[6], t[7]));
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_blend_ps(v0, v1, 0xF0), _mm256_permute2f128_ps(v0, v1, 0x21)));
}
#endif

/* rec_tile in direct mode: out[r][g*NB + v] = a1[r] . W1[g*H + u] + a2[r] . W2[g*H + u], u = j*NB + v;
 * 0 past H, as the zero-padded panels give.  Four weight rows at a time, each read once for the mr
 * operand rows. */
static void rec_tile_direct(const rec_pack *p, int j, int mr,
                            const real *const *a1, /* (mr) rows of K1 */
                            const real *const *a2, /* (mr) rows of K - K1, or unused */
                            real *out)             /* (mr, W) */
{
    const int K2 = p->K - p->K1, nu = rec_block_units(p, j);
    for (int r = 0; r < mr; r++)
        for (int w = 0; w < p->W; w++) out[(size_t)r * p->W + w] = 0;
    for (int g = 0; g < p->G; g++)
        for (int v = 0; v < nu; v += 4) {
            const size_t row = (size_t)g * p->H + (size_t)j * p->NB + v;
#if FR_AVX512
            if (v % 8 == 0 && v + 8 <= nu) { /* 8 units at once, then skip the next 4 */
                for (int r = 0; r < mr; r++)
                    rec_dot8_z(a1[r], p->w1 + row * p->ld1, (size_t)p->ld1, p->K1, K2 ? a2[r] : NULL,
                               K2 ? p->w2 + row * p->ld2 : NULL, (size_t)p->ld2, K2,
                               out + (size_t)r * p->W + g * p->NB + v);
                v += 4;
                continue;
            }
#endif
            for (int r = 0; r < mr; r++) {
                real o[4] = {0, 0, 0, 0};
                if (v + 4 <= nu) {
                    rec_dot4(a1[r], p->w1 + row * p->ld1, (size_t)p->ld1, p->K1, o);
                    if (K2) rec_dot4(a2[r], p->w2 + row * p->ld2, (size_t)p->ld2, K2, o);
                } else { /* the last units of a partial block, one at a time */
                    for (int i = 0; i < nu - v; i++) {
                        for (int k = 0; k < p->K1; k++) o[i] += a1[r][k] * p->w1[(row + i) * p->ld1 + k];
                        for (int k = 0; k < K2; k++) o[i] += a2[r][k] * p->w2[(row + i) * p->ld2 + k];
                    }
                }
                real *dst = out + (size_t)r * p->W + g * p->NB + v;
                for (int i = 0; i < 4 && v + i < nu; i++) dst[i] = o[i];
            }
        }
}

/* rec_tile in direct mode for rec_pack_transposed's W (K, ld1): out[r][v] = sum_k a(r, k) W[k][j*NB + v],
 * a(r, k) = a1[r][k] for k < K1, else a2[r][k - K1]; 0 past H, as the zero-padded panels give.  Row by row,
 * the block's NB units in registers with even and odd k in separate accumulators (one chain would wait on
 * the FMA latency every k); each row reads W's block once, straight down its K rows. */
static void rec_tile_direct_t(const rec_pack *p, int j, int mr,
                              const real *const *a1, /* (mr) rows of K1 */
                              const real *const *a2, /* (mr) rows of K - K1, or unused */
                              real *out)             /* (mr, W) */
{
    const int K = p->K, K1 = p->K1, W = p->W, nu = rec_block_units(p, j);
    const size_t ld = (size_t)p->ld1;
    const real *w = p->w1 + (size_t)j * p->NB; /* (K, ld) at the block's first unit */
    for (int r = 0; r < mr; r++) {
        real *o = out + (size_t)r * W;
#if FR_AVX512
        if (W == 32 && nu == 32) {
            __m512 e0 = _mm512_setzero_ps(), e1 = e0, d0 = e0, d1 = e0;
            int k = 0;
            for (; k + 1 < K; k += 2) {
                const real *w0 = w + (size_t)k * ld, *wk = w0 + ld;
                const __m512 x0 = _mm512_set1_ps(k < K1 ? a1[r][k] : a2[r][k - K1]);
                const __m512 x1 = _mm512_set1_ps(k + 1 < K1 ? a1[r][k + 1] : a2[r][k + 1 - K1]);
                e0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w0), e0);
                e1 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w0 + 16), e1);
                d0 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(wk), d0);
                d1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(wk + 16), d1);
            }
            if (k < K) {
                const __m512 x0 = _mm512_set1_ps(k < K1 ? a1[r][k] : a2[r][k - K1]);
                e0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + (size_t)k * ld), e0);
                e1 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + (size_t)k * ld + 16), e1);
            }
            _mm512_storeu_ps(o, _mm512_add_ps(e0, d0));
            _mm512_storeu_ps(o + 16, _mm512_add_ps(e1, d1));
            continue;
        }
#endif
#if FR_SIMD
        if (W == 32 && nu == 32) {
            __m256 e[4], d[4];
            for (int q = 0; q < 4; q++) e[q] = d[q] = _mm256_setzero_ps();
            int k = 0;
            for (; k + 1 < K; k += 2) {
                const real *w0 = w + (size_t)k * ld, *wk = w0 + ld;
                const __m256 x0 = _mm256_set1_ps(k < K1 ? a1[r][k] : a2[r][k - K1]);
                const __m256 x1 = _mm256_set1_ps(k + 1 < K1 ? a1[r][k + 1] : a2[r][k + 1 - K1]);
                for (int q = 0; q < 4; q++) {
                    e[q] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w0 + 8 * q), e[q]);
                    d[q] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wk + 8 * q), d[q]);
                }
            }
            if (k < K) {
                const __m256 x0 = _mm256_set1_ps(k < K1 ? a1[r][k] : a2[r][k - K1]);
                for (int q = 0; q < 4; q++) e[q] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w + (size_t)k * ld + 8 * q), e[q]);
            }
            for (int q = 0; q < 4; q++) _mm256_storeu_ps(o + 8 * q, _mm256_add_ps(e[q], d[q]));
            continue;
        }
#endif
        /* any width, a partial block, float64: plain loops (the inner one vectorises) */
        for (int v = 0; v < W; v++) o[v] = 0;
        for (int k = 0; k < K; k++) {
            const real ak = k < K1 ? a1[r][k] : a2[r][k - K1];
            const real *wk = w + (size_t)k * ld;
            for (int v = 0; v < nu; v++) o[v] += ak * wk[v];
        }
    }
}

/* out (mr, W) = [a1 rows | a2 rows] @ panel of block j, mr <= rec_tile_rows(p); a2 is only read when the
 * pack has a second segment.  pf: another panel of p (rec_next_panel) to prefetch into L2 as this one is
 * read, or NULL.  Only the AVX-512 tiles of at least 4 rows act on it (csrc/gen/gen_tiles.py, PF_MR). */
static void rec_tile_pf(const rec_pack *p, int j, int mr,
                        const real *const *a1, /* (mr) rows of K1 */
                        const real *const *a2, /* (mr) rows of K - K1, or unused */
                        real *out,             /* (mr, W) */
                        const real *pf)        /* (K, W) or NULL */
{
    if (p->panels == NULL) {
        (p->trans ? rec_tile_direct_t : rec_tile_direct)(p, j, mr, a1, a2, out);
        return;
    }
    const real *panel = p->panels + (size_t)j * p->K * p->W; /* (K, W) */
#if FR_AVX512
    if (p->W == 48 || p->W == 32 || p->W == 24 || p->W == 16) {
        (p->W == 48 ? rec_z48 : p->W == 32 ? rec_z32 : p->W == 24 ? rec_z24 : rec_z16)[mr](p->K1, p->K, a1, a2, panel, out, pf);
        return;
    }
#else
    (void)pf;
#endif
#if FR_SIMD
    if (p->W == 32) {
        if (mr == 1) rec_k4_row(p->K1, p->K, a1, a2, panel, out);
        else if (mr == 2) rec_k4_2(p->K1, p->K, a1, a2, panel, out);
        else rec_k4_3(p->K1, p->K, a1, a2, panel, out);
        return;
    }
    if (p->W == 24) {
        if (mr == 1) rec_k3_row(p->K1, p->K, a1, a2, panel, out);
        else if (mr == 2) rec_k3_2(p->K1, p->K, a1, a2, panel, out);
        else if (mr == 3) rec_k3_3(p->K1, p->K, a1, a2, panel, out);
        else rec_k3_4(p->K1, p->K, a1, a2, panel, out);
        return;
    }
    if (p->W == 16) {
        if (mr == 1) rec_k2_row(p->K1, p->K, a1, a2, panel, out);
        else if (mr == 2) rec_k2_2(p->K1, p->K, a1, a2, panel, out);
        else if (mr == 3) rec_k2_3(p->K1, p->K, a1, a2, panel, out);
        else rec_k2_4(p->K1, p->K, a1, a2, panel, out);
        return;
    }
#endif
    /* Plain C: the inner loop over the panel row is contiguous and vectorises for any ISA. */
    const int W = p->W;
    for (int r = 0; r < mr; r++) {
        real *o = out + (size_t)r * W;
        for (int w = 0; w < W; w++) o[w] = 0;
        for (int k = 0; k < p->K; k++) {
            const real ak = k < p->K1 ? a1[r][k] : a2[r][k - p->K1];
            const real *pk = panel + (size_t)k * W;
            for (int w = 0; w < W; w++) o[w] += ak * pk[w];
        }
    }
}

static void rec_tile(const rec_pack *p, int j, int mr, const real *const *a1, const real *const *a2, real *out) {
    rec_tile_pf(p, j, mr, a1, a2, out, NULL);
}

/* The rows [c0, c0 + kc) of block j of p, as a pack of one block (whose block 0 they are): the panel's rows,
 * or in direct mode (rec_pack_transposed) W's rows at the block's units.  For a product taken in chunks
 * of K (lstm.c's backward). */
static inline rec_pack rec_pack_rows(const rec_pack *p, int j, int c0, int kc) {
    rec_pack c = *p;
    c.K1 = c.K = p->K - c0 < kc ? p->K - c0 : kc;
    c.nblk = 1;
    c.H = rec_block_units(p, j);
    if (p->panels) c.panels = p->panels + ((size_t)j * p->K + c0) * p->W;
    else c.w1 = p->w1 + (size_t)c0 * p->ld1 + (size_t)j * p->NB;
    return c;
}

/* rec_tile_pf of a pack without a second segment (K1 = K: W_hh alone, the split step) when each gate reads
 * its own operand rows: out[r][g*NB + v] = ag[g][r] . W[g*H + u].  Keras's recurrent dropout draws one mask
 * per gate of the LSTM (docs/keras.md), so gate g's product reads h_{t-1} * mask_g; the tiles take one
 * operand for a whole panel row, so this passes the block's panel once per gate and keeps that gate's
 * columns: G times the multiply-adds of the product, paid only by a masked call. */
static void rec_tile_gates(const rec_pack *p, int j, int mr,
                           const real *const *const *ag, /* (G) per gate: (mr) operand rows of K */
                           real *out,                    /* (mr, W) */
                           const real *pf)               /* (K, W) or NULL, as rec_tile_pf */
{
    real tmp[REC_MR_MAX * REC_W_MAX] __attribute__((aligned(64))); /* (mr, W) another gate's pass */
    const int W = p->W, NB = p->NB;
    rec_tile_pf(p, j, mr, ag[0], NULL, out, pf);
    for (int g = 1; g < p->G; g++) {
        rec_tile_pf(p, j, mr, ag[g], NULL, tmp, NULL);
        for (int r = 0; r < mr; r++)
            memcpy(out + (size_t)r * W + g * NB, tmp + (size_t)r * W + g * NB, (size_t)NB * sizeof(real));
    }
}

/* The panel of block j + 1 when the same thread runs it next (j + 1 < j1), for the first tile of block j
 * to prefetch (rec_tile_pf), else NULL.  With weights larger than the caches (LSTM(2048): 64 MB of W_hh)
 * the first tile of each block waits on memory for its panel; fetched during the block before, it is in
 * L2.  Measurements: docs/tuning.md, Panel prefetch. */
static inline const real *rec_next_panel(const rec_pack *p, int j, int j1) {
    return p->panels && j + 1 < j1 ? p->panels + (size_t)(j + 1) * p->K * p->W : NULL;
}

/* Whether the threads of a step split by blocks of units take each other's last blocks (fr_claim,
 * threads.h) rather than each running its own range: when a step of B rows is work enough that waiting
 * at the barrier for a slower thread costs more than the claims' cache-line transfers (~0.5 us each on
 * these VMs, a few per step).  Measurements: docs/tuning.md, Stealing blocks. */
#ifndef REC_STEAL_FLOPS
#define REC_STEAL_FLOPS 4.0e6
#endif
static inline int rec_steal(int nth, int B, const rec_pack *p) {
    return nth > 1 && (fr_steal_mode() || 2.0 * B * p->K * (double)p->W * p->nblk >= REC_STEAL_FLOPS);
}

/* The block a thread runs next in a step: with claims (steal), the next one it takes (fr_claim; *own and
 * *end as there); without, `next` while it is below j1 (its own range, in order).  -1: none left. */
static inline int rec_next_block(fr_claims_t *c, int steal, int set, int tid, int nth, int next, int j1, int *own,
                                 int *end) {
    if (steal) return fr_claim(c, set, tid, nth, own, end);
    return next < j1 ? next : -1;
}

/* Thread tid's blocks [j0, j1) (rec_thread_blocks of nblk) as its range of claims `set` (fr_claims_set);
 * under fr_steal_mode 2 the last thread's range is all nblk blocks and the others' are empty. */
static inline void rec_claims_fill(fr_claims_t *c, int set, int tid, int nth, int nblk, int j0, int j1) {
    if (fr_steal_mode() == 2) j0 = 0, j1 = tid == nth - 1 ? nblk : 0;
    fr_claims_set(c, set, tid, j0, j1);
}

/* At the start of a parallel region whose first step is s: the claims of steps s and s + 1, then a barrier
 * (also behind whatever each thread computed for its own units before, e.g. the input projection), so no
 * thread takes a block before every range is set.  Each step after the first refills step s + 1's. */
static inline void rec_claims_begin(fr_claims_t *c, fr_barrier_t *bar, int s, int tid, int nth, int nblk, int j0,
                                    int j1) {
    rec_claims_fill(c, s & 1, tid, nth, nblk, j0, j1);
    rec_claims_fill(c, (s + 1) & 1, tid, nth, nblk, j0, j1);
    fr_barrier_wait(bar, tid);
}

/* n operand rows in tiles of at most MR rows, balanced (16 rows with MR = 12 run as 8 + 8, not 12 + 4: a
 * short tile re-reads the whole panel for few rows): tile i of nt covers rows
 * [rec_tile_start(n, nt, i), rec_tile_start(n, nt, i + 1)). */
static inline int rec_ntiles(int n, int MR) { return (n + MR - 1) / MR; }
static inline int rec_tile_start(int n, int nt, int i) { return (int)((long)n * i / nt); }

/* Steps per chunk for a cell that projects x W_ih^T in tiles for a chunk of steps at a time (the GRU's
 * inference forward with a small W_ih; the GEMM projections chunk by seq_proj_chunk): about REC_PROJ_BYTES
 * of projection ((chunk * B, cols) values), which then stays in L2 until the chunk's steps read it back,
 * but at least REC_PROJ_MIN_ROWS rows: W_ih is streamed once per chunk, and when it is larger than the
 * caches one-step chunks of a few rows would stream it from memory every step. */
#ifndef REC_PROJ_BYTES
#define REC_PROJ_BYTES ((size_t)192 << 10)
#endif
#ifndef REC_PROJ_MIN_ROWS
#define REC_PROJ_MIN_ROWS 128
#endif
static int rec_proj_chunk(int S, int B, size_t cols) {
    const size_t b = (size_t)(B > 0 ? B : 1);
    size_t chunk = REC_PROJ_BYTES / ((cols > 0 ? cols : 1) * sizeof(real) * b);
    const size_t least = (REC_PROJ_MIN_ROWS + b - 1) / b;
    if (chunk < least) chunk = least;
    if (chunk > (size_t)S) chunk = (size_t)S;
    return chunk < 1 ? 1 : (int)chunk;
}

/* Units [u0, u0 + nu) of one row's input projection out of its tile row, for the G gates:
 * xw[g*H + u0 + v] = acc[g*NB + v] + bias[g*H + u0 + v] (no bias: a copy). */
static inline void rec_put_gates(int G, int H, int NB, int u0, int nu,
                                 const real *acc,  /* (G, NB) tile row */
                                 const real *bias, /* (G*H) or NULL */
                                 real *xw)         /* (G*H) projection row out */
{
    for (int g = 0; g < G; g++) {
        real *o = xw + (size_t)g * H + u0;                       /* (nu) */
        const real *a = acc + g * NB;                            /* (nu) */
        const real *b = bias ? bias + (size_t)g * H + u0 : NULL; /* (nu) or NULL */
        int v = 0;
#if FR_SIMD
        /* written out: GCC left the loop below scalar, and it was half of the GRU's step outside the tiles */
        for (; v + 8 <= nu; v += 8)
            _mm256_storeu_ps(o + v, b ? _mm256_add_ps(_mm256_loadu_ps(a + v), _mm256_loadu_ps(b + v))
                                      : _mm256_loadu_ps(a + v));
#endif
        for (; v < nu; v++) o[v] = a[v] + (b ? b[v] : (real)0);
    }
}

/* acc[g*NB + v] += xw[g*H + u0 + v] for the G gates: a row's projection into its tile row of the step. */
static inline void rec_add_gates(int G, int H, int NB, int u0, int nu,
                                 const real *xw, /* (G*H) projection row */
                                 real *acc)      /* (G, NB) tile row, in place */
{
    for (int g = 0; g < G; g++) {
        const real *x = xw + (size_t)g * H + u0; /* (nu) */
        real *a = acc + g * NB;                  /* (nu) */
        int v = 0;
#if FR_SIMD
        for (; v + 8 <= nu; v += 8) _mm256_storeu_ps(a + v, _mm256_add_ps(_mm256_loadu_ps(a + v), _mm256_loadu_ps(x + v)));
#endif
        for (; v < nu; v++) a[v] += x[v];
    }
}

/* A tile row out of a row of products computed by GEMM instead (the GRU's and LSTM's single step): acc[g*NB + v] =
 * row[g*H + u0 + v] for the G gates, 0 for v past nu, as a packed panel's zero padding would give. */
static inline void rec_put_tile(int G, int H, int NB, int u0, int nu,
                                const real *row, /* (G*H) */
                                real *acc)       /* (G, NB) tile row out */
{
    for (int g = 0; g < G; g++) {
        memcpy(acc + g * NB, row + (size_t)g * H + u0, (size_t)nu * sizeof(real));
        if (nu < NB) memset(acc + g * NB + nu, 0, (size_t)(NB - nu) * sizeof(real));
    }
}

/* Whether a call of S steps of B rows computes h_{t-1} W_hh^T by the GEMM, each thread for its units,
 * rather than packing W_hh into panels: a single step (T = 1, or every length 1) passes them once, and
 * 16 to 32 rows take the GEMM's transposed path (gk_small_m), which reads W_hh's rows in place.  The
 * cells add their own conditions (gru_single_step, lstm_single_step). */
static inline int rec_step_by_gemm(int S, int B) { return S == 1 && B >= 16 && B <= 32; }

/* Whether a forward with `weight_bytes` of [W_ih | W_hh] and B rows per step should project x per chunk
 * of steps (W_ih streamed once per chunk) rather than fuse it into every step (streamed once per step for
 * B rows): at B <= REC_SPLIT_MAX_B, or above REC_SPLIT_BYTES_PER_ROW of weights per row.  The measurements
 * behind it are in lstm.c (lstm_split). */
#ifndef REC_SPLIT_MAX_B
#define REC_SPLIT_MAX_B 2
#endif
#ifndef REC_SPLIT_BYTES_PER_ROW
#define REC_SPLIT_BYTES_PER_ROW ((size_t)128 << 10)
#endif
static inline int rec_split(int B, size_t weight_bytes) {
    return B <= REC_SPLIT_MAX_B || weight_bytes > REC_SPLIT_BYTES_PER_ROW * (size_t)(B > 0 ? B : 1);
}


/* Threads worth using for T steps of n rows: a barrier costs a cache-line round trip between cores (about
 * 1 us on this project's 2-vCPU VMs, 0.1-0.2 us on bare metal), so a step must carry enough multiply-adds
 * to pay for it; and starting the region's other threads (waking the pool, or an OpenMP team) costs tens of
 * us once, so the whole call must too: a single step of LSTM(128) at B = 1 (131K multiply-adds) took
 * 0.24 ms on 2 threads against 0.04 ms on one.  Measurements: docs/tuning.md, Threads per step. */
#ifndef REC_FMA_PER_THREAD
#define REC_FMA_PER_THREAD 40000.0
#endif
#ifndef REC_FMA_PER_REGION
#define REC_FMA_PER_REGION 1.0e6
#endif
static inline int rec_threads_for(int T, int n, int G, int H, int K, int nblk) {
    double fma = (double)n * G * H * K;
    int nt = fma >= REC_FMA_PER_THREAD && fma * T >= REC_FMA_PER_REGION ? fr_get_num_threads() : 1;
    return nt > nblk ? nblk : nt;
}

/* One thread instead of nth for a forward whose threads would each own fewer than REC_UNITS_PER_THREAD units
 * of a batch of more than REC_NARROW_MAX_B rows: there a second thread's share of the step's product is
 * small while the barrier and the exchange of h_{t-1} each step are not, and one thread ran the step faster
 * (the RNN's forward, the GRU's training forward: docs/tuning.md, GRU training forward threads and RNN
 * forward threads; few rows gain from a second thread). */
#define REC_UNITS_PER_THREAD 64
#define REC_NARROW_MAX_B 4
static inline int rec_narrow_threads(int B, int H, int nth) {
    return nth > 1 && B > REC_NARROW_MAX_B && H < REC_UNITS_PER_THREAD * nth ? 1 : nth;
}

#endif /* FR_RECURRENT_INSTANCE */
