/*
 * gru.c -- the GRU layer, one direction over a whole sequence, gates r, z, n (torch's order):
 *     r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
 *     z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
 *     reset_after = 1 (torch.nn.GRU):   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
 *     reset_after = 0 (Cho et al.):     n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)
 *     h' = (1 - z) * n + z * h,  computed as n + z * (h - n) like torch.
 *
 * Included by instance.h once per dtype and ISA, after rnn.c, whose sequence schedule (rnn_seq_*: slots
 * sorted by length, row space, chunks of steps) and helpers this file uses; see the top of rnn.c.
 *
 * Bias folding: b_ih (all three) and b_hr, b_hz go into the input projection.  b_hn does too when
 * reset_after = 0 (it is outside r there); with reset_after = 1 it must stay inside r * (...).
 *
 * The tape (gru_tape_len = 4*T*B*H elements; rows in row space, only the first N rows used with lengths):
 *   gates (T*B, 3H)  activated r, z, n of every row;
 *   aux   (T*B, H)   reset_after = 1: h_{t-1} W_hn^T + b_hn  (what r multiplies)
 *                    reset_after = 0: r * h_{t-1}             (the operand of W_hn)
 * h_{t-1} itself is not kept: backward reads it from the forward's y (or h0).  In training the gates rows
 * first receive the input projection, which the time loop then overwrites in place with the activations,
 * so the (T, B, 3H) projection buffer costs nothing extra.
 */

static size_t gru_tape_len(int T, int B, int H) { return (size_t)T * (size_t)B * 4 * (size_t)H; }

/* One step of reset_after = 1 for the n active slots.  On entry g holds the input projection (with the
 * folded biases) and rec = h W_hh^T; hs is updated in place, y and (when training) the tape are written. */
static void gru_step_after(const rnn_seq *q, int s, int n, int H,
                           real *g,            /* (n, 3H) in: projection; out when training: r, z, n */
                           const real *rec,    /* (n, 3H) h W_hh^T */
                           const real *b_hn,   /* (H) or NULL */
                           real *hs,           /* (B, H) state in slot order, updated */
                           real *y, int ldy,   /* (T, B, ldy) out */
                           real *aux) {        /* (n, H) tape out: h W_hn^T + b_hn, or NULL */
    for (int j = 0; j < n; j++) {
        int b = rnn_seq_batch(q, j);
        size_t t = (size_t)rnn_seq_time(q, s, b);
        /* (H) each: slot j's projection (then gates), recurrent products, state, output, tape aux. */
        real *gr = g + (size_t)j * 3 * H, *gz = gr + H, *gn = gz + H;
        const real *rr = rec + (size_t)j * 3 * H, *rz = rr + H, *rn = rz + H;
        real *h = hs + (size_t)j * H;
        real *yj = y + (t * q->B + b) * (size_t)ldy;
        real *aj = aux ? aux + (size_t)j * H : NULL;
        for (int k = 0; k < H; k++) {
            real hn = rn[k] + (b_hn ? b_hn[k] : (real)0);
            real r = fr_sigmoid(gr[k] + rr[k]);
            real z = fr_sigmoid(gz[k] + rz[k]);
            real nn = fr_tanh(gn[k] + r * hn);
            real hv = nn + z * (h[k] - nn);
            h[k] = hv;
            yj[k] = hv;
            if (aj) {
                gr[k] = r;
                gz[k] = z;
                gn[k] = nn;
                aj[k] = hn;
            }
        }
    }
}

static int gru_forward(int T, int B, int I, int H, int reset_after, int reverse,
                       const int *lengths, /* (B) or NULL */
                       const real *x,      /* (T, B, I) */
                       const real *h0,     /* (B, H) or NULL */
                       const real *w_ih,   /* (3H, I) */
                       const real *w_hh,   /* (3H, H) */
                       const real *b_ih,   /* (3H) or NULL */
                       const real *b_hh,   /* (3H) or NULL */
                       real *y, int ldy,   /* (T, B, ldy >= H) out */
                       real *hn,           /* (B, H) out */
                       real *tape) {       /* (gru_tape_len) out, or NULL for inference */
    rnn_seq q;
    if (rnn_seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    const int G3 = 3 * H;
    real *gates = tape;                                            /* (T*B, 3H) tape or NULL */
    real *aux = tape ? tape + (size_t)T * (size_t)B * G3 : NULL;   /* (T*B, H) tape or NULL */
    const real *b_hn = (reset_after && b_hh) ? b_hh + 2 * (size_t)H : NULL; /* (H) stays inside r*(...) */

    int rc = FR_ENOMEM;
    /* Training projects straight into the tape (one GEMM over all steps without lengths); inference
     * projects a bounded chunk of steps at a time into xw. */
    size_t xcols = lengths ? (size_t)I : 0;
    int chunk = rnn_seq_chunk(&q, (tape ? 0 : (size_t)G3) + xcols);
    size_t crows = (size_t)chunk * (size_t)B;
    real *bias = b_ih ? fr_alloc((size_t)G3, 0) : NULL;   /* (3H) folded biases */
    real *xw = tape ? NULL : fr_alloc(crows * G3, 0);      /* (chunk rows, 3H) projection, inference */
    real *xg = fr_alloc(crows * xcols, 0);                 /* (chunk rows, I) x rows gathered, lengths */
    real *hs = fr_alloc((size_t)B * H, 0);                 /* (B, H) the state, slot order */
    real *rec = fr_alloc((size_t)B * G3, 0);               /* (B, 3H) recurrent products of the step */
    real *rh = (!reset_after && !tape) ? fr_alloc((size_t)B * H, 0) : NULL; /* (B, H) r*h, inference */
    if ((b_ih && bias == NULL) || (!tape && xw == NULL) || xg == NULL || hs == NULL || rec == NULL ||
        (!reset_after && !tape && rh == NULL))
        goto done;

    if (bias) /* b_ih + b_hh, without b_hn when reset_after (it is applied inside r * (...)) */
        for (int k = 0; k < G3; k++) bias[k] = b_ih[k] + (k < 2 * H || !reset_after ? b_hh[k] : (real)0);
    rnn_seq_load_state(&q, H, h0, hs);
    rnn_seq_zero_padding(&q, y, ldy, H);

    for (int s0 = 0; s0 < q.S; s0 += chunk) {
        int s1 = s0 + chunk < q.S ? s0 + chunk : q.S;
        size_t lo, hi;
        rnn_seq_rows(&q, s0, s1, &lo, &hi);
        real *xwc = tape ? gates + lo * G3 : xw; /* (rows of the chunk, 3H) */
        rnn_seq_project(&q, s0, s1, I, G3, x, w_ih, bias, xg, xwc);

        for (int s = s0; s < s1; s++) {
            int n = rnn_seq_active(&q, s);
            size_t row = rnn_seq_row(&q, s);
            real *g = xwc + (row - lo) * G3; /* (n, 3H) */
            if (reset_after) {
                /* All three gates' recurrent products in one GEMM. */
                fr_gemm(0, 1, n, G3, H, (real)1, hs, H, w_hh, H, (real)0, rec, G3);
                gru_step_after(&q, s, n, H, g, rec, b_hn, hs, y, ldy, aux ? aux + row * H : NULL);
                continue;
            }
            /* reset_after = 0: r must be known before the n part of the recurrent product, so two
             * dependent GEMMs: r, z from h W_h{r,z}^T, then (r*h) W_hn^T. */
            real *rhs = tape ? aux + row * H : rh; /* (n, H) r * h */
            fr_gemm(0, 1, n, 2 * H, H, (real)1, hs, H, w_hh, H, (real)0, rec, G3);
            for (int j = 0; j < n; j++) {
                /* (H) each: recurrent products (overwritten by the activated r, z), projection, state,
                 * r*h. */
                real *rr = rec + (size_t)j * G3, *rz = rr + H;
                const real *gr = g + (size_t)j * G3, *gz = gr + H;
                const real *h = hs + (size_t)j * H;
                real *rhj = rhs + (size_t)j * H;
                for (int k = 0; k < H; k++) {
                    rr[k] = fr_sigmoid(gr[k] + rr[k]);
                    rz[k] = fr_sigmoid(gz[k] + rz[k]);
                    rhj[k] = rr[k] * h[k];
                }
            }
            fr_gemm(0, 1, n, H, H, (real)1, rhs, H, w_hh + 2 * (size_t)H * H, H, (real)0, rec + 2 * H, G3);
            for (int j = 0; j < n; j++) {
                int b = rnn_seq_batch(&q, j);
                size_t t = (size_t)rnn_seq_time(&q, s, b);
                /* (H) each: r, z, (r*h) W_hn^T; projection (then gates); state; output. */
                const real *rr = rec + (size_t)j * G3, *rz = rr + H, *rn = rz + H;
                real *gr = g + (size_t)j * G3, *gz = gr + H, *gn = gz + H;
                real *h = hs + (size_t)j * H;
                real *yj = y + (t * B + b) * (size_t)ldy;
                for (int k = 0; k < H; k++) {
                    real nn = fr_tanh(gn[k] + rn[k]);
                    real hv = nn + rz[k] * (h[k] - nn);
                    h[k] = hv;
                    yj[k] = hv;
                    if (tape) {
                        gr[k] = rr[k];
                        gz[k] = rz[k];
                        gn[k] = nn;
                    }
                }
            }
        }
    }
    rnn_seq_store_state(&q, H, hs, hn);
    rc = FR_OK;

done:
    free(bias);
    free(xw);
    free(xg);
    free(hs);
    free(rec);
    free(rh);
    rnn_seq_free(&q);
    return rc;
}

/*
 * Backward.  Per row, with d = dy + dh (the gradient reaching h'), from h' = n + z*(h - n):
 *     dn_pre = d (1 - z) (1 - n^2)          dz_pre = d (h - n) z (1 - z)        dh = d z + ...
 *   reset_after = 1 (a = h W_hn^T + b_hn from the tape):
 *     dr_pre = dn_pre a r (1 - r),   dL/da = dn_pre r,   dh += [dr_pre, dz_pre, dn_pre r] W_hh
 *   reset_after = 0 (drh = dL/d(r*h) = dn_pre W_hn):
 *     dr_pre = drh h r (1 - r),      dh += drh r + [dr_pre, dz_pre] W_h{r,z}
 * dg holds the recurrent side [dr_pre, dz_pre, dn_rec], dn_rec = dL/da (reset_after) or dn_pre; the
 * input side is the same except its n column is dn_pre, kept in dni for reset_after = 1.  Then
 *     dW_ih = [dg_rz | dn_pre]^T X,   dx = [dg_rz | dn_pre] W_ih,   db_ih = colsum [dg_rz | dn_pre]
 *     dW_hh = dg_rz^T H_prev  and  dW_hn = dn_rec^T (reset_after ? H_prev : r*H_prev),   db_hh = colsum dg.
 */
static int gru_backward(int T, int B, int I, int H, int reset_after, int reverse,
                        const int *lengths,       /* (B) or NULL */
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
    rnn_seq q;
    if (rnn_seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    const int G3 = 3 * H;
    const real *gates = tape;                                   /* (T*B, 3H) r, z, n */
    const real *aux = tape + (size_t)T * (size_t)B * G3;        /* (T*B, H) see the top of the file */
    const real *w_hn = w_hh + 2 * (size_t)H * H;                /* (H, H) */

    int rc = FR_ENOMEM;
    size_t xcols = lengths ? (size_t)I : 0;
    int chunk = rnn_seq_chunk(&q, (size_t)H + xcols);
    size_t crows = (size_t)chunk * (size_t)B;
    real *dg = fr_alloc(q.N * G3, 0);                           /* (N, 3H) recurrent-side dG */
    real *dni = reset_after ? fr_alloc(q.N * H, 0) : NULL;      /* (N, H) dn_pre, reset_after only */
    real *dh = fr_alloc((size_t)B * H, 0);                      /* (B, H) dL/dh carried, slot order */
    real *drh = reset_after ? NULL : fr_alloc((size_t)B * H, 0); /* (B, H) dL/d(r*h) of the step */
    real *zero = fr_alloc((size_t)H, 1);                        /* (H) h0 when h0 is NULL */
    real *hg = fr_alloc(crows * H, 0);                          /* (chunk rows, H) H_prev gathered */
    real *xg = fr_alloc(crows * xcols, 0);                      /* (chunk rows, I) x / dx, lengths */
    if (dg == NULL || (reset_after && dni == NULL) || dh == NULL || (!reset_after && drh == NULL) ||
        zero == NULL || hg == NULL || xg == NULL)
        goto done;

    rnn_seq_load_state(&q, H, dhn, dh);
    for (int s = q.S - 1; s >= 0; s--) {
        int n = rnn_seq_active(&q, s);
        size_t row = rnn_seq_row(&q, s);
        real *g = dg + row * G3;              /* (n, 3H) */
        const real *gt = gates + row * G3;    /* (n, 3H) r, z, n */
        const real *au = aux + row * H;       /* (n, H) */
        /* Pass 1: everything that needs only this step's saved values. */
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(&q, j);
            size_t t = (size_t)rnn_seq_time(&q, s, b);
            const real *hp = rnn_seq_prev(&q, s, b, y, ldy, h0, H, zero); /* (H) h_{t-1} */
            const real *dyj = dy + (t * B + b) * (size_t)lddy;           /* (H) */
            /* (H) each: saved gates, saved aux, gate gradients out, carried dh, dn_pre (reset_after). */
            const real *r = gt + (size_t)j * G3, *z = r + H, *nn = z + H;
            const real *aj = au + (size_t)j * H;
            real *gr = g + (size_t)j * G3, *gz = gr + H, *gn = gz + H;
            real *dhj = dh + (size_t)j * H;
            real *dnj = reset_after ? dni + (row + j) * H : NULL;
            for (int k = 0; k < H; k++) {
                real d = dyj[k] + dhj[k];
                real dn = d * ((real)1 - z[k]) * ((real)1 - nn[k] * nn[k]);
                gz[k] = d * (hp[k] - nn[k]) * z[k] * ((real)1 - z[k]);
                dhj[k] = d * z[k];
                if (reset_after) {
                    gr[k] = dn * aj[k] * r[k] * ((real)1 - r[k]);
                    gn[k] = dn * r[k];
                    dnj[k] = dn;
                } else {
                    gn[k] = dn;
                }
            }
        }
        if (reset_after) {
            fr_gemm(0, 0, n, H, G3, (real)1, g, G3, w_hh, H, (real)1, dh, H);
            continue;
        }
        /* reset_after = 0: dr needs dL/d(r*h) = dn_pre W_hn first (the forward's second product). */
        fr_gemm(0, 0, n, H, H, (real)1, g + 2 * H, G3, w_hn, H, (real)0, drh, H);
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(&q, j);
            /* (H) each: h_{t-1}, saved r, dL/d(r*h), dr_pre out, carried dh. */
            const real *hp = rnn_seq_prev(&q, s, b, y, ldy, h0, H, zero);
            const real *r = gt + (size_t)j * G3;
            const real *dj = drh + (size_t)j * H;
            real *gr = g + (size_t)j * G3;
            real *dhj = dh + (size_t)j * H;
            for (int k = 0; k < H; k++) {
                gr[k] = dj[k] * hp[k] * r[k] * ((real)1 - r[k]);
                dhj[k] += dj[k] * r[k];
            }
        }
        fr_gemm(0, 0, n, H, 2 * H, (real)1, g, G3, w_hh, H, (real)1, dh, H);
    }
    rnn_seq_store_state(&q, H, dh, dh0);

    /* The input-side n column: dn_pre. */
    const real *dn_all = reset_after ? dni : dg + 2 * H; /* (N, H), leading dimension ldn */
    const int ldn = reset_after ? H : G3;

    /* Weight gradients and dx as large GEMMs over all rows, a chunk of steps at a time. */
    memset(dw_ih, 0, sizeof(real) * (size_t)G3 * I);
    memset(dw_hh, 0, sizeof(real) * (size_t)G3 * H);
    if (dx && !dx_accumulate) rnn_seq_zero_padding(&q, dx, I, I);
    for (int s0 = 0; s0 < q.S; s0 += chunk) {
        int s1 = s0 + chunk < q.S ? s0 + chunk : q.S;
        size_t lo, hi;
        rnn_seq_rows(&q, s0, s1, &lo, &hi);
        int m = (int)(hi - lo);
        const real *gc = dg + lo * G3;                  /* (m, 3H) */
        const real *dnc = dn_all + lo * (size_t)ldn;    /* (m, H) */
        const real *xc = x + lo * (size_t)I;            /* (m, I) */
        if (lengths) {
            rnn_seq_gather(&q, s0, s1, x, I, I, xg);
            xc = xg;
        }
        fr_gemm(1, 0, 2 * H, I, m, (real)1, gc, G3, xc, I, (real)1, dw_ih, I);
        fr_gemm(1, 0, H, I, m, (real)1, dnc, ldn, xc, I, (real)1, dw_ih + 2 * (size_t)H * I, I);

        rnn_seq_gather_prev(&q, s0, s1, y, ldy, h0, H, hg);
        if (reset_after) {
            fr_gemm(1, 0, G3, H, m, (real)1, gc, G3, hg, H, (real)1, dw_hh, H);
        } else {
            fr_gemm(1, 0, 2 * H, H, m, (real)1, gc, G3, hg, H, (real)1, dw_hh, H);
            fr_gemm(1, 0, H, H, m, (real)1, gc + 2 * H, G3, aux + lo * H, H, (real)1,
                    dw_hh + 2 * (size_t)H * H, H);
        }

        if (dx == NULL) continue;
        real *dxc = lengths ? xg : dx + lo * (size_t)I; /* (m, I) */
        real beta = (lengths || !dx_accumulate) ? (real)0 : (real)1;
        fr_gemm(0, 0, m, I, 2 * H, (real)1, gc, G3, w_ih, I, beta, dxc, I);
        fr_gemm(0, 0, m, I, H, (real)1, dnc, ldn, w_ih + 2 * (size_t)H * I, I, (real)1, dxc, I);
        if (lengths) rnn_seq_scatter(&q, s0, s1, xg, dx, I, I, dx_accumulate);
    }
    if (db_ih) {
        rnn_colsum(q.N, 2 * H, dg, G3, db_ih);
        rnn_colsum(q.N, H, dn_all, ldn, db_ih + 2 * H);
    }
    if (db_hh) rnn_colsum(q.N, G3, dg, G3, db_hh);
    rc = FR_OK;

done:
    free(dg);
    free(dni);
    free(dh);
    free(drh);
    free(zero);
    free(hg);
    free(xg);
    rnn_seq_free(&q);
    return rc;
}
