/*
 * simd.h -- the ISA as a layer: width-generic vector mappings, the vectorised activations written once
 * over them, and the array forms of the activations.
 *
 * Included by instance.h after common.h, once per dtype and ISA.  FR_SIMD (common.h) says whether the
 * instance has vector kernels at all: float32 with AVX2 (and AVX-512).  float64 keeps scalar elementwise
 * math on libm even in its AVX2 instance (its kernels exist for gradient checks, where exactness is the
 * point; that instance vectorises only its GEMM, gemm_kernel.h).
 *
 * ---- Widths ---------------------------------------------------------------------------------------------
 * Every instance has the width vr1: one `real`, with libm's sigmoid and tanh.  FR_SIMD instances add vr8
 * (8 floats, __m256), the AVX-512 instance vr16 (16 floats, __m512).  Each width V has the same names:
 *   V                  the vector type;  V##_W its lanes;  V##_m its comparison mask type
 *   V##_load(p) V##_store(p, v) V##_set1(x) V##_zero()         unaligned memory, broadcasts
 *   V##_add sub mul min max div                                 lane-wise (div: a / b, see vr16_div)
 *   V##_fma(a, b, c) = a*b + c;  V##_fnma(a, b, c) = c - a*b    fused in the vector widths
 *   V##_fmma(a, b, c, d) = a*b + c*d                            the product a*b fused
 *   V##_lt(a, b) V##_ge(a, b) V##_gt(a, b) -> V##_m             ordered comparisons (false for NaN)
 *   V##_select(m, a, b) = m ? b : a;  V##_keep(m, a) = m ? a : 0;  V##_zero_where(m, a) = m ? 0 : a
 *   V##_relu(a) = a < 0 ? 0 : a (NaN and -0 pass through);  V##_sigmoid(a) V##_tanh(a)
 *   V##_acc_f64(db, a)  db[0 .. W-1] += a, in double
 * Code written once against a width prefix V is instantiated for each width of the instance by
 * FR_EACH_WIDTH(M): M(vr1), then M(vr8) and M(vr16) where they exist.  The cells run a row of units widest
 * first: 16 at a time, then 8, then one by one (the loops say so where they run).
 *
 * vr1's fma and fnma are the plain expressions a*b + c and c - a*b: the scalar code keeps the very
 * expressions it had, so the compiler contracts them (or not, on the portable path) as before and the
 * numbers of every path stay what they were.  (GCC fuses the first product it meets into the sum that
 * uses it: vr1_fmma is a*b + c*d in one expression, so a*b comes first, as the vector widths fuse it;
 * vr1_fma with a product for c would compute that one first and fuse it instead.)
 *
 * ---- Activations ----------------------------------------------------------------------------------------
 * Accuracy (tests/test_vmath.py measures it against float64 libm): exp within ~2 ulp on its range;
 * sigmoid and tanh within a few ulp of the float32-rounded exact value, tanh keeping its relative accuracy
 * near 0 (where tanh(x) = 2*sigmoid(2x) - 1 would lose it).  NaN in gives NaN out; +-inf saturate.
 * No -ffast-math: the instructions are written out, so the compiler cannot reassociate them.  The widths
 * differ only in three primitives: 2^n (vr8 builds it in the exponent bits, vr16 scales by vscalefps), the
 * division (vr16: the 14-bit reciprocal and a Newton step, vr16_recip) and the masks (vr16: mask
 * registers); the results differ by at most an ulp where the reciprocal rounds differently.
 */
#ifndef FR_SIMD_INSTANCE
#define FR_SIMD_INSTANCE

/* ---- vr1: one real ---------------------------------------------------------------------------------- */
typedef real vr1;
typedef int vr1_m;
#define vr1_W 1
static inline vr1 vr1_load(const real *p) { return *p; }
static inline void vr1_store(real *p, vr1 v) { *p = v; }
static inline vr1 vr1_set1(real x) { return x; }
static inline vr1 vr1_zero(void) { return 0; }
static inline vr1 vr1_add(vr1 a, vr1 b) { return a + b; }
static inline vr1 vr1_sub(vr1 a, vr1 b) { return a - b; }
static inline vr1 vr1_mul(vr1 a, vr1 b) { return a * b; }
static inline vr1 vr1_div(vr1 a, vr1 b) { return a / b; }
static inline vr1 vr1_fma(vr1 a, vr1 b, vr1 c) { return a * b + c; }
static inline vr1 vr1_fnma(vr1 a, vr1 b, vr1 c) { return c - a * b; }
static inline vr1 vr1_fmma(vr1 a, vr1 b, vr1 c, vr1 d) { return a * b + c * d; }
static inline vr1_m vr1_gt(vr1 a, vr1 b) { return a > b; }
static inline vr1 vr1_keep(vr1_m m, vr1 a) { return m ? a : (real)0; }
static inline vr1 vr1_relu(vr1 a) { return a < 0 ? (real)0 : a; } /* keeps a NaN a NaN, as torch's relu */
static inline vr1 vr1_sigmoid(vr1 a) { return fr_sigmoid(a); }
static inline vr1 vr1_tanh(vr1 a) { return fr_tanh(a); }
/* db[0] += d in double: the bias gradients' sums of every cell (seq.h, seq_db; float sums over T*B rows
 * would lose digits) */
static inline void vr1_acc_f64(double *db, vr1 d) { *db += d; }

#if FR_SIMD
#include <immintrin.h>

/* ---- vr8: 8 floats, AVX2 + FMA ---------------------------------------------------------------------- */
typedef __m256 vr8;
typedef __m256 vr8_m;
#define vr8_W 8
static inline vr8 vr8_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vr8_store(float *p, vr8 v) { _mm256_storeu_ps(p, v); }
static inline vr8 vr8_set1(float x) { return _mm256_set1_ps(x); }
static inline vr8 vr8_zero(void) { return _mm256_setzero_ps(); }
static inline vr8 vr8_add(vr8 a, vr8 b) { return _mm256_add_ps(a, b); }
static inline vr8 vr8_sub(vr8 a, vr8 b) { return _mm256_sub_ps(a, b); }
static inline vr8 vr8_mul(vr8 a, vr8 b) { return _mm256_mul_ps(a, b); }
static inline vr8 vr8_div(vr8 a, vr8 b) { return _mm256_div_ps(a, b); }
static inline vr8 vr8_min(vr8 a, vr8 b) { return _mm256_min_ps(a, b); }
static inline vr8 vr8_max(vr8 a, vr8 b) { return _mm256_max_ps(a, b); }
static inline vr8 vr8_fma(vr8 a, vr8 b, vr8 c) { return _mm256_fmadd_ps(a, b, c); }
static inline vr8 vr8_fnma(vr8 a, vr8 b, vr8 c) { return _mm256_fnmadd_ps(a, b, c); }
static inline vr8 vr8_fmma(vr8 a, vr8 b, vr8 c, vr8 d) { return _mm256_fmadd_ps(a, b, _mm256_mul_ps(c, d)); }
static inline vr8 vr8_and(vr8 a, vr8 b) { return _mm256_and_ps(a, b); }
static inline vr8 vr8_andnot(vr8 a, vr8 b) { return _mm256_andnot_ps(a, b); } /* ~a & b */
static inline vr8 vr8_or(vr8 a, vr8 b) { return _mm256_or_ps(a, b); }
static inline vr8 vr8_round(vr8 a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vr8_m vr8_lt(vr8 a, vr8 b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline vr8_m vr8_ge(vr8 a, vr8 b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline vr8_m vr8_gt(vr8 a, vr8 b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline vr8 vr8_select(vr8_m m, vr8 a, vr8 b) { return _mm256_blendv_ps(a, b, m); }
static inline vr8 vr8_keep(vr8_m m, vr8 a) { return _mm256_and_ps(m, a); }
static inline vr8 vr8_zero_where(vr8_m m, vr8 a) { return _mm256_andnot_ps(m, a); }
/* max(0, a) returns its second operand for NaN and for -0: as `a < 0 ? 0 : a` (torch's relu) */
static inline vr8 vr8_relu(vr8 a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
/* p * 2^n for integral n in [-127, 126]: n + 127 in the exponent field.  n = -127 (exp(x) subnormal) gives
 * 0, which the callers only ever add to 1 (sigmoid's 1 + exp(-x)). */
static inline vr8 vr8_ldexp(vr8 p, vr8 n) {
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
static inline void vr8_acc_f64(double *db, vr8 d) {
    _mm256_storeu_pd(db, _mm256_add_pd(_mm256_loadu_pd(db), _mm256_cvtps_pd(_mm256_castps256_ps128(d))));
    _mm256_storeu_pd(db + 4, _mm256_add_pd(_mm256_loadu_pd(db + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))));
}

/* out[j] = column j of the 8 x 8 block whose rows are in[0..7] (lane i of out[j] is lane j of in[i]): for
 * the packing of recurrent.h and gemm_kernel.h, which turn rows of W into panel rows. */
static inline void vm_transpose8(const __m256 in[8], __m256 out[8]) {
    __m256 t0 = _mm256_unpacklo_ps(in[0], in[1]), t1 = _mm256_unpackhi_ps(in[0], in[1]);
    __m256 t2 = _mm256_unpacklo_ps(in[2], in[3]), t3 = _mm256_unpackhi_ps(in[2], in[3]);
    __m256 t4 = _mm256_unpacklo_ps(in[4], in[5]), t5 = _mm256_unpackhi_ps(in[4], in[5]);
    __m256 t6 = _mm256_unpacklo_ps(in[6], in[7]), t7 = _mm256_unpackhi_ps(in[6], in[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    out[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    out[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    out[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    out[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    out[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    out[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    out[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif /* FR_SIMD */

#if FR_AVX512
/* ---- vr16: 16 floats, AVX-512 F/DQ ------------------------------------------------------------------ */
typedef __m512 vr16;
typedef __mmask16 vr16_m;
#define vr16_W 16
static inline vr16 vr16_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vr16_store(float *p, vr16 v) { _mm512_storeu_ps(p, v); }
static inline vr16 vr16_set1(float x) { return _mm512_set1_ps(x); }
static inline vr16 vr16_zero(void) { return _mm512_setzero_ps(); }
static inline vr16 vr16_add(vr16 a, vr16 b) { return _mm512_add_ps(a, b); }
static inline vr16 vr16_sub(vr16 a, vr16 b) { return _mm512_sub_ps(a, b); }
static inline vr16 vr16_mul(vr16 a, vr16 b) { return _mm512_mul_ps(a, b); }
static inline vr16 vr16_min(vr16 a, vr16 b) { return _mm512_min_ps(a, b); }
static inline vr16 vr16_max(vr16 a, vr16 b) { return _mm512_max_ps(a, b); }
static inline vr16 vr16_fma(vr16 a, vr16 b, vr16 c) { return _mm512_fmadd_ps(a, b, c); }
static inline vr16 vr16_fnma(vr16 a, vr16 b, vr16 c) { return _mm512_fnmadd_ps(a, b, c); }
static inline vr16 vr16_fmma(vr16 a, vr16 b, vr16 c, vr16 d) { return _mm512_fmadd_ps(a, b, _mm512_mul_ps(c, d)); }
static inline vr16 vr16_and(vr16 a, vr16 b) { return _mm512_and_ps(a, b); }
static inline vr16 vr16_andnot(vr16 a, vr16 b) { return _mm512_andnot_ps(a, b); } /* ~a & b */
static inline vr16 vr16_or(vr16 a, vr16 b) { return _mm512_or_ps(a, b); }
static inline vr16 vr16_round(vr16 a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vr16_m vr16_lt(vr16 a, vr16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline vr16_m vr16_ge(vr16 a, vr16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline vr16_m vr16_gt(vr16 a, vr16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline vr16 vr16_select(vr16_m m, vr16 a, vr16 b) { return _mm512_mask_blend_ps(m, a, b); }
static inline vr16 vr16_keep(vr16_m m, vr16 a) { return _mm512_maskz_mov_ps(m, a); }
static inline vr16 vr16_zero_where(vr16_m m, vr16 a) { return _mm512_maskz_mov_ps((__mmask16)~m, a); }
static inline vr16 vr16_relu(vr16 a) { return _mm512_max_ps(_mm512_setzero_ps(), a); }
/* p * 2^n in one instruction (vscalefps), where vr8 builds 2^n in the exponent field; the product is
 * exact in both, so the results are the same but for n = -127 (exp(x) subnormal: 0 there, p 2^-127 here
 * unless flushed), which the callers only add to 1. */
static inline vr16 vr16_ldexp(vr16 p, vr16 n) { return _mm512_scalef_ps(p, n); }
static inline void vr16_acc_f64(double *db, vr16 d) {
    _mm512_storeu_pd(db, _mm512_add_pd(_mm512_loadu_pd(db), _mm512_cvtps_pd(_mm512_castps512_ps256(d))));
    _mm512_storeu_pd(db + 8, _mm512_add_pd(_mm512_loadu_pd(db + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(d, 1))));
}

/* 1 / d for d >= 1 (the activations' denominators): the 14-bit estimate and one Newton step.  A zmm
 * division holds the divider for ~10 cycles and an LSTM cell has five: measured faster (docs/tuning.md,
 * AVX-512 reciprocal), with the ulps against float64 unchanged (sigmoid 2, tanh 1 at most). */
static inline vr16 vr16_recip(vr16 d) {
    const vr16 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}
/* a / b as a * (1 / b), for the activations' b >= 1 only (vr16_recip); a = 1 gives the reciprocal itself */
static inline vr16 vr16_div(vr16 a, vr16 b) { return _mm512_mul_ps(a, vr16_recip(b)); }

/* Two 8-float halves in one zmm and back. */
static inline __m512 vm_join8(const float *lo, const float *hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(lo)), _mm256_loadu_ps(hi), 1);
}
static inline void vm_split8(__m512 v, float *lo, float *hi) {
    _mm256_storeu_ps(lo, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(hi, _mm512_extractf32x8_ps(v, 1));
}
/* The same when `contig` may say hi == lo + 8 (two groups of 8 consecutive units of one row): then one
 * zmm access instead of two halves and a lane shuffle.  Callers pass a constant (lstm_cell16).  (The GRU's
 * cell pairs, consecutive too with its blocks of 16 units, measured even with them: docs/tuning.md, AVX-512
 * cell pairs.) */
static inline __m512 vm_load16(int contig, const float *lo, const float *hi) {
    return contig ? _mm512_loadu_ps(lo) : vm_join8(lo, hi);
}
static inline void vm_store16(int contig, __m512 v, float *lo, float *hi) {
    if (contig)
        _mm512_storeu_ps(lo, v);
    else
        vm_split8(v, lo, hi);
}
#endif /* FR_AVX512 */

/* ---- the widths of this instance ------------------------------------------------------------------- */
#if FR_AVX512
#define FR_EACH_WIDTH(M) M(vr1) M(vr8) M(vr16)
#define FR_EACH_VECTOR_WIDTH(M) M(vr8) M(vr16)
#elif FR_SIMD
#define FR_EACH_WIDTH(M) M(vr1) M(vr8)
#define FR_EACH_VECTOR_WIDTH(M) M(vr8)
#else
#define FR_EACH_WIDTH(M) M(vr1)
#define FR_EACH_VECTOR_WIDTH(M)
#endif

/* ---- the activations of the vector widths, written once ------------------------------------------ */
#define FR_ACTIVATIONS(V)                                                                                  \
    /* exp(x) for x in [-88, 87.5] (the callers clamp): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7  \
     * polynomial (the Taylor coefficients: the remainder is below 0.1 ulp for |r| <= 0.35), times 2^n.    \
     * ln2 is split in two (hi + lo) so that r = x - n*ln2 is exact to float precision. */                 \
    static inline V V##_exp(V x) {                                                                         \
        const V n = V##_round(V##_mul(x, V##_set1(1.44269504088896341f)));                                 \
        V r = V##_fnma(n, V##_set1(0.693359375f), x);                                                      \
        r = V##_fnma(n, V##_set1(-2.12194440e-4f), r);                                                     \
        V p = V##_set1(1.0f / 5040.0f);                                                                    \
        p = V##_fma(p, r, V##_set1(1.0f / 720.0f));                                                        \
        p = V##_fma(p, r, V##_set1(1.0f / 120.0f));                                                        \
        p = V##_fma(p, r, V##_set1(1.0f / 24.0f));                                                         \
        p = V##_fma(p, r, V##_set1(1.0f / 6.0f));                                                          \
        p = V##_fma(p, r, V##_set1(0.5f));                                                                 \
        p = V##_fma(p, r, V##_set1(1.0f));                                                                 \
        p = V##_fma(p, r, V##_set1(1.0f));                                                                 \
        return V##_ldexp(p, n); /* the callers' clamps keep n within [-127, 126] */                        \
    }                                                                                                      \
    /* sigmoid(x) = 1 / (1 + exp(-x)), with x clamped to where exp(-x) is finite and the result is not yet \
     * exactly 1 in float32 -- clamping with max/min in this operand order passes NaN through.  Below      \
     * ln(FLT_MIN) = -87.3365 the exact result is subnormal: 0, as the kernels' flush-to-zero mode would. */ \
    static inline V V##_sigmoid(V x) {                                                                     \
        V xc = V##_max(V##_set1(-87.5f), x);                                                               \
        xc = V##_min(V##_set1(88.0f), xc);                                                                 \
        const V e = V##_exp(V##_sub(V##_zero(), xc));                                                      \
        const V s = V##_div(V##_set1(1.0f), V##_add(V##_set1(1.0f), e));                                   \
        return V##_zero_where(V##_lt(x, V##_set1(-87.3365f)), s);                                          \
    }                                                                                                      \
    /* tanh(x): for |x| < 0.625 an odd minimax polynomial x + x^3 P(x^2) (Cephes' tanhf coefficients)      \
     * keeps the relative accuracy near 0; above, 1 - 2 / (exp(2|x|) + 1) with the sign put back.  |x| is  \
     * clamped at 9.1, past which tanh rounds to +-1 in float32.  NaN compares false, so it takes the      \
     * small branch, which propagates it. */                                                               \
    static inline V V##_tanh(V x) {                                                                        \
        const V sign_mask = V##_set1(-0.0f);                                                               \
        const V ax = V##_andnot(sign_mask, x), sign = V##_and(sign_mask, x);                               \
        const V z = V##_mul(x, x);                                                                         \
        V p = V##_set1(-5.70498872745e-3f);                                                                \
        p = V##_fma(p, z, V##_set1(2.06390887954e-2f));                                                    \
        p = V##_fma(p, z, V##_set1(-5.37397155531e-2f));                                                   \
        p = V##_fma(p, z, V##_set1(1.33314422036e-1f));                                                    \
        p = V##_fma(p, z, V##_set1(-3.33332819422e-1f));                                                   \
        const V small = V##_fma(V##_mul(p, z), x, x);                                                      \
        const V axc = V##_min(V##_set1(9.1f), ax);                                                         \
        const V e = V##_exp(V##_add(axc, axc));                                                            \
        V large = V##_sub(V##_set1(1.0f), V##_div(V##_set1(2.0f), V##_add(e, V##_set1(1.0f))));            \
        large = V##_or(large, sign);                                                                       \
        return V##_select(V##_ge(ax, V##_set1(0.625f)), small, large);                                     \
    }
FR_EACH_VECTOR_WIDTH(FR_ACTIVATIONS)
#undef FR_ACTIVATIONS

/* ---- the activations over arrays: y[i] = f(x[i]) for i < n, in place allowed, widest first -------- */
#define FR_ARRAY_LOOP(V, f)                                                                                \
    for (; i + V##_W <= n; i += V##_W) V##_store(y + i, V##_##f(V##_load(x + i)));
#if FR_AVX512
#define FR_ARRAY_VECTOR_LOOPS(f) FR_ARRAY_LOOP(vr16, f) FR_ARRAY_LOOP(vr8, f)
#elif FR_SIMD
#define FR_ARRAY_VECTOR_LOOPS(f) FR_ARRAY_LOOP(vr8, f)
#else
#define FR_ARRAY_VECTOR_LOOPS(f)
#endif

static void vm_sigmoid(const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    size_t i = 0;
    FR_ARRAY_VECTOR_LOOPS(sigmoid)
    FR_ARRAY_LOOP(vr1, sigmoid)
}

static void vm_tanh(const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    size_t i = 0;
    FR_ARRAY_VECTOR_LOOPS(tanh)
    FR_ARRAY_LOOP(vr1, tanh)
}

/* The table's entry for tests: fn 0 sigmoid, 1 tanh. */
static void vmath_apply(int fn, const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    if (fn == 0)
        vm_sigmoid(x, y, n);
    else
        vm_tanh(x, y, n);
}

#endif /* FR_SIMD_INSTANCE */
