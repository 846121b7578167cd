/*
 * vmath.h -- sigmoid and tanh over arrays, vectorised for AVX2 (and AVX-512) in float32.
 *
 * Included by instance.h after common.h, once per dtype and ISA.  Only the float32 AVX2 instance uses the
 * polynomial approximations below; float64 (used for gradient checks, where exactness is the point) and
 * the portable path call libm.
 *
 * Accuracy (tests/test_vmath.py measures it against float64 libm): exp within ~2 ulp on its range;
 * sigmoid and tanh within a few ulp of the float32-rounded exact value, tanh keeping its relative accuracy
 * near 0 (where tanh(x) = 2*sigmoid(2x) - 1 would lose it).  NaN in gives NaN out; +-inf saturate.
 * No -ffast-math: the instructions are written out, so the compiler cannot reassociate them.
 */
#ifndef FR_VMATH_INSTANCE
#define FR_VMATH_INSTANCE

#if FR_AVX2 && !FR_DOUBLE
#include <immintrin.h>

/* exp(x) for x in [-88, 87.5] (the callers clamp): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7
 * polynomial (the Taylor coefficients: the remainder is below 0.1 ulp for |r| <= 0.35), times 2^n built in the exponent
 * bits.  ln2 is split in two (hi + lo) so that r = x - n*ln2 is exact to float precision. */
static inline __m256 vm_exp8(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);
    const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n: n + 127 in the exponent field.  The callers' clamps keep n within [-127, 126]; n = -127 (x below
     * -87.68, where exp(x) is subnormal) gives 0, which only ever adds to 1 (sigmoid's 1 + exp(-x)). */
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* sigmoid(x) = 1 / (1 + exp(-x)), with x clamped to where exp(-x) is finite and the result is not yet
 * exactly 1 in float32 -- clamping with max/min in this operand order passes NaN through. */
static inline __m256 vm_sigmoid8(__m256 x) {
    __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.5f), x);
    xc = _mm256_min_ps(_mm256_set1_ps(88.0f), xc);
    __m256 e = vm_exp8(_mm256_sub_ps(_mm256_setzero_ps(), xc));
    __m256 s = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    /* Below ln(FLT_MIN) = -87.3365 the exact result is subnormal: give 0, as the kernels' flush-to-zero mode would. */
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.3365f), _CMP_LT_OQ), s);
}

/* tanh(x): for |x| < 0.625 an odd minimax polynomial x + x^3 P(x^2) (Cephes' tanhf coefficients) keeps
 * the relative accuracy near 0; above, 1 - 2 / (exp(2|x|) + 1) with the sign put back.  |x| is clamped at
 * 9.1, past which tanh rounds to +-1 in float32. */
static inline __m256 vm_tanh8(__m256 x) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign_mask, x);
    __m256 sign = _mm256_and_ps(sign_mask, x);
    /* small |x| */
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    /* large |x| */
    __m256 axc = _mm256_min_ps(_mm256_set1_ps(9.1f), ax);
    __m256 e = vm_exp8(_mm256_add_ps(axc, axc));
    __m256 large = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                                 _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    large = _mm256_or_ps(large, sign);
    /* NaN compares false, so NaN takes the small branch, which propagates it. */
    __m256 use_large = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_GE_OQ);
    return _mm256_blendv_ps(small, large, use_large);
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
#endif /* FR_AVX2 && !FR_DOUBLE */

#if FR_AVX512
/* The same three functions on 16 floats: 2^n by vscalefps, the reciprocals by rcp14 and a Newton step
 * (vm_recip16), blends and the flush by mask registers.  The results differ from the 8-wide ones by at
 * most an ulp where the reciprocal rounds differently from the division. */
static inline __m512 vm_exp16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    /* p * 2^n in one instruction (vscalefps), where the 8-wide version builds 2^n in the exponent field;
     * the product is exact in both, so the results are the same but for n = -127 (exp(x) subnormal:
     * 0 there, p 2^-127 here unless flushed), which the callers only add to 1. */
    return _mm512_scalef_ps(p, n);
}

/* 1 / d for d >= 1 (the activations' denominators): the 14-bit estimate and one Newton step.  A zmm
 * division holds the divider for ~10 cycles and an LSTM cell has five; measured on the Xeon VM, 2 threads,
 * in one process against the divisions: forward LSTM 100,16,64,128 x1.03, 100,32,64,128 x1.02, GRU
 * 100,16,64,128 x1.05, training even; the ulps against float64 are unchanged (sigmoid 2, tanh 1 at most). */
static inline __m512 vm_recip16(__m512 d) {
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

static inline __m512 vm_sigmoid16(__m512 x) {
    __m512 xc = _mm512_max_ps(_mm512_set1_ps(-87.5f), x);
    xc = _mm512_min_ps(_mm512_set1_ps(88.0f), xc);
    __m512 e = vm_exp16(_mm512_sub_ps(_mm512_setzero_ps(), xc));
    __m512 s = vm_recip16(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, s);
}

static inline __m512 vm_tanh16(__m512 x) {
    const __m512 sign_mask = _mm512_set1_ps(-0.0f);
    __m512 ax = _mm512_andnot_ps(sign_mask, x);
    __m512 sign = _mm512_and_ps(sign_mask, x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    __m512 axc = _mm512_min_ps(_mm512_set1_ps(9.1f), ax);
    __m512 e = vm_exp16(_mm512_add_ps(axc, axc));
    __m512 large = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                                 _mm512_mul_ps(_mm512_set1_ps(2.0f), vm_recip16(_mm512_add_ps(e, _mm512_set1_ps(1.0f)))));
    large = _mm512_or_ps(large, sign);
    __mmask16 use_large = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_GE_OQ);
    return _mm512_mask_blend_ps(use_large, small, large);
}

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
 * cell pairs, consecutive too with its blocks of 16 units, measured even with them: x0.98-1.02.) */
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

/* y[i] = sigmoid(x[i]) for i < n (in place allowed). */
static void vm_sigmoid(const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    size_t i = 0;
#if FR_AVX512
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, vm_sigmoid16(_mm512_loadu_ps(x + i)));
#endif
#if FR_AVX2 && !FR_DOUBLE
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, vm_sigmoid8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) y[i] = fr_sigmoid(x[i]);
}

/* y[i] = tanh(x[i]) for i < n (in place allowed). */
static void vm_tanh(const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    size_t i = 0;
#if FR_AVX512
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, vm_tanh16(_mm512_loadu_ps(x + i)));
#endif
#if FR_AVX2 && !FR_DOUBLE
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, vm_tanh8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) y[i] = fr_tanh(x[i]);
}

/* The table's entry for tests: fn 0 sigmoid, 1 tanh. */
static void vmath_apply(int fn, const real *x, /* (n) */ real *y, /* (n) */ size_t n) {
    if (fn == 0)
        vm_sigmoid(x, y, n);
    else
        vm_tanh(x, y, n);
}

#endif /* FR_VMATH_INSTANCE */
