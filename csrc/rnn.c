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

/* The activation on one row of a block: units [u0, u0 + nu) of one slot.  acc (nu) = x_t W_ih^T + h W_hh^T. */
static inline void rnn_fwd_cell(int nu, int relu,
                                const real *acc,  /* (nu) */
                                const real *bias, /* (nu) */
                                real *h,          /* (nu) out: h_t in the state buffer */
                                real *yr)         /* (nu) out: y */
{
    int v = 0;
#if FR_SIMD
    const __m256 zero = _mm256_setzero_ps();
    for (; v + 8 <= nu; v += 8) {
        __m256 p = _mm256_add_ps(_mm256_loadu_ps(acc + v), _mm256_loadu_ps(bias + v));
        /* max(0, p) returns its second operand for NaN and for -0: as `p < 0 ? 0 : p` (torch's relu) */
        p = relu ? _mm256_max_ps(zero, p) : vr8_tanh(p);
        _mm256_storeu_ps(h + v, p);
        _mm256_storeu_ps(yr + v, p);
    }
#endif
    for (; v < nu; v++) {
        real p = acc[v] + bias[v];
        /* `p < 0 ? 0 : p` keeps a NaN a NaN, as torch's relu does. */
        p = relu ? (p < 0 ? (real)0 : p) : fr_tanh(p);
        h[v] = p;
        yr[v] = p;
    }
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
        fr_barrier_wait(&cx->bar, tid);
    }
}

/* Whether the forward projects x by GEMM per chunk of steps (split) rather than per step beside W_hh
 * (fused): rec_split's rule, with the RNN's weights (measured on the LSTM and the RNN: lstm_split, lstm.c,
 * where the LSTM departs from it at B >= 24). */
static int rnn_split(size_t rows, int B, int I, int H) {
    return rows > REC_DIRECT_ROWS && rec_split(B, (size_t)H * (size_t)(I + H) * sizeof(real)); /* [W_ih | W_hh] */
}

static int rnn_forward(int T, int B, int I, int H, int relu, int reverse,
                       const int *lengths, /* (B) or NULL */
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
    cx.w_ih = w_ih;
    cx.xs = xg;
    cx.xw = xw;
    cx.bias = bias;
    cx.hbuf[0] = h;
    cx.hbuf[1] = h2;
    cx.y = y;
    cx.ldy = ldy;
    const int nth = rec_threads_for(B, 1, H, I + H, wp.nblk);
    cx.steal = rec_steal(nth, B, &wp);
    if ((rowptrs = (const real **)malloc(sizeof(real *) * (3 * (size_t)B * nth + 1))) == NULL) goto done;
    if ((acc = fr_alloc((size_t)nth * B * wp.W, 0)) == NULL) goto done;
    for (int t = 0; t < nth; t++) cx.rows[t] = rowptrs + 3 * (size_t)B * t;
    cx.acc = acc;
    seq_run_chunks(&q, chunk, x, I, xg, &cx.s_begin, &cx.s_end, nth, rnn_fwd_task, &cx, &cx.bar);

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
    fr_barrier_t bar;
    fr_claims_t claims; /* steal: the blocks of a step */
} rnn_bwd_ctx;

/* g = (dy + a) * act'(h) on nu units, a being dh_t (the product's block, or the carried dh_n); and the bias
 * gradient's column sums db += g, in double (float sums over T*B rows would lose digits). */
static inline void rnn_bwd_cell(int nu, int relu,
                                const real *a,   /* (nu) */
                                const real *dyr, /* (nu) */
                                const real *h,   /* (nu) h_t = y */
                                real *g,         /* (nu) out */
                                double *db)      /* (nu) accumulated */
{
    int v = 0;
#if FR_SIMD
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    for (; v + 8 <= nu; v += 8) {
        __m256 d = _mm256_add_ps(_mm256_loadu_ps(dyr + v), _mm256_loadu_ps(a + v));
        __m256 hv = _mm256_loadu_ps(h + v);
        d = relu ? _mm256_and_ps(_mm256_cmp_ps(hv, zero, _CMP_GT_OQ), d)
                 : _mm256_mul_ps(d, _mm256_fnmadd_ps(hv, hv, one));
        _mm256_storeu_ps(g + v, d);
        _mm256_storeu_pd(db + v, _mm256_add_pd(_mm256_loadu_pd(db + v), _mm256_cvtps_pd(_mm256_castps256_ps128(d))));
        _mm256_storeu_pd(db + v + 4,
                         _mm256_add_pd(_mm256_loadu_pd(db + v + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))));
    }
#endif
    for (; v < nu; v++) {
        real d = dyr[v] + a[v];
        d = relu ? (h[v] > 0 ? d : (real)0) : d * ((real)1 - h[v] * h[v]);
        g[v] = d;
        db[v] += d;
    }
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
        fr_barrier_wait(&cx->bar, tid); /* dG_t complete */
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
    real *hg = NULL, *xg = NULL; /* chunk workspaces, lengths only */
    real *acc = NULL;            /* (nthreads, B, W) */
    double *db = NULL;           /* (H), 64-byte aligned: threads' units meet at a cache-line boundary */
    real *dg = fr_alloc(q.N * H, 0);       /* (N, H) dG: dL/d(pre-activation), row space */
    real *dh = fr_alloc((size_t)B * H, 0); /* (B, H) dh_n in, dh0 out, slot order */
    if (dg == NULL || dh == NULL) goto done;
    if (posix_memalign((void **)&db, 64, sizeof(double) * (size_t)(H > 0 ? H : 1)) != 0) {
        db = NULL;
        goto done;
    }
    memset(db, 0, sizeof(double) * (size_t)H);
    if (rec_pack_transposed(&tp, H, H, w_hh, H) != FR_OK) goto done;

    seq_load_state(&q, H, dhn, dh);
    memset(&cx, 0, sizeof cx);
    cx.q = &q;
    cx.H = H;
    cx.relu = relu;
    cx.tp = &tp;
    cx.y = y;
    cx.ldy = ldy;
    cx.dy = dy;
    cx.lddy = lddy;
    cx.dg = dg;
    cx.dh = dh;
    cx.db = db;
    const int nth = rec_threads_for(B, 1, H, H, tp.nblk);
    cx.steal = rec_steal(nth, B, &tp);
    if ((rowptrs = (const real **)malloc(sizeof(real *) * 3 * (size_t)(B > 0 ? B : 1) * nth)) == NULL) goto done;
    if ((acc = fr_alloc((size_t)nth * B * tp.W, 0)) == NULL) goto done;
    for (int t = 0; t < nth; t++) cx.rows[t] = rowptrs + (size_t)3 * B * t;
    cx.acc = acc;
    fr_parallel(nth, rnn_bwd_task, &cx, &cx.bar);
    if (dh0) seq_store_state(&q, H, dh, dh0);

    /* The weight gradients and dx as large GEMMs over all rows: dW_ih = dG^T X, dW_hh = dG^T H_prev,
     * dx = dG W_ih. */
    if (lengths == NULL) {
        /* row space is x's, dx's and y's own (T, B) order: everything in place, one GEMM each */
        const int N = (int)q.N;
        const gk_job j_ih = {1, 0, H, I, N, (real)1, dg, H, x, I, (real)0, dw_ih, I, NULL};
        const gk_job j_dx = {0, 0, N, I, H, (real)1, dg, H, w_ih, I, dx_accumulate ? (real)1 : (real)0, dx, I, NULL};
        /* h_{t-1} is y's previous time block in processing order (y[t-1] forward, y[t+1] in reverse),
         * read in place with its stride ldy, then h0's for the first step (a product with K = 0 sets 0) */
        const int K = T > 1 ? (T - 1) * B : 0;
        const gk_job j_h0 = {1, 0, H, H, B, (real)1, dg + (size_t)fr_time_index(0, T, reverse) * B * H, H, h0, H,
                             (real)1, dw_hh, H, NULL};
        const gk_job j_hh = {1, 0, H, H, K, (real)1, reverse ? dg : dg + (size_t)B * H, H,
                             reverse ? y + (size_t)B * ldy : y, ldy, (real)0, dw_hh, H, h0 && T > 0 ? &j_h0 : NULL};
        const gk_job *jobs[3] = {&j_ih, dx ? &j_dx : NULL, &j_hh};
        fr_gemm_jobs(jobs, 3);
    } else {
        /* with lengths, x and h_{t-1} are gathered and dx scattered a chunk of steps at a time (bounded
         * memory), each chunk still one GEMM over many rows */
        int chunk = seq_chunk(&q, (size_t)H + (size_t)I);
        size_t crows = (size_t)chunk * (size_t)B;
        hg = fr_alloc(crows * H, 0); /* (chunk rows, H) h_{t-1} */
        xg = fr_alloc(crows * I, 0); /* (chunk rows, I) x rows, then dx rows */
        if (hg == NULL || xg == NULL) goto done;
        memset(dw_ih, 0, sizeof(real) * (size_t)H * I);
        memset(dw_hh, 0, sizeof(real) * (size_t)H * H);
        if (dx && !dx_accumulate) seq_zero_padding(&q, dx, I, I);
        for (int s0 = 0; s0 < q.S; s0 += chunk) {
            int s1 = s0 + chunk < q.S ? s0 + chunk : q.S;
            size_t lo, hi;
            seq_rows(&q, s0, s1, &lo, &hi);
            int m = (int)(hi - lo);
            const real *gc = dg + lo * H; /* (m, H) */
            seq_gather(&q, s0, s1, x, I, I, xg);
            fr_gemm(1, 0, H, I, m, (real)1, gc, H, xg, I, (real)1, dw_ih, I);
            seq_gather_prev(&q, s0, s1, y, ldy, h0, H, hg);
            fr_gemm(1, 0, H, H, m, (real)1, gc, H, hg, H, (real)1, dw_hh, H);
            if (dx == NULL) continue;
            fr_gemm(0, 0, m, I, H, (real)1, gc, H, w_ih, I, (real)0, xg, I);
            seq_scatter(&q, s0, s1, xg, dx, I, I, dx_accumulate);
        }
    }
    /* b_ih and b_hh enter the pre-activation the same way: equal gradients, summed in the loop */
    for (int u = 0; u < H; u++) {
        if (db_ih) db_ih[u] = (real)db[u];
        if (db_hh) db_hh[u] = (real)db[u];
    }
    rc = FR_OK;

done:
    free(rowptrs);
    fr_free(acc);
    free(db);
    fr_free(dg);
    fr_free(dh);
    fr_free(hg);
    fr_free(xg);
    rec_pack_free(&tp);
    seq_free(&q);
    return rc;
}
