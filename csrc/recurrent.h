/*
 * recurrent.h -- the recurrent product of a time step, h_{t-1} W^T, for one block of hidden units and all
 * G gates of those units at once, out of weights packed so that block is contiguous (DESIGN.md's recipe).
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

/* Most accumulator rows of a tile: 12 of the 16 AVX2 registers hold accumulators (rows x vectors). */
#define REC_MR_MAX 4
/* Widest panel row, in elements (float32 LSTM: 4 gates x 8 units). */
#define REC_W_MAX 64

typedef struct rec_pack {
    int G, H;      /* W is (G*H, K) */
    int K1, K;     /* K = K1 + K2: the first K1 columns multiply the first operand (x), the rest the second (h) */
    int NB;        /* units per block */
    int W;         /* G*NB: a panel row */
    int nblk;      /* ceil(H / NB) */
    real *panels;  /* (nblk, K, W) */
} rec_pack;

static int rec_units_per_block(int G) {
#if FR_DOUBLE
    return G == 1 ? 16 : 4; /* 4 doubles = one AVX2 vector per gate */
#else
    return G == 1 ? 32 : 8; /* 8 floats = one AVX2 vector per gate */
#endif
}

static void rec_pack_free(rec_pack *p) {
    free(p->panels);
    p->panels = NULL;
}

/* Packs [W1 | W2] ((G*H, K1) beside (G*H, K2), row strides ld1, ld2) along K; w2 may be NULL (K2 = 0).
 * FR_ENOMEM when the panels cannot be allocated. */
static int rec_pack_init(rec_pack *p, int G, int H,
                         const real *w1, int K1, int ld1, /* (G*H, ld1 >= K1) */
                         const real *w2, int K2, int ld2) /* (G*H, ld2 >= K2) or NULL */
{
    p->G = G;
    p->H = H;
    p->K1 = K1;
    p->K = K1 + (w2 ? K2 : 0);
    p->NB = rec_units_per_block(G);
    p->W = G * p->NB;
    p->nblk = (H + p->NB - 1) / p->NB;
    p->panels = fr_alloc((size_t)p->nblk * p->K * p->W, 1);
    if (p->panels == NULL) return FR_ENOMEM;
    for (int j = 0; j < p->nblk; j++) {
        real *pj = p->panels + (size_t)j * p->K * p->W; /* (K, G, NB) */
        for (int g = 0; g < G; g++)
            for (int v = 0; v < p->NB && j * p->NB + v < H; v++) {
                size_t row = (size_t)g * H + (size_t)j * p->NB + v;
                for (int k = 0; k < K1; k++) pj[(size_t)k * p->W + g * p->NB + v] = w1[row * ld1 + k];
                for (int k = K1; k < p->K; k++) pj[(size_t)k * p->W + g * p->NB + v] = w2[row * ld2 + k - K1];
            }
    }
    return FR_OK;
}

/* Packs W^T for the backward product dh_{t-1} = dG_t W: W is (K, H) row-major (torch's weight_hh, K = G*H
 * gate rows, H = its input width P), and the panels are those of the (H, K) matrix W^T with G = 1: block j
 * covers output units [j*NB, j*NB + NB), panel_j[k][v] = W[k][j*NB + v].  FR_ENOMEM on failure. */
static int rec_pack_transposed(rec_pack *p, int H, int K,
                               const real *w, int ldw) /* (K, ldw >= H) */
{
    p->G = 1;
    p->H = H;
    p->K1 = K;
    p->K = K;
    p->NB = rec_units_per_block(1);
    p->W = p->NB;
    p->nblk = (H + p->NB - 1) / p->NB;
    p->panels = fr_alloc((size_t)p->nblk * K * p->W, 1);
    if (p->panels == NULL) return FR_ENOMEM;
    for (int j = 0; j < p->nblk; j++) {
        real *pj = p->panels + (size_t)j * K * p->W; /* (K, NB) */
        int nu = H - j * p->NB < p->NB ? H - j * p->NB : p->NB;
        for (int k = 0; k < K; k++)
            memcpy(pj + (size_t)k * p->W, w + (size_t)k * ldw + (size_t)j * p->NB, (size_t)nu * sizeof(real));
    }
    return FR_OK;
}

/* Units of block j that exist (the last block may be partial). */
static inline int rec_block_units(const rec_pack *p, int j) {
    int u = p->H - j * p->NB;
    return u < p->NB ? u : p->NB;
}

/* The tile kernels compute out (mr, W) = sum_k a(r, k) panel(k, :), where row r of the operand is a1[r]
 * for k < K1 and a2[r] for the rest (x_t then h_{t-1}: the input projection and the recurrent product in
 * one pass).  Rows come as pointers, so the permuted / per-sequence-time rows of variable lengths cost
 * nothing. */
#if FR_AVX2 && !FR_DOUBLE
/* rec_k4_row, rec_k4_2, rec_k4_3 (4 vectors per panel row: LSTM, RNN), rec_k3_row .. rec_k3_4 (3: GRU) and
 * rec_k2_row .. rec_k2_4 (2: the GRU's r, z of reset_after = 0):
 * MR rows x NV vectors of accumulators in registers over the whole K loop (at most 12 of the 16); one row
 * alone would chain every FMA on the previous one (4 cycles of latency, 2 issued per cycle), so the row
 * kernels keep even and odd k apart. */
#include "tiles_avx2.h"
#endif

/* Rows of one tile: as many as keep the accumulators in registers. */
static inline int rec_tile_rows(const rec_pack *p) {
#if FR_AVX2 && !FR_DOUBLE
    return p->W == 24 || p->W == 16 ? 4 : 3;
#else
    (void)p;
    return REC_MR_MAX;
#endif
}

/* out (mr, W) = [a1 rows | a2 rows] @ panel of block j, mr <= rec_tile_rows(p); a2 is only read when the
 * pack has a second segment. */
static void rec_tile(const rec_pack *p, int j, int mr,
                     const real *const *a1, /* (mr) rows of K1 */
                     const real *const *a2, /* (mr) rows of K - K1, or unused */
                     real *out)             /* (mr, W) */
{
    const real *panel = p->panels + (size_t)j * p->K * p->W; /* (K, W) */
#if FR_AVX2 && !FR_DOUBLE
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

/* Blocks [*j0, *j1) of thread tid out of nth: contiguous, balanced. */
static inline void rec_thread_blocks(int nblk, int tid, int nth, int *j0, int *j1) {
    *j0 = (int)((long)nblk * tid / nth);
    *j1 = (int)((long)nblk * (tid + 1) / nth);
}

/* Threads worth using for a step of n rows: a barrier costs a cache-line round trip between cores (about
 * 1 us on this project's 2-vCPU VMs, 0.1-0.2 us on bare metal), so a step must carry enough multiply-adds
 * to pay for it.  Tuned with bench/ (README). */
#ifndef REC_FMA_PER_THREAD
#define REC_FMA_PER_THREAD 200000.0
#endif
static inline int rec_threads_for(int n, int G, int H, int K, int nblk) {
    double fma = (double)n * G * H * K;
    int nt = fma >= REC_FMA_PER_THREAD ? fr_get_num_threads() : 1;
    return nt > nblk ? nblk : nt;
}

#endif /* FR_RECURRENT_INSTANCE */
