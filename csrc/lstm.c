/*
 * lstm.c -- LSTM forward and backward (BPTT) over a whole sequence: one layer, one direction.
 *
 * Included by instance.h once per dtype and ISA (csrc/isa/), written against `real`; everything here is
 * static and prefixed lstm_ because rnn.c and gru.c share the translation unit.
 *
 * Math (torch.nn.LSTM), gates i, f, g, o, pre-activations z = x W_ih^T + b_ih + h W_hh^T + b_hh:
 *   i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)
 *   c' = f*c + i*g,  m = o*tanh(c'),  h' = m  (P == H)  or  h' = m W_hr^T  (projection, P < H)
 *
 * Recipe (docs/design.md, Kernel recipe): the input projection of many steps is one GEMM; the time loop
 * does per step only the recurrent product and the elementwise cell; backward does per step only the
 * elementwise dG and dh_{t-1} = dG W_hh, and the weight gradients afterwards as big GEMMs over all rows
 * (seq_weight_grads, seq.h).
 *
 * ---- Row order ("compact rows") ------------------------------------------------------------------------
 * Every per-(step, sequence) array below -- the tape, dG -- holds one row per VALID (time, sequence) pair,
 * in seq.h's row space: without lengths row t*B + b, exactly the time-major order of x, y and dx, so those
 * serve the big GEMMs in place; with lengths the batch is sorted by length (slot k is sequence perm[k]) and
 * step s has the rows off[s] .. off[s] + n_s - 1 of its n_s active slots, so nothing is computed for
 * padding and x / dx / y are gathered / scattered where needed.
 *
 * ---- Tape (training) -----------------------------------------------------------------------------------
 *   gates (T*B, 4H)  activated i, f, g, o  (compact rows; the first N = sum of lengths are used)
 *   c     (T*B, H)   c_t after the step
 *   m     (T*B, H)   o * tanh(c_t), only with projection (backward needs it for dW_hr; without projection
 *                    m = h = y, which backward receives anyway)
 * The gates region first receives the input projection, then the step turns it into activated gates in
 * place, so training needs no separate (T, B, 4H) buffer.
 */

/* ---- forward: the fused step ------------------------------------------------------------------------
 * Parallel regions run the time loop, one per chunk of steps.  Per step, each thread takes its blocks of
 * hidden units and, for each tile of active rows, computes x_t W_ih^T + h_{t-1} W_hh^T for all four gates
 * of those units in one pass over the packed [W_ih | W_hh] panel (recurrent.h), then the cell on that tile
 * while it is in registers / L1, writing c, h_t (or m) and y; fused, one region runs every step.  When the
 * weights are large for the rows of a step (lstm_split), x W_ih^T is instead computed by GEMM per chunk of
 * steps, each thread projecting its own units at the start of the chunk's region (seq_project_units, into
 * the tape's gate rows in training; all rows at once then), and the step multiplies by W_hh alone and
 * adds its row of that projection.  h_t goes to the other of two state buffers, so threads still reading
 * h_{t-1} are not disturbed; one barrier per step (two with projection, whose product needs all of m).
 * With small weights and enough rows (lstm_rowsplit) the threads split the rows instead: no barrier.
 * Split by units, a step of enough work (rec_steal) hands its blocks out by claims (fr_claim): a thread
 * runs its own range, then takes the last blocks of another's; the projection (split) is then followed by
 * a barrier, since a thread may run units another projected.
 * Recurrent dropout (rmask, docs/keras.md): gate q's product reads h_{t-1} * mask_q, Keras's one mask per
 * gate.  A masked call always splits (x W_ih^T by GEMM: the masks concern h only) and each thread makes
 * its own masked copies of the step's rows of h_{t-1}, one per gate (4 n P multiplies, next to the step's
 * 4 n P H / nth multiply-adds), which rec_tile_gates multiplies gate by gate. */

typedef struct lstm_fwd_ctx {
    const fr_seq *pl;
    int I, H, P;
    const real *x;           /* (T, B, I) */
    const rec_pack *wp;      /* packed [W_ih | W_hh] (G = 4, K = I + P), or W_hh alone (K = P) when split */
    int split;               /* the step adds a row of x W_ih^T, projected at the start of the region */
    int rowsplit;            /* threads split the rows, not the units (lstm_rowsplit; fused only) */
    int steal;               /* by units, threads take each other's last blocks of a step (rec_steal) */
    const real *rmask;       /* (4, B, P) recurrent dropout masks, gates i, f, g, o, batch order, or NULL */
    real *hm;                /* (nthreads, 4, B, P) per thread: h_{t-1} * mask_q; rmask only */
    const real **hq[FR_MAX_THREADS]; /* per thread: (4, B) rows of hm, the gates' operands; rmask only */
    const real *w_ih;        /* (4H, I), split */
    const real *w_hh;        /* (4H, P) */
    real *hh;                /* (B, 4H) h_{t-1} W_hh^T of a single-step call (lstm_single_step), else NULL */
    const real *xs;          /* (rows of the region's steps, I) x gathered (lengths), or NULL: x's own rows */
    real *xw;                /* (rows of the region's steps, 4H) that projection: inference; training: tg */
    int s_begin, s_end;      /* the steps this region runs */
    const rec_pack *rp;      /* packed W_hr: G = 1 over P outputs, K = H; NULL without projection */
    const real *bias;        /* (4H) b_ih + b_hh, or NULL */
    real *c;                 /* (B, H) cell state, sorted rows */
    real *hbuf[2];           /* (B, P) each: h_{t-1} and h_t, sorted rows, alternating; hbuf[0] first */
    real *mb;                /* (B, H) m of a step: projection, inference */
    real *tg, *tc, *tm;      /* tape gates (T*B, 4H), c and m (T*B, H), or NULL for inference */
    real *y;                 /* (T, B, ldy) */
    int ldy;
    const real **rows[FR_MAX_THREADS]; /* per thread: (3B) row pointers */
    fr_barrier_t bar;
    fr_claims_t claims;      /* steal: the blocks of a step */
} lstm_fwd_ctx;

/* ---- the cell's elementwise math, forward and backward, written once for every width (simd.h) --------
 * Forward on one vector of units: z (4) pre-activations i, f, g, o and cp = c_{t-1} give a (4) the
 * activated gates, *c = c_t = f*c_{t-1} + i*g and *m = o*tanh(c_t). */
#define LSTM_CELL_FWD(V)                                                                                   \
    static inline void lstm_fwd_##V(const V z[4], V cp, V a[4], V *c, V *m) {                             \
        a[0] = V##_sigmoid(z[0]);                                                                          \
        a[1] = V##_sigmoid(z[1]);                                                                          \
        a[2] = V##_tanh(z[2]);                                                                             \
        a[3] = V##_sigmoid(z[3]);                                                                          \
        *c = V##_fmma(a[1], cp, a[0], a[2]);                                                               \
        *m = V##_mul(a[3], V##_tanh(*c));                                                                  \
    }
FR_EACH_WIDTH(LSTM_CELL_FWD)
#undef LSTM_CELL_FWD

/* Backward on one vector of units, from the tape: a (4) activated gates, c = c_t, cp = c_{t-1}, dm =
 * dL/dm_t and the carry dc = dL/dc_t from later steps give dz (4) = dL/dz of i, f, g, o, and the carry
 * dL/dc_{t-1} in *dcp.  tanh(c_t) is recomputed (with the forward's own approximation) rather than taped:
 * one tanh per element is cheap next to the products, and the tape stays at 5H per row. */
#define LSTM_CELL_BWD(V)                                                                                   \
    static inline void lstm_bwd_##V(const V a[4], V c, V cp, V dm, V dc, V dz[4], V *dcp) {               \
        const V one = V##_set1((real)1);                                                                   \
        const V i = a[0], f = a[1], g = a[2], o = a[3];                                                    \
        const V th = V##_tanh(c);                                                                          \
        const V dmo = V##_mul(dm, o);                                                                      \
        const V dct = V##_fma(dmo, V##_fnma(th, th, one), dc); /* dc_t = carry + dm * o * (1 - th^2) */    \
        dz[0] = V##_mul(V##_mul(dct, g), V##_mul(i, V##_sub(one, i)));                                     \
        dz[1] = V##_mul(V##_mul(dct, cp), V##_mul(f, V##_sub(one, f)));                                    \
        dz[2] = V##_mul(V##_mul(dct, i), V##_fnma(g, g, one));                                             \
        dz[3] = V##_mul(V##_mul(dmo, th), V##_sub(one, o));                                                \
        *dcp = V##_mul(dct, f);                                                                            \
    }
FR_EACH_WIDTH(LSTM_CELL_BWD)
#undef LSTM_CELL_BWD

/* The forward cell on V##_W units of one tile row: units u .. of the H-strided rows, v .. of the tile's
 * gate-major (4, NB) row acc. */
#define LSTM_TILE_CELL(V)                                                                                  \
    static inline void lstm_tile_##V(int H, int NB, int u, int v,                                          \
                                     const real *acc,  /* (4, NB) */                                       \
                                     const real *bias, /* (4H) or NULL */                                  \
                                     real *gates,      /* (4H) tape row, or NULL */                        \
                                     real *c,          /* (H) */                                           \
                                     real *m,          /* (H) */                                           \
                                     real *yr)         /* (H), or NULL */                                  \
    {                                                                                                      \
        V z[4], a[4], cn, mv;                                                                              \
        for (int q = 0; q < 4; q++) {                                                                      \
            z[q] = V##_load(acc + q * NB + v);                                                             \
            if (bias) z[q] = V##_add(z[q], V##_load(bias + (size_t)q * H + u));                            \
        }                                                                                                  \
        lstm_fwd_##V(z, V##_load(c + u), a, &cn, &mv);                                                     \
        if (gates)                                                                                         \
            for (int q = 0; q < 4; q++) V##_store(gates + (size_t)q * H + u, a[q]);                        \
        V##_store(c + u, cn);                                                                              \
        V##_store(m + u, mv);                                                                              \
        if (yr) V##_store(yr + u, mv);                                                                     \
    }
FR_EACH_WIDTH(LSTM_TILE_CELL)
#undef LSTM_TILE_CELL

/* The cell on one tile row: units [u0, u0 + nu) of one sequence, 8 at a time where the width has them,
 * then one by one.  acc (4, NB) = x_t W_ih^T + h_{t-1} W_hh^T of those units, gate-major within the block. */
static inline void lstm_tile_cell(int H, int NB, int u0, int nu,
                                  const real *acc,  /* (4, NB) */
                                  const real *bias, /* (4H) or NULL */
                                  real *gates,      /* (4H) tape row: activated i, f, g, o; or NULL */
                                  real *c,          /* (H) row of the cell state */
                                  real *m,          /* (H) row of m = o * tanh(c) (= h_t without projection) */
                                  real *yr)         /* (H) row of y, or NULL (projection: y is h_t, later) */
{
    int v = 0;
#if FR_SIMD
    if (NB == 8)
        for (; v + 8 <= nu; v += 8) lstm_tile_vr8(H, NB, u0 + v, v, acc, bias, gates, c, m, yr);
#endif
    for (; v < nu; v++) lstm_tile_vr1(H, NB, u0 + v, v, acc, bias, gates, c, m, yr);
}

#if FR_AVX512
/* The cell on two groups of 8 units at once, group 0 in the low half of each zmm and group 1 in the high
 * half: two rows of the same 8 units, or 16 consecutive units of one row (two blocks: B = 1, or the pairs
 * of blocks of lstm_fwd_task).
 * Each pointer is already at the group's first unit; gate q of a group is at acc + 8q, and at + qH in the
 * H-strided rows (bias, gates). */
typedef struct lstm_half {
    const float *acc;   /* (4, 8) tile row part */
    const float *bias;  /* gate rows at the units, stride H, or NULL */
    float *gates;       /* tape gate rows at the units, stride H, or NULL */
    float *c, *m, *y;   /* (8) each; y NULL with projection */
    float *tc;          /* (8) tape row of c at the units, or NULL (inference) */
} lstm_half;

/* row: b's units follow a's in the same row (b.x == a.x + 8 for every pointer but acc), so the loads and
 * stores of bias, gates, c, m and y are whole zmm; the callers pass a constant, and the branches fold. */
static inline void lstm_cell16(int H, int row, lstm_half a, lstm_half b) {
    vr16 p[4];
    for (int q = 0; q < 4; q++) {
        p[q] = vm_join8(a.acc + q * 8, b.acc + q * 8);
        if (a.bias) p[q] = vr16_add(p[q], vm_load16(row, a.bias + (size_t)q * H, b.bias + (size_t)q * H));
    }
    vr16 ga[4], cn, mv;
    lstm_fwd_vr16(p, vm_load16(row, a.c, b.c), ga, &cn, &mv);
    if (a.gates)
        for (int q = 0; q < 4; q++) vm_store16(row, ga[q], a.gates + (size_t)q * H, b.gates + (size_t)q * H);
    vm_store16(row, cn, a.c, b.c);
    /* the tape's copy of c from the register: a 64-byte memcpy from c would load across the two 32-byte
     * stores just made (row = 0), which the CPU cannot forward (a stall of the store buffer's drain) */
    if (a.tc) vm_store16(row, cn, a.tc, b.tc);
    vm_store16(row, mv, a.m, b.m);
    if (a.y) vm_store16(row, mv, a.y, b.y);
}
#endif

#if FR_AVX512
/* The lstm_half of tile row acc: sorted row k of the step whose rows start at r0, units from u0. */
static inline lstm_half lstm_row_half(const lstm_fwd_ctx *cx, real *m, real **yr, const real *bias,
                                      const real *acc, size_t r0, size_t k, int u0) {
    const int H = cx->H;
    lstm_half h = {acc, bias ? bias + u0 : NULL, cx->tg ? cx->tg + (r0 + k) * 4 * (size_t)H + u0 : NULL,
                   cx->c + k * H + u0, m + k * H + u0, cx->rp ? NULL : yr[k] + u0,
                   cx->tc ? cx->tc + (r0 + k) * H + u0 : NULL};
    return h;
}
#endif

/* The training forward writes its tape (5H floats a row: the gates and c) to lines it has not touched
 * since the backward before, if ever: each store of a cell misses and first fetches its line, in a burst
 * after each tile, so the store buffer fills and the cell waits.  Asking for those lines (into L2) before
 * the tile's products, ~10^4 cycles of FMAs for them to arrive under, halves the cells' time in a training
 * forward -- for tiles of many rows (a burst of mr * 8 stores -- 4 gates and c to the tape, c, m, y -- past what the store buffer holds) and a deep
 * K (the prefetches cost ~1 cycle each: 2-3% of a K = 256 tile).  Measurements: docs/tuning.md, Tape
 * prefetch.  Units [u0, u0 + nu) of the mr tape rows from `row`. */
#ifndef LSTM_TAPE_PF_MR
#define LSTM_TAPE_PF_MR 10
#endif
#ifndef LSTM_TAPE_PF_K
#define LSTM_TAPE_PF_K 512
#endif
FR_PREFETCH_FN void lstm_prefetch_tape(const lstm_fwd_ctx *cx, int u0, int nu, size_t row, int mr) {
    const int H = cx->H;
    const size_t H4 = (size_t)4 * H;
    for (int r = 0; r < mr; r++, row++)
        for (int u = u0; u < u0 + nu; u += 64 / (int)sizeof(real)) {
            for (int q = 0; q < 4; q++) __builtin_prefetch(cx->tg + row * H4 + (size_t)q * H + u, 1, 2);
            __builtin_prefetch(cx->tc + row * H + u, 1, 2);
        }
}

static void lstm_fwd_task(void *arg, int tid, int nth) {
    lstm_fwd_ctx *cx = (lstm_fwd_ctx *)arg;
    const fr_seq *pl = cx->pl;
    const rec_pack *wp = cx->wp, *rp = cx->rp;
    const int I = cx->I, H = cx->H, P = cx->P, B = pl->B;
    const size_t H4 = (size_t)4 * H;
    const int MR = rec_tile_rows(wp);
    /* (MR, W) each: a block's tile, two for the AVX-512 pairs of blocks */
    real tile[(FR_AVX512 ? 2 : 1) * REC_MR_MAX * REC_W_MAX] __attribute__((aligned(64)));
    const int split = cx->split;
    const real **xr = cx->rows[tid];  /* (B) x rows of a step (fused) */
    const real **hr = xr + B;         /* (B) h_{t-1} rows (m rows in the projection phase) */
    real **yr = (real **)(hr + B);    /* (B) y rows */
    /* By units (each thread its blocks of every row, a barrier per step) or by rows (rowsplit: each thread
     * all blocks of its rows, no barrier: the rows of an RNN are independent) */
    int j0 = 0, j1 = wp->nblk, q0 = 0, q1 = rp ? rp->nblk : 0, k_lo = 0, k_hi = B;
    if (cx->rowsplit) {
        rec_thread_blocks(B, tid, nth, &k_lo, &k_hi);
    } else {
        rec_thread_blocks(wp->nblk, tid, nth, &j0, &j1);
        if (rp) rec_thread_blocks(rp->nblk, tid, nth, &q0, &q1);
    }
    if (cx->s_begin == 0) { /* the first region: this thread's blocks (steal: a barrier follows) */
        rec_pack_own(wp, tid, nth);
        rec_pack_own(rp, tid, nth);
        if (cx->rowsplit) fr_barrier_wait(&cx->bar, tid); /* each thread reads every block */
    }
    int cur = cx->s_begin & 1; /* h_{t-1} of step s is in hbuf[s & 1] */
    size_t lo = 0, hi = 0;
    seq_rows(pl, cx->s_begin, cx->s_end, &lo, &hi);
    real *xw = split ? (cx->tg ? cx->tg + lo * H4 : cx->xw) : NULL; /* (hi - lo, 4H): row lo + i is row i */
    if (split) /* this thread's units of the projection: without stealing only it reads them, no barrier */
        seq_project_units(cx->xs ? cx->xs : cx->x + lo * I, hi - lo, I, cx->w_ih, 4, H, NULL, j0 * wp->NB,
                          j1 * wp->NB < H ? j1 * wp->NB : H, xw);
    if (cx->steal) rec_claims_begin(&cx->claims, &cx->bar, cx->s_begin, tid, nth, wp->nblk, j0, j1);
    const real *bias = cx->bias;
    for (int s = cx->s_begin; s < cx->s_end; s++) {
        const int n = seq_active(pl, s);
        const int ka = k_lo, kb = k_hi < n ? k_hi : n; /* this thread's active rows [ka, kb) */
        const size_t r0 = seq_row(pl, s);
        if (cx->steal && s > cx->s_begin) /* step s + 1's claims (rec_claims_begin) */
            rec_claims_fill(&cx->claims, (s + 1) & 1, tid, nth, wp->nblk, j0, j1);
        const real *hp = cx->hbuf[cur];                       /* (B, P) h_{t-1} */
        real *hn = cx->hbuf[cur ^ 1];                         /* (B, P) h_t */
        real *m = rp ? (cx->tm ? cx->tm + r0 * H : cx->mb) : hn; /* (n, H) */
        /* operand and output rows of this step (sorted row k is sequence perm[k] at its own time) */
        for (int k = ka; k < kb; k++) {
            const size_t row = (size_t)seq_slot_time(pl, s, k) * B + seq_batch(pl, k);
            if (!split) xr[k] = cx->x + row * I;
            hr[k] = hp + (size_t)k * P;
            yr[k] = cx->y + row * cx->ldy;
        }
        const real *const *hq[4] = {NULL, NULL, NULL, NULL}; /* the gates' masked rows (rmask) */
        if (cx->rmask)
            for (int q = 0; q < 4; q++) {
                const real **rq = cx->hq[tid] + (size_t)q * B;
                real *mq = cx->hm + ((size_t)tid * 4 + q) * B * P; /* (B, P) */
                for (int k = ka; k < kb; k++) {
                    rec_mask_row(P, hr[k], cx->rmask + ((size_t)q * B + seq_batch(pl, k)) * P, mq + (size_t)k * P);
                    rq[k] = mq + (size_t)k * P;
                }
                hq[q] = rq;
            }
        if (cx->hh) /* the single step: this thread's units of h_{t-1} W_hh^T by GEMM (no steal) */
            seq_project_units(hp, (size_t)n, P, cx->w_hh, 4, H, NULL, j0 * wp->NB,
                              j1 * wp->NB < H ? j1 * wp->NB : H, cx->hh);
        /* blocks outside, row tiles inside: a block's panel stays in L2 while every row passes it */
        int j = j0;
#if FR_AVX512
        /* one row (B = 1): two blocks' tiles, then their 16 consecutive units in one zmm cell */
        if (n == 1 && !cx->rowsplit && wp->NB == 8) {
            /* the pairs of full blocks; odd steps take them in reverse, so the panels the step before read
             * last are still in L1 */
            const int np = j1 > j0 ? (j1 - j0 - (rec_block_units(wp, j1 - 1) < 8)) / 2 : 0;
            for (int q = 0; q < np; q++) {
                const int j = j0 + 2 * ((s & 1) ? np - 1 - q : q), u0 = j * 8;
                for (int h = 0; h < 2; h++) {
                    real *t = tile + (size_t)h * wp->W;
                    if (cx->rmask) {
                        rec_tile_gates(wp, j + h, 1, hq, t, NULL);
                        rec_add_gates(4, H, 8, u0 + 8 * h, 8, xw + (r0 - lo) * H4, t);
                    } else if (split) {
                        rec_tile(wp, j + h, 1, hr, NULL, t);
                        rec_add_gates(4, H, 8, u0 + 8 * h, 8, xw + (r0 - lo) * H4, t);
                    } else {
                        rec_tile(wp, j + h, 1, xr, hr, t);
                    }
                }
                lstm_cell16(H, 1, lstm_row_half(cx, m, yr, bias, tile, r0, 0, u0),
                            lstm_row_half(cx, m, yr, bias, tile + wp->W, r0, 0, u0 + 8));
            }
            j = j0 + 2 * np;
        }
#endif
        /* (a step of one row runs the blocks above, statically) */
        const int steal = cx->steal && n > 1;
        for (int own = 1, end = j1;
             (j = rec_next_block(&cx->claims, steal, s & 1, tid, nth, j, j1, &own, &end)) >= 0; j++) {
            const int u0 = j * wp->NB, nu = rec_block_units(wp, j);
            /* AVX-512, blocks of 8 units: two full blocks at a time when both are this thread's (not claimed),
             * so that a zmm cell takes 16 consecutive units of one row -- whole-vector loads and stores of
             * the gates, c, m and y, where two rows per zmm split every store in two */
            int nbk = 1;
#if FR_AVX512
            if (!steal && wp->NB == 8 && nu == 8 && j + 1 < end && rec_block_units(wp, j + 1) == 8) nbk = 2;
#endif
            for (int i = 0, nt = rec_ntiles(kb - ka, MR); i < nt; i++) {
                const int k0 = ka + rec_tile_start(kb - ka, nt, i), mr = ka + rec_tile_start(kb - ka, nt, i + 1) - k0;
                if (cx->tg && !split && mr >= LSTM_TAPE_PF_MR && wp->K >= LSTM_TAPE_PF_K)
                    lstm_prefetch_tape(cx, u0, nbk * wp->NB, r0 + (size_t)k0, mr);
                for (int b = 0; b < nbk; b++) { /* the tiles of blocks j .. j + nbk - 1 */
                    const int jb = j + b, ub = u0 + b * wp->NB, nub = rec_block_units(wp, jb);
                    real *t = tile + (size_t)b * REC_MR_MAX * REC_W_MAX;
                    const real *pf = i == 0 && own ? rec_next_panel(wp, jb, end) : NULL;
                    if (split) {
                        if (cx->rmask) {
                            const real *const *hqk[4] = {hq[0] + k0, hq[1] + k0, hq[2] + k0, hq[3] + k0};
                            rec_tile_gates(wp, jb, mr, hqk, t, pf);
                        } else if (cx->hh) /* the GEMM's columns of the block's units */
                            for (int r = 0; r < mr; r++)
                                rec_put_tile(4, H, wp->NB, ub, nub, cx->hh + (size_t)(k0 + r) * H4,
                                             t + (size_t)r * wp->W);
                        else
                            rec_tile_pf(wp, jb, mr, hr + k0, NULL, t, pf);
                        for (int r = 0; r < mr; r++)
                            rec_add_gates(4, H, wp->NB, ub, nub, xw + (r0 - lo + (size_t)(k0 + r)) * H4,
                                          t + (size_t)r * wp->W);
                    } else {
                        rec_tile_pf(wp, jb, mr, xr + k0, hr + k0, t, pf);
                    }
                }
                int r = 0;
#if FR_AVX512
                if (nbk == 2) /* 16 units of one row per zmm */
                    for (; r < mr; r++) {
                        const size_t k = (size_t)(k0 + r);
                        lstm_cell16(H, 1, lstm_row_half(cx, m, yr, bias, tile + (size_t)r * wp->W, r0, k, u0),
                                    lstm_row_half(cx, m, yr, bias, tile + REC_MR_MAX * REC_W_MAX + (size_t)r * wp->W,
                                                  r0, k, u0 + 8));
                    }
                if (nu == 8 && wp->NB == 8) /* two rows per zmm: half the sigmoid / tanh instructions */
                    for (; r + 2 <= mr; r += 2) {
                        const size_t k = (size_t)(k0 + r);
                        lstm_cell16(H, 0, lstm_row_half(cx, m, yr, bias, tile + (size_t)r * wp->W, r0, k, u0),
                                    lstm_row_half(cx, m, yr, bias, tile + (size_t)(r + 1) * wp->W, r0, k + 1, u0));
                    }
#endif
                for (; r < mr; r++) {
                    const size_t k = (size_t)(k0 + r);
                    lstm_tile_cell(H, wp->NB, u0, nu, tile + (size_t)r * wp->W, bias,
                                   cx->tg ? cx->tg + (r0 + k) * H4 : NULL, cx->c + k * H, m + k * H,
                                   rp ? NULL : yr[k]);
                    if (cx->tc) memcpy(cx->tc + (r0 + k) * H + u0, cx->c + k * H + u0, nu * sizeof(real));
                }
            }
            j += nbk - 1;
        }
        if (cx->rowsplit ? fr_stop_alone(&cx->bar) : fr_barrier_wait_stop(&cx->bar, tid))
            return; /* interrupted (threads.h): every thread stops here */
        if (rp) { /* h_t = m W_hr^T: this thread's blocks of the P outputs (of its rows: rowsplit) */
            const int MRp = rec_tile_rows(rp);
            for (int k = ka; k < kb; k++) hr[k] = m + (size_t)k * H; /* the operand is m now */
            for (int q = q0; q < q1; q++) {
                const int p0 = q * rp->NB, np = rec_block_units(rp, q);
                for (int i = 0, nt = rec_ntiles(kb - ka, MRp); i < nt; i++) {
                    const int k0 = ka + rec_tile_start(kb - ka, nt, i), mr = ka + rec_tile_start(kb - ka, nt, i + 1) - k0;
                    rec_tile(rp, q, mr, hr + k0, NULL, tile);
                    for (int r = 0; r < mr; r++) {
                        memcpy(hn + (size_t)(k0 + r) * P + p0, tile + (size_t)r * rp->W, np * sizeof(real));
                        memcpy(yr[k0 + r] + p0, tile + (size_t)r * rp->W, np * sizeof(real));
                    }
                }
            }
            if (!cx->rowsplit) fr_barrier_wait(&cx->bar, tid);
        }
        /* Sequences that have ended keep their state: carry their rows into the buffer that becomes
         * h_{t-1} (the next step reads and writes only rows < n, so this races with nothing; rowsplit:
         * each thread its own rows). */
        if (cx->rowsplit) {
            const int c0 = n > k_lo ? n : k_lo;
            if (c0 < k_hi) memcpy(hn + (size_t)c0 * P, hp + (size_t)c0 * P, (size_t)(k_hi - c0) * P * sizeof(real));
        } else if (n < B && tid == 0) {
            memcpy(hn + (size_t)n * P, hp + (size_t)n * P, (size_t)(B - n) * P * sizeof(real));
        }
        /* No second barrier: the next step writes only what no thread reads after the one above (its own
         * units of c, m and of the buffer that held h_{t-1}). */
        cur ^= 1;
    }
}

/* Whether the forward projects x by GEMM per chunk of steps (split) rather than per step beside W_hh
 * (fused).  The fused step streams all of [W_ih | W_hh] once per step for the step's B rows; split streams
 * W_ih once per chunk of >= 1024 rows (seq_proj_chunk) inside an efficient GEMM, and W_hh per step, at the
 * price of a pass over the (rows, 4H) projection.  Split pays when the weights are large for the rows that
 * share a step's pass over them.  The rule: B <= 2, or more than 128 KB of weights per row of a step
 * (rec_split, shared with the RNN) -- but on AVX-512, from LSTM_WIDE_B rows a step, more than
 * LSTM_WIDE_BYTES_PER_ROW (not for a single step, S = 1, which passes the weights once either way and takes
 * lstm_single_step's GEMMs when split); and more than REC_DIRECT_ROWS rows in all (a streaming step()
 * multiplies the unpacked weights in place).  A narrow input (4 I <= P, several steps, B > 2) stays fused
 * while the panel is at most LSTM_NARROW_X_BYTES: x then adds at most a quarter to the step's pass over
 * the weights, less than split's own pass over the (rows, 4H) projection costs.
 *
 * Measurements: docs/tuning.md, LSTM split rule. */
#ifndef LSTM_WIDE_B
#define LSTM_WIDE_B 24
#endif
#ifndef LSTM_WIDE_BYTES_PER_ROW
#define LSTM_WIDE_BYTES_PER_ROW ((size_t)1 << 20)
#endif
#ifndef LSTM_NARROW_X_BYTES
#define LSTM_NARROW_X_BYTES ((size_t)3 << 20)
#endif
/* The bytes of the fused panel [W_ih | W_hh], (4H, I + P): what a fused step streams (split and rowsplit). */
static size_t lstm_panel_bytes(int I, int H, int P) {
    return (size_t)4 * H * (size_t)(I + P) * sizeof(real);
}
static int lstm_split(size_t rows, int S, int B, int I, int H, int P) {
    const size_t bytes = lstm_panel_bytes(I, H, P);
    if (rows <= REC_DIRECT_ROWS) return 0;
    if (S > 1 && B > REC_SPLIT_MAX_B && (size_t)4 * I <= (size_t)P && bytes <= LSTM_NARROW_X_BYTES) return 0;
#if FR_AVX512
    if (B >= LSTM_WIDE_B && S > 1) return bytes > LSTM_WIDE_BYTES_PER_ROW * (size_t)B;
#else
    (void)S;
#endif
    return rec_split(B, bytes);
}

/* rec_step_by_gemm for the LSTM: when it projects x by GEMM too (split; fused, x and h share the panels).
 * Measurements: docs/tuning.md, Single step by GEMM. */
static int lstm_single_step(const fr_seq *q, int split) {
    return split && rec_step_by_gemm(q->S, q->B);
}


/* Whether the threads of a fused forward split the rows of each step rather than the hidden units: each
 * thread then runs every block for its own rows, which depend on nothing another thread computes, so the
 * steps need no barrier -- but each thread streams all the weights every step, so only while they sit
 * comfortably in its L2, and with rows enough per thread for full tiles.  The training forward, which
 * also writes the tape, gains from it up to larger weights on AVX-512 (LSTM_ROWSPLIT_TRAIN_BYTES; its
 * tiles of up to 14 rows); the inference forward does not.  Measurements: docs/tuning.md, LSTM rows or
 * units. */
#ifndef LSTM_ROWSPLIT_BYTES
#define LSTM_ROWSPLIT_BYTES ((size_t)512 << 10)
#endif
#ifndef LSTM_ROWSPLIT_TRAIN_BYTES
#if FR_AVX512
#define LSTM_ROWSPLIT_TRAIN_BYTES ((size_t)7 << 18) /* 1.75 MB */
#else
#define LSTM_ROWSPLIT_TRAIN_BYTES LSTM_ROWSPLIT_BYTES
#endif
#endif
static int lstm_rowsplit(int B, int nth, int I, int H, int P, int train) {
    const size_t bytes = lstm_panel_bytes(I, H, P);
    return nth > 1 && B >= 8 * nth && bytes <= (train ? LSTM_ROWSPLIT_TRAIN_BYTES : LSTM_ROWSPLIT_BYTES);
}

static size_t lstm_tape_len(int T, int B, int H, int P) {
    size_t rows = (size_t)(T > 0 ? T : 0) * (size_t)(B > 0 ? B : 0);
    return rows * (size_t)(5 * H + (P != H ? H : 0));
}

static int lstm_forward(int T, int B, int I, int H, int P, int reverse,
                        const int *lengths, /* (B) or NULL */
                        const real *rmask,  /* (4, B, P) recurrent dropout masks, or NULL */
                        const real *x,      /* (T, B, I) */
                        const real *h0,     /* (B, P) or NULL */
                        const real *c0,     /* (B, H) or NULL */
                        const real *w_ih,   /* (4H, I) */
                        const real *w_hh,   /* (4H, P) */
                        const real *b_ih,   /* (4H) or NULL */
                        const real *b_hh,   /* (4H) or NULL */
                        const real *w_hr,   /* (P, H), NULL when P == H */
                        real *y, int ldy,   /* (T, B, ldy >= P) out */
                        real *hn,           /* (B, P) out */
                        real *cn,           /* (B, H) out */
                        real *tape)         /* (lstm_tape_len) out, or NULL for inference */
{
    const int proj = P != H;
    const size_t H4 = (size_t)4 * H;
    const size_t TB = (size_t)(T > 0 ? T : 0) * (size_t)(B > 0 ? B : 0);
    fr_seq pl;
    lstm_fwd_ctx cx;
    real *h = NULL;    /* (B, P) h state, sorted rows */
    real *h2 = NULL;   /* (B, P) the other h buffer: the step writes h_t beside h_{t-1} */
    real *c = NULL;    /* (B, H) c state, sorted rows */
    real *bias = NULL; /* (4H) b_ih + b_hh, NULL without bias */
    real *mb = NULL;   /* (B, H) m of a step (inference with projection; training uses the tape) */
    rec_pack wp = {0}; /* [W_ih | W_hh] (fused) or W_hh (split) packed in blocks of units x 4 gates */
    real *xw = NULL;   /* (chunk rows, 4H) projection of a chunk: split inference */
    real *xg = NULL;   /* (chunk rows, I) x rows of a chunk: split with lengths */
    rec_pack rp = {0}; /* W_hr packed in blocks of P outputs (projection only) */
    real *hh = NULL;   /* (B, 4H) h0 W_hh^T: a single step (lstm_single_step) */
    real *hm = NULL;   /* (nthreads, 4, B, P) masked copies of h_{t-1}: rmask only */
    const real **hqp = NULL; /* (nthreads, 4B) their row pointers */
    const real **rowptrs = NULL; /* (nthreads, 3B) */
    int rc = FR_ENOMEM;

    if (seq_init(&pl, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;
    h = fr_alloc((size_t)B * P, 0);
    h2 = fr_alloc((size_t)B * P, 0);
    c = fr_alloc((size_t)B * H, 0);
    if (h == NULL || h2 == NULL || c == NULL) goto done;
    /* Split (x W_ih^T by GEMM per chunk of steps, then W_hh alone per step) or fused ([W_ih | W_hh] per
     * step, in one region). */
    const int split = rmask || lstm_split(TB, pl.S, B, I, H, P); /* masked: the step's product is W_hh's alone */
    int chunk = pl.S > 0 ? pl.S : 1;
    const int single = !rmask && lstm_single_step(&pl, split);
    if (split) {
        if (rec_pack_init(&wp, 4, H, w_hh, P, P, NULL, 0, 0, single ? 0 : TB) != FR_OK) goto done;
        if (single && (hh = fr_alloc((size_t)B * H4, 0)) == NULL) goto done;
        const size_t gather = pl.off ? (size_t)I : 0;
        chunk = seq_proj_chunk(&pl, (tape ? 0 : H4) + gather, tape && !pl.off);
        if (tape == NULL && (xw = fr_alloc((size_t)chunk * B * H4, 0)) == NULL) goto done;
        if (gather && (xg = fr_alloc((size_t)chunk * B * I, 0)) == NULL) goto done;
    } else if (rec_pack_init(&wp, 4, H, w_ih, I, I, w_hh, P, P, TB) != FR_OK) {
        goto done;
    }
    if (proj && rec_pack_init(&rp, 1, P, w_hr, H, H, NULL, 0, 0, (size_t)T * B) != FR_OK) goto done;
    if (b_ih || b_hh) {
        if ((bias = fr_alloc(H4, 1)) == NULL) goto done;
        for (size_t j = 0; j < H4; j++) bias[j] = (b_ih ? b_ih[j] : 0) + (b_hh ? b_hh[j] : 0);
    }
    if (proj && tape == NULL && (mb = fr_alloc((size_t)B * H, 0)) == NULL) goto done;

    /* initial state, in sorted order */
    for (int k = 0; k < B; k++) {
        int b = seq_batch(&pl, k);
        if (h0) memcpy(h + (size_t)k * P, h0 + (size_t)b * P, (size_t)P * sizeof(real));
        else memset(h + (size_t)k * P, 0, (size_t)P * sizeof(real));
        if (c0) memcpy(c + (size_t)k * H, c0 + (size_t)b * H, (size_t)H * sizeof(real));
        else memset(c + (size_t)k * H, 0, (size_t)H * sizeof(real));
    }

    memset(&cx, 0, sizeof cx);
    cx.pl = &pl;
    cx.I = I;
    cx.H = H;
    cx.P = P;
    cx.x = x;
    cx.wp = &wp;
    cx.split = split;
    cx.w_ih = w_ih;
    cx.w_hh = w_hh;
    cx.hh = hh;
    cx.xs = xg;
    cx.xw = xw;
    cx.rp = proj ? &rp : NULL;
    cx.bias = bias;
    cx.c = c;
    cx.hbuf[0] = h;
    cx.hbuf[1] = h2;
    cx.mb = mb;
    cx.tg = tape;
    cx.tc = tape ? tape + TB * H4 : NULL;
    cx.tm = tape && proj ? cx.tc + TB * (size_t)H : NULL;
    cx.y = y;
    cx.ldy = ldy;
    const int nth = rec_threads_for(T, B, 4, H, I + P, wp.nblk);
    cx.rowsplit = !split && lstm_rowsplit(B, nth, I, H, P, tape != NULL);
    cx.steal = !cx.rowsplit && !single && rec_steal(nth, B, &wp);
    if ((rowptrs = (const real **)malloc(sizeof(real *) * (3 * (size_t)B * nth + 1))) == NULL) goto done;
    for (int t = 0; t < nth; t++) cx.rows[t] = rowptrs + 3 * (size_t)B * t;
    if (rmask) {
        if ((hm = fr_alloc((size_t)nth * 4 * B * P, 0)) == NULL) goto done;
        if ((hqp = (const real **)malloc(sizeof(real *) * (4 * (size_t)B * nth + 1))) == NULL) goto done;
        for (int t = 0; t < nth; t++) cx.hq[t] = hqp + 4 * (size_t)B * t;
        cx.rmask = rmask;
        cx.hm = hm;
    }
    seq_run_chunks(&pl, chunk, x, I, xg, &cx.s_begin, &cx.s_end, nth, lstm_fwd_task, &cx, &cx.bar);
    if (fr_region_stopped(&cx.bar)) {
        rc = FR_EINTR;
        goto done;
    }
    const real *hf = cx.hbuf[pl.S & 1]; /* (B, P) the final h: the buffers swapped once per step */

    /* padded steps of y are 0; ended rows kept the state of their last valid step */
    seq_zero_padding(&pl, y, ldy, P);
    for (int k = 0; k < B; k++) {
        int b = seq_batch(&pl, k);
        if (hn) memcpy(hn + (size_t)b * P, hf + (size_t)k * P, (size_t)P * sizeof(real));
        if (cn) memcpy(cn + (size_t)b * H, c + (size_t)k * H, (size_t)H * sizeof(real));
    }
    rc = FR_OK;

done:
    free(rowptrs);
    free(hqp);
    fr_free(hm);
    fr_free(h);
    fr_free(h2);
    fr_free(c);
    fr_free(bias);
    fr_free(mb);
    rec_pack_free(&wp);
    rec_pack_free(&rp);
    fr_free(xw);
    fr_free(xg);
    fr_free(hh);
    seq_free(&pl);
    return rc;
}

/* ---- backward: the fused step ---------------------------------------------------------------------------
 * One parallel region runs the whole sequence in reverse, with no BLAS call inside.  Per step s (active
 * rows k < n; dh holds dL/dh_t of those rows, dy_t included):
 *   phase 1  each thread, for its hidden units: dm = dL/dm_t (dh itself without projection; with it,
 *            dm = dh_t W_hr for those units, a tile product over a packed panel of W_hr), then dz_t and the
 *            c carry elementwise from the tape, and those units' bias gradient;
 *   barrier  (dz_t is complete)
 *   phase 2  each thread, for its blocks of the P outputs: dh_{t-1} = dz_t W_hh (a packed panel of W_hh^T)
 *            plus dy_{t-1}, i.e. the whole dL/dh of the step processed next.
 * Without projection a thread's units in phase 1 are exactly its output blocks of phase 2, so phase 1 reads
 * only the part of dh the same thread wrote: one barrier per step.  With projection phase 1 reads all of
 * dh_t, so a second barrier closes phase 2.  No thread writes what another reads in the same phase: dz
 * rows of step s are read in phase 2 of s, written in phase 1 of s only; dc, db, and (without projection)
 * dh are split by units.
 * Recurrent dropout (rmask): h_{t-1} reached gate q only as h_{t-1} * mask_q, so dh_{t-1} =
 * sum_q mask_q * (dz_q W_hh,q) + dy_{t-1}: phase 2's chunks of K = 4H then end at the gates' boundaries,
 * and each chunk's product enters dh multiplied by its gate's mask. */

typedef struct lstm_bwd_ctx {
    const fr_seq *pl;
    int H, P;
    const rec_pack *hp;  /* W_hh^T packed: G = 1 over the P outputs, K = 4H */
    const rec_pack *rp;  /* W_hr packed: G = 1 over the H units, K = P; NULL without projection */
    const real *rmask;   /* (4, B, P) the forward's recurrent dropout masks, batch order, or NULL */
    const real *tg;      /* (N, 4H) tape: activated gates */
    const real *tc;      /* (N, H) tape: c */
    const real *c0;      /* (B, H) batch order, or NULL */
    const real *dy;      /* (T, B, lddy) */
    int lddy;
    real *dz;            /* (N, 4H) out: dL/dz of every compact row */
    real *dh;            /* (B, P) sorted rows: dL/dh of the step being processed */
    real *dc;            /* (B, H) sorted rows: the dL/dc carry */
    real *dH;            /* (N, P) every row's dL/dh, projection only (dW_hr = dH^T M after the loop) */
    double *db;          /* (4H) sums of dz over the rows (seq_db, seq.h), or NULL */
    atomic_int *done;    /* the lowest step whose dz is complete (seq_backward's overlap), or NULL */
    fr_barrier_t bar;
    atomic_int done_at;  /* what done points to */
} lstm_bwd_ctx;

/* dz and the c carry on V##_W units u .. of one row (v .. of dm), and the bias gradient db += dz, in double
 * (seq.h's bias path). */
#define LSTM_DGATES(V)                                                                                     \
    static inline void lstm_dgates_##V(int H, int u, int v, const real *a, const real *c, const real *cp,  \
                                       const real *dm, real *dc, real *dz, double *db) {                   \
        V ga[4], dg[4], dcp;                                                                               \
        for (int q = 0; q < 4; q++) ga[q] = V##_load(a + (size_t)q * H + u);                               \
        lstm_bwd_##V(ga, V##_load(c + u), cp ? V##_load(cp + u) : V##_zero(), V##_load(dm + v),            \
                     V##_load(dc + u), dg, &dcp);                                                          \
        for (int q = 0; q < 4; q++) V##_store(dz + (size_t)q * H + u, dg[q]);                              \
        V##_store(dc + u, dcp);                                                                            \
        if (db)                                                                                            \
            for (int q = 0; q < 4; q++)                                                                    \
                V##_acc_f64(db + (size_t)q * H + u, dg[q]);                                                \
    }
FR_EACH_WIDTH(LSTM_DGATES)
#undef LSTM_DGATES

/* dz and the c carry for units [u0, u0 + nu) of one row (one sequence at one step): 16 at a time (AVX-512:
 * half the instructions, no divider), then 8, then one by one. */
static inline void lstm_dgates(int H, int u0, int nu,
                               const real *a,  /* (4H) activated i, f, g, o of this step */
                               const real *c,  /* (H) c_t */
                               const real *cp, /* (H) c_{t-1}, or NULL for zeros */
                               const real *dm, /* (nu) dL/dm_t of units u0 .. u0 + nu - 1 */
                               real *dc,       /* (H) in: dL/dc_t from later steps; out: dL/dc_{t-1} */
                               real *dz,       /* (4H) out: dL/dz, gates i, f, g, o */
                               double *db)     /* (4H) += dz, or NULL */
{
    int v = 0;
#if FR_AVX512
    for (; v + 16 <= nu; v += 16) lstm_dgates_vr16(H, u0 + v, v, a, c, cp, dm, dc, dz, db);
#endif
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) lstm_dgates_vr8(H, u0 + v, v, a, c, cp, dm, dc, dz, db);
#endif
    for (; v < nu; v++) lstm_dgates_vr1(H, u0 + v, v, a, c, cp, dm, dc, dz, db);
}

/* Phase 1 reads tape rows the forward wrote long ago (the tape outgrows L2 past small shapes), a few
 * contiguous lines per gate: fetch them some rows ahead.  Units [u0, u1) of gate rows a and of c_{t-1} row cp
 * (c_t needs none: it was read as c_{t-1} one step earlier). */
#define LSTM_PREFETCH_ROWS 2
FR_PREFETCH_FN void lstm_prefetch_row(int H, int u0, int u1, const real *a, const real *cp) {
    for (int u = u0; u < u1; u += 64 / (int)sizeof(real)) {
        __builtin_prefetch(a + u);
        __builtin_prefetch(a + H + u);
        __builtin_prefetch(a + 2 * H + u);
        __builtin_prefetch(a + 3 * H + u);
        if (cp) __builtin_prefetch(cp + u);
    }
}

/* dy row of sorted row k at step s. */
static inline const real *lstm_dy_row(const lstm_bwd_ctx *cx, int s, int k) {
    const fr_seq *pl = cx->pl;
    return cx->dy + ((size_t)seq_slot_time(pl, s, k) * pl->B + seq_batch(pl, k)) * (size_t)cx->lddy;
}

/* Depth of a K chunk of the backward product: a chunk of one block's panel (kc, W) and of the n operand rows
 * (n, kc) within about half of a 512 KB L2 (measured on the 2-vCPU VMs: H = 1024, B = 64 runs the loop
 * 5-10% faster than unchunked; H <= 512 is unchanged, mostly a single chunk anyway). */
#ifndef LSTM_BWD_L2_BYTES
#define LSTM_BWD_L2_BYTES ((size_t)256 << 10)
#endif
static inline int lstm_bwd_kchunk(const rec_pack *hp, int n) {
    size_t kc = LSTM_BWD_L2_BYTES / (sizeof(real) * (size_t)(hp->W + n));
    kc &= ~(size_t)7;
    if (kc < 64) kc = 64;
    return kc >= (size_t)hp->K ? hp->K : (int)kc;
}

static void lstm_bwd_task(void *arg, int tid, int nth) {
    lstm_bwd_ctx *cx = (lstm_bwd_ctx *)arg;
    const fr_seq *pl = cx->pl;
    const rec_pack *hp = cx->hp, *rp = cx->rp;
    const int H = cx->H, P = cx->P;
    const size_t H4 = (size_t)4 * H;
    real tile[REC_MR_MAX * REC_W_MAX] __attribute__((aligned(64))); /* (MR, W) */
    const real *ar[REC_MR_MAX];                                     /* operand rows of a tile */
    real *const dh = cx->dh, *const dc = cx->dc, *const dz = cx->dz, *const dH = cx->dH;
    int j0, j1, q0 = 0, q1 = 0, u0, u1;
    rec_thread_blocks(hp->nblk, tid, nth, &j0, &j1); /* phase 2: blocks of the P outputs */
    if (rp) {                                        /* phase 1: the hidden units of blocks of W_hr */
        rec_thread_blocks(rp->nblk, tid, nth, &q0, &q1);
        u0 = q0 * rp->NB;
        u1 = q1 * rp->NB < H ? q1 * rp->NB : H;
    } else { /* phase 1: the same units as the output blocks (P == H) */
        u0 = j0 * hp->NB;
        u1 = j1 * hp->NB < H ? j1 * hp->NB : H;
    }
    const int MRh = rec_tile_rows(hp), MRr = rp ? rec_tile_rows(rp) : 1;
    rec_pack_transposed_own(hp, tid, nth); /* each thread reads only its own blocks of both */
    rec_pack_transposed_own(rp, tid, nth);

    for (int s = pl->S - 1; s >= 0; s--) {
        const int n = seq_active(pl, s);
        const size_t r0 = seq_row(pl, s);
        const size_t rq = s > 0 ? seq_row(pl, s - 1) : 0; /* rows of step s - 1: c_{t-1} and dh_{t-1} */
        /* ---- phase 1: dz_t and the c carry for this thread's units */
#define LSTM_CP(k) (s > 0 ? cx->tc + (rq + (k)) * H : (cx->c0 ? cx->c0 + (size_t)seq_batch(pl, (k)) * H : NULL))
        if (rp) {
            for (int q = q0; q < q1; q++) {
                const int uq = q * rp->NB, nu = rec_block_units(rp, q);
                for (int i = 0, nt = rec_ntiles(n, MRr); i < nt; i++) {
                    const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
                    for (int r = 0; r < mr; r++) ar[r] = dh + (size_t)(k0 + r) * P;
                    for (int k = k0 + mr; k < k0 + 2 * mr && k < n; k++) /* the next tile's rows */
                        lstm_prefetch_row(H, uq, uq + nu, cx->tg + (r0 + k) * H4, LSTM_CP(k));
                    rec_tile(rp, q, mr, ar, NULL, tile); /* dm of units uq .. for rows k0 .. */
                    for (int r = 0; r < mr; r++) {
                        const size_t k = (size_t)(k0 + r);
                        lstm_dgates(H, uq, nu, cx->tg + (r0 + k) * H4, cx->tc + (r0 + k) * H, LSTM_CP(k),
                                    tile + (size_t)r * rp->W, dc + k * H, dz + (r0 + k) * H4, cx->db);
                    }
                }
            }
        } else if (u1 > u0) {
            for (int k = 0; k < n; k++) {
                if (k + LSTM_PREFETCH_ROWS < n)
                    lstm_prefetch_row(H, u0, u1, cx->tg + (r0 + k + LSTM_PREFETCH_ROWS) * H4,
                                      LSTM_CP(k + LSTM_PREFETCH_ROWS));
                lstm_dgates(H, u0, u1 - u0, cx->tg + (r0 + k) * H4, cx->tc + (r0 + k) * H, LSTM_CP(k),
                            dh + (size_t)k * P + u0, dc + (size_t)k * H, dz + (r0 + k) * H4, cx->db);
            }
        }
#undef LSTM_CP
        if (fr_barrier_wait_stop(&cx->bar, tid)) return; /* interrupted (threads.h): every thread stops here */
        if (cx->done) atomic_store_explicit(cx->done, s, memory_order_release); /* (one thread: all of dz_t) */
        /* ---- phase 2: dh_{t-1} = dz_t W_hh + dy_{t-1} for this thread's output blocks.  K = 4H is taken
         * in chunks of kc so that a chunk of the block's panel and of the n dz rows stay in L2 while every
         * row tile passes them (a whole panel of a large H would stream from L3 once per tile). */
        const int n1 = s > 0 ? seq_active(pl, s - 1) : 0; /* rows of step s - 1 (>= n) */
        const int kc = lstm_bwd_kchunk(hp, n);
        if (s > 0) { /* the first rows phase 1 reads next (the others are fetched ahead there) */
            const size_t rr = s > 1 ? seq_row(pl, s - 2) : 0;
            for (int k = 0; k < LSTM_PREFETCH_ROWS && k < n1; k++)
                lstm_prefetch_row(H, u0, u1, cx->tg + (rq + k) * H4,
                                  s > 1 ? cx->tc + (rr + k) * H : NULL);
        }
        for (int j = j0; j < j1; j++) {
            const int p0 = j * hp->NB, np = rec_block_units(hp, j);
            for (int c0 = 0, ck = 0; c0 < hp->K; c0 += ck) {
                rec_pack chunk = rec_pack_rows(hp, j, c0, kc); /* the rows [c0, c0 + kc) of block j */
                const real *mq = NULL; /* (B, P) the mask of the chunk's gate (rmask) */
                if (cx->rmask) {       /* the chunk ends at its gate's last row */
                    const int q = c0 / H, end = (q + 1) * H;
                    if (c0 + chunk.K > end) chunk.K1 = chunk.K = end - c0;
                    mq = cx->rmask + (size_t)q * pl->B * P;
                }
                ck = chunk.K;
                /* what this thread reads next follows in memory: the block's next chunk or the next block; the
                 * prefetch walks chunk.K rows of it, so not when they would pass the end of the panels (a
                 * shorter last chunk of the last block); none in direct mode (no panels) */
                const real *next = hp->panels && (j + 1 < j1 || c0 + chunk.K < hp->K)
                                       ? chunk.panels + (size_t)chunk.K * hp->W : NULL;
                if (next && next + (size_t)chunk.K * hp->W > hp->panels + (size_t)hp->nblk * hp->K * hp->W) next = NULL;
                for (int i = 0, nt = rec_ntiles(n, MRh); i < nt; i++) {
                    const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
                    for (int r = 0; r < mr; r++) ar[r] = dz + (r0 + k0 + r) * H4 + c0;
                    rec_tile_pf(&chunk, 0, mr, ar, NULL, tile, i == 0 ? next : NULL);
                    for (int r = 0; r < mr; r++) {
                        const int k = k0 + r;
                        const real *t = tile + (size_t)r * hp->W;
                        real *e = dh + (size_t)k * P + p0;
                        if (mq) { /* this gate's part of dh_{t-1}, through its mask */
                            const real *m = mq + (size_t)seq_batch(pl, k) * P + p0;
                            const real *d = c0 == 0 && s > 0 ? lstm_dy_row(cx, s - 1, k) + p0 : NULL;
                            if (c0 > 0) for (int v = 0; v < np; v++) e[v] += m[v] * t[v];
                            else if (d) for (int v = 0; v < np; v++) e[v] = m[v] * t[v] + d[v];
                            else for (int v = 0; v < np; v++) e[v] = m[v] * t[v];
                        } else if (c0 > 0) {
                            for (int v = 0; v < np; v++) e[v] += t[v];
                        } else if (s > 0) {
                            const real *d = lstm_dy_row(cx, s - 1, k) + p0;
                            for (int v = 0; v < np; v++) e[v] = t[v] + d[v];
                        } else {
                            memcpy(e, t, (size_t)np * sizeof(real));
                        }
                    }
                }
            }
            /* rows whose last valid step is s - 1: their carry is still dh_n; add their dy */
            for (int k = n; k < n1; k++) {
                const real *d = lstm_dy_row(cx, s - 1, k) + p0;
                real *e = dh + (size_t)k * P + p0;
                for (int v = 0; v < np; v++) e[v] += d[v];
            }
            if (dH && s > 0)
                for (int k = 0; k < n1; k++)
                    memcpy(dH + (rq + k) * P + p0, dh + (size_t)k * P + p0, (size_t)np * sizeof(real));
        }
        if (rp) fr_barrier_wait(&cx->bar, tid); /* the next phase 1 reads all of dh */
    }
}

static int lstm_backward(int T, int B, int I, int H, int P, int reverse,
                         const int *lengths,     /* (B) or NULL */
                         const real *rmask,      /* (4, B, P) the forward's recurrent dropout masks, or NULL */
                         const real *x,          /* (T, B, I) */
                         const real *h0,         /* (B, P) or NULL */
                         const real *c0,         /* (B, H) or NULL */
                         const real *w_ih,       /* (4H, I) */
                         const real *w_hh,       /* (4H, P) */
                         const real *w_hr,       /* (P, H), NULL when P == H */
                         const real *y, int ldy, /* (T, B, ldy) from the training forward */
                         const real *tape,       /* (lstm_tape_len) from the training forward */
                         const real *dy, int lddy, /* (T, B, lddy >= P) */
                         const real *dhn,        /* (B, P) or NULL */
                         const real *dcn,        /* (B, H) or NULL */
                         real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */
                         real *dh0,              /* (B, P) out */
                         real *dc0,              /* (B, H) out */
                         real *dw_ih,            /* (4H, I) out */
                         real *dw_hh,            /* (4H, P) out */
                         real *db_ih,            /* (4H) out, or NULL */
                         real *db_hh,            /* (4H) out, or NULL */
                         real *dw_hr)            /* (P, H) out, NULL when P == H */
{
    const int proj = P != H;
    const size_t H4 = (size_t)4 * H;
    const size_t TB = (size_t)(T > 0 ? T : 0) * (size_t)(B > 0 ? B : 0);
    const real *tg = tape;                  /* (T*B, 4H) tape: activated gates */
    const real *tc = tape + TB * H4;        /* (T*B, H) tape: c */
    const real *tm = tc + TB * (size_t)H;   /* (T*B, H) tape: m, projection only */
    fr_seq pl;
    real *dz = NULL;  /* (N, 4H) dL/dz for every compact row; padding has no row */
    real *dh = NULL;  /* (B, P) dL/dh carried backwards in time, sorted rows */
    real *dc = NULL;  /* (B, H) dL/dc carried backwards in time, sorted rows */
    rec_pack hp = {0}; /* W_hh^T in blocks of the P outputs: dh_{t-1} = dz_t W_hh */
    rec_pack rp = {0}; /* W_hr in blocks of the H units: dm_t = dh_t W_hr (projection only) */
    lstm_bwd_ctx cx;
    real *dH = NULL;  /* (N, P) dL/dh of every row, projection only: dW_hr = dH^T M after the loop */
    seq_db db = {0};  /* (4H) the bias gradient's sums (both biases get it; seq.h) */
    int rc = FR_ENOMEM;

    if (seq_init(&pl, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;
    const size_t N = pl.N;

    if ((dz = fr_alloc(N * H4, 0)) == NULL) goto done;
    if ((dh = fr_alloc((size_t)B * P, 0)) == NULL) goto done;
    if ((dc = fr_alloc((size_t)B * H, 0)) == NULL) goto done;
    if (proj && (dH = fr_alloc(N * (size_t)P, 0)) == NULL) goto done;
    if (rec_pack_transposed(&hp, P, (int)H4, w_hh, P, N) != FR_OK) goto done;
    if (proj && rec_pack_transposed(&rp, H, P, w_hr, H, N) != FR_OK) goto done;
    /* bias gradients: both biases enter z the same way, so both are the column sums of dz, summed by the
     * step (each thread over its units; seq_db, seq.h) */
    if (seq_db_init(&db, (int)H4, db_ih || db_hh) != FR_OK) goto done;

    memset(&cx, 0, sizeof cx);
    cx.pl = &pl;
    cx.H = H;
    cx.P = P;
    cx.hp = &hp;
    cx.rp = proj ? &rp : NULL;
    cx.rmask = rmask;
    cx.tg = tg;
    cx.tc = tc;
    cx.c0 = c0;
    cx.dy = dy;
    cx.lddy = lddy;
    cx.dz = dz;
    cx.dh = dh;
    cx.dc = dc;
    cx.dH = dH;
    cx.db = db.acc;

    /* the carries start from the gradients of the final state, in sorted order (a row keeps them until the
     * loop reaches its last valid step, where phase 2 adds that step's dy); the first step's rows get their
     * dy here */
    const int n_last = pl.S > 0 ? seq_active(&pl, pl.S - 1) : 0;
    for (int k = 0; k < B; k++) {
        int b = seq_batch(&pl, k);
        real *e = dh + (size_t)k * P;
        if (dhn) memcpy(e, dhn + (size_t)b * P, (size_t)P * sizeof(real));
        else memset(e, 0, (size_t)P * sizeof(real));
        if (k < n_last) {
            const real *d = lstm_dy_row(&cx, pl.S - 1, k);
            for (int j = 0; j < P; j++) e[j] += d[j];
            if (dH) memcpy(dH + (seq_row(&pl, pl.S - 1) + k) * P, e, (size_t)P * sizeof(real));
        }
        if (dcn) memcpy(dc + (size_t)k * H, dcn + (size_t)b * H, (size_t)H * sizeof(real));
        else memset(dc + (size_t)k * H, 0, (size_t)H * sizeof(real));
    }

    /* the loop, then dW_ih, dW_hh and dx as large GEMMs over all rows (seq.h; chunks of gathered rows with
     * lengths), or both side by side (seq_backward) */
    int nblk = hp.nblk;
    if (proj && rp.nblk < nblk) nblk = rp.nblk;
    const int K = P + (proj ? P / 4 : 0);
    const int nth = rec_threads_for(T, B, 4, H, K, nblk);
    const int mode = seq_overlap_mode(&pl, (double)B * 4 * H * K, nth);
    if (mode) cx.done = &cx.done_at;
    const seq_wg wg = {&pl, T, B, reverse, (int)H4, I, P, (size_t)(I > P ? I : P), dz, x, y, ldy, h0, rmask, 4,
                       w_ih, NULL, dx, dx_accumulate, dw_ih, dw_hh};
    if ((rc = seq_backward(&wg, mode, nth, lstm_bwd_task, &cx, &cx.bar, cx.done)) != FR_OK) goto done;

    for (int k = 0; k < B; k++) {
        int b = seq_batch(&pl, k);
        if (dh0) memcpy(dh0 + (size_t)b * P, dh + (size_t)k * P, (size_t)P * sizeof(real));
        if (dc0) memcpy(dc0 + (size_t)b * H, dc + (size_t)k * H, (size_t)H * sizeof(real));
    }
    seq_db_store(&db, 0, (int)H4, db_ih);
    seq_db_store(&db, 0, (int)H4, db_hh);
    if (proj && dw_hr) fr_gemm(1, 0, P, H, (int)N, 1, dH, P, tm, H, 0, dw_hr, H);
    rc = FR_OK;

done:
    fr_free(dz);
    fr_free(dh);
    fr_free(dc);
    fr_free(dH);
    seq_db_free(&db);
    rec_pack_free(&hp);
    rec_pack_free(&rp);
    seq_free(&pl);
    return rc;
}
