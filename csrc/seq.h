/*
 * seq.h -- the sequence schedule the three cells share: which rows each time step works on, with and
 * without variable lengths, and the gathers / scatters between that order and the (T, B) arrays.
 *
 * Included by instance.h once per dtype and ISA, after common.h; everything is static and `real`.
 *
 * ---- How the work is laid out ---------------------------------------------------------------------------
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
#ifndef FR_SEQ_INSTANCE
#define FR_SEQ_INSTANCE

typedef struct fr_seq {
    int T, B, reverse;
    const int *len; /* (B) valid steps per sequence, or NULL: all T */
    int S;          /* steps to run: the longest length (T without lengths) */
    int *perm;      /* (B) slot j -> sequence b, longest first; NULL without lengths */
    int *nact;      /* (T + 1) n_s = sequences with more than s steps; NULL without lengths */
    size_t *off;    /* (S + 1) first row of step s in row space; NULL without lengths */
    size_t N;       /* rows in row space: sum(lengths), or T*B */
} fr_seq;

static int seq_init(fr_seq *q, int T, int B, int reverse, const int *lengths) {
    q->T = T;
    q->B = B;
    q->reverse = reverse;
    q->len = lengths;
    q->S = T;
    q->perm = q->nact = NULL;
    q->off = NULL;
    q->N = (size_t)T * (size_t)B;
    if (lengths == NULL) return FR_OK;
    int all_full = 1; /* every sequence of length T: the plain time-major order, no permutation */
    for (int b = 0; b < B; b++) all_full &= lengths[b] == T;
    if (all_full) {
        q->len = NULL;
        return FR_OK;
    }

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

static void seq_free(fr_seq *q) {
    free(q->perm); /* the start of the int block */
    free(q->off);
    q->perm = q->nact = NULL;
    q->off = NULL;
}

/* n_s: the sequences running at step s, slots 0 .. n_s - 1. */
static inline int seq_active(const fr_seq *q, int s) { return q->nact ? q->nact[s] : q->B; }

/* The sequence in slot j. */
static inline int seq_batch(const fr_seq *q, int j) { return q->perm ? q->perm[j] : j; }

/* The time index sequence b reads and writes at step s. */
static inline int seq_time(const fr_seq *q, int s, int b) {
    return fr_time_index(s, q->len ? q->len[b] : q->T, q->reverse);
}

/* The time index slot j reads and writes at step s. */
static inline int seq_slot_time(const fr_seq *q, int s, int j) { return seq_time(q, s, seq_batch(q, j)); }

/* The row of slot 0 at step s in row space (slot j is that + j). */
static inline size_t seq_row(const fr_seq *q, int s) {
    if (q->off) return q->off[s];
    return (size_t)fr_time_index(s, q->T, q->reverse) * (size_t)q->B;
}

/* The block of rows [*lo, *hi) that steps s0 .. s1-1 occupy in row space (in reverse without lengths the
 * later steps come first, but the block is still contiguous). */
static void seq_rows(const fr_seq *q, int s0, int s1, size_t *lo, size_t *hi) {
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

/* xr[i] = the row of x (T, B, I) behind row lo + i of row space, for the rows [lo, hi) of steps s0 .. s1-1
 * (seq_rows): the operand rows of a chunk's input projection, sorted slots at their own times. */
static void seq_x_rows(const fr_seq *q, int s0, int s1, size_t lo,
                       const real *x, int I, /* (T, B, I) */
                       const real **xr)      /* (hi - lo) out */
{
    for (int s = s0; s < s1; s++) {
        const size_t base = seq_row(q, s) - lo;
        for (int k = 0, n = seq_active(q, s); k < n; k++)
            xr[base + (size_t)k] = x + ((size_t)seq_slot_time(q, s, k) * q->B + seq_batch(q, k)) * I;
    }
}

/* How many steps a chunk takes when each row of row space needs `per_row` elements of chunk buffers
 * (0: nothing is chunked, all steps at once): about fr_chunk_bytes() of buffers (fastrnn.h: 4 MB, which
 * bounds inference memory while each chunk is still one large, efficient GEMM).  At least one step. */
static int seq_chunk(const fr_seq *q, size_t per_row) {
    if (q->S <= 1) return 1;
    if (per_row == 0) return q->S;
    size_t steps = fr_chunk_bytes() / (per_row * sizeof(real) * (size_t)(q->B > 0 ? q->B : 1));
    if (steps < 1) steps = 1;
    if (steps > (size_t)q->S) steps = (size_t)q->S;
    return (int)steps;
}

/* dst (rows of steps s0 .. s1-1, cols): those rows of row space taken from src (T, B, ld), i.e. row
 * (s, j) is src[t, b] for the sequence b in slot j at its time t of step s.  For the lengths case. */
static void seq_gather(const fr_seq *q, int s0, int s1,
                           const real *src, int ld, int cols, /* (T, B, ld >= cols) */
                           real *dst) {                       /* (rows, cols) out */
    size_t lo, hi;
    seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = seq_active(q, s);
        real *d = dst + (seq_row(q, s) - lo) * (size_t)cols; /* (n, cols) this step's rows */
        for (int j = 0; j < n; j++) {
            int b = seq_batch(q, j);
            size_t t = (size_t)seq_time(q, s, b);
            memcpy(d + (size_t)j * cols, src + (t * q->B + b) * (size_t)ld, sizeof(real) * (size_t)cols);
        }
    }
}

/* Steps per chunk of a forward that computes x W_ih^T by GEMM a chunk of steps at a time (seq_project_units:
 * the split forwards of lstm.c and rnn.c, gru.c's), then runs the chunk's steps on W_hh alone, with chunk
 * buffers of per_row elements a row of row space: seq_chunk's, but at least fr_proj_min_rows() rows,
 * since each GEMM packs W_ih anew; all steps when `whole` (training without lengths: the tape holds every
 * row's projection and x is used in place, so one GEMM over all rows packs W_ih once). */
static int seq_proj_chunk(const fr_seq *q, size_t per_row, int whole) {
    if (whole || q->S <= 1) return q->S > 1 ? q->S : 1;
    const int b = q->B > 0 ? q->B : 1;
    const int least = (fr_proj_min_rows() + b - 1) / b;
    const int steps = seq_chunk(q, per_row);
    return steps >= least ? steps : least < q->S ? least : q->S;
}

/* The time loop in parallel regions of `chunk` steps (all steps: one region): before each, the chunk's x
 * rows are gathered into xg when given (a GEMM projection with lengths needs them contiguous), then
 * fn(ctx) runs on nth threads with *s_begin, *s_end (fields of ctx) set to the region's steps. */
static void seq_run_chunks(const fr_seq *q, int chunk,
                           const real *x, int I, real *xg, /* (T, B, I); (chunk rows, I) or NULL */
                           int *s_begin, int *s_end, int nth, fr_task_fn fn, void *ctx, fr_barrier_t *bar)
{
    for (int s0 = 0; s0 < q->S; s0 += chunk) {
        const int s1 = s0 + chunk < q->S ? s0 + chunk : q->S;
        if (xg) seq_gather(q, s0, s1, x, I, I, xg);
        *s_begin = s0;
        *s_end = s1;
        fr_parallel(nth, fn, ctx, bar);
        if (bar && fr_region_stopped(bar)) return; /* interrupted: the caller sees it on bar */
    }
}

/* One thread's share of a chunk's input projection: units [u0, u1) of each of the G gates,
 * xw[r][g*H + u] = a[r] . W[g*H + u] (+ bias[g*H + u]) for the chunk's rows r, by the own GEMM on the
 * calling thread.  A thread of a parallel region projects the units it owns, which only it reads in the
 * steps that follow, so no barrier is needed (and W_ih is packed by the threads in shares, once). */
static void seq_project_units(const real *a, size_t rows, int I, /* (rows, I): x's rows or gathered */
                              const real *w, int G, int H,     /* (G*H, I) */
                              const real *bias,                /* (G*H) or NULL */
                              int u0, int u1,
                              real *xw)                        /* (rows, G*H) out: the units' columns */
{
    if (u1 <= u0 || rows == 0) return;
    const int GH = G * H, nu = u1 - u0;
    for (int g = 0; g < G; g++)
        gk_gemm_here(0, 1, (int)rows, nu, I, (real)1, a, I, w + ((size_t)g * H + u0) * I, I, (real)0,
                     xw + (size_t)g * H + u0, GH);
    if (bias)
        for (size_t r = 0; r < rows; r++)
            for (int g = 0; g < G; g++) {
                real *o = xw + r * GH + (size_t)g * H + u0;  /* (nu) */
                const real *b = bias + (size_t)g * H + u0;   /* (nu) */
                for (int v = 0; v < nu; v++) o[v] += b[v];
            }
}

/* The inverse of seq_gather: dst[t, b] (T, B, ld) = (or += when accumulate) the rows of src. */
static void seq_scatter(const fr_seq *q, int s0, int s1,
                            const real *src,            /* (rows, cols) */
                            real *dst, int ld, int cols, /* (T, B, ld >= cols) out */
                            int accumulate) {
    size_t lo, hi;
    seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = seq_active(q, s);
        const real *r = src + (seq_row(q, s) - lo) * (size_t)cols; /* (n, cols) */
        for (int j = 0; j < n; j++) {
            int b = seq_batch(q, j);
            size_t t = (size_t)seq_time(q, s, b);
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
static void seq_zero_padding(const fr_seq *q, real *a /* (T, B, ld >= cols) */, int ld, int cols) {
    if (q->len == NULL) return;
    for (int b = 0; b < q->B; b++)
        for (int t = q->len[b]; t < q->T; t++)
            memset(a + ((size_t)t * q->B + b) * (size_t)ld, 0, sizeof(real) * (size_t)cols);
}

/* The state sequence b entered step s with: h0[b] at s = 0 (`zero`, an (H) row of zeros, when h0 is
 * NULL), else the forward's output y at the sequence's previous time.  Backward rebuilds h_{t-1} this way
 * instead of keeping a copy in the tape. */
static inline const real *seq_prev(const fr_seq *q, int s, int b,
                                       const real *y, int ldy, /* (T, B, ldy) */
                                       const real *h0,         /* (B, H) or NULL */
                                       int H, const real *zero) { /* (H) zeros, or NULL */
    if (s == 0) return h0 ? h0 + (size_t)b * H : zero;
    return y + ((size_t)seq_time(q, s - 1, b) * q->B + b) * (size_t)ldy;
}

/* dst (rows of steps s0 .. s1-1, H): h_{t-1} of every row, the right-hand operand of dW_hh = dG^T H_prev; with a
 * recurrent dropout mask, h_{t-1} * mask[b] row by row: the operand gate g's rows of dW_hh multiply when the
 * forward's product read h_{t-1} * mask_g (docs/keras.md, recurrent_dropout). */
static void seq_gather_prev(const fr_seq *q, int s0, int s1,
                            const real *y, int ldy, /* (T, B, ldy) */
                            const real *h0,         /* (B, H) or NULL */
                            const real *mask,       /* (B, H) batch order, or NULL */
                            int H, real *dst) {     /* (rows, H) out */
    size_t lo, hi;
    seq_rows(q, s0, s1, &lo, &hi);
    for (int s = s0; s < s1; s++) {
        int n = seq_active(q, s);
        real *d = dst + (seq_row(q, s) - lo) * (size_t)H; /* (n, H) */
        for (int j = 0; j < n; j++) {
            int b = seq_batch(q, j);
            const real *p = seq_prev(q, s, b, y, ldy, h0, H, NULL); /* (H) or NULL: zeros */
            if (!p)
                memset(d + (size_t)j * H, 0, sizeof(real) * (size_t)H);
            else if (mask)
                rec_mask_row(H, p, mask + (size_t)b * H, d + (size_t)j * H);
            else
                memcpy(d + (size_t)j * H, p, sizeof(real) * (size_t)H);
        }
    }
}

/* Initial state in slot order: hs[j] = h0[perm[j]], or zeros. */
static void seq_load_state(const fr_seq *q, int H, const real *h0 /* (B, H) or NULL */,
                               real *hs /* (B, H) slots */) {
    for (int j = 0; j < q->B; j++) {
        int b = seq_batch(q, j);
        if (h0)
            memcpy(hs + (size_t)j * H, h0 + (size_t)b * H, sizeof(real) * (size_t)H);
        else
            memset(hs + (size_t)j * H, 0, sizeof(real) * (size_t)H);
    }
}

/* Final state back in batch order: out[perm[j]] = hs[j].  A slot stops changing after its last valid step
 * (it leaves the active prefix), so this is each sequence's state after its own last step. */
static void seq_store_state(const fr_seq *q, int H, const real *hs /* (B, H) slots */,
                                real *out /* (B, H) */) {
    for (int j = 0; j < q->B; j++)
        memcpy(out + (size_t)seq_batch(q, j) * H, hs + (size_t)j * H, sizeof(real) * (size_t)H);
}

/* ---- the bias gradients of a layer: one path for the three cells ---------------------------------------
 * db = the column sums of dG over all N rows of row space.  Each cell sums them during its backward time
 * loop, in the epilogue that has just computed a row's dG for a block of units (still in registers): the
 * thread that owns those units at that step adds them into one double accumulator per column
 * (V##_acc_f64, simd.h; seq_db_row where dG is in memory), so a column is only ever written by one thread
 * between two barriers; float sums over T*B rows would lose digits.  After the loop seq_db_store converts a
 * range of columns into a bias gradient.  The accumulator is 64-byte aligned so that threads' units (blocks
 * of a multiple of 8) meet at a cache-line boundary. */
typedef struct seq_db {
    double *acc; /* (n) column sums, or NULL: no bias gradient wanted */
    int n;
} seq_db;

/* n zeroed accumulators when `wanted`, else none (acc NULL, every add skipped).  FR_ENOMEM on failure. */
static int seq_db_init(seq_db *d, int n, int wanted) {
    d->acc = NULL;
    d->n = n;
    if (!wanted) return FR_OK;
    if (posix_memalign((void **)&d->acc, 64, sizeof(double) * (size_t)(n > 0 ? n : 1)) != 0) {
        d->acc = NULL;
        return FR_ENOMEM;
    }
    memset(d->acc, 0, sizeof(double) * (size_t)(n > 0 ? n : 1));
    return FR_OK;
}

static void seq_db_free(seq_db *d) {
    free(d->acc);
    d->acc = NULL;
}

/* db[0 .. nu-1] += g[0 .. nu-1]: a row of dG already in memory, widest first. */
static inline void seq_db_row(int nu, const real *g, double *db) {
    int v = 0;
#if FR_AVX512
    for (; v + 16 <= nu; v += 16) vr16_acc_f64(db + v, vr16_load(g + v));
#endif
#if FR_SIMD
    for (; v + 8 <= nu; v += 8) vr8_acc_f64(db + v, vr8_load(g + v));
#endif
    for (; v < nu; v++) vr1_acc_f64(db + v, g[v]);
}

/* out[k] = the sum of column c0 + k, k < n (out may be NULL: nothing). */
static void seq_db_store(const seq_db *d, int c0, int n, real *out) {
    if (out == NULL || d->acc == NULL) return;
    for (int k = 0; k < n; k++) out[k] = (real)d->acc[c0 + k];
}

/* ---- the weight gradients of a layer, after its backward time loop ------------------------------------
 * dW_ih = dZ^T X, dW_hh = dZ^T H_prev and dx = dZ W_ih, as large GEMMs over all N rows of row space, dZ
 * (N, GH) being dL/d(pre-activations) of every row.  The RNN and the LSTM have one product per weight; the
 * GRU's n gate has a recurrent side of its own, `tail` (seq_rec_tail): the last tail->rows rows of dW_hh are
 * tail->dz^T A, A being H_prev (tail->a NULL: reset_after, whose dn_rec differs from dZ's n columns) or a
 * matrix of row space (reset_after = 0: r*h_{t-1} from the tape); the first GH - tail->rows rows are dZ's
 * columns times H_prev as for the others.  Without lengths, row space is x's, dx's and y's own (T, B)
 * order: everything in place, one GEMM each, side by side when small (fr_gemm_jobs); h_{t-1} is y's previous
 * time block in processing order (y[t-1] forward, y[t+1] in reverse), read in place with its stride ldy,
 * then h0's for the first step (a product with K = 0 sets 0).  With lengths, x and h_{t-1} are gathered
 * and dx scattered a chunk of steps at a time (bounded memory: seq_chunk(q, width) steps, `width` the
 * cell's choice), each chunk still one GEMM per product over many rows, side by side when small; the first
 * chunk overwrites, the others add.  dx, dw_ih, dw_hh may be NULL (not computed).  FR_ENOMEM when the
 * chunk buffers cannot be allocated.
 * Recurrent dropout (rmask, (rG, B, P): one mask per gate block of GH / rG rows, docs/keras.md): the forward
 * multiplied gate g's rows of W_hh by h_{t-1} * mask_g, so dW_hh's rows of gate g are dZ_g^T (H_prev *
 * mask_g), one product per gate over a masked gather, gh = G1 / rG rows each; the masked call always takes
 * the chunked path (the unmasked call is unchanged).  A tail reading H_prev takes its own mask (tail->mask). */
typedef struct seq_rec_tail {
    int rows;      /* the last rows of dW_hh (GH of them in all) */
    const real *dz; /* (N, ldz >= rows) their dL/d(recurrent pre-activation) */
    int ldz;
    const real *a; /* (N, P) their right-hand operand in row space, or NULL: H_prev */
    const real *mask; /* (B, P) batch order, with a NULL only: the operand is H_prev * mask (recurrent
                         dropout, the GRU's n gate), or NULL */
} seq_rec_tail;

/* The operands of a layer direction's weight gradients (seq_weight_grads, seq_backward). */
typedef struct seq_wg {
    const fr_seq *q;
    int T, B, reverse, GH, I, P;
    size_t width;              /* chunk buffer elements a row of row space (seq_chunk) */
    const real *dz;            /* (N, GH) */
    const real *x;             /* (T, B, I) */
    const real *y;             /* (T, B, ldy >= P): h_t of every step */
    int ldy;
    const real *h0;            /* (B, P) or NULL */
    const real *rmask;         /* (rG, B, P) recurrent dropout masks, or NULL */
    int rG;
    const real *w_ih;          /* (GH, I) */
    const seq_rec_tail *tail;  /* or NULL: all of dW_hh is dZ^T H_prev */
    real *dx;                  /* (T, B, I) out, or NULL */
    int dx_accumulate;
    real *dw_ih;               /* (GH, I) out, or NULL */
    real *dw_hh;               /* (GH, P) out, or NULL */
} seq_wg;

/* The products of a job list one after the other on the calling thread (a thread of a parallel region). */
static void seq_jobs_here(const gk_job *const *jobs, int n) {
    for (int i = 0; i < n; i++)
        for (const gk_job *j = jobs[i]; j; j = j->then)
            gk_gemm_here(j->trans_a, j->trans_b, j->M, j->N, j->K, j->alpha, j->A, j->lda, j->B, j->ldb, j->beta,
                         j->C, j->ldc);
}

/* The gradients' share of the rows of steps s0 .. s1-1 (seq_rows), gathered into xg (rows, I) and
 * hg (rows, P): dW_ih and dW_hh get beta * themselves + the share; with `with_dx`, dx's rows too (scattered,
 * xg then holding them).  `here`: every product on the calling thread, else fr_gemm_jobs (side by side). */
static void seq_wg_piece(const seq_wg *w, int s0, int s1, real beta, int with_dx, int here, real *xg, real *hg) {
    const fr_seq *q = w->q;
    const int GH = w->GH, I = w->I, P = w->P;
    const seq_rec_tail *tail = w->tail;
    const int G2 = tail ? tail->rows : 0, G1 = GH - G2; /* dW_hh's rows by dZ, by the tail */
    real *dw_t = w->dw_hh ? w->dw_hh + (size_t)G1 * P : NULL; /* (G2, P) the tail's rows */
    const int tmask = tail && tail->a == NULL && tail->mask;    /* the tail reads a masked H_prev */
    const int need_h = w->dw_hh && (G1 > 0 || (tail && tail->a == NULL)); /* a product reads H_prev */
    const int gh = w->rmask ? G1 / w->rG : 0; /* rows of dW_hh per mask (the tail has its own) */
    real *dx = with_dx ? w->dx : NULL;
    size_t lo, hi;
    seq_rows(q, s0, s1, &lo, &hi);
    const int m = (int)(hi - lo);
    const real *dzc = w->dz + lo * GH; /* (m, GH) */
    if (w->dw_ih || dx) seq_gather(q, s0, s1, w->x, I, I, xg);
    if (need_h && !w->rmask && !tmask) seq_gather_prev(q, s0, s1, w->y, w->ldy, w->h0, NULL, P, hg);
    /* dx's product into xg after dW_ih's has read it: chained behind it */
    const gk_job j_dx = {0, 0, m, I, GH, (real)1, dzc, GH, w->w_ih, I, (real)0, xg, I, NULL};
    const gk_job j_ih = {1, 0, GH, I, m, (real)1, dzc, GH, xg, I, beta, w->dw_ih, I, dx ? &j_dx : NULL};
    const gk_job j_hh = {1, 0, G1, P, m, (real)1, dzc, GH, hg, P, beta, w->dw_hh, P, NULL};
    gk_job j_t = {0};
    if (tail)
        j_t = (gk_job){1, 0, G2, P, m, (real)1, tail->dz + lo * tail->ldz, tail->ldz,
                       tail->a ? tail->a + lo * P : hg, P, beta, dw_t, P, NULL};
    const gk_job *jobs[3] = {w->dw_ih ? &j_ih : dx ? &j_dx : NULL, w->dw_hh && !w->rmask ? &j_hh : NULL,
                             w->dw_hh && tail && !tmask ? &j_t : NULL};
    if (here) seq_jobs_here(jobs, 3);
    else fr_gemm_jobs(jobs, 3);
    if (w->dw_hh && w->rmask)
        for (int g = 0; g < w->rG; g++) { /* gate g's rows: dZ_g^T (H_prev * mask_g) */
            seq_gather_prev(q, s0, s1, w->y, w->ldy, w->h0, w->rmask + (size_t)g * w->B * P, P, hg);
            const gk_job j_g = {1, 0, gh, P, m, (real)1, dzc + (size_t)g * gh, GH, hg, P, beta,
                                w->dw_hh + (size_t)g * gh * P, P, NULL};
            const gk_job *jg[1] = {&j_g};
            if (here) seq_jobs_here(jg, 1);
            else fr_gemm_jobs(jg, 1);
        }
    if (w->dw_hh && tmask) { /* the tail's rows: dZ_t^T (H_prev * tail->mask) */
        seq_gather_prev(q, s0, s1, w->y, w->ldy, w->h0, tail->mask, P, hg);
        const gk_job *jt[1] = {&j_t};
        if (here) seq_jobs_here(jt, 1);
        else fr_gemm_jobs(jt, 1);
    }
    if (dx) seq_scatter(q, s0, s1, xg, dx, I, I, w->dx_accumulate);
}

/* Nothing of the gradients is computed by a sequence of no steps: they are zeros (dx's padding rows are
 * zeroed in every case that overwrites dx). */
static void seq_wg_empty(const seq_wg *w) {
    if (w->dw_ih) memset(w->dw_ih, 0, sizeof(real) * (size_t)w->GH * w->I);
    if (w->dw_hh) memset(w->dw_hh, 0, sizeof(real) * (size_t)w->GH * w->P);
}

static int seq_weight_grads(const seq_wg *w) {
    const fr_seq *q = w->q;
    const int T = w->T, B = w->B, reverse = w->reverse, GH = w->GH, I = w->I, P = w->P;
    const real *dz = w->dz, *x = w->x, *y = w->y, *h0 = w->h0, *rmask = w->rmask, *w_ih = w->w_ih;
    const int ldy = w->ldy, dx_accumulate = w->dx_accumulate;
    const seq_rec_tail *tail = w->tail;
    real *dx = w->dx, *dw_ih = w->dw_ih, *dw_hh = w->dw_hh;
    const int G2 = tail ? tail->rows : 0, G1 = GH - G2; /* dW_hh's rows by dZ, by the tail */
    real *dw_t = dw_hh ? dw_hh + (size_t)G1 * P : NULL;   /* (G2, P) the tail's rows */
    const int tmask = tail && tail->a == NULL && tail->mask; /* the tail reads a masked H_prev */
    if (q->perm == NULL && rmask == NULL && !tmask) {
        const int N = (int)q->N, K = T > 1 ? (T - 1) * B : 0;
        const size_t first = (size_t)fr_time_index(0, T, reverse) * B; /* row of the first step's slot 0 */
        const real *yp = reverse ? y + (size_t)B * ldy : y;             /* h_{t-1} of the rows below */
        const size_t r1 = reverse ? 0 : (size_t)B;                      /* the first of those rows */
        const gk_job j_ih = {1, 0, GH, I, N, (real)1, dz, GH, x, I, (real)0, dw_ih, I, NULL};
        const gk_job j_dx = {0, 0, N, I, GH, (real)1, dz, GH, w_ih, I, dx_accumulate ? (real)1 : (real)0, dx, I, NULL};
        const gk_job j_h0 = {1, 0, G1, P, B, (real)1, dz + first * GH, GH, h0, P, (real)1, dw_hh, P, NULL};
        const gk_job j_hh = {1, 0, G1, P, K, (real)1, dz + r1 * GH, GH, yp, ldy, (real)0, dw_hh, P,
                             h0 && T > 0 ? &j_h0 : NULL};
        gk_job j_t0 = {0}, j_t = {0};
        if (tail && tail->a) { /* a matrix of row space: one product over all rows */
            j_t = (gk_job){1, 0, G2, P, N, (real)1, tail->dz, tail->ldz, tail->a, P, (real)0, dw_t, P, NULL};
        } else if (tail) {     /* H_prev, as above */
            j_t0 = (gk_job){1, 0, G2, P, B, (real)1, tail->dz + first * tail->ldz, tail->ldz, h0, P, (real)1, dw_t,
                            P, NULL};
            j_t = (gk_job){1, 0, G2, P, K, (real)1, tail->dz + r1 * tail->ldz, tail->ldz, yp, ldy, (real)0, dw_t, P,
                           h0 && T > 0 ? &j_t0 : NULL};
        }
        const gk_job *jobs[4] = {dw_ih ? &j_ih : NULL, dx ? &j_dx : NULL, dw_hh ? &j_hh : NULL,
                                 dw_hh && tail ? &j_t : NULL};
        fr_gemm_jobs(jobs, 4);
        return FR_OK;
    }
    const int chunk = seq_chunk(q, w->width);
    const size_t cap = (size_t)chunk * B;
    real *xg = NULL; /* (chunk rows, I) x rows of a chunk, then its dx rows */
    real *hg = NULL; /* (chunk rows, P) h_{t-1} rows of a chunk */
    if ((dw_ih || dx) && (xg = fr_alloc(cap * (size_t)I, 0)) == NULL) return FR_ENOMEM;
    if (dw_hh && (hg = fr_alloc(cap * (size_t)P, 0)) == NULL) {
        fr_free(xg);
        return FR_ENOMEM;
    }
    if (q->S <= 0) seq_wg_empty(w); /* no chunk overwrites them */
    if (dx && !dx_accumulate) seq_zero_padding(q, dx, I, I); /* valid rows are written by the scatter */
    for (int s0 = 0; s0 < q->S; s0 += chunk)
        seq_wg_piece(w, s0, s0 + chunk < q->S ? s0 + chunk : q->S, s0 > 0 ? 1 : 0, 1, 0, xg, hg);
    fr_free(xg);
    fr_free(hg);
    return FR_OK;
}

/* ---- the backward's time loop and its weight gradients side by side -------------------------------------
 * When a step is small (at most SEQ_OVERLAP_STEP_FMA multiply-adds in its recurrent product), splitting it
 * across threads costs a barrier round trip per step that its work does not pay for, while the weight
 * gradients after the loop (dW_ih = dZ^T X, dW_hh = dZ^T H_prev: as many multiply-adds as the loop's own
 * products, and more) are large, efficient GEMMs.  Then the loop runs on one thread, which publishes
 * (`done`: the lowest step whose dZ rows are complete) as it goes, while a second thread reduces dW_ih and
 * dW_hh over pieces of steps from the last step down as soon as they are complete (seq_wg_piece on the
 * piece's gathered rows, beta 0 for the first piece), and the loop's thread then computes dx (rows, no
 * reduction).  The loop's products and the reductions are then about equal in size, so both threads stay
 * busy without a barrier per step.
 * The order of the reduction (pieces from the top, each one product) depends only on the shape: with one
 * thread, or when the call is too small for a second one (rec_threads_for), the same pieces run in the same
 * order after the loop, so the results are the same bits at every thread count.  Measurements:
 * docs/tuning.md, Overlapped backward. */
#ifndef SEQ_OVERLAP_STEP_FMA
#define SEQ_OVERLAP_STEP_FMA 2.0e6
#endif
#ifndef SEQ_OVERLAP_PIECES
#define SEQ_OVERLAP_PIECES 8      /* pieces of the steps (so the reduction trails the loop by one piece) */
#endif
#ifndef SEQ_OVERLAP_MIN_ROWS
#define SEQ_OVERLAP_MIN_ROWS 256  /* rows a piece at least (each is a GEMM with K = its rows) */
#endif

/* 0: the loop on nth threads, then seq_weight_grads; 1: the ordered reduction after a one-thread loop;
 * 2: the same, side by side on two threads.  step_fma: the multiply-adds of one step's recurrent product
 * (B * G * H * K); nth: rec_threads_for's count for the call. */
static int seq_overlap_mode(const fr_seq *q, double step_fma, int nth) {
    if (q->S < 2 || step_fma > SEQ_OVERLAP_STEP_FMA || fr_gemm_backend() == FR_GEMM_BLAS) return 0;
    return nth >= 2 ? 2 : 1;
}

typedef struct seq_bwd_run {
    const seq_wg *w;
    fr_task_fn task;   /* the cell's backward loop, run as thread 0 of 1 */
    void *cx;
    fr_barrier_t *bar; /* the loop's (one thread: stops only) */
    atomic_int *done;  /* the lowest step whose dZ is complete; -1 once the loop has returned */
    int piece;         /* steps a piece */
    real *xg, *hg;     /* (piece rows, I), (piece rows, P): the reduction's gathers */
    real *dxg;         /* (chunk rows, I): dx's rows with lengths, or NULL */
} seq_bwd_run;

/* The ordered reduction: the pieces from the top, each once its steps are complete (wait: by the loop's
 * `done`; else the loop has returned). */
static void seq_wg_pieces(const seq_bwd_run *r, int wait) {
    const fr_seq *q = r->w->q;
    for (int s0 = (q->S - 1) / r->piece * r->piece, first = 1; s0 >= 0; s0 -= r->piece, first = 0) {
        if (wait) fr_wait_at_most(r->done, s0);
        if (fr_region_stopped(r->bar)) return; /* the loop was interrupted: nothing more is needed */
        seq_wg_piece(r->w, s0, s0 + r->piece < q->S ? s0 + r->piece : q->S, first ? 0 : 1, 0, 1, r->xg, r->hg);
    }
}

/* dx = dZ W_ih on the calling thread: in place over all rows without lengths; else chunks of rows into dxg,
 * scattered. */
static void seq_wg_dx(const seq_bwd_run *r) {
    const seq_wg *w = r->w;
    const fr_seq *q = w->q;
    if (!w->dx) return;
    if (q->perm == NULL) {
        gk_gemm_here(0, 0, (int)q->N, w->I, w->GH, (real)1, w->dz, w->GH, w->w_ih, w->I,
                     w->dx_accumulate ? (real)1 : (real)0, w->dx, w->I);
        return;
    }
    if (!w->dx_accumulate) seq_zero_padding(q, w->dx, w->I, w->I);
    const int chunk = seq_chunk(q, w->width);
    for (int s0 = 0; s0 < q->S; s0 += chunk) {
        const int s1 = s0 + chunk < q->S ? s0 + chunk : q->S;
        size_t lo, hi;
        seq_rows(q, s0, s1, &lo, &hi);
        gk_gemm_here(0, 0, (int)(hi - lo), w->I, w->GH, (real)1, w->dz + lo * w->GH, w->GH, w->w_ih, w->I,
                     (real)0, r->dxg, w->I);
        seq_scatter(q, s0, s1, r->dxg, w->dx, w->I, w->I, w->dx_accumulate);
    }
}

static void seq_bwd_task(void *arg, int tid, int nth) {
    seq_bwd_run *r = (seq_bwd_run *)arg;
    if (tid == 0) {
        r->task(r->cx, 0, 1);
        atomic_store_explicit(r->done, -1, memory_order_release);
        if (fr_region_stopped(r->bar)) return;
        if (nth < 2) seq_wg_pieces(r, 0); /* a region of one thread (the pool was busy) */
        seq_wg_dx(r);
    } else if (tid == 1) {
        seq_wg_pieces(r, 1);
    }
}

/* The cell's backward loop `task` (on cx, whose barrier is bar and whose published step is *done) and the
 * weight gradients w, as seq_overlap_mode says (mode 0: nth threads for the loop).  FR_EINTR when the loop
 * was interrupted, FR_ENOMEM when buffers could not be allocated (before the loop runs). */
static int seq_backward(const seq_wg *w, int mode, int nth, fr_task_fn task, void *cx, fr_barrier_t *bar,
                        atomic_int *done) {
    if (mode == 0) {
        fr_parallel(nth < 1 ? 1 : nth, task, cx, bar);
        if (fr_region_stopped(bar)) return FR_EINTR;
        return seq_weight_grads(w);
    }
    const fr_seq *q = w->q;
    int piece = (q->S + SEQ_OVERLAP_PIECES - 1) / SEQ_OVERLAP_PIECES;
    const int least = (SEQ_OVERLAP_MIN_ROWS + (q->B > 0 ? q->B : 1) - 1) / (q->B > 0 ? q->B : 1);
    const int cap = seq_chunk(q, w->width);
    if (piece < least) piece = least;
    if (piece > cap) piece = cap;
    const size_t rows = (size_t)piece * (size_t)q->B;
    seq_bwd_run r = {w, task, cx, bar, done, piece, NULL, NULL, NULL};
    int rc = FR_ENOMEM;
    if ((w->dw_ih && (r.xg = fr_alloc(rows * (size_t)w->I, 0)) == NULL) ||
        (w->dw_hh && (r.hg = fr_alloc(rows * (size_t)w->P, 0)) == NULL) ||
        (w->dx && q->perm && (r.dxg = fr_alloc((size_t)cap * q->B * (size_t)w->I, 0)) == NULL))
        goto out;
    atomic_init(done, q->S);
    fr_barrier_init(bar, 1); /* the loop runs alone: its waits return at once, its stops are its own */
    fr_parallel(mode == 2 ? 2 : 1, seq_bwd_task, &r, NULL);
    rc = fr_region_stopped(bar) ? FR_EINTR : FR_OK;
out:
    fr_free(r.xg);
    fr_free(r.hg);
    fr_free(r.dxg);
    return rc;
}

#endif /* FR_SEQ_INSTANCE */
