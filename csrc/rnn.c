/*
 * rnn.c -- the vanilla (Elman) RNN layer, one direction over a whole sequence:
 *     h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   act = tanh, or relu when `relu`.
 *
 * Included by instance.h once per dtype and ISA (common.h), so everything here is static and `real`.
 * This file also holds the sequence schedule (rnn_seq_*) and the small helpers the GRU shares: instance.h
 * includes rnn.c before gru.c.
 *
 * ---- How the work is laid out (shared with gru.c) --------------------------------------------------------
 * Slots.  With `lengths`, the sequences are sorted once by length, longest first (a stable counting sort),
 * and the recurrent state lives in that order: slot j holds sequence perm[j].  The sequences still running
 * at step s are then the first n_s slots, n_s = #{b : lengths[b] > s}, so every per-step GEMM runs on a
 * prefix of the state and nothing is computed for padding.  Without lengths perm is the identity, n_s = B,
 * and no permutation is ever applied.
 *
 * Row space.  The big per-row buffers (the input projection XW, the GRU tape, the gate gradients dG) hold
 * one row per (step, active sequence):
 *   - without lengths, row t*B + b: the natural (T, B) order of x and y, so x and dx are used in place;
 *   - with lengths, packed by step: the rows of step s are off[s] .. off[s] + n_s - 1 (slot order), with
 *     N = sum(lengths) rows in all and no padding rows; x rows are gathered into that order, dx scattered.
 * Either way the rows of one step are contiguous (the per-step GEMMs read and write them in place) and the
 * rows of a range of steps are contiguous too (chunks of steps are single GEMMs over a block of rows).
 */

/* Work buffers that grow with T are processed in chunks of steps of about this many bytes, which keeps
 * inference memory bounded while each chunk is still one large, efficient GEMM. */
#ifndef RNN_CHUNK_BYTES /* overridable so that tests can force many small chunks */
#define RNN_CHUNK_BYTES ((size_t)4 << 20)
#endif

typedef struct rnn_seq {
    int T, B, reverse;
    const int *len; /* (B) valid steps per sequence, or NULL: all T */
    int S;          /* steps to run: the longest length (T without lengths) */
    int *perm;      /* (B) slot j -> sequence b, longest first; NULL without lengths */
    int *nact;      /* (T + 1) n_s = sequences with more than s steps; NULL without lengths */
    size_t *off;    /* (S + 1) first row of step s in row space; NULL without lengths */
    size_t N;       /* rows in row space: sum(lengths), or T*B */
} rnn_seq;

static int rnn_seq_init(rnn_seq *q, int T, int B, int reverse, const int *lengths) {
    q->T = T;
    q->B = B;
    q->reverse = reverse;
    q->len = lengths;
    q->S = T;
    q->perm = q->nact = NULL;
    q->off = NULL;
    q->N = (size_t)T * (size_t)B;
    if (lengths == NULL) return FR_OK;

    /* One block: perm (B), nact (T + 1), next (T + 1, the sort's fill positions). */
    int *ints = malloc(sizeof(int) * ((size_t)B + 2 * ((size_t)T + 1)));
    size_t *off = malloc(sizeof(size_t) * ((size_t)T + 1));
    if (ints == NULL || off == NULL) {
        free(ints);
        free(off);
        return FR_ENOMEM;
    }
    int *perm = ints, *nact = ints + B, *next = nact + T + 1;

    /* Counting sort by length, descending and stable.  First nact[l] counts the sequences of length l;
     * the suffix sums then turn it into #{lengths > l} = n_l, which is also the first slot of length l. */
    for (int l = 0; l <= T; l++) nact[l] = 0;
    for (int b = 0; b < B; b++) nact[lengths[b]]++;
    int above = 0;
    for (int l = T; l >= 0; l--) {
        int count = nact[l];
        nact[l] = next[l] = above;
        above += count;
    }
    for (int b = 0; b < B; b++) perm[next[lengths[b]]++] = b;

    q->S = B > 0 ? lengths[perm[0]] : 0;
    off[0] = 0;
    for (int s = 0; s < q->S; s++) off[s + 1] = off[s] + (size_t)nact[s];
    q->perm = perm;
    q->nact = nact;
    q->off = off;
    q->N = off[q->S];
    return FR_OK;
}

static void rnn_seq_free(rnn_seq *q) {
    free(q->perm); /* the start of the int block */
    free(q->off);
    q->perm = q->nact = NULL;
    q->off = NULL;
}

/* n_s: the sequences running at step s, slots 0 .. n_s - 1. */
static inline int rnn_seq_active(const rnn_seq *q, int s) { return q->nact ? q->nact[s] : q->B; }

/* The sequence in slot j. */
static inline int rnn_seq_batch(const rnn_seq *q, int j) { return q->perm ? q->perm[j] : j; }

/* The time index sequence b reads and writes at step s. */
static inline int rnn_seq_time(const rnn_seq *q, int s, int b) {
    return fr_time_index(s, q->len ? q->len[b] : q->T, q->reverse);
}

/* The row of slot 0 at step s in row space (slot j is that + j). */
static inline size_t rnn_seq_row(const rnn_seq *q, int s) {
    if (q->off) return q->off[s];
    return (size_t)fr_time_index(s, q->T, q->reverse) * (size_t)q->B;
}

/* The block of rows [*lo, *hi) that steps s0 .. s1-1 occupy in row space (in reverse without lengths the
 * later steps come first, but the block is still contiguous). */
static void rnn_seq_rows(const rnn_seq *q, int s0, int s1, size_t *lo, size_t *hi) {
    size_t B = (size_t)q->B;
    if (q->off) {
        *lo = q->off[s0];
        *hi = q->off[s1];
    } else if (!q->reverse) {
        *lo = (size_t)s0 * B;
        *hi = (size_t)s1 * B;
    } else {
        *lo = (size_t)(q->T - s1) * B;
        *hi = (size_t)(q->T - s0) * B;
    }
}

/* How many steps a chunk takes when each row of row space needs `per_row` elements of chunk buffers
 * (0: nothing is chunked, all steps at once).  At least one step. */
static int rnn_seq_chunk(const rnn_seq *q, size_t per_row) {
    if (q->S <= 1) return 1;
    if (per_row == 0) return q->S;
    size_t steps = RNN_CHUNK_BYTES / (per_row * sizeof(real) * (size_t)(q->B > 0 ? q->B : 1));
    if (steps < 1) steps = 1;
    if (steps > (size_t)q->S) steps = (size_t)q->S;
    return (int)steps;
}

/* dst (rows of steps s0 .. s1-1, cols): those rows of row space taken from src (T, B, ld), i.e. row
 * (s, j) is src[t, b] for the sequence b in slot j at its time t of step s.  For the lengths case. */
static void rnn_seq_gather(const rnn_seq *q, int s0, int s1,
                           const real *src, int ld, int cols, /* (T, B, ld >= cols) */
                           real *dst) {                       /* (rows, cols) out */
    size_t lo, hi;
    rnn_seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = rnn_seq_active(q, s);
        real *d = dst + (rnn_seq_row(q, s) - lo) * (size_t)cols; /* (n, cols) this step's rows */
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(q, j);
            size_t t = (size_t)rnn_seq_time(q, s, b);
            memcpy(d + (size_t)j * cols, src + (t * q->B + b) * (size_t)ld, sizeof(real) * (size_t)cols);
        }
    }
}

/* The inverse of rnn_seq_gather: dst[t, b] (T, B, ld) = (or += when accumulate) the rows of src. */
static void rnn_seq_scatter(const rnn_seq *q, int s0, int s1,
                            const real *src,            /* (rows, cols) */
                            real *dst, int ld, int cols, /* (T, B, ld >= cols) out */
                            int accumulate) {
    size_t lo, hi;
    rnn_seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = rnn_seq_active(q, s);
        const real *r = src + (rnn_seq_row(q, s) - lo) * (size_t)cols; /* (n, cols) */
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(q, j);
            size_t t = (size_t)rnn_seq_time(q, s, b);
            const real *sj = r + (size_t)j * cols;        /* (cols) */
            real *dj = dst + (t * q->B + b) * (size_t)ld; /* (cols) */
            if (accumulate)
                for (int k = 0; k < cols; k++) dj[k] += sj[k];
            else
                memcpy(dj, sj, sizeof(real) * (size_t)cols);
        }
    }
}

/* Zero the padded rows t >= lengths[b] of a (T, B, ld) array (the first cols of each). */
static void rnn_seq_zero_padding(const rnn_seq *q, real *a /* (T, B, ld >= cols) */, int ld, int cols) {
    if (q->len == NULL) return;
    for (int b = 0; b < q->B; b++)
        for (int t = q->len[b]; t < q->T; t++)
            memset(a + ((size_t)t * q->B + b) * (size_t)ld, 0, sizeof(real) * (size_t)cols);
}

/* The state sequence b entered step s with: h0[b] at s = 0 (`zero`, an (H) row of zeros, when h0 is
 * NULL), else the forward's output y at the sequence's previous time.  Backward rebuilds h_{t-1} this way
 * instead of keeping a copy in the tape. */
static inline const real *rnn_seq_prev(const rnn_seq *q, int s, int b,
                                       const real *y, int ldy, /* (T, B, ldy) */
                                       const real *h0,         /* (B, H) or NULL */
                                       int H, const real *zero) { /* (H) zeros, or NULL */
    if (s == 0) return h0 ? h0 + (size_t)b * H : zero;
    return y + ((size_t)rnn_seq_time(q, s - 1, b) * q->B + b) * (size_t)ldy;
}

/* dst (rows of steps s0 .. s1-1, H): h_{t-1} of every row, the right-hand operand of dW_hh = dG^T H_prev. */
static void rnn_seq_gather_prev(const rnn_seq *q, int s0, int s1,
                                const real *y, int ldy, /* (T, B, ldy) */
                                const real *h0,         /* (B, H) or NULL */
                                int H, real *dst) {     /* (rows, H) out */
    size_t lo, hi;
    rnn_seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = rnn_seq_active(q, s);
        real *d = dst + (rnn_seq_row(q, s) - lo) * (size_t)H; /* (n, H) */
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(q, j);
            const real *p = rnn_seq_prev(q, s, b, y, ldy, h0, H, NULL); /* (H) or NULL: zeros */
            if (p)
                memcpy(d + (size_t)j * H, p, sizeof(real) * (size_t)H);
            else
                memset(d + (size_t)j * H, 0, sizeof(real) * (size_t)H);
        }
    }
}

/* xw (rows of steps s0 .. s1-1, GH) = x W^T + bias: the input projection of a chunk of steps as one GEMM.
 * Without lengths those rows are a contiguous block of x, read in place; with lengths they are gathered
 * into xg first. */
static void rnn_seq_project(const rnn_seq *q, int s0, int s1, int I, int GH,
                            const real *x,    /* (T, B, I) */
                            const real *w,    /* (GH, I) */
                            const real *bias, /* (GH) or NULL */
                            real *xg,         /* (rows, I) workspace, lengths only */
                            real *xw) {       /* (rows, GH) out */
    size_t lo, hi;
    rnn_seq_rows(q, s0, s1, &lo, &hi);
    const real *a = x + lo * (size_t)I; /* (rows, I) the GEMM's left operand */
    if (q->len) {
        rnn_seq_gather(q, s0, s1, x, I, I, xg);
        a = xg;
    }
    fr_gemm(0, 1, (int)(hi - lo), GH, I, (real)1, a, I, w, I, (real)0, xw, GH);
    if (bias)
        for (size_t r = 0; r < hi - lo; r++) {
            real *row = xw + r * (size_t)GH; /* (GH) */
            for (int k = 0; k < GH; k++) row[k] += bias[k];
        }
}

/* Initial state in slot order: hs[j] = h0[perm[j]], or zeros. */
static void rnn_seq_load_state(const rnn_seq *q, int H, const real *h0 /* (B, H) or NULL */,
                               real *hs /* (B, H) slots */) {
    for (int j = 0; j < q->B; j++) {
        int b = rnn_seq_batch(q, j);
        if (h0)
            memcpy(hs + (size_t)j * H, h0 + (size_t)b * H, sizeof(real) * (size_t)H);
        else
            memset(hs + (size_t)j * H, 0, sizeof(real) * (size_t)H);
    }
}

/* Final state back in batch order: out[perm[j]] = hs[j].  A slot stops changing after its last valid step
 * (it leaves the active prefix), so this is each sequence's state after its own last step. */
static void rnn_seq_store_state(const rnn_seq *q, int H, const real *hs /* (B, H) slots */,
                                real *out /* (B, H) */) {
    for (int j = 0; j < q->B; j++)
        memcpy(out + (size_t)rnn_seq_batch(q, j) * H, hs + (size_t)j * H, sizeof(real) * (size_t)H);
}

/* out (cols) = column sums of a (rows, cols; leading dimension lda), the bias gradients.  Summed in
 * double, in column blocks that fit on the stack: float sums over T*B rows would lose digits. */
static void rnn_colsum(size_t rows, int cols,
                       const real *a, int lda, /* (rows, lda >= cols) */
                       real *out) {            /* (cols) out */
    enum { BLK = 64 };
    for (int c0 = 0; c0 < cols; c0 += BLK) {
        int nc = cols - c0 < BLK ? cols - c0 : BLK;
        double acc[BLK] = {0};
        for (size_t r = 0; r < rows; r++) {
            const real *row = a + r * (size_t)lda + c0; /* (nc) */
            for (int k = 0; k < nc; k++) acc[k] += row[k];
        }
        for (int k = 0; k < nc; k++) out[c0 + k] = (real)acc[k];
    }
}

/* ---- the RNN cell ------------------------------------------------------------------------------------ */

/* Backward needs h_t, which is the forward's y, and h_{t-1} (y one step earlier, or h0), and the
 * activation's derivative is a function of h_t alone (tanh' = 1 - h^2, relu' = [h > 0]): no tape. */
static size_t rnn_tape_len(int T, int B, int H) {
    (void)T;
    (void)B;
    (void)H;
    return 0;
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
    rnn_seq q;
    if (rnn_seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    int rc = FR_ENOMEM;
    size_t xcols = lengths ? (size_t)I : 0; /* gathered x per row (without lengths x is read in place) */
    int chunk = rnn_seq_chunk(&q, (size_t)H + xcols);
    size_t crows = (size_t)chunk * (size_t)B;
    real *bias = b_ih ? fr_alloc((size_t)H, 0) : NULL; /* (H) b_ih + b_hh: both fold into the projection */
    real *xw = fr_alloc(crows * H, 0);                  /* (chunk rows, H) x W_ih^T + b, then + h W_hh^T */
    real *xg = fr_alloc(crows * xcols, 0);              /* (chunk rows, I) x rows gathered, lengths only */
    real *hs = fr_alloc((size_t)B * H, 0);              /* (B, H) the state, in slot order */
    if (xw == NULL || xg == NULL || hs == NULL || (b_ih && bias == NULL)) goto done;

    if (bias)
        for (int k = 0; k < H; k++) bias[k] = b_ih[k] + b_hh[k];
    rnn_seq_load_state(&q, H, h0, hs);
    rnn_seq_zero_padding(&q, y, ldy, H);

    for (int s0 = 0; s0 < q.S; s0 += chunk) {
        int s1 = s0 + chunk < q.S ? s0 + chunk : q.S;
        size_t lo, hi;
        rnn_seq_rows(&q, s0, s1, &lo, &hi);
        rnn_seq_project(&q, s0, s1, I, H, x, w_ih, bias, xg, xw);

        for (int s = s0; s < s1; s++) {
            int n = rnn_seq_active(&q, s);
            real *g = xw + (rnn_seq_row(&q, s) - lo) * H; /* (n, H) this step's pre-activations */
            /* The recurrent product of the active slots, accumulated straight onto the projection. */
            fr_gemm(0, 1, n, H, H, (real)1, hs, H, w_hh, H, (real)1, g, H);
            for (int j = 0; j < n; j++) {
                int b = rnn_seq_batch(&q, j);
                size_t t = (size_t)rnn_seq_time(&q, s, b);
                const real *gj = g + (size_t)j * H;         /* (H) */
                real *hj = hs + (size_t)j * H;              /* (H) */
                real *yj = y + (t * B + b) * (size_t)ldy;   /* (H) */
                for (int k = 0; k < H; k++) {
                    real v = gj[k];
                    /* `v < 0 ? 0 : v` keeps a NaN a NaN, as torch's relu does. */
                    v = relu ? (v < 0 ? (real)0 : v) : fr_tanh(v);
                    hj[k] = v;
                    yj[k] = v;
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
    rnn_seq_free(&q);
    return rc;
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
    rnn_seq q;
    if (rnn_seq_init(&q, T, B, reverse, lengths) != FR_OK) return FR_ENOMEM;

    int rc = FR_ENOMEM;
    size_t xcols = lengths ? (size_t)I : 0; /* gathered x / dx per row (without lengths: in place) */
    int chunk = rnn_seq_chunk(&q, (size_t)H + xcols);
    size_t crows = (size_t)chunk * (size_t)B;
    real *dg = fr_alloc(q.N * H, 0);            /* (N, H) dG: dL/d(pre-activation), row space */
    real *dh = fr_alloc((size_t)B * H, 0);      /* (B, H) dL/dh carried into the step, slot order */
    real *hg = fr_alloc(crows * H, 0);          /* (chunk rows, H) h_{t-1} gathered for dW_hh */
    real *xg = fr_alloc(crows * xcols, 0);      /* (chunk rows, I) x rows, then dx rows; lengths only */
    if (dg == NULL || dh == NULL || hg == NULL || xg == NULL) goto done;

    /* BPTT: per step only dG_t (elementwise) and dh_{t-1} = dG_t W_hh, for the active slots.  A slot not yet
     * active (its sequence is shorter) keeps dh_n until its last valid step comes. */
    rnn_seq_load_state(&q, H, dhn, dh);
    for (int s = q.S - 1; s >= 0; s--) {
        int n = rnn_seq_active(&q, s);
        real *g = dg + rnn_seq_row(&q, s) * H; /* (n, H) */
        for (int j = 0; j < n; j++) {
            int b = rnn_seq_batch(&q, j);
            size_t t = (size_t)rnn_seq_time(&q, s, b);
            const real *hj = y + (t * B + b) * (size_t)ldy;    /* (H) h_t */
            const real *dyj = dy + (t * B + b) * (size_t)lddy; /* (H) */
            const real *dhj = dh + (size_t)j * H;              /* (H) */
            real *gj = g + (size_t)j * H;                      /* (H) */
            for (int k = 0; k < H; k++) {
                real d = dyj[k] + dhj[k];
                gj[k] = relu ? (hj[k] > 0 ? d : (real)0) : d * ((real)1 - hj[k] * hj[k]);
            }
        }
        fr_gemm(0, 0, n, H, H, (real)1, g, H, w_hh, H, (real)0, dh, H);
    }
    rnn_seq_store_state(&q, H, dh, dh0);

    /* The weight gradients and dx as large GEMMs over all rows, a chunk of steps at a time:
     * dW_ih = dG^T X, dW_hh = dG^T H_prev, dx = dG W_ih. */
    memset(dw_ih, 0, sizeof(real) * (size_t)H * I);
    memset(dw_hh, 0, sizeof(real) * (size_t)H * H);
    if (dx && !dx_accumulate) rnn_seq_zero_padding(&q, dx, I, I);
    for (int s0 = 0; s0 < q.S; s0 += chunk) {
        int s1 = s0 + chunk < q.S ? s0 + chunk : q.S;
        size_t lo, hi;
        rnn_seq_rows(&q, s0, s1, &lo, &hi);
        int m = (int)(hi - lo);
        const real *gc = dg + lo * H;      /* (m, H) */
        const real *xc = x + lo * (size_t)I; /* (m, I) */
        if (lengths) {
            rnn_seq_gather(&q, s0, s1, x, I, I, xg);
            xc = xg;
        }
        fr_gemm(1, 0, H, I, m, (real)1, gc, H, xc, I, (real)1, dw_ih, I);
        rnn_seq_gather_prev(&q, s0, s1, y, ldy, h0, H, hg);
        fr_gemm(1, 0, H, H, m, (real)1, gc, H, hg, H, (real)1, dw_hh, H);
        if (dx == NULL) continue;
        if (lengths) {
            fr_gemm(0, 0, m, I, H, (real)1, gc, H, w_ih, I, (real)0, xg, I);
            rnn_seq_scatter(&q, s0, s1, xg, dx, I, I, dx_accumulate);
        } else {
            fr_gemm(0, 0, m, I, H, (real)1, gc, H, w_ih, I, dx_accumulate ? (real)1 : (real)0,
                    dx + lo * (size_t)I, I);
        }
    }
    /* b_ih and b_hh enter the pre-activation the same way: equal gradients. */
    if (db_ih) rnn_colsum(q.N, H, dg, H, db_ih);
    if (db_hh) rnn_colsum(q.N, H, dg, H, db_hh);
    rc = FR_OK;

done:
    free(dg);
    free(dh);
    free(hg);
    free(xg);
    rnn_seq_free(&q);
    return rc;
}
