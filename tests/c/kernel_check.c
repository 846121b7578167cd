/*
 * kernel_check.c -- a randomized test of the C kernels (csrc/) against a plain C reference, without Python.
 *
 * For random sizes (T, B, I from 1, H of every residue, projections, bias or none, h0/c0 given or NULL,
 * lengths, both directions, relu, both GRU forms), every ISA the CPU has, 1 and 2 threads, small and
 * default chunk sizes, and both dtypes:
 *   forward   y, h_n, c_n of the kernel (inference and training) equal the double-precision reference below
 *             within a tolerance of the dtype (float32: 2e-5 of the scale, float64: 1e-12);
 *   backward  (float64) the kernel's gradients dotted with a random direction of every input and parameter
 *             equal the central difference of the loss sum(y*R) + sum(h_n*Rh) + sum(c_n*Rc) along it.
 * Built and run by tests/c/test_c_kernels.py (plain and, in .ci/sanitize, with ASan + UBSan).
 * Usage: kernel_check [cases] [seed].  Prints one line per failure and a summary; exit status 1 on any.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"
#include "workspace.h"

#undef I

static unsigned long long rng_state = 88172645463325252ull;
static unsigned long long rnd64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd64() % (unsigned long long)(hi - lo + 1)); }
static double rnd_unif(void) { return (double)(rnd64() >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

static double sigm(double a) { return 0.5 * (1.0 + tanh(0.5 * a)); }

typedef struct {
    int cell; /* 0 rnn, 1 lstm, 2 gru */
    int T, B, I, H, P, relu, reset_after, reverse, has_bias, has_h0, has_c0, has_len;
    int lengths[64];
} cfg_t;

typedef struct { /* every array in double; sizes from the cfg */
    double *x, *h0, *c0, *w_ih, *w_hh, *b_ih, *b_hh, *w_hr;
} inputs_t;

static int G_of(int cell) { return cell == 0 ? 1 : cell == 1 ? 4 : 3; }

/* ---- the plain reference: one sequence at a time, straight from the equations in fastrnn.h ---------- */
static void ref_forward(const cfg_t *c, const inputs_t *in, double *y /* (T,B,P) */, double *hn, double *cn) {
    const int T = c->T, B = c->B, I = c->I, H = c->H, P = c->P, G = G_of(c->cell);
    double *h = calloc((size_t)P, sizeof(double)), *cs = calloc((size_t)H, sizeof(double));
    double *ai = malloc(sizeof(double) * (size_t)G * H), *ah = malloc(sizeof(double) * (size_t)G * H);
    double *m = malloc(sizeof(double) * (size_t)H), *rh = malloc(sizeof(double) * (size_t)H);
    memset(y, 0, sizeof(double) * (size_t)T * B * P);
    for (int b = 0; b < B; b++) {
        const int n = c->has_len ? c->lengths[b] : T;
        for (int j = 0; j < P; j++) h[j] = c->has_h0 ? in->h0[(size_t)b * P + j] : 0.0;
        for (int j = 0; j < H; j++) cs[j] = c->has_c0 ? in->c0[(size_t)b * H + j] : 0.0;
        for (int s = 0; s < n; s++) {
            const int t = c->reverse ? n - 1 - s : s;
            const double *xt = in->x + ((size_t)t * B + b) * I;
            for (int g = 0; g < G * H; g++) {
                double u = c->has_bias ? in->b_ih[g] : 0.0, v = c->has_bias ? in->b_hh[g] : 0.0;
                for (int k = 0; k < I; k++) u += in->w_ih[(size_t)g * I + k] * xt[k];
                for (int k = 0; k < P; k++) v += in->w_hh[(size_t)g * P + k] * h[k];
                ai[g] = u;
                ah[g] = v;
            }
            if (c->cell == 0) {
                for (int j = 0; j < H; j++) {
                    double a = ai[j] + ah[j];
                    h[j] = c->relu ? (a > 0 ? a : 0.0) : tanh(a);
                }
            } else if (c->cell == 1) {
                for (int j = 0; j < H; j++) {
                    double ig = sigm(ai[j] + ah[j]), fg = sigm(ai[H + j] + ah[H + j]);
                    double gg = tanh(ai[2 * H + j] + ah[2 * H + j]), og = sigm(ai[3 * H + j] + ah[3 * H + j]);
                    cs[j] = fg * cs[j] + ig * gg;
                    m[j] = og * tanh(cs[j]);
                }
                if (P < H) {
                    for (int p = 0; p < P; p++) {
                        double u = 0;
                        for (int j = 0; j < H; j++) u += in->w_hr[(size_t)p * H + j] * m[j];
                        h[p] = u;
                    }
                } else {
                    memcpy(h, m, sizeof(double) * (size_t)H);
                }
            } else {
                for (int j = 0; j < H; j++) rh[j] = sigm(ai[j] + ah[j]) * h[j];
                for (int j = 0; j < H; j++) {
                    double r = sigm(ai[j] + ah[j]), z = sigm(ai[H + j] + ah[H + j]), nn;
                    if (c->reset_after) {
                        nn = tanh(ai[2 * H + j] + r * ah[2 * H + j]);
                    } else {
                        double v = c->has_bias ? in->b_hh[2 * H + j] : 0.0;
                        for (int k = 0; k < H; k++) v += in->w_hh[(size_t)(2 * H + j) * H + k] * rh[k];
                        nn = tanh(ai[2 * H + j] + v);
                    }
                    m[j] = (1.0 - z) * nn + z * h[j];
                }
                memcpy(h, m, sizeof(double) * (size_t)H);
            }
            memcpy(y + ((size_t)t * B + b) * P, h, sizeof(double) * (size_t)P);
        }
        memcpy(hn + (size_t)b * P, h, sizeof(double) * (size_t)P);
        if (cn) memcpy(cn + (size_t)b * H, cs, sizeof(double) * (size_t)H);
    }
    free(h); free(cs); free(ai); free(ah); free(m); free(rh);
}

/* ---- kernel calls, one macro body per dtype ------------------------------------------------------------- */
static size_t n_w_ih(const cfg_t *c) { return (size_t)G_of(c->cell) * c->H * c->I; }
static size_t n_w_hh(const cfg_t *c) { return (size_t)G_of(c->cell) * c->H * c->P; }
static size_t n_b(const cfg_t *c) { return (size_t)G_of(c->cell) * c->H; }

#define DEFINE_RUN(real, sfx, table)                                                                          \
    static real *to_##sfx(const double *a, size_t n) {                                                        \
        if (!a) return NULL;                                                                                  \
        real *o = malloc(sizeof(real) * (n ? n : 1));                                                         \
        for (size_t i = 0; i < n; i++) o[i] = (real)a[i];                                                     \
        return o;                                                                                             \
    }                                                                                                         \
    /* forward (tape when train) into y (T,B,ldy), hn, cn as doubles; returns the kernel's status */          \
    static int run_fwd_##sfx(const cfg_t *c, const inputs_t *in, int train, int ldy, double *y, double *hn,    \
                             double *cn, real **tape_out, real **y_out) {                                     \
        const table *k = fr_kernels_##sfx();                                                                  \
        const int T = c->T, B = c->B, I = c->I, H = c->H, P = c->P;                                           \
        real *x = to_##sfx(in->x, (size_t)T * B * I), *h0 = to_##sfx(c->has_h0 ? in->h0 : NULL, (size_t)B * P); \
        real *c0 = to_##sfx(c->has_c0 ? in->c0 : NULL, (size_t)B * H);                                        \
        real *wi = to_##sfx(in->w_ih, n_w_ih(c)), *wh = to_##sfx(in->w_hh, n_w_hh(c));                        \
        real *bi = to_##sfx(c->has_bias ? in->b_ih : NULL, n_b(c)), *bh = to_##sfx(c->has_bias ? in->b_hh : NULL, n_b(c)); \
        real *wr = to_##sfx(c->cell == 1 && P < H ? in->w_hr : NULL, (size_t)P * H);                          \
        size_t ny = (size_t)T * B * ldy;                                                                      \
        real *yy = malloc(sizeof(real) * ny), *hh = malloc(sizeof(real) * (size_t)B * P);                     \
        real *cc = malloc(sizeof(real) * (size_t)B * H);                                                      \
        for (size_t i = 0; i < ny; i++) yy[i] = (real)12345; /* columns past P must stay untouched */         \
        size_t nt = c->cell == 0 ? k->rnn_tape_len(T, B, H) : c->cell == 1 ? k->lstm_tape_len(T, B, H, P)     \
                                                                           : k->gru_tape_len(T, B, H);        \
        real *tape = train ? malloc(sizeof(real) * (nt ? nt : 1)) : NULL;                                     \
        const int *len = c->has_len ? c->lengths : NULL;                                                      \
        int rc;                                                                                               \
        if (c->cell == 0)                                                                                     \
            rc = k->rnn_forward(T, B, I, H, c->relu, c->reverse, len, NULL, x, h0, wi, wh, bi, bh, yy, ldy, hh, tape); \
        else if (c->cell == 1)                                                                                \
            rc = k->lstm_forward(T, B, I, H, P, c->reverse, len, NULL, x, h0, c0, wi, wh, bi, bh, wr, yy, ldy, hh, cc, \
                                 tape);                                                                       \
        else                                                                                                  \
            rc = k->gru_forward(T, B, I, H, c->reset_after, c->reverse, len, NULL, x, h0, wi, wh, bi, bh, yy, ldy, hh, \
                                tape);                                                                        \
        for (size_t i = 0; i < ny; i++) y[i] = (double)yy[i];                                                 \
        for (size_t i = 0; i < (size_t)B * P; i++) hn[i] = (double)hh[i];                                     \
        if (cn) for (size_t i = 0; i < (size_t)B * H; i++) cn[i] = (double)cc[i];                             \
        free(x); free(h0); free(c0); free(wi); free(wh); free(bi); free(bh); free(wr); free(hh); free(cc);    \
        if (tape_out) *tape_out = tape; else free(tape);                                                      \
        if (y_out) *y_out = yy; else free(yy);                                                                \
        return rc;                                                                                            \
    }

DEFINE_RUN(float, f32, fr_kernels_f32_t)
DEFINE_RUN(double, f64, fr_kernels_f64_t)

static int failures = 0, checks = 0;

static void describe(const cfg_t *c, char *buf, size_t n) {
    snprintf(buf, n, "cell %d T %d B %d I %d H %d P %d relu %d reset_after %d reverse %d bias %d h0 %d c0 %d len %d "
             "isa %d threads %d", c->cell, c->T, c->B, c->I, c->H, c->P, c->relu, c->reset_after, c->reverse,
             c->has_bias, c->has_h0, c->has_c0, c->has_len, fr_get_isa(), fr_get_num_threads());
}

static double max_abs(const double *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

static void compare(const cfg_t *c, const char *what, const double *got, const double *want, size_t n,
                    double tol) {
    double scale = max_abs(want, n), err = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        if (!(e <= err)) err = e; /* NaN counts as the largest error */
    }
    checks++;
    if (!(err <= tol * (scale > 1 ? scale : 1))) {
        char buf[400];
        describe(c, buf, sizeof buf);
        printf("FAIL %s: max error %.3e (scale %.3e, tol %.1e): %s\n", what, err, scale, tol, buf);
        failures++;
    }
}

static double *rand_array(size_t n, double s) {
    double *a = malloc(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) a[i] = s * rnd_unif();
    return a;
}

static void make_inputs(const cfg_t *c, inputs_t *in) {
    const double k = 1.0 / sqrt((double)c->H);
    in->x = rand_array((size_t)c->T * c->B * c->I, 1.0);
    in->h0 = rand_array((size_t)c->B * c->P, 0.5);
    in->c0 = rand_array((size_t)c->B * c->H, 0.5);
    in->w_ih = rand_array(n_w_ih(c), k);
    in->w_hh = rand_array(n_w_hh(c), k);
    in->b_ih = rand_array(n_b(c), k);
    in->b_hh = rand_array(n_b(c), k);
    in->w_hr = rand_array((size_t)c->P * c->H, k);
}

static void free_inputs(inputs_t *in) {
    free(in->x); free(in->h0); free(in->c0); free(in->w_ih); free(in->w_hh); free(in->b_ih); free(in->b_hh);
    free(in->w_hr);
}

/* the forward of cfg c on inputs `in` through the f64 kernel, as the loss of the gradient check */
static double loss_f64(const cfg_t *c, const inputs_t *in, const double *R, const double *Rh, const double *Rc) {
    const size_t ny = (size_t)c->T * c->B * c->P;
    double *y = malloc(sizeof(double) * ny), *hn = malloc(sizeof(double) * (size_t)c->B * c->P);
    double *cn = malloc(sizeof(double) * (size_t)c->B * c->H);
    run_fwd_f64(c, in, 0, c->P, y, hn, c->cell == 1 ? cn : NULL, NULL, NULL);
    double L = 0;
    for (size_t i = 0; i < ny; i++) L += y[i] * R[i];
    for (size_t i = 0; i < (size_t)c->B * c->P; i++) L += hn[i] * Rh[i];
    if (c->cell == 1) for (size_t i = 0; i < (size_t)c->B * c->H; i++) L += cn[i] * Rc[i];
    free(y); free(hn); free(cn);
    return L;
}

static void axpy_inputs(const cfg_t *c, inputs_t *dst, const inputs_t *a, double s, const inputs_t *v) {
#define AXPY(f, n) for (size_t i = 0; i < (n); i++) dst->f[i] = a->f[i] + s * v->f[i]
    AXPY(x, (size_t)c->T * c->B * c->I); AXPY(h0, (size_t)c->B * c->P); AXPY(c0, (size_t)c->B * c->H);
    AXPY(w_ih, n_w_ih(c)); AXPY(w_hh, n_w_hh(c)); AXPY(b_ih, n_b(c)); AXPY(b_hh, n_b(c));
    AXPY(w_hr, (size_t)c->P * c->H);
#undef AXPY
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void grad_check(const cfg_t *c, const inputs_t *in) {
    const int T = c->T, B = c->B, I = c->I, H = c->H, P = c->P;
    const fr_kernels_f64_t *k = fr_kernels_f64();
    const size_t ny = (size_t)T * B * P;
    double *R = rand_array(ny, 1.0), *Rh = rand_array((size_t)B * P, 1.0), *Rc = rand_array((size_t)B * H, 1.0);
    double *y = malloc(sizeof(double) * ny), *hn = malloc(sizeof(double) * (size_t)B * P);
    double *cn = malloc(sizeof(double) * (size_t)B * H);
    double *tape = NULL, *yk = NULL;
    run_fwd_f64(c, in, 1, P, y, hn, c->cell == 1 ? cn : NULL, &tape, &yk);
    double *dx = calloc((size_t)T * B * I + 1, sizeof(double)), *dh0 = calloc((size_t)B * P + 1, sizeof(double));
    double *dc0 = calloc((size_t)B * H + 1, sizeof(double));
    double *dwi = calloc(n_w_ih(c) + 1, sizeof(double)), *dwh = calloc(n_w_hh(c) + 1, sizeof(double));
    double *dbi = calloc(n_b(c) + 1, sizeof(double)), *dbh = calloc(n_b(c) + 1, sizeof(double));
    double *dwr = calloc((size_t)P * H + 1, sizeof(double));
    const double *h0 = c->has_h0 ? in->h0 : NULL, *c0 = c->has_c0 ? in->c0 : NULL;
    const double *bi = c->has_bias ? in->b_ih : NULL;
    const double *wr = c->cell == 1 && P < H ? in->w_hr : NULL;
    const int *len = c->has_len ? c->lengths : NULL;
    int rc;
    (void)bi;
    if (c->cell == 0)
        rc = k->rnn_backward(T, B, I, H, c->relu, c->reverse, len, NULL, in->x, h0, in->w_ih, in->w_hh, yk, P, tape, R, P,
                             Rh, dx, 0, dh0, dwi, dwh, c->has_bias ? dbi : NULL, c->has_bias ? dbh : NULL);
    else if (c->cell == 1)
        rc = k->lstm_backward(T, B, I, H, P, c->reverse, len, NULL, in->x, h0, c0, in->w_ih, in->w_hh, wr, yk, P, tape, R,
                              P, Rh, Rc, dx, 0, dh0, dc0, dwi, dwh, c->has_bias ? dbi : NULL,
                              c->has_bias ? dbh : NULL, wr ? dwr : NULL);
    else
        rc = k->gru_backward(T, B, I, H, c->reset_after, c->reverse, len, NULL, in->x, h0, in->w_ih, in->w_hh, yk, P, tape,
                             R, P, Rh, dx, 0, dh0, dwi, dwh, c->has_bias ? dbi : NULL, c->has_bias ? dbh : NULL);
    checks++;
    if (rc != FR_OK) {
        printf("FAIL backward returned %d\n", rc);
        failures++;
    }
    inputs_t v, p;
    make_inputs(c, &v);
    make_inputs(c, &p);
    if (!c->has_h0) memset(v.h0, 0, sizeof(double) * (size_t)B * P);
    if (!c->has_c0 || c->cell != 1) memset(v.c0, 0, sizeof(double) * (size_t)B * H);
    if (!c->has_bias) { memset(v.b_ih, 0, sizeof(double) * n_b(c)); memset(v.b_hh, 0, sizeof(double) * n_b(c)); }
    if (!wr) memset(v.w_hr, 0, sizeof(double) * (size_t)P * H);
    double an = dot(dx, v.x, (size_t)T * B * I) + dot(dwi, v.w_ih, n_w_ih(c)) + dot(dwh, v.w_hh, n_w_hh(c));
    if (c->has_h0) an += dot(dh0, v.h0, (size_t)B * P);
    if (c->has_c0 && c->cell == 1) an += dot(dc0, v.c0, (size_t)B * H);
    if (c->has_bias) an += dot(dbi, v.b_ih, n_b(c)) + dot(dbh, v.b_hh, n_b(c));
    if (wr) an += dot(dwr, v.w_hr, (size_t)P * H);
    const double eps = 1e-5;
    axpy_inputs(c, &p, in, eps, &v);
    double Lp = loss_f64(c, &p, R, Rh, Rc);
    axpy_inputs(c, &p, in, -eps, &v);
    double Lm = loss_f64(c, &p, R, Rh, Rc);
    double fd = (Lp - Lm) / (2 * eps);
    checks++;
    if (!(fabs(fd - an) <= 1e-6 * (fabs(an) > 1 ? fabs(an) : 1))) {
        char buf[400];
        describe(c, buf, sizeof buf);
        printf("FAIL gradient: directional derivative %.12e, central difference %.12e: %s\n", an, fd, buf);
        failures++;
    }
    free_inputs(&v); free_inputs(&p);
    free(R); free(Rh); free(Rc); free(y); free(hn); free(cn); free(tape); free(yk);
    free(dx); free(dh0); free(dc0); free(dwi); free(dwh); free(dbi); free(dbh); free(dwr);
}

static void one_case(void) {
    cfg_t c;
    memset(&c, 0, sizeof c);
    c.cell = rnd_int(0, 2);
    c.T = rnd_int(1, 12);
    c.B = rnd_int(1, 9);
    if (rnd_int(0, 7) == 0) c.B = rnd_int(17, 40);
    c.I = rnd_int(1, 20);
    c.H = rnd_int(1, 40);
    if (rnd_int(0, 5) == 0) c.H = rnd_int(60, 140);
    c.P = c.H;
    if (c.cell == 1 && c.H > 1 && rnd_int(0, 2) == 0) c.P = rnd_int(1, c.H - 1);
    c.relu = c.cell == 0 && rnd_int(0, 1);
    c.reset_after = c.cell != 2 || rnd_int(0, 1);
    c.reverse = rnd_int(0, 1);
    c.has_bias = rnd_int(0, 3) != 0;
    c.has_h0 = rnd_int(0, 1);
    c.has_c0 = c.cell == 1 && rnd_int(0, 1);
    c.has_len = rnd_int(0, 1);
    for (int b = 0; b < c.B; b++) c.lengths[b] = c.has_len ? rnd_int(1, c.T) : c.T;
    if (c.has_len) c.lengths[rnd_int(0, c.B - 1)] = c.T;
    int isas[3] = {FR_ISA_PORTABLE, FR_ISA_AVX2, FR_ISA_AVX512}, nisa = 1 + fr_cpu_has_avx2() + fr_cpu_has_avx512();
    fr_set_isa(isas[rnd_int(0, nisa - 1)]);
    fr_set_num_threads(rnd_int(1, 2));
    fr_set_chunking(rnd_int(0, 2) == 0 ? (size_t)rnd_int(256, 8192) : 4u << 20, rnd_int(0, 2) == 0 ? 1 : 1024);

    inputs_t in;
    make_inputs(&c, &in);
    const size_t ny = (size_t)c.T * c.B * c.P;
    double *yr = malloc(sizeof(double) * ny), *hr = malloc(sizeof(double) * (size_t)c.B * c.P);
    double *cr = malloc(sizeof(double) * (size_t)c.B * c.H);
    ref_forward(&c, &in, yr, hr, cr);
    const int ldy = c.P + (rnd_int(0, 1) ? rnd_int(1, 5) : 0); /* a wider row: the half of a bidirectional y */
    double *yk = malloc(sizeof(double) * (size_t)c.T * c.B * ldy), *hk = malloc(sizeof(double) * (size_t)c.B * c.P);
    double *ck = malloc(sizeof(double) * (size_t)c.B * c.H), *ypk = malloc(sizeof(double) * ny);
    for (int dt = 0; dt < 2; dt++) {
        for (int train = 0; train < 2; train++) {
            int rc = dt ? run_fwd_f64(&c, &in, train, ldy, yk, hk, c.cell == 1 ? ck : NULL, NULL, NULL)
                        : run_fwd_f32(&c, &in, train, ldy, yk, hk, c.cell == 1 ? ck : NULL, NULL, NULL);
            checks++;
            if (rc != FR_OK) {
                printf("FAIL forward returned %d\n", rc);
                failures++;
            }
            int untouched = 1;
            for (size_t r = 0; r < (size_t)c.T * c.B; r++) {
                memcpy(ypk + r * c.P, yk + r * ldy, sizeof(double) * (size_t)c.P);
                for (int j = c.P; j < ldy; j++) untouched &= yk[r * ldy + j] == 12345.0;
            }
            checks++;
            if (!untouched) {
                printf("FAIL the kernel wrote past P in a row of stride ldy = %d\n", ldy);
                failures++;
            }
            const double tol = dt ? 1e-12 : 2e-5;
            const char *names[2][2] = {{"f32 inference", "f32 training"}, {"f64 inference", "f64 training"}};
            char what[64];
            snprintf(what, sizeof what, "%s y", names[dt][train]);
            compare(&c, what, ypk, yr, ny, tol);
            snprintf(what, sizeof what, "%s h_n", names[dt][train]);
            compare(&c, what, hk, hr, (size_t)c.B * c.P, tol);
            if (c.cell == 1) {
                snprintf(what, sizeof what, "%s c_n", names[dt][train]);
                compare(&c, what, ck, cr, (size_t)c.B * c.H, tol);
            }
        }
    }
    if (!c.relu) grad_check(&c, &in);
    free(yr); free(hr); free(cr); free(yk); free(hk); free(ck); free(ypk);
    free_inputs(&in);
}

int main(int argc, char **argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 300;
    rng_state ^= argc > 2 ? strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull : 0;
    fr_ws_set_poison(1);
    for (int i = 0; i < cases; i++) one_case();
    fr_set_num_threads(1);
    fr_ws_release();
    printf("%d cases, %d checks, %d failures\n", cases, checks, failures);
    return failures ? 1 : 0;
}
