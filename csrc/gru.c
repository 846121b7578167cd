/*
 * gru.c -- the GRU layer, one direction over a whole sequence, gates r, z, n (torch's order):
 *     r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
 *     z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
 *     reset_after = 1 (torch.nn.GRU):   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
 *     reset_after = 0 (Cho et al.):     n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)
 *     h' = (1 - z) * n + z * h,  computed as n + z * (h - n) like torch.
 *
 * Included by instance.h once per dtype and ISA, after rnn.c, whose sequence schedule (seq_*: slots
 * sorted by length, row space, chunks of steps) and helpers this file uses; see the top of rnn.c.
 *
 * Bias folding: b_ih (all three) and b_hr, b_hz are added once per gate; b_hn too when reset_after = 0 (it
 * is outside r there); with reset_after = 1 it must stay inside r * (...).
 *
 * The tape (gru_tape_len = 4*T*B*H elements; rows in row space, only the first N rows used with lengths):
 *   gates (T*B, 3H)  activated r, z, n of every row;
 *   aux   (T*B, H)   reset_after = 1: h_{t-1} W_hn^T + b_hn  (what r multiplies)
 *                    reset_after = 0: r * h_{t-1}             (the operand of W_hn)
 * h_{t-1} itself is not kept: backward reads it from the forward's y (or h0).
 *
 * ---- Forward (docs/design.md, Kernel recipe; the pattern of lstm.c) ------------------------------------
 * The input projection (x W_ih^T + folded biases, into the tape's gates rows in training, or a chunk
 * buffer) is computed a chunk of steps at a time, the chunk's steps then read it back; either way, the step
 * reads only the h part of the panels -- a third less than a fused [W_ih | W_hh] pass, which is what bounds
 * B = 1 (the panels stream from L2) -- and keeps n_x and n_h apart for free.  Two ways to project
 * (gru_gemm_projection): in training and for large W_ih, by GEMM per chunk of >= 1024 rows, one parallel
 * region per chunk whose threads first project their own units (seq_project_units); otherwise inside one
 * region for the whole sequence, each thread projecting every row of a chunk of >= 128 rows onto its own
 * blocks of units in tiles (the same blocks in the W_ih and W_hh packs of recurrent.h): all rows pass a
 * block's panel while it is in L1, and the projection is still in L2 when the steps read it.  Either way
 * only the owner reads those columns again, so no barrier is needed -- except when the steps hand their
 * blocks out by claims (reset_after = 1 with the GEMM projection, steps of enough work: rec_steal,
 * fr_claim), where a barrier follows the projection.
 * Per step, for tiles of active rows and the thread's blocks:
 *   reset_after = 1: h_{t-1} [W_hr, W_hz, W_hn]^T (3 gates in one pass), then the cell on the tile; h is
 *     double-buffered, one barrier per step.
 *   reset_after = 0: phase 1: h_{t-1} [W_hr, W_hz]^T, r and z, and r*h of its units; barrier; phase 2:
 *     (r*h) W_hn^T for its blocks of the W_hn pack (G = 1) and the rest of the cell, writing h in place
 *     (each thread reads back only its own units of h there); barrier.
 *
 * ---- Backward -------------------------------------------------------------------------------------------
 * Per step only the elementwise dG (phase A: each thread its own units, vectorised for float32 AVX2) and the
 * products with the packed W_hh^T (rec_pack_transposed: blocks of output units; a thread's units in phase A
 * are the output units it owns in the products, so the carried dh needs no barrier between steps).  The
 * weight gradients and dx are large GEMMs after the loop.
 *
 * ---- Recurrent dropout (rmask (3, B, H), gates r, z, n, batch order; docs/keras.md) ---------------------
 * Keras 3's GRU with recurrent_dropout: gate g's recurrent product reads h_{t-1} * mask_g (reset_after = 0:
 * n's operand is r * (h_{t-1} * mask_n)); the carry z * h_{t-1} reads the unmasked h_{t-1}.  The forward: each
 * thread makes masked copies of the step's rows of h_{t-1}, one per gate, which rec_tile_gates multiplies
 * gate by gate (G passes over the panels); no single step by GEMM.  The tape's aux is then the masked
 * product (reset_after) or r * h_{t-1} * mask_n.  Backward: each gate's product with W_hh^T is taken on its
 * own rows of the transposed pack (rec_pack_rows) and enters dh_{t-1} times that gate's mask; dW_hh per gate
 * against the masked H_prev (seq_weight_grads; reset_after = 0's dW_hn reads the tape's aux).
 */

static size_t gru_tape_len(int T, int B, int H) { return (size_t)T * (size_t)B * 4 * (size_t)H; }



/* ---- the cell's elementwise math, written once for every width (simd.h) ----------------------------
 * n of reset_after = 1 from r (activated), ph = h_{t-1} W_hn^T + b_hn and xn = x W_in^T + b_in; n of
 * reset_after = 0 from xn and rec = (r*h_{t-1}) W_hn^T; h_t = (1-z)*n + z*h_{t-1} = n + z*(h_{t-1} - n).
 * Backward: from d = dL/dh_t (dy + the carry) and the tape's z, n: *dn = dL/dn_pre, *dz = dL/dz_pre and
 * the carry's part d*z; with reset_after, *dr = dL/dr_pre from r and ph (the tape's aux). */
#define GRU_CELL_MATH(V)                                                                                   \
    static inline V gru_n_after_##V(V r, V ph, V xn) { return V##_tanh(V##_fma(r, ph, xn)); }             \
    static inline V gru_n_before_##V(V xn, V rec) { return V##_tanh(V##_add(xn, rec)); }                  \
    static inline V gru_h_##V(V z, V hp, V n) { return V##_fma(z, V##_sub(hp, n), n); }                   \
    static inline void gru_bwd_##V(V d, V z, V n, V hp, V *dn, V *dz) {                                    \
        const V one = V##_set1((real)1), omz = V##_sub(one, z);                                            \
        *dn = V##_mul(V##_mul(d, omz), V##_fnma(n, n, one));                                               \
        *dz = V##_mul(V##_mul(d, V##_sub(hp, n)), V##_mul(z, omz));                                        \
    }                                                                                                      \
    static inline V gru_bwd_r_##V(V dn, V ph, V r) {                                                       \
        return V##_mul(V##_mul(dn, ph), V##_mul(r, V##_sub(V##_set1((real)1), r)));                        \
    }
FR_EACH_WIDTH(GRU_CELL_MATH)
#undef GRU_CELL_MATH

/* ---- forward: the cells on a tile row ------------------------------------------------------------------ */

/* reset_after = 1, units [u0, u0 + nu) of one row, one by one (gru_cells_after runs the vector widths on
 * whole blocks; this takes the partial last block, and every block when NB is no multiple of 8): acc (3, NB)
 * = h_{t-1} [W_hr, W_hz, W_hn]^T of those units, xw (3H) the row's input projection with the folded
 * biases.  Reads h_{t-1} from hp, writes h_t to hn and y, and the tape when gates / aux are given (gates
 * may be xw itself: each element is read first). */
static inline void gru_cell_after(int H, int NB, int u0, int nu,
                                  const real *acc,  /* (3, NB) */
                                  const real *xw,   /* (3H) x W_ih^T + biases */
                                  const real *b_hn, /* (H) or NULL */
                                  const real *hp,   /* (H) h_{t-1} */
                                  real *hn,         /* (H) h_t out */
                                  real *yr,         /* (H) y row out */
                                  real *gates,      /* (3H) tape row out: r, z, n; or NULL */
                                  real *aux)        /* (H) tape row out: h W_hn^T + b_hn; or NULL */
{
    for (int v = 0; v < nu; v++) {
        const int u = u0 + v;
        real ph = acc[2 * NB + v] + (b_hn ? b_hn[u] : (real)0);
        real r = vr1_sigmoid(xw[u] + acc[v]), z = vr1_sigmoid(xw[H + u] + acc[NB + v]);
        real nn = gru_n_after_vr1(r, ph, xw[2 * H + u]);
        real hv = gru_h_vr1(z, hp[u], nn);
        hn[u] = hv;
        yr[u] = hv;
        if (gates) {
            gates[u] = r;
            gates[H + u] = z;
            gates[2 * H + u] = nn;
            aux[u] = ph;
        }
    }
}

/* Rows x blocks of tiles the step collects before running their cells (see gru_fwd_task). */
#define GRU_GROUP_ROWS 8
static size_t gru_group_rows(int B) { return (size_t)(B > 2 * GRU_GROUP_ROWS ? B : 2 * GRU_GROUP_ROWS); }

/* reset_after = 1: the cells of blocks [ja, jb) and rows 0 .. n-1 of a step.  tb row (j - ja) * n + k is the
 * tile row of block j and row k, (3, NB) as for gru_cell_after; xs (n, 3H) the step's projection (and its
 * tape gates rows when `tape`), aux (n, H) its tape aux rows or NULL.  For float32 AVX2 the cells run in two
 * sweeps over all those rows -- r and z of every row, then n and h -- so that the OoO core overlaps many
 * independent sigmoid and tanh chains instead of waiting on one row's sigmoid -> tanh -> h chain. */
/* Walks the groups of 8 units in the tiles of gru_cells_after in order: tile rows (block ja + jr, sorted
 * row k) one after the other, units v .. v + 8 of the block within each; gru_next returns the group's r
 * part in tb (z at + NB, h part at + 2 NB) with its first unit and row, then steps on (no divisions: this
 * runs for every 8 units of every step). */
typedef struct gru_cursor {
    int jr, k, v;
} gru_cursor;

static inline real *gru_next(gru_cursor *c, real *tb, int W, int n, int ja, int NB, int *u0, int *k) {
    real *t = tb + ((size_t)c->jr * n + c->k) * W + c->v;
    *u0 = (ja + c->jr) * NB + c->v;
    *k = c->k;
    if ((c->v += 8) == NB) {
        c->v = 0;
        if (++c->k == n) c->k = 0, c->jr++;
    }
    return t;
}

static void gru_cells_after(int H, int NB, int ja, int jb, int n,
                            real *tb, int W,        /* (rows, W) tiles; r, z overwritten */
                            real *xs,               /* (n, 3H) */
                            const real *b_hn,       /* (H) or NULL */
                            const real *hprev,      /* (n, H) */
                            real *hnew,             /* (n, H) out */
                            real *const *yr,        /* (n) y rows out */
                            int tape, real *aux)    /* tape gates = xs when tape; aux (n, H) or NULL */
{
    const size_t G3 = (size_t)3 * H;
    int jf = ja; /* blocks [ja, jf) are full and take the vector path, the others the scalar one */
#if FR_SIMD
    if (NB % 8 == 0) {
        /* groups of 8 units: units [u0, u0 + 8) of sorted row k (gru_next) */
        jf = jb * NB > H ? jb - 1 : jb;
        const int m = (jf - ja) * n * (NB / 8);
        int i = 0, ua, ka;
        gru_cursor cur = {0, 0, 0};
#if FR_AVX512
        /* two groups per zmm (low and high halves), in both sweeps: half the sigmoid / tanh instructions */
        for (; i + 2 <= m; i += 2) {
            int ub, kb;
            real *ta = gru_next(&cur, tb, W, n, ja, NB, &ua, &ka), *tb1 = gru_next(&cur, tb, W, n, ja, NB, &ub, &kb);
            const real *xa = xs + (size_t)ka * G3, *xb = xs + (size_t)kb * G3;
            vr16 r = vr16_sigmoid(vr16_add(vm_join8(ta, tb1), vm_join8(xa + ua, xb + ub)));
            vr16 z = vr16_sigmoid(vr16_add(vm_join8(ta + NB, tb1 + NB), vm_join8(xa + H + ua, xb + H + ub)));
            vm_split8(r, ta, tb1);
            vm_split8(z, ta + NB, tb1 + NB);
        }
#endif
        for (; i < m; i++) {
            real *t = gru_next(&cur, tb, W, n, ja, NB, &ua, &ka);
            const real *x = xs + (size_t)ka * G3;
            vr8 r = vr8_sigmoid(vr8_add(vr8_load(t), vr8_load(x + ua)));
            vr8 z = vr8_sigmoid(vr8_add(vr8_load(t + NB), vr8_load(x + H + ua)));
            vr8_store(t, r);
            vr8_store(t + NB, z);
        }
        i = 0;
        cur = (gru_cursor){0, 0, 0};
#if FR_AVX512
        for (; i + 2 <= m; i += 2) {
            int ub, kb;
            const real *ta = gru_next(&cur, tb, W, n, ja, NB, &ua, &ka), *tb1 = gru_next(&cur, tb, W, n, ja, NB, &ub, &kb);
            real *xa = xs + (size_t)ka * G3, *xb = xs + (size_t)kb * G3;
            vr16 r = vm_join8(ta, tb1), z = vm_join8(ta + NB, tb1 + NB), ph = vm_join8(ta + 2 * NB, tb1 + 2 * NB);
            if (b_hn) ph = vr16_add(ph, vm_join8(b_hn + ua, b_hn + ub));
            vr16 nn = gru_n_after_vr16(r, ph, vm_join8(xa + 2 * H + ua, xb + 2 * H + ub));
            vr16 hv = gru_h_vr16(z, vm_join8(hprev + (size_t)ka * H + ua, hprev + (size_t)kb * H + ub), nn);
            vm_split8(hv, hnew + (size_t)ka * H + ua, hnew + (size_t)kb * H + ub);
            vm_split8(hv, yr[ka] + ua, yr[kb] + ub);
            if (tape) {
                vm_split8(r, xa + ua, xb + ub);
                vm_split8(z, xa + H + ua, xb + H + ub);
                vm_split8(nn, xa + 2 * H + ua, xb + 2 * H + ub);
                vm_split8(ph, aux + (size_t)ka * H + ua, aux + (size_t)kb * H + ub);
            }
        }
#endif
        for (; i < m; i++) {
            const real *t = gru_next(&cur, tb, W, n, ja, NB, &ua, &ka);
            real *x = xs + (size_t)ka * G3;
            vr8 r = vr8_load(t), z = vr8_load(t + NB), ph = vr8_load(t + 2 * NB);
            if (b_hn) ph = vr8_add(ph, vr8_load(b_hn + ua));
            vr8 nn = gru_n_after_vr8(r, ph, vr8_load(x + 2 * H + ua));
            vr8 hv = gru_h_vr8(z, vr8_load(hprev + (size_t)ka * H + ua), nn);
            vr8_store(hnew + (size_t)ka * H + ua, hv);
            vr8_store(yr[ka] + ua, hv);
            if (tape) {
                vr8_store(x + ua, r);
                vr8_store(x + H + ua, z);
                vr8_store(x + 2 * H + ua, nn);
                vr8_store(aux + (size_t)ka * H + ua, ph);
            }
        }
    }
#endif
    for (int j = jf; j < jb; j++) {
        const int u0 = j * NB, nu = H - u0 < NB ? H - u0 : NB;
        for (int k = 0; k < n; k++)
            gru_cell_after(H, NB, u0, nu, tb + ((size_t)(j - ja) * n + k) * W, xs + (size_t)k * G3, b_hn,
                           hprev + (size_t)k * H, hnew + (size_t)k * H, yr[k], tape ? xs + (size_t)k * G3 : NULL,
                           aux ? aux + (size_t)k * H : NULL);
    }
}

/* reset_after = 0, phase 1 on V##_W units u .. of one row (v .. of the tile row acc). */
#define GRU_RZ(V)                                                                                          \
    static inline void gru_rz_##V(int H, int NB, int u, int v, const real *acc, const real *h, real *g,    \
                                  real *rh) {                                                              \
        const V r = V##_sigmoid(V##_add(V##_load(g + u), V##_load(acc + v)));                              \
        V##_store(g + u, r);                                                                               \
        V##_store(g + H + u, V##_sigmoid(V##_add(V##_load(g + H + u), V##_load(acc + NB + v))));           \
        V##_store(rh + u, V##_mul(r, V##_load(h + u)));                                                    \
    }
FR_EACH_WIDTH(GRU_RZ)
#undef GRU_RZ

/* reset_after = 0, phase 1 on units [u0, u0 + nu) of one row: acc (2, NB) = h_{t-1} [W_hr, W_hz]^T of those
 * units.  g holds the row's input projection with the folded biases; r and z (activated) replace their
 * parts, n_x stays for phase 2; rh gets r * h. */
static inline void gru_cell_rz(int H, int NB, int u0, int nu,
                               const real *acc, /* (2, NB) */
                               const real *h,   /* (H) h_{t-1} */
                               real *g,         /* (3H) in: projection; out: r, z, n_x */
                               real *rh)        /* (H) out: r * h */
{
    int v = 0;
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) gru_rz_vr8(H, NB, u0 + v, v, acc, h, g, rh);
#endif
    for (; v < nu; v++) gru_rz_vr1(H, NB, u0 + v, v, acc, h, g, rh);
}

/* reset_after = 0, phase 2 on V##_W units u .. of one row (v .. of rec). */
#define GRU_NH(V)                                                                                          \
    static inline void gru_nh_##V(int H, int u, int v, const real *rec, real *g, real *h, real *yr) {      \
        const V nn = gru_n_before_##V(V##_load(g + 2 * H + u), V##_load(rec + v));                        \
        const V hv = gru_h_##V(V##_load(g + H + u), V##_load(h + u), nn);                                  \
        V##_store(g + 2 * H + u, nn);                                                                      \
        V##_store(h + u, hv);                                                                              \
        V##_store(yr + u, hv);                                                                             \
    }
FR_EACH_WIDTH(GRU_NH)
#undef GRU_NH

/* reset_after = 0, phase 2 on units [u0, u0 + nu) of one row: rec (nu) = (r*h) W_hn^T of those units.
 * n = tanh(n_x + rec) replaces n_x in g; h is updated in place and copied to y. */
static inline void gru_cell_n(int H, int u0, int nu,
                              const real *rec, /* (nu) */
                              real *g,         /* (3H) in: r, z, n_x; out: n in place of n_x */
                              real *h,         /* (H) h_{t-1} in, h_t out */
                              real *yr)        /* (H) y row out */
{
    int v = 0;
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) gru_nh_vr8(H, u0 + v, v, rec, g, h, yr);
#endif
    for (; v < nu; v++) gru_nh_vr1(H, u0 + v, v, rec, g, h, yr);
}

/* ---- forward: the parallel region ------------------------------------------------------------------------ */

typedef struct gru_fwd_ctx {
    const fr_seq *q;
    int I, H, reset_after;
    int chunk;               /* steps per chunk of the input projection */
    int s_begin, s_end;      /* the steps this region runs */
    const real *x;           /* (T, B, I) */
    const rec_pack *xp;      /* W_ih packed: G = 3, K = I; NULL: projected by the own GEMM (w_ih) */
    const real *w_ih;        /* (3H, I) */
    const real *xs;          /* (rows of the region's steps, I) x gathered (lengths, no xp), or NULL */
    const rec_pack *hp;      /* W_hh packed: G = 3 (reset_after) or W_h{r,z}: G = 2, K = H */
    const rec_pack *np;      /* W_hn packed, G = 1, K = H (reset_after = 0), else NULL */
    const real *bias;        /* (3H) folded biases, or NULL */
    const real *b_hn;        /* (H) reset_after = 1 only, or NULL */
    real *hbuf[2];           /* (B, H) each, slot order: h_{t-1} / h_t alternating (reset_after = 1);
                                reset_after = 0 updates hbuf[0] in place */
    real *tg, *ta;           /* tape gates (T*B, 3H) and aux (T*B, H), or NULL for inference */
    real *xw;                /* (chunk rows, 3H) projection of a chunk, inference */
    real *rh;                /* (B, H) r*h of a step: reset_after = 0 inference */
    const real *w_hh;        /* (3H, H) */
    real *hh;                /* (B, 3H) h_{t-1} W_hh^T of a single-step call (gru_single_step), else NULL */
    const real *rmask;       /* (3, B, H) recurrent dropout masks, gates r, z, n, batch order, or NULL */
    real *hm;                /* (nthreads, 3, B, H) per thread: h_{t-1} * mask_g; rmask only */
    const real **hq[FR_MAX_THREADS]; /* per thread: (3, B) rows of hm, the gates' operands; rmask only */
    real *y;                 /* (T, B, ldy) */
    int ldy;
    const real **rows[FR_MAX_THREADS]; /* per thread: ((xp ? chunk rows : 0) + 2B) row pointers */
    real *tbuf[FR_MAX_THREADS];        /* per thread: (gru_group_rows(B), W) tiles of a group of blocks */
    int steal;               /* reset_after, GEMM projection: threads take each other's last blocks of a
                                step of >= GRU_GROUP_ROWS rows (fr_claim) */
    fr_barrier_t bar;
    fr_claims_t claims;      /* steal: the blocks of a step */
} gru_fwd_ctx;

/* The training forward (reset_after) projects all rows into the tape before the loop, so a step's cells read
 * rows written long before (3H floats a row, out of cache at large shapes) and store r, z, n over them and
 * the aux row, a line the step has not touched: after all n rows' tiles of a block, a burst of misses.
 * As lstm_prefetch_tape (csrc/lstm.c): ask for those lines before each tile, which has ~10^4 cycles of
 * FMAs for them to arrive under; for steps of many rows (a burst the store buffer and the fill buffers do
 * not absorb) and a deep K (the prefetches' own cost).  Measurements: docs/tuning.md, Tape prefetch.
 * Units [u0, u0 + nu) of mr rows: xs (mr, 3H) the projection rows, aux (mr, H). */
#ifndef GRU_TAPE_PF_ROWS
#define GRU_TAPE_PF_ROWS 32
#endif
#ifndef GRU_TAPE_PF_K
#define GRU_TAPE_PF_K 256
#endif
FR_PREFETCH_FN void gru_prefetch_tape(int H, int u0, int nu, const real *xs, const real *aux, int mr) {
    const size_t G3 = (size_t)3 * H;
    for (int k = 0; k < mr; k++)
        for (int u = u0; u < u0 + nu; u += 64 / (int)sizeof(real)) {
            for (int g = 0; g < 3; g++) __builtin_prefetch(xs + (size_t)k * G3 + (size_t)g * H + u, 1, 2);
            __builtin_prefetch(aux + (size_t)k * H + u, 1, 2);
        }
}

static void gru_fwd_task(void *arg, int tid, int nth) {
    gru_fwd_ctx *cx = (gru_fwd_ctx *)arg;
    const fr_seq *q = cx->q;
    const rec_pack *xp = cx->xp, *hp = cx->hp, *np = cx->np;
    const int I = cx->I, H = cx->H, B = q->B, ra = cx->reset_after, NB = hp->NB;
    const size_t G3 = (size_t)3 * H;
    const int MRx = xp ? rec_tile_rows(xp) : 1, MR = rec_tile_rows(hp);
    real tile[REC_MR_MAX * REC_W_MAX] __attribute__((aligned(64))); /* (MR, W) */
    const size_t crows = xp ? (size_t)cx->chunk * B : 0;
    real *tb = cx->tbuf[tid];          /* (max(B, 2 GRU_GROUP_ROWS), W) tiles of a group of blocks */
    const real **xr = cx->rows[tid];   /* (chunk rows) x rows of a chunk (xp), or none */
    const real **hr = xr + crows;      /* (B) h_{t-1} rows (r*h rows in phase 2) */
    real **yr = (real **)(hr + B);     /* (B) y rows */
    int j0, j1, p0 = 0, p1 = 0;
    rec_thread_blocks(hp->nblk, tid, nth, &j0, &j1); /* xp and hp have the same blocks */
    if (np) rec_thread_blocks(np->nblk, tid, nth, &p0, &p1);
    if (cx->s_begin == 0) { /* the first region: this thread's blocks (steal: a barrier follows) */
        rec_pack_own(xp, tid, nth);
        rec_pack_own(hp, tid, nth);
        rec_pack_own(np, tid, nth);
    }
    int cur = ra ? cx->s_begin & 1 : 0;

    for (int c0 = cx->s_begin; c0 < cx->s_end; c0 += cx->chunk) {
        const int c1 = c0 + cx->chunk < cx->s_end ? c0 + cx->chunk : cx->s_end;
        size_t lo, hi;
        seq_rows(q, c0, c1, &lo, &hi);
        real *xw = cx->tg ? cx->tg + lo * G3 : cx->xw; /* (hi - lo, 3H): row lo + i of row space is row i */
        /* The input projection of the chunk for this thread's blocks (xp): every row passes a block's panel
         * while it is in L1.  Only this thread reads these columns, so no barrier follows (but for steal). */
        if (!xp) /* this thread's units by GEMM (the region runs one chunk) */
            seq_project_units(cx->xs ? cx->xs : cx->x + lo * I, hi - lo, I, cx->w_ih, 3, H, cx->bias, j0 * NB,
                              j1 * NB < H ? j1 * NB : H, xw);
        else
            seq_x_rows(q, c0, c1, lo, cx->x, I, xr);
        for (int j = j0; xp && j < j1; j++) {
            const int u0 = j * NB, nu = rec_block_units(xp, j);
            for (size_t k0 = 0; k0 < hi - lo; k0 += MRx) {
                const int mr = hi - lo - k0 < (size_t)MRx ? (int)(hi - lo - k0) : MRx;
                rec_tile(xp, j, mr, xr + k0, NULL, tile);
                for (int r = 0; r < mr; r++)
                    rec_put_gates(3, H, NB, u0, nu, tile + (size_t)r * xp->W, cx->bias, xw + (k0 + r) * G3);
            }
        }
        if (cx->steal) rec_claims_begin(&cx->claims, &cx->bar, c0, tid, nth, hp->nblk, j0, j1);

        for (int s = c0; s < c1; s++) {
            const int n = seq_active(q, s);
            const size_t r0 = seq_row(q, s);
            if (cx->steal && s > c0) /* step s + 1's claims (rec_claims_begin) */
                rec_claims_fill(&cx->claims, (s + 1) & 1, tid, nth, hp->nblk, j0, j1);
            const real *hprev = cx->hbuf[cur];          /* (B, H) h_{t-1} */
            real *hnew = cx->hbuf[ra ? cur ^ 1 : cur];  /* (B, H) h_t */
            real *xs = xw + (r0 - lo) * G3;             /* (n, 3H) this step's projection */
            for (int k = 0; k < n; k++) {
                const int b = seq_batch(q, k);
                hr[k] = hprev + (size_t)k * H;
                yr[k] = cx->y + ((size_t)seq_time(q, s, b) * B + b) * cx->ldy;
            }
            const real *const *hq[3] = {NULL, NULL, NULL}; /* the gates' masked rows of h_{t-1} (rmask) */
            if (cx->rmask)
                for (int g = 0; g < 3; g++) {
                    const real **rq = cx->hq[tid] + (size_t)g * B;
                    real *mq = cx->hm + ((size_t)tid * 3 + g) * B * H; /* (B, H) */
                    for (int k = 0; k < n; k++) {
                        rec_mask_row(H, hr[k], cx->rmask + ((size_t)g * B + seq_batch(q, k)) * H, mq + (size_t)k * H);
                        rq[k] = mq + (size_t)k * H;
                    }
                    hq[g] = rq;
                }
            if (cx->hh) /* the single step: this thread's units of h_{t-1} W_hh^T by GEMM (no steal) */
                seq_project_units(hprev, (size_t)n, H, cx->w_hh, 3, H, NULL, j0 * NB, j1 * NB < H ? j1 * NB : H,
                                  cx->hh);
            /* Blocks outside, row tiles inside: a block's panel stays in L1/L2 while every row passes it.
             * The tiles of a group of blocks (at least GRU_GROUP_ROWS rows x blocks) go to tb first and
             * the cells run after them: the cells' long sigmoid -> tanh chains of many independent rows
             * then overlap, where a cell right after its own tile would expose its latency (B = 1). */
            const int gsz = n >= GRU_GROUP_ROWS ? 1 : (GRU_GROUP_ROWS + n - 1) / n;
            const int steal = cx->steal && gsz == 1; /* then one block a group */
            for (int ja = j0, own = 1, end = j1;
                 (ja = rec_next_block(&cx->claims, steal, s & 1, tid, nth, ja, j1, &own, &end)) >= 0; ja += gsz) {
                const int jb = ja + gsz < j1 || steal ? ja + gsz : j1;
                /* Odd steps take a group's blocks in reverse: the panels a step read last are still in L1
                 * when the next one starts (B = 1: 4 blocks of 24 KB a thread, GRU 100,1 x1.02-1.04). */
                const int rev = (s & 1) && !steal;
                for (int jj = ja; jj < jb; jj++) {
                    const int j = rev ? ja + jb - 1 - jj : jj;
                    if (cx->hh) { /* the tiles are the GEMM's columns of the block's units */
                        for (int k = 0; k < n; k++)
                            rec_put_tile(3, H, NB, j * NB, rec_block_units(hp, j), cx->hh + (size_t)k * G3,
                                         tb + ((size_t)(j - ja) * n + k) * hp->W);
                        continue;
                    }
                    for (int i = 0, nt = rec_ntiles(n, MR); i < nt; i++) {
                        const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
                        real *tj = tb + ((size_t)(j - ja) * n + k0) * hp->W;
                        if (cx->ta && ra && n >= GRU_TAPE_PF_ROWS && hp->K >= GRU_TAPE_PF_K)
                            gru_prefetch_tape(H, j * NB, rec_block_units(hp, j), xs + (size_t)k0 * G3,
                                              cx->ta + (r0 + k0) * H, mr);
                        const real *pf = i == 0 && own && !rev ? rec_next_panel(hp, j, end) : NULL;
                        if (cx->rmask) { /* gate by gate, each on its own masked rows */
                            const real *const *hqk[3] = {hq[0] + k0, hq[1] + k0, hq[2] + k0};
                            rec_tile_gates(hp, j, mr, hqk, tj, pf);
                        } else {
                            rec_tile_pf(hp, j, mr, hr + k0, NULL, tj, pf);
                        }
                    }
                }
                if (ra)
                    gru_cells_after(H, NB, ja, jb, n, tb, hp->W, xs, cx->b_hn, hprev, hnew, yr, cx->tg != NULL,
                                    cx->ta ? cx->ta + r0 * H : NULL);
                else
                    for (int j = ja; j < jb; j++)
                        for (int k = 0; k < n; k++)
                            gru_cell_rz(H, NB, j * NB, rec_block_units(hp, j), tb + ((size_t)(j - ja) * n + k) * hp->W,
                                        cx->rmask ? hq[2][k] : hprev + (size_t)k * H, xs + (size_t)k * G3,
                                        cx->ta ? cx->ta + (r0 + k) * H : cx->rh + (size_t)k * H);
            }
            if (fr_barrier_wait_stop(&cx->bar, tid)) return; /* interrupted (threads.h): all stop here */
            if (ra) {
                /* h_t went to the other buffer: threads still reading h_{t-1} are not disturbed, and the
                 * next step writes only the buffer no one reads after the barrier above. */
                cur ^= 1;
                continue;
            }
            /* reset_after = 0, phase 2: (r*h) W_hn^T for this thread's blocks of the W_hn pack, then n, h. */
            const int MRn = rec_tile_rows(np);
            for (int k = 0; k < n; k++) hr[k] = cx->ta ? cx->ta + (r0 + k) * H : cx->rh + (size_t)k * H;
            for (int j = p0; j < p1; j++) {
                const int u0 = j * np->NB, nu = rec_block_units(np, j);
                for (int i = 0, nt = rec_ntiles(n, MRn); i < nt; i++) {
                    const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
                    rec_tile_pf(np, j, mr, hr + k0, NULL, tile, i == 0 ? rec_next_panel(np, j, p1) : NULL);
                    for (int r = 0; r < mr; r++) {
                        const size_t k = (size_t)(k0 + r);
                        gru_cell_n(H, u0, nu, tile + (size_t)r * np->W, xs + k * G3, hnew + k * H, yr[k]);
                    }
                }
            }
            fr_barrier_wait(&cx->bar, tid);
        }
    }
}

/* Whether the forward computes x W_ih^T (+ biases) by GEMM per chunk of >= 1024 rows before each chunk's
 * region (seq_project_units; in training all rows at once, into the tape) rather than in each thread's
 * tiles per chunk of >= 128 rows inside the region (which then reads it back from L2).  Measurements:
 * docs/tuning.md, GRU input projection by GEMM.  A call of at most REC_DIRECT_ROWS rows (streaming step())
 * keeps the unpacked weights in place. */
#ifndef GRU_GEMM_PROJ_BYTES
#define GRU_GEMM_PROJ_BYTES ((size_t)1 << 20)
#endif
static int gru_gemm_projection(size_t rows, int training, int I, int H) {
    return rows > REC_DIRECT_ROWS && (training || (size_t)3 * H * (size_t)I * sizeof(real) > GRU_GEMM_PROJ_BYTES);
}

/* rec_step_by_gemm for the GRU: reset_after only (reset_after = 0 multiplies r*h in a second phase).
 * Measurements: docs/tuning.md, Single step by GEMM. */
static int gru_single_step(const fr_seq *q, int ra) {
    return ra && rec_step_by_gemm(q->S, q->B);
}

/* The training forward's threads: rec_narrow_threads's rule.  There the step's tape writes (r, z, n, aux: 4H a
 * row) add to what the second thread does not repay: two threads ran it slower than one (docs/tuning.md,
 * GRU training forward threads).  Inference keeps rec_threads_for's count (even or faster there). */
static int gru_train_threads(int training, int B, int H, int nth) {
    return training ? rec_narrow_threads(B, H, nth) : nth;
}

static int gru_forward(int T, int B, int I, int H, int reset_after, int reverse,
                       const int *lengths, /* (B) or NULL */
                       const real *rmask,  /* (3, B, H) recurrent dropout masks, or NULL */
                       const real *x,      /* (T, B, I) */
                       const real *h0,     /* (B, H) or NULL */
                       const real *w_ih,   /* (3H, I) */
                       const real *w_hh,   /* (3H, H) */
                       const real *b_ih,   /* (3H) or NULL */
                       const real *b_hh,   /* (3H) or NULL */
                       real *y, int ldy,   /* (T, B, ldy >= H) out */
                       real *hn,           /* (B, H) out */
                       real *tape) {       /* (gru_tape_len) out, or NULL for inference */
    fr_seq q;
    if (seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    const int G3 = 3 * H;
    const int ra = reset_after != 0;
    gru_fwd_ctx cx;
    rec_pack xp = {0}, hp = {0}, np = {0};
    real *hh = NULL; /* (B, 3H) h0 W_hh^T: a single step (gru_single_step) */
    real *hm = NULL; /* (nthreads, 3, B, H) masked copies of h_{t-1}: rmask only */
    const real **hqp = NULL; /* (nthreads, 3B) their row pointers */
    const real **rowptrs = NULL;
    real *tbufs = NULL;
    int rc = FR_ENOMEM;
    /* The projection of a chunk of steps is read back by the steps of that chunk (in training from the
     * tape's gates rows): rec_proj_chunk sizes the chunk. */
    const int gm = gru_gemm_projection((size_t)T * B, tape != NULL, I, H);
    const size_t gather = q.len ? (size_t)I : 0;
    const int chunk = gm ? seq_proj_chunk(&q, (tape ? 0 : (size_t)G3) + gather, tape && !q.len) : rec_proj_chunk(q.S, B, G3);
    const size_t crows = (size_t)chunk * (size_t)B;
    real *xg = gm && gather ? fr_alloc(crows * I, 0) : NULL; /* (chunk rows, I) x rows: GEMM with lengths */
    real *bias = (b_ih || b_hh) ? fr_alloc((size_t)G3, 0) : NULL; /* (3H) folded biases */
    real *h = fr_alloc((size_t)B * H, 0);                           /* (B, H) state, slot order */
    real *h2 = ra ? fr_alloc((size_t)B * H, 0) : NULL;              /* (B, H) the other buffer */
    real *xw = tape ? NULL : fr_alloc(crows * G3, 0);               /* (chunk rows, 3H) projection */
    real *rh = (!ra && !tape) ? fr_alloc((size_t)B * H, 0) : NULL;  /* (B, H) r*h */
    if (((b_ih || b_hh) && bias == NULL) || h == NULL || (ra && h2 == NULL) || (!tape && xw == NULL) ||
        (!ra && !tape && rh == NULL))
        goto done;
    if ((gm && gather && xg == NULL) || (!gm && rec_pack_init(&xp, 3, H, w_ih, I, I, NULL, 0, 0, (size_t)T * B) != FR_OK))
        goto done;
    const int single = !rmask && gru_single_step(&q, ra); /* masked: the gates' products apart */
    if (rec_pack_init(&hp, ra ? 3 : 2, H, w_hh, H, H, NULL, 0, 0, single ? 0 : (size_t)T * B) != FR_OK) goto done;
    if (single && (hh = fr_alloc((size_t)B * G3, 0)) == NULL) goto done;
    if (!ra && rec_pack_init(&np, 1, H, w_hh + 2 * (size_t)H * H, H, H, NULL, 0, 0, (size_t)T * B) != FR_OK) goto done;

    if (bias) /* b_ih + b_hh, without b_hn when reset_after (it is applied inside r * (...)) */
        for (int k = 0; k < G3; k++)
            bias[k] = (b_ih ? b_ih[k] : (real)0) + (b_hh && (k < 2 * H || !ra) ? b_hh[k] : (real)0);
    seq_load_state(&q, H, h0, h);
    seq_zero_padding(&q, y, ldy, H);

    memset(&cx, 0, sizeof cx);
    cx.q = &q;
    cx.I = I;
    cx.H = H;
    cx.reset_after = ra;
    cx.chunk = chunk;
    cx.x = x;
    cx.xp = gm ? NULL : &xp;
    cx.w_ih = w_ih;
    cx.xs = xg;
    cx.hp = &hp;
    cx.np = ra ? NULL : &np;
    cx.bias = bias;
    cx.b_hn = (ra && b_hh) ? b_hh + 2 * (size_t)H : NULL;
    cx.hbuf[0] = h;
    cx.hbuf[1] = h2;
    cx.tg = tape;
    cx.ta = tape ? tape + (size_t)T * (size_t)B * G3 : NULL;
    cx.xw = xw;
    cx.rh = rh;
    cx.w_hh = w_hh;
    cx.hh = hh;
    cx.y = y;
    cx.ldy = ldy;
    const int nth = gru_train_threads(tape != NULL, B, H, rec_threads_for(T, B, 3, H, I + H, hp.nblk));
    cx.steal = reset_after && gm && !single && rec_steal(nth, B, &hp);
    const size_t per = (gm ? 0 : crows) + 2 * (size_t)B; /* row pointers per thread */
    const size_t tbn = gru_group_rows(B) * (size_t)hp.W;
    if ((rowptrs = (const real **)malloc(sizeof(real *) * (per * nth + 1))) == NULL) goto done;
    if ((tbufs = fr_alloc(tbn * nth, 0)) == NULL) goto done;
    for (int t = 0; t < nth; t++) {
        cx.rows[t] = rowptrs + per * t;
        cx.tbuf[t] = tbufs + tbn * t;
    }
    if (rmask) {
        if ((hm = fr_alloc((size_t)nth * 3 * B * H, 0)) == NULL) goto done;
        if ((hqp = (const real **)malloc(sizeof(real *) * (3 * (size_t)B * nth + 1))) == NULL) goto done;
        for (int t = 0; t < nth; t++) cx.hq[t] = hqp + 3 * (size_t)B * t;
        cx.rmask = rmask;
        cx.hm = hm;
    }
    /* GEMM projection: one region per chunk; tiles: one region for all steps, chunked inside */
    seq_run_chunks(&q, gm ? chunk : q.S, x, I, xg, &cx.s_begin, &cx.s_end, nth, gru_fwd_task, &cx, &cx.bar);
    if (fr_region_stopped(&cx.bar)) {
        rc = FR_EINTR;
        goto done;
    }

    if (ra) /* slot j's last state is in the buffer of the parity of its step count */
        for (int j = 0; j < B; j++) {
            int len = lengths ? lengths[seq_batch(&q, j)] : q.S;
            if (len & 1) memcpy(h + (size_t)j * H, h2 + (size_t)j * H, sizeof(real) * (size_t)H);
        }
    seq_store_state(&q, H, h, hn);
    rc = FR_OK;

done:
    free(rowptrs);
    free(hqp);
    fr_free(hm);
    fr_free(tbufs);
    fr_free(bias);
    fr_free(h);
    fr_free(h2);
    fr_free(xw);
    fr_free(xg);
    fr_free(rh);
    fr_free(hh);
    rec_pack_free(&xp);
    rec_pack_free(&hp);
    rec_pack_free(&np);
    seq_free(&q);
    return rc;
}

/*
 * Backward.  Per row, with d = dy + dh (the gradient reaching h'), from h' = n + z*(h - n):
 *     dn_pre = d (1 - z) (1 - n^2)          dz_pre = d (h - n) z (1 - z)        dh = d z + ...
 *   reset_after = 1 (a = h W_hn^T + b_hn from the tape):
 *     dr_pre = dn_pre a r (1 - r),   dL/da = dn_pre r,   dh += [dr_pre, dz_pre, dn_pre r] W_hh
 *   reset_after = 0 (drh = dL/d(r*h) = dn_pre W_hn):
 *     dr_pre = drh h r (1 - r),      dh += drh r + [dr_pre, dz_pre] W_h{r,z}
 * dg holds the input side [dr_pre, dz_pre, dn_pre]; the recurrent side is the same except its n column,
 * dn_rec = dL/da, kept apart in dnr with reset_after (without, dn_rec = dn_pre).  Then
 *     dW_ih = dg^T X,   dx = dg W_ih,   db_ih = colsum dg                       (one GEMM each)
 *     dW_h{r,z} = dg_rz^T H_prev,  dW_hn = dn_rec^T (reset_after ? H_prev : r*H_prev),
 *     db_hh = colsum [dg_rz | dn_rec].
 * The products are seq.h's shared tail (seq_weight_grads, dW_hn as its seq_rec_tail); the column sums are
 * seq.h's shared bias path (seq_db), summed in the step: phase A for dz, dn_pre and with reset_after dr and
 * dn_rec, phase B1 for dr without.
 *
 * The time loop is one parallel region.  Thread tid owns the output blocks [j0, j1) of the transposed packs
 * (units [u0, u1)); per step:
 *   A   dG of its units from the tape (elementwise), dh = d z for its units;  barrier
 *   reset_after = 1:  B  dh[own] += [dr, dz, dn_rec] W_hh   (reads dG of all units)
 *   reset_after = 0:  B1 drh[own] = dn W_hn, then dr and dh += drh r on its units;  barrier
 *                     B2 dh[own] += [dr, dz] W_h{r,z}
 * The next step's A reads only the thread's own units of dh and writes the dG rows of another step, so no
 * barrier closes the step.
 */

typedef struct gru_bwd_ctx {
    const fr_seq *q;
    int H, reset_after;
    const real *h0;          /* (B, H) or NULL */
    const real *zero;        /* (H) zeros: h_{t-1} at the first step without h0 */
    const real *y;           /* (T, B, ldy) */
    int ldy;
    const real *tg, *ta;     /* tape gates (T*B, 3H), aux (T*B, H) */
    const real *dy;          /* (T, B, lddy) */
    int lddy;
    const rec_pack *tp;      /* W_hh^T (K = 3H, K1 = 2H: the operand is [dg_rz | dnr]) with reset_after,
                                else W_h{r,z}^T (K = 2H) */
    const rec_pack *tn;      /* W_hn^T (K = H), reset_after = 0 only */
    const real *rmask;       /* (3, B, H) the forward's recurrent dropout masks, batch order, or NULL */
    real *dh;                /* (B, H) dL/dh carried, slot order */
    real *dg;                /* (N, 3H) input-side dG: dr_pre, dz_pre, dn_pre */
    real *dnr;               /* (N, H) dn_rec = dn_pre r, reset_after only */
    double *db;              /* (4H) column sums (seq_db, seq.h) of dr, dz, dn_pre, dn_rec, or NULL */
    const real **rows[FR_MAX_THREADS]; /* per thread: (3B) row pointers of a step */
    atomic_int *done;        /* the lowest step whose dg (and dnr) rows are complete (seq_backward), or NULL */
    fr_barrier_t bar;
    atomic_int done_at;      /* what done points to */
} gru_bwd_ctx;

/* Phase A on V##_W units u .. of one row: g's parts r, z, n are dL/d of the pre-activations; their bias
 * sums into db (4H: r, z, n, n_rec; dr here with reset_after only, else in phase B1), when not NULL. */
#define GRU_ROWA(V)                                                                                        \
    static inline void gru_rowA_##V(int H, int u, int reset_after, const real *dyr, real *dhr,             \
                                    const real *hp, const real *gt, const real *au, real *g, real *dnr,    \
                                    double *db) {                                                          \
        const V d = V##_add(V##_load(dyr + u), V##_load(dhr + u));                                         \
        const V z = V##_load(gt + H + u);                                                                  \
        V dn, dz;                                                                                          \
        gru_bwd_##V(d, z, V##_load(gt + 2 * H + u), V##_load(hp + u), &dn, &dz);                           \
        V##_store(g + H + u, dz);                                                                          \
        V##_store(dhr + u, V##_mul(d, z));                                                                 \
        if (reset_after) {                                                                                 \
            const V r = V##_load(gt + u);                                                                  \
            const V dr = gru_bwd_r_##V(dn, V##_load(au + u), r), dnr_ = V##_mul(dn, r);                    \
            V##_store(g + u, dr);                                                                          \
            V##_store(dnr + u, dnr_);                                                                      \
            if (db) {                                                                                      \
                V##_acc_f64(db + u, dr);                                                                   \
                V##_acc_f64(db + 3 * (size_t)H + u, dnr_);                                                 \
            }                                                                                              \
        }                                                                                                  \
        V##_store(g + 2 * H + u, dn);                                                                      \
        if (db) {                                                                                          \
            V##_acc_f64(db + H + u, dz);                                                                   \
            V##_acc_f64(db + 2 * (size_t)H + u, dn);                                                       \
        }                                                                                                  \
    }
FR_EACH_WIDTH(GRU_ROWA)
#undef GRU_ROWA

/* Phase A on units [u0, u1) of one row. */
static inline void gru_bwd_rowA(int H, int u0, int u1, int reset_after,
                                const real *dyr, /* (H) dL/dy_t */
                                real *dhr,       /* (H) in: carried dL/dh_t; out: d z */
                                const real *hp,  /* (H) h_{t-1} */
                                const real *gt,  /* (3H) tape: r, z, n */
                                const real *au,  /* (H) tape aux */
                                real *g,         /* (3H) out: dG (dr_pre only with reset_after) */
                                real *dnr,       /* (H) out: dn_pre r (reset_after), or NULL */
                                double *db)      /* (4H) += the bias sums (GRU_ROWA), or NULL */
{
    int u = u0;
#if FR_SIMD
    for (; u + 8 <= u1; u += 8) gru_rowA_vr8(H, u, reset_after, dyr, dhr, hp, gt, au, g, dnr, db);
#endif
    for (; u < u1; u++) gru_rowA_vr1(H, u, reset_after, dyr, dhr, hp, gt, au, g, dnr, db);
}

/* dh rows += tiles of [a1 | a2] rows @ block j of the transposed pack p (all n rows, tiles of MR); the
 * first tile prefetches the panel of block j + 1 when it is below j1 (rec_next_panel). */
static void gru_bwd_product(const rec_pack *p, int j, int j1, int n, const real *const *a1, const real *const *a2,
                            real *dh, int H, real *tile) /* dh (n, H) */
{
    const int MR = rec_tile_rows(p), u0 = j * p->NB, nu = rec_block_units(p, j);
    for (int i = 0, nt = rec_ntiles(n, MR); i < nt; i++) {
        const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
        rec_tile_pf(p, j, mr, a1 + k0, a2 ? a2 + k0 : NULL, tile, i == 0 ? rec_next_panel(p, j, j1) : NULL);
        for (int r = 0; r < mr; r++) {
            real *d = dh + (size_t)(k0 + r) * H + u0;
            const real *t = tile + (size_t)r * p->W;
            for (int v = 0; v < nu; v++) d[v] += t[v];
        }
    }
}

/* Recurrent dropout: dh rows += mask_g * (tiles of gate g's operand rows @ rows [g H, (g + 1) H) of block j of
 * the transposed pack p) for gates g < G: the operand a[k] + g H for g < 2, an[k] for g = 2. */
static void gru_bwd_product_masked(const fr_seq *q, const rec_pack *p, int j, int G, int n,
                                   const real *const *a,  /* (n) rows of dg (3H) */
                                   const real *const *an, /* (n) rows of dn_rec (G = 3), or unused */
                                   const real *mask,      /* (3, B, H) batch order */
                                   real *dh, int H, real *tile) /* dh (n, H) */
{
    const int MR = rec_tile_rows(p), u0 = j * p->NB, nu = rec_block_units(p, j);
    const real *op[REC_MR_MAX];
    for (int g = 0; g < G; g++) {
        const rec_pack c = rec_pack_rows(p, j, g * H, H); /* gate g's rows of block j */
        for (int i = 0, nt = rec_ntiles(n, MR); i < nt; i++) {
            const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
            for (int r = 0; r < mr; r++) op[r] = g < 2 ? a[k0 + r] + (size_t)g * H : an[k0 + r];
            rec_tile_pf(&c, 0, mr, op, NULL, tile, NULL);
            for (int r = 0; r < mr; r++) {
                real *d = dh + (size_t)(k0 + r) * H + u0;
                const real *m = mask + ((size_t)g * q->B + seq_batch(q, k0 + r)) * H + u0;
                const real *t = tile + (size_t)r * p->W;
                for (int v = 0; v < nu; v++) d[v] += m[v] * t[v];
            }
        }
    }
}

static void gru_bwd_task(void *arg, int tid, int nth) {
    gru_bwd_ctx *cx = (gru_bwd_ctx *)arg;
    const fr_seq *q = cx->q;
    const rec_pack *tp = cx->tp, *tn = cx->tn;
    const int H = cx->H, B = q->B, ra = cx->reset_after;
    const size_t G3 = (size_t)3 * H;
    real tile[REC_MR_MAX * REC_W_MAX] __attribute__((aligned(64)));
    const real **ar = cx->rows[tid]; /* (B) operand rows of the products */
    const real **hr = ar + B;        /* (B) h_{t-1} rows */
    const real **nr = hr + B;        /* (B) dn_rec rows */
    int j0, j1;
    rec_thread_blocks(tp->nblk, tid, nth, &j0, &j1);
    const int u0 = j0 * tp->NB, u1 = j1 * tp->NB < H ? j1 * tp->NB : H;
    rec_pack_transposed_own(tp, tid, nth); /* each thread reads only its own blocks of both */
    rec_pack_transposed_own(tn, tid, nth);

    for (int s = q->S - 1; s >= 0; s--) {
        const int n = seq_active(q, s);
        const size_t row = seq_row(q, s);
        for (int k = 0; k < n; k++) {
            const int b = seq_batch(q, k);
            const size_t t = (size_t)seq_time(q, s, b);
            const real *hp = seq_prev(q, s, b, cx->y, cx->ldy, cx->h0, H, cx->zero);
            hr[k] = hp;
            if (u0 < u1)
                gru_bwd_rowA(H, u0, u1, ra, cx->dy + (t * B + b) * (size_t)cx->lddy, cx->dh + (size_t)k * H, hp,
                             cx->tg + (row + k) * G3, cx->ta + (row + k) * H, cx->dg + (row + k) * G3,
                             ra ? cx->dnr + (row + k) * H : NULL, cx->db);
        }
        if (fr_barrier_wait_stop(&cx->bar, tid)) return; /* interrupted (threads.h): every thread stops here */
        if (ra) {
            if (cx->done) atomic_store_explicit(cx->done, s, memory_order_release); /* (one thread: all of dg_t) */
            for (int k = 0; k < n; k++) {
                ar[k] = cx->dg + (row + k) * G3;
                nr[k] = cx->dnr + (row + k) * H;
            }
            for (int j = j0; j < j1; j++)
                if (cx->rmask) gru_bwd_product_masked(q, tp, j, 3, n, ar, nr, cx->rmask, cx->dh, H, tile);
                else gru_bwd_product(tp, j, j1, n, ar, nr, cx->dh, H, tile);
            continue;
        }
        /* B1: drh = dn W_hn for own units, then dr_pre and the direct path drh * r into dh */
        for (int k = 0; k < n; k++) ar[k] = cx->dg + (row + k) * G3 + 2 * H;
        const int MR = rec_tile_rows(tn);
        for (int j = j0; j < j1; j++) {
            const int v0 = j * tn->NB, nu = rec_block_units(tn, j);
            for (int i = 0, nt = rec_ntiles(n, MR); i < nt; i++) {
                const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
                rec_tile(tn, j, mr, ar + k0, NULL, tile);
                for (int r = 0; r < mr; r++) {
                    const size_t k = (size_t)(k0 + r);
                    const real *drh = tile + (size_t)r * tn->W;
                    const real *rv = cx->tg + (row + k) * G3 + v0;
                    const real *hp = hr[k] + v0;
                    real *gr = cx->dg + (row + k) * G3 + v0;
                    real *dhk = cx->dh + k * H + v0;
                    if (cx->rmask) { /* the operand was r * (h_{t-1} * mask_n) */
                        const real *mn = cx->rmask + ((size_t)2 * B + seq_batch(q, (int)k)) * H + v0;
                        for (int v = 0; v < nu; v++) {
                            gr[v] = drh[v] * hp[v] * mn[v] * (rv[v] * ((real)1 - rv[v]));
                            dhk[v] += drh[v] * rv[v] * mn[v];
                        }
                    } else {
                        for (int v = 0; v < nu; v++) {
                            gr[v] = drh[v] * hp[v] * (rv[v] * ((real)1 - rv[v]));
                            dhk[v] += drh[v] * rv[v];
                        }
                    }
                    if (cx->db) seq_db_row(nu, gr, cx->db + v0); /* dr's bias sums (this phase's units) */
                }
            }
        }
        fr_barrier_wait(&cx->bar, tid);
        if (cx->done) atomic_store_explicit(cx->done, s, memory_order_release); /* (one thread: all of dg_t) */
        /* B2: dh += [dr, dz] W_h{r,z} for own units */
        for (int k = 0; k < n; k++) ar[k] = cx->dg + (row + k) * G3;
        for (int j = j0; j < j1; j++)
            if (cx->rmask) gru_bwd_product_masked(q, tp, j, 2, n, ar, NULL, cx->rmask, cx->dh, H, tile);
            else gru_bwd_product(tp, j, j1, n, ar, NULL, cx->dh, H, tile);
    }
}

static int gru_backward(int T, int B, int I, int H, int reset_after, int reverse,
                        const int *lengths,       /* (B) or NULL */
                        const real *rmask,        /* (3, B, H) the forward's recurrent dropout masks, or NULL */
                        const real *x,            /* (T, B, I) */
                        const real *h0,           /* (B, H) or NULL */
                        const real *w_ih,         /* (3H, I) */
                        const real *w_hh,         /* (3H, H) */
                        const real *y, int ldy,   /* (T, B, ldy) from the training forward */
                        const real *tape,         /* (gru_tape_len) from the training forward */
                        const real *dy, int lddy, /* (T, B, lddy >= H) */
                        const real *dhn,          /* (B, H) or NULL */
                        real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */
                        real *dh0,                /* (B, H) out */
                        real *dw_ih,              /* (3H, I) out */
                        real *dw_hh,              /* (3H, H) out */
                        real *db_ih,              /* (3H) out, or NULL */
                        real *db_hh) {            /* (3H) out, or NULL */
    fr_seq q;
    if (seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    const int G3 = 3 * H;
    const int ra = reset_after != 0;
    const real *aux = tape + (size_t)T * (size_t)B * G3;        /* (T*B, H) see the top of the file */
    gru_bwd_ctx cx;
    rec_pack tp = {0}, tn = {0};
    const real **rowptrs = NULL;

    int rc = FR_ENOMEM;
    seq_db db = {0}; /* (4H) bias sums: dr, dz, dn_pre, dn_rec (seq.h) */
    real *dg = fr_alloc(q.N * G3, 0);                           /* (N, 3H) input-side dG */
    real *dnr = ra ? fr_alloc(q.N * H, 0) : NULL;               /* (N, H) dn_rec, reset_after only */
    real *dh = fr_alloc((size_t)B * H, 0);                      /* (B, H) dL/dh carried, slot order */
    real *zero = fr_alloc((size_t)H, 1);                        /* (H) h0 when h0 is NULL */
    if (dg == NULL || (ra && dnr == NULL) || dh == NULL || zero == NULL) goto done;
    if (seq_db_init(&db, 4 * H, db_ih || db_hh) != FR_OK) goto done;
    if (rec_pack_transposed(&tp, H, ra ? G3 : 2 * H, w_hh, H, q.N) != FR_OK) goto done;
    if (ra) tp.K1 = 2 * H; /* the operand rows are [dg_rz | dnr]: the panels do not depend on K1 */
    if (!ra && rec_pack_transposed(&tn, H, H, w_hh + 2 * (size_t)H * H, H, q.N) != FR_OK) goto done;

    seq_load_state(&q, H, dhn, dh);
    memset(&cx, 0, sizeof cx);
    cx.q = &q;
    cx.H = H;
    cx.reset_after = ra;
    cx.h0 = h0;
    cx.zero = zero;
    cx.y = y;
    cx.ldy = ldy;
    cx.tg = tape;
    cx.ta = aux;
    cx.dy = dy;
    cx.lddy = lddy;
    cx.tp = &tp;
    cx.tn = ra ? NULL : &tn;
    cx.rmask = rmask;
    cx.dh = dh;
    cx.dg = dg;
    cx.dnr = dnr;
    cx.db = db.acc;
    const int nth = rec_threads_for(T, B, 3, H, H, tp.nblk);
    const int mode = seq_overlap_mode(&q, (double)B * 3 * H * H, nth);
    const int nloop = mode ? 1 : nth; /* the loop's threads */
    if (mode) cx.done = &cx.done_at;
    if ((rowptrs = (const real **)malloc(sizeof(real *) * (3 * (size_t)B * nloop + 1))) == NULL) goto done;
    for (int t = 0; t < nloop; t++) cx.rows[t] = rowptrs + (size_t)3 * B * t;

    /* The loop, then the weight gradients and dx as large GEMMs over all rows (seq.h), or both side by side
     * (seq_backward): dW_h{r,z} by dg_rz and H_prev, dW_hn by the recurrent-side n column dn_rec and its own
     * operand: H_prev with reset_after (dn_rec = dnr), else r*h_{t-1} from the tape's aux (dn_rec = dn_pre,
     * dg's n column).
     * Masked (rmask): dW_h{r,z} against H_prev * mask_{r,z}; dW_hn against H_prev * mask_n (reset_after) or
     * the tape's aux, which is then r * h_{t-1} * mask_n. */
    const seq_rec_tail tail = {H, ra ? dnr : dg + 2 * (size_t)H, ra ? H : G3, ra ? NULL : aux,
                               ra && rmask ? rmask + (size_t)2 * B * H : NULL};
    const seq_wg wg = {&q, T, B, reverse, G3, I, H, (size_t)H + (size_t)I, dg, x, y, ldy, h0, rmask, 2, w_ih,
                       &tail, dx, dx_accumulate, dw_ih, dw_hh};
    if ((rc = seq_backward(&wg, mode, nth, gru_bwd_task, &cx, &cx.bar, cx.done)) != FR_OK) goto done;
    if (dh0) seq_store_state(&q, H, dh, dh0);
    /* db_ih = colsum [dr, dz, dn_pre], db_hh = colsum [dr, dz, dn_rec] (dn_rec = dn_pre without reset_after) */
    seq_db_store(&db, 0, G3, db_ih);
    seq_db_store(&db, 0, 2 * H, db_hh);
    seq_db_store(&db, ra ? G3 : 2 * H, H, db_hh ? db_hh + 2 * H : NULL);
    rc = FR_OK;

done:
    free(rowptrs);
    fr_free(dg);
    fr_free(dnr);
    fr_free(dh);
    fr_free(zero);
    seq_db_free(&db);
    rec_pack_free(&tp);
    rec_pack_free(&tn);
    seq_free(&q);
    return rc;
}
