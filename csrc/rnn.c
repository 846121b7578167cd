/*
 * rnn.c -- the vanilla (Elman) RNN layer, one direction over a whole sequence:
 *     h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   act = tanh, or relu when `relu`.
 *
 * Included by instance.h once per dtype and ISA (common.h), so everything here is static and `real`.
 * The sequence schedule (slots, row space, lengths) is seq.h's, shared with the LSTM and the GRU.
 */

/* ---- the RNN cell ------------------------------------------------------------------------------------ */

/* Backward needs h_t, which is the forward's y, and h_{t-1} (y one step earlier, or h0), and the
 * activation's derivative is a function of h_t alone (tanh' = 1 - h^2, relu' = [h > 0]): no tape. */
static size_t rnn_tape_len(int T, int B, int H) {
    (void)T;
    (void)B;
    (void)H;
    return 0;
}

/* out (n, W) = [a1 | a2] rows @ the panel of block j (recurrent.h), in tiles of rec_tile_rows rows: the
 * recurrent product of one block of units for every active row.  The first tile prefetches pf (the thread's
 * next panel, rec_next_panel, or NULL).  (Cutting K into L1-sized chunks, GEMM's
 * K blocking, measured 1-8% slower here: the tile kernels already run near peak from L2.) */
static void rnn_block_product(const rec_pack *p, int j, int n,
                              const real *const *a1, /* (n) rows of K1 */
                              const real *const *a2, /* (n) rows of K - K1, or NULL when K1 == K */
                              real *out,             /* (n, W) */
                              const real *pf)        /* (K, W) or NULL */
{
    const int W = p->W, MR = rec_tile_rows(p);
    for (int i = 0, nt = rec_ntiles(n, MR); i < nt; i++) {
        const int k0 = rec_tile_start(n, nt, i), mr = rec_tile_start(n, nt, i + 1) - k0;
        rec_tile_pf(p, j, mr, a1 + k0, a2 ? a2 + k0 : NULL, out + (size_t)k0 * W, i == 0 ? pf : NULL);
    }
}

/* ---- forward: the fused step (lstm.c's pattern) ---------------------------------------------------------
 * Parallel regions run the time loop, one per chunk of steps (fused: one for all).  Per step each thread
 * takes its blocks of hidden units and, for the active slots, computes x_t W_ih^T + h_{t-1} W_hh^T for
 * those units in one pass over the packed [W_ih | W_hh] panel (recurrent.h, register tiles of a few rows),
 * then the bias and the activation on that (n, NB) block while it is in L1, writing h_t and y.  When the
 * weights are large for a step's rows (rnn_split), x W_ih^T is one GEMM per chunk of steps before the
 * chunk's steps, each thread projecting its own units at the start of the region (seq_project_units), and
 * the step multiplies by W_hh alone.  h_t goes to the other of two state
 * buffers (step s reads hbuf[s & 1], writes hbuf[(s + 1) & 1]), so one barrier per step suffices: after it,
 * the next step writes only the buffer no thread reads any more.
 * A slot stops being written after its last valid step (it leaves the active prefix, which only shrinks),
 * so sequence b's final state stays in hbuf[lengths[b] & 1]: no copying of ended rows per step.
 * Steps of enough work (rec_steal) hand their blocks out by claims (fr_claim), as the LSTM's do; the
 * backward's too (each step's dG_{t-1} is complete at the next barrier whoever wrote it). */

typedef struct rnn_fwd_ctx {
    const fr_seq *q;
    int I, H, relu;
    const real *x;      /* (T, B, I) */
    const rec_pack *wp; /* packed [W_ih | W_hh] (G = 1, K = I + H), or W_hh alone (K = H) when split */
    int split;          /* the step adds a row of xw (rnn_split) */
    const real *rmask;  /* (B, H) recurrent dropout mask, batch order, or NULL */
    real *hm;           /* (nthreads, B, H) per thread: h_{t-1} * rmask, the product's operand; rmask only */
    const real *w_ih;   /* (H, I), split */
    const real *xs;     /* (rows of the region's steps, I) x gathered (lengths), or NULL: x's own rows */
    real *xw;           /* (rows of the region's steps, H) x W_ih^T, projected at the start of the region */
    int s_begin, s_end; /* the steps this region runs */
    const real *bias;   /* (nblk * NB) b_ih + b_hh, zero-padded (zeros without bias) */
    real *hbuf[2];      /* (B, H) each: the state in slot order, alternating; hbuf[0] holds h0 */
    real *y;            /* (T, B, ldy) */
    int ldy;
    real *acc;          /* (nthreads, B, W) per thread: a block's product for the active rows */
    const real **rows[FR_MAX_THREADS]; /* per thread: (3B) x rows of a step (fused), h_{t-1} and y rows */
    int steal;          /* threads take each other's last blocks of a step (fr_claim; steps of 2+ rows) */
    fr_barrier_t bar;
    fr_claims_t claims; /* steal: the blocks of a step */
} rnn_fwd_ctx;

/* ---- the cell's elementwise math, forward and backward, written once for every width (simd.h) --------
 * Forward on V##_W units v ..: h = act(acc + bias).  Backward: g = (dy + a) * act'(h), a being dh_t (the
 * product's block, or the carried dh_n), with act'(h) = 1 - h^2 for tanh, h > 0 for relu; and the bias
 * gradient's column sums db += g, in double (seq.h's bias path: seq_db). */
#define RNN_CELL_MATH(V)                                                                                   \
    static inline void rnn_fwd_##V(int v, int relu, const real *acc, const real *bias, real *h, real *yr) { \
        V p = V##_add(V##_load(acc + v), V##_load(bias + v));                                              \
        p = relu ? V##_relu(p) : V##_tanh(p);                                                              \
        V##_store(h + v, p);                                                                               \
        V##_store(yr + v, p);                                                                              \
    }                                                                                                      \
    static inline void rnn_bwd_##V(int v, int relu, const real *a, const real *dyr, const real *h,         \
                                   real *g, double *db) {                                                  \
        V d = V##_add(V##_load(dyr + v), V##_load(a + v));                                                 \
        const V hv = V##_load(h + v);                                                                      \
        d = relu ? V##_keep(V##_gt(hv, V##_zero()), d) : V##_mul(d, V##_fnma(hv, hv, V##_set1((real)1)));  \
        V##_store(g + v, d);                                                                               \
        V##_acc_f64(db + v, d);                                                                            \
    }
FR_EACH_WIDTH(RNN_CELL_MATH)
#undef RNN_CELL_MATH

/* The activation on one row of a block: units [u0, u0 + nu) of one slot.  acc (nu) = x_t W_ih^T + h W_hh^T. */
static inline void rnn_fwd_cell(int nu, int relu,
                                const real *acc,  /* (nu) */
                                const real *bias, /* (nu) */
                                real *h,          /* (nu) out: h_t in the state buffer */
                                real *yr)         /* (nu) out: y */
{
    int v = 0;
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) rnn_fwd_vr8(v, relu, acc, bias, h, yr);
#endif
    for (; v < nu; v++) rnn_fwd_vr1(v, relu, acc, bias, h, yr);
}

static void rnn_fwd_task(void *arg, int tid, int nth) {
    rnn_fwd_ctx *cx = (rnn_fwd_ctx *)arg;
    const fr_seq *q = cx->q;
    const rec_pack *wp = cx->wp;
    const int I = cx->I, H = cx->H, B = q->B, W = wp->W, relu = cx->relu;
    real *acc = cx->acc + (size_t)tid * B * W; /* (B, W) the product of a block */
    const int split = cx->split;
    const real **xr = cx->rows[tid]; /* (B) x rows of a step (fused) */
    const real **hr = xr + B;        /* (B) h_{t-1} rows */
    real **yr = (real **)(hr + B);   /* (B) y rows */
    int j0, j1;
    rec_thread_blocks(wp->nblk, tid, nth, &j0, &j1);
    if (cx->s_begin == 0) rec_pack_own(wp, tid, nth); /* the first region: this thread's blocks */
    size_t lo = 0, hi = 0;
    seq_rows(q, cx->s_begin, cx->s_end, &lo, &hi);
    if (split) /* this thread's units of the projection: without stealing only it reads them, no barrier */
        seq_project_units(cx->xs ? cx->xs : cx->x + lo * I, hi - lo, I, cx->w_ih, 1, H, NULL, j0 * wp->NB,
                          j1 * wp->NB < H ? j1 * wp->NB : H, cx->xw);
    if (cx->steal) rec_claims_begin(&cx->claims, &cx->bar, cx->s_begin, tid, nth, wp->nblk, j0, j1);
    for (int s = cx->s_begin; s < cx->s_end; s++) {
        const int n = seq_active(q, s);
        if (cx->steal && s > cx->s_begin) /* step s + 1's claims (rec_claims_begin) */
            rec_claims_fill(&cx->claims, (s + 1) & 1, tid, nth, wp->nblk, j0, j1);
        const real *hp = cx->hbuf[s & 1];  /* (B, H) h_{t-1} */
        real *hn = cx->hbuf[(s & 1) ^ 1];  /* (B, H) h_t */
        const real *xs = split ? cx->xw + (seq_row(q, s) - lo) * H : NULL; /* (n, H) the step's projection */
        for (int k = 0; k < n; k++) {
            const int b = seq_batch(q, k);
            const size_t row = (size_t)seq_time(q, s, b) * B + b;
            if (!split) xr[k] = cx->x + row * I;
            hr[k] = hp + (size_t)k * H;
            yr[k] = cx->y + row * cx->ldy;
        }
        if (cx->rmask) /* recurrent dropout: the product reads this thread's masked copy of h_{t-1} */
            for (int k = 0; k < n; k++) {
                real *hk = cx->hm + ((size_t)tid * B + k) * H; /* (H) */
                rec_mask_row(H, hr[k], cx->rmask + (size_t)seq_batch(q, k) * H, hk);
                hr[k] = hk;
            }
        /* blocks outside, rows inside: a block's panel stays in cache while every row passes it */
        const int steal = cx->steal && n > 1;
        for (int j = j0, own = 1, end = j1;
             (j = rec_next_block(&cx->claims, steal, s & 1, tid, nth, j, j1, &own, &end)) >= 0; j++) {
            const real *pf = own ? rec_next_panel(wp, j, end) : NULL;
            const int u0 = j * wp->NB, nu = rec_block_units(wp, j);
            if (split) {
                rnn_block_product(wp, j, n, hr, NULL, acc, pf);
                for (int k = 0; k < n; k++) rec_add_gates(1, H, W, u0, nu, xs + (size_t)k * H, acc + (size_t)k * W);
            } else {
                rnn_block_product(wp, j, n, xr, hr, acc, pf);
            }
            for (int k = 0; k < n; k++)
                rnn_fwd_cell(nu, relu, acc + (size_t)k * W, cx->bias + u0, hn + (size_t)k * H + u0, yr[k] + u0);
        }
        if (fr_barrier_wait_stop(&cx->bar, tid)) return; /* interrupted (threads.h): every thread stops here */
    }
}

/* Whether the forward projects x by GEMM per chunk of steps (split) rather than per step beside W_hh
 * (fused): rec_split's rule, with the RNN's weights (measured on the LSTM and the RNN: lstm_split, lstm.c,
 * where the LSTM departs from it at B >= 24). */
static int rnn_split(size_t rows, int B, int I, int H) {
    return rows > REC_DIRECT_ROWS && rec_split(B, (size_t)H * (size_t)(I + H) * sizeof(real)); /* [W_ih | W_hh] */
}

/* The forward's threads: rec_narrow_threads's rule (recurrent.h), for training and inference alike (the
 * RNN has no tape).  The step's product is only H * H multiply-adds a row: one thread ran B, T, I, H =
 * 32, 50, 8, 64 x1.18-1.27 faster, 64, 50, 8, 64 x1.08-1.10, H = 128 evenly, H = 256 x1.21 slower
 * (docs/tuning.md, RNN forward threads).  The backward keeps rec_threads_for's count (it gains from two). */
static int rnn_forward(int T, int B, int I, int H, int relu, int reverse,
                       const int *lengths, /* (B) or NULL */
                       const real *rmask,  /* (B, H) recurrent dropout mask, or NULL */
                       const real *x,      /* (T, B, I) */
                       const real *h0,     /* (B, H) or NULL */
                       const real *w_ih,   /* (H, I) */
                       const real *w_hh,   /* (H, H) */
                       const real *b_ih,   /* (H) or NULL */
                       const real *b_hh,   /* (H) or NULL */
                       real *y, int ldy,   /* (T, B, ldy >= H) out */
                       real *hn,           /* (B, H) out */
                       real *tape) {       /* (rnn_tape_len = 0) unused */
    (void)tape;
    fr_seq q;
    if (seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    int rc = FR_ENOMEM;
    rnn_fwd_ctx cx;
    rec_pack wp = {0};             /* [W_ih | W_hh] (fused) or W_hh (split) packed in blocks of units */
    real *xw = NULL;               /* (chunk rows, H) projection of a chunk (split only) */
    real *xg = NULL;               /* (chunk rows, I) x rows of a chunk (split with lengths) */
    const real **rowptrs = NULL;   /* (nthreads, 3B) */
    real *bias = NULL;             /* (nblk * NB) */
    real *acc = NULL;              /* (nthreads, B, W) */
    real *hm = NULL;               /* (nthreads, B, H) masked h_{t-1}: rmask only */
    real *h = fr_alloc((size_t)B * H, 0);  /* (B, H) state, slot order */
    real *h2 = fr_alloc((size_t)B * H, 0); /* (B, H) the other state buffer */
    if (h == NULL || h2 == NULL) goto done;
    const size_t TB = (size_t)(T > 0 ? T : 0) * (size_t)(B > 0 ? B : 0);
    const int split = rnn_split(TB, B, I, H);
    const size_t gather = q.len ? (size_t)I : 0;
    const int chunk = split ? seq_proj_chunk(&q, (size_t)H + gather, 0) : (q.S > 0 ? q.S : 1);
    if (split) {
        if (rec_pack_init(&wp, 1, H, w_hh, H, H, NULL, 0, 0, TB) != FR_OK) goto done;
        if ((xw = fr_alloc((size_t)chunk * B * H, 0)) == NULL) goto done;
        if (gather && (xg = fr_alloc((size_t)chunk * B * I, 0)) == NULL) goto done;
    } else if (rec_pack_init(&wp, 1, H, w_ih, I, I, w_hh, H, H, TB) != FR_OK) {
        goto done;
    }
    if ((bias = fr_alloc((size_t)wp.nblk * wp.NB, 1)) == NULL) goto done;
    for (int k = 0; k < H; k++) bias[k] = (b_ih ? b_ih[k] : 0) + (b_hh ? b_hh[k] : 0);
    seq_load_state(&q, H, h0, h);
    seq_zero_padding(&q, y, ldy, H);

    memset(&cx, 0, sizeof cx);
    cx.q = &q;
    cx.I = I;
    cx.H = H;
    cx.relu = relu;
    cx.x = x;
    cx.wp = &wp;
    cx.split = split;
    cx.rmask = rmask;
    cx.w_ih = w_ih;
    cx.xs = xg;
    cx.xw = xw;
    cx.bias = bias;
    cx.hbuf[0] = h;
    cx.hbuf[1] = h2;
    cx.y = y;
    cx.ldy = ldy;
    const int nth = rec_narrow_threads(B, H, rec_threads_for(T, B, 1, H, I + H, wp.nblk));
    cx.steal = rec_steal(nth, B, &wp);
    if ((rowptrs = (const real **)malloc(sizeof(real *) * (3 * (size_t)B * nth + 1))) == NULL) goto done;
    if ((acc = fr_alloc((size_t)nth * B * wp.W, 0)) == NULL) goto done;
    if (rmask && (hm = fr_alloc((size_t)nth * B * H, 0)) == NULL) goto done;
    for (int t = 0; t < nth; t++) cx.rows[t] = rowptrs + 3 * (size_t)B * t;
    cx.acc = acc;
    cx.hm = hm;
    seq_run_chunks(&q, chunk, x, I, xg, &cx.s_begin, &cx.s_end, nth, rnn_fwd_task, &cx, &cx.bar);
    if (fr_region_stopped(&cx.bar)) {
        rc = FR_EINTR;
        goto done;
    }

    /* the final state of slot j is in the buffer written by its last step */
    if (hn)
        for (int j = 0; j < B; j++) {
            const int b = seq_batch(&q, j);
            const int len = q.len ? q.len[b] : q.S;
            memcpy(hn + (size_t)b * H, cx.hbuf[len & 1] + (size_t)j * H, sizeof(real) * (size_t)H);
        }
    rc = FR_OK;

done:
    free(rowptrs);
    fr_free(acc);
    fr_free(hm);
    fr_free(bias);
    fr_free(h);
    fr_free(h2);
    fr_free(xw);
    fr_free(xg);
    rec_pack_free(&wp);
    seq_free(&q);
    return rc;
}

/* ---- backward ---------------------------------------------------------------------------------------------
 * Per step only what is sequential: dG_t = (dy_t + dh_t) * act'(h_t) (elementwise) and
 * dh_{t-1} = dG_t W_hh, the product out of W_hh^T packed in blocks of output units (rec_pack_transposed).
 * One parallel region: each thread owns the same blocks of units for both, and the elementwise dG_{t-1} is
 * the product's epilogue on the block it just computed (still in L1), so dh never round-trips memory and a
 * thread only ever touches its own units of dh (and of db, the bias gradient summed on the way).  The only exchange is dG_t itself (the product needs every unit of it):
 * one barrier per step, before the product.  dG rows of different steps are disjoint in row space, so a
 * thread writing dG_{t-1} never disturbs one still reading dG_t.
 * A slot not yet active (its sequence is shorter) keeps dh_n until its last valid step comes; dh is only
 * written at step 0, where every slot is active: that is dh0.
 * After the loop, the weight gradients and dx as large GEMMs over all rows. */

typedef struct rnn_bwd_ctx {
    const fr_seq *q;
    int H, relu;
    const rec_pack *tp; /* packed W_hh^T: G = 1 over H outputs, K = H */
    const real *rmask;  /* (B, H) recurrent dropout mask, batch order, or NULL */
    const real *y;      /* (T, B, ldy) */
    int ldy;
    const real *dy;     /* (T, B, lddy) */
    int lddy;
    real *dg;           /* (N, H) dG, row space */
    real *dh;           /* (B, H) slot order: dh_n in, dh0 out */
    real *acc;          /* (nthreads, B, W) per thread: a block's product for the active rows */
    double *db;         /* (H) column sums of dG: the bias gradient; a step's units, each by one thread */
    const real **rows[FR_MAX_THREADS]; /* per thread: (3B) dG_t rows, y and dy rows of the step before */
    int steal;          /* threads take each other's last blocks of a step (fr_claim; steps of 2+ rows) */
    atomic_int *done;   /* the lowest step whose dG rows are complete (seq_backward), or NULL */
    fr_barrier_t bar;
    fr_claims_t claims; /* steal: the blocks of a step */
    atomic_int done_at; /* what done points to */
} rnn_bwd_ctx;

/* rnn_bwd_V on nu units. */
static inline void rnn_bwd_cell(int nu, int relu,
                                const real *a,   /* (nu) */
                                const real *dyr, /* (nu) */
                                const real *h,   /* (nu) h_t = y */
                                real *g,         /* (nu) out */
                                double *db)      /* (nu) accumulated */
{
    int v = 0;
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) rnn_bwd_vr8(v, relu, a, dyr, h, g, db);
#endif
    for (; v < nu; v++) rnn_bwd_vr1(v, relu, a, dyr, h, g, db);
}

/* y and dy rows of the slots [k0, k1) at step s. */
static inline void rnn_bwd_rows(const rnn_bwd_ctx *cx, int s, int k0, int k1, const real **yr,
                                const real **dyr) {
    const fr_seq *q = cx->q;
    for (int k = k0; k < k1; k++) {
        const int b = seq_batch(q, k);
        const size_t row = (size_t)seq_time(q, s, b) * q->B + b;
        yr[k] = cx->y + row * cx->ldy;
        dyr[k] = cx->dy + row * cx->lddy;
    }
}

static void rnn_bwd_task(void *arg, int tid, int nth) {
    rnn_bwd_ctx *cx = (rnn_bwd_ctx *)arg;
    const fr_seq *q = cx->q;
    const rec_pack *tp = cx->tp;
    const int H = cx->H, B = q->B, W = tp->W, NB = tp->NB, relu = cx->relu;
    real *acc = cx->acc + (size_t)tid * B * W; /* (B, W) dh_{t-1} of a block */
    const real **gr = cx->rows[tid]; /* (B) dG_t rows */
    const real **yr = gr + B;        /* (B) y rows (h) of the step whose dG is being computed */
    const real **dyr = yr + B;       /* (B) dy rows of that step */
    real *dh = cx->dh;
    int j0, j1;
    rec_thread_blocks(tp->nblk, tid, nth, &j0, &j1);
    rec_pack_transposed_own(tp, tid, nth); /* a barrier passes before any thread takes another's block */
    if (q->S <= 0) return;

    /* dG of the last step, from the carried dh_n */
    {
        const int s = q->S - 1, n = seq_active(q, s);
        real *g = cx->dg + seq_row(q, s) * H; /* (n, H) */
        rnn_bwd_rows(cx, s, 0, n, yr, dyr);
        for (int j = j0; j < j1; j++) {
            const int u0 = j * NB, nu = rec_block_units(tp, j);
            for (int k = 0; k < n; k++)
                rnn_bwd_cell(nu, relu, dh + (size_t)k * H + u0, dyr[k] + u0, yr[k] + u0,
                             g + (size_t)k * H + u0, cx->db + u0);
        }
    }
    if (cx->steal) /* step S - 1's claims, before the barrier below */
        rec_claims_fill(&cx->claims, (q->S - 1) & 1, tid, nth, tp->nblk, j0, j1);
    for (int s = q->S - 1; s >= 0; s--) {
        if (fr_barrier_wait_stop(&cx->bar, tid)) return; /* dG_t complete; or interrupted (threads.h) */
        if (cx->done) atomic_store_explicit(cx->done, s, memory_order_release); /* (one thread) */
        if (cx->steal) /* step s - 1's claims (fr_claims_t): no one takes from them before the next barrier */
            rec_claims_fill(&cx->claims, (s - 1) & 1, tid, nth, tp->nblk, j0, j1);
        const int n = seq_active(q, s), np = s > 0 ? seq_active(q, s - 1) : 0;
        const real *gs = cx->dg + seq_row(q, s) * H;            /* (n, H) dG_t */
        real *gp = s > 0 ? cx->dg + seq_row(q, s - 1) * H : NULL; /* (np, H) dG_{t-1} out */
        for (int k = 0; k < n; k++) gr[k] = gs + (size_t)k * H;
        if (s > 0) rnn_bwd_rows(cx, s - 1, 0, np, yr, dyr);
        const int steal = cx->steal && n > 1;
        for (int j = j0, own = 1, end = j1;
             (j = rec_next_block(&cx->claims, steal, s & 1, tid, nth, j, j1, &own, &end)) >= 0; j++) {
            const int u0 = j * NB, nu = rec_block_units(tp, j);
            rnn_block_product(tp, j, n, gr, NULL, acc, own ? rec_next_panel(tp, j, end) : NULL); /* dh_{t-1} */
            if (cx->rmask) /* recurrent dropout: h_{t-1} reached the product only through its mask */
                for (int k = 0; k < n; k++)
                    rec_mask_row(nu, acc + (size_t)k * W, cx->rmask + (size_t)seq_batch(q, k) * H + u0,
                                 acc + (size_t)k * W);
            for (int k = 0; k < n; k++) {
                const real *a = acc + (size_t)k * W;
                if (s > 0)
                    rnn_bwd_cell(nu, relu, a, dyr[k] + u0, yr[k] + u0, gp + (size_t)k * H + u0, cx->db + u0);
                else
                    memcpy(dh + (size_t)k * H + u0, a, sizeof(real) * (size_t)nu);
            }
            /* slots whose sequence starts (in backward order) at step s - 1: their dh is still dh_n */
            for (int k = n; k < np; k++)
                rnn_bwd_cell(nu, relu, dh + (size_t)k * H + u0, dyr[k] + u0, yr[k] + u0,
                             gp + (size_t)k * H + u0, cx->db + u0);
        }
    }
}

static int rnn_backward(int T, int B, int I, int H, int relu, int reverse,
                        const int *lengths,       /* (B) or NULL */
                        const real *rmask,        /* (B, H) the forward's recurrent dropout mask, or NULL */
                        const real *x,            /* (T, B, I) */
                        const real *h0,           /* (B, H) or NULL */
                        const real *w_ih,         /* (H, I) */
                        const real *w_hh,         /* (H, H) */
                        const real *y, int ldy,   /* (T, B, ldy) from the training forward */
                        const real *tape,         /* (rnn_tape_len = 0) unused */
                        const real *dy, int lddy, /* (T, B, lddy >= H) */
                        const real *dhn,          /* (B, H) or NULL */
                        real *dx, int dx_accumulate, /* (T, B, I) out, or NULL */
                        real *dh0,                /* (B, H) out */
                        real *dw_ih,              /* (H, I) out */
                        real *dw_hh,              /* (H, H) out */
                        real *db_ih,              /* (H) out, or NULL */
                        real *db_hh) {            /* (H) out, or NULL */
    (void)tape;
    fr_seq q;
    if (seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    int rc = FR_ENOMEM;
    rnn_bwd_ctx cx;
    rec_pack tp = {0};           /* W_hh^T packed in blocks of output units */
    const real **rowptrs = NULL; /* (nthreads, 3B) */
    real *acc = NULL;            /* (nthreads, B, W) */
    seq_db db = {0};             /* (H) the bias gradient's sums (seq.h) */
    real *dg = fr_alloc(q.N * H, 0);       /* (N, H) dG: dL/d(pre-activation), row space */
    real *dh = fr_alloc((size_t)B * H, 0); /* (B, H) dh_n in, dh0 out, slot order */
    if (dg == NULL || dh == NULL) goto done;
    if (seq_db_init(&db, H, 1) != FR_OK) goto done;
    if (rec_pack_transposed(&tp, H, H, w_hh, H, q.N) != FR_OK) goto done;

    seq_load_state(&q, H, dhn, dh);
    memset(&cx, 0, sizeof cx);
    cx.q = &q;
    cx.H = H;
    cx.relu = relu;
    cx.tp = &tp;
    cx.rmask = rmask;
    cx.y = y;
    cx.ldy = ldy;
    cx.dy = dy;
    cx.lddy = lddy;
    cx.dg = dg;
    cx.dh = dh;
    cx.db = db.acc;
    const int nth = rec_threads_for(T, B, 1, H, H, tp.nblk);
    const int mode = seq_overlap_mode(&q, (double)B * H * H, nth);
    const int nloop = mode ? 1 : nth; /* the loop's threads */
    if (mode) cx.done = &cx.done_at;
    cx.steal = rec_steal(nloop, B, &tp);
    if ((rowptrs = (const real **)malloc(sizeof(real *) * 3 * (size_t)(B > 0 ? B : 1) * nloop)) == NULL) goto done;
    if ((acc = fr_alloc((size_t)nloop * B * tp.W, 0)) == NULL) goto done;
    for (int t = 0; t < nloop; t++) cx.rows[t] = rowptrs + (size_t)3 * B * t;
    cx.acc = acc;

    /* the loop, then dW_ih, dW_hh and dx as large GEMMs over all rows (seq.h; chunks of gathered rows with
     * lengths), or both side by side (seq_backward) */
    const seq_wg wg = {&q, T, B, reverse, H, I, H, (size_t)H + (size_t)I, dg, x, y, ldy, h0, rmask, 1, w_ih, NULL,
                       dx, dx_accumulate, dw_ih, dw_hh};
    if ((rc = seq_backward(&wg, mode, nth, rnn_bwd_task, &cx, &cx.bar, cx.done)) != FR_OK) goto done;
    if (dh0) seq_store_state(&q, H, dh, dh0);

    /* b_ih and b_hh enter the pre-activation the same way: equal gradients, summed in the loop */
    seq_db_store(&db, 0, H, db_ih);
    seq_db_store(&db, 0, H, db_hh);
    rc = FR_OK;

done:
    free(rowptrs);
    fr_free(acc);
    seq_db_free(&db);
    fr_free(dg);
    fr_free(dh);
    rec_pack_free(&tp);
    seq_free(&q);
    return rc;
}
