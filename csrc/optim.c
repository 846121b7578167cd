/*
 * optim.c -- fused optimizer updates (optim.h).
 *
 * Why in C: numpy's form of one Adam step is ten array operations, each a pass over the weights with its own
 * temporary and ~1-2 us of call overhead; for the small models of a Keras-style fit that overhead is most of
 * the optimizer's cost, and for large ones the ten passes are memory traffic.  One loop does the same.
 * Each operation is rounded to the dtype in the same order as numpy's (and no multiply-add is contracted into
 * an FMA, which numpy does not do either), so the result is the same bits as the numpy form
 * (tests/test_keras_training.py checks it).
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
#include <math.h>

#include "optim.h"

/* np.maximum's rule: NaN in either operand gives NaN. */
#define FR_MAXNAN(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))

#define FR_ADAM(NAME, real, SQRT)                                                                           \
    void NAME(size_t n, real *restrict w, const real *restrict g, real *restrict m, real *restrict v,        \
              real *restrict vh, real c1, real c2, real alpha,                                              \
              real eps) {                                                                                   \
        if (vh == NULL) {                                                                                   \
            for (size_t i = 0; i < n; i++) {                                                                \
                const real gi = g[i];                                                               \
                const real mi = m[i] + (gi - m[i]) * c1;                                                    \
                const real vi = v[i] + (gi * gi - v[i]) * c2;                                               \
                m[i] = mi;                                                                                  \
                v[i] = vi;                                                                                  \
                w[i] = w[i] - alpha * mi / (SQRT(vi) + eps);                                                \
            }                                                                                               \
            return;                                                                                         \
        }                                                                                                   \
        for (size_t i = 0; i < n; i++) {                                                                    \
            const real gi = g[i];                                                                           \
            const real mi = m[i] + (gi - m[i]) * c1;                                                        \
            const real vi = v[i] + (gi * gi - v[i]) * c2;                                                   \
            const real hi = FR_MAXNAN(vh[i], vi);                                                           \
            m[i] = mi;                                                                                      \
            v[i] = vi;                                                                                      \
            vh[i] = hi;                                                                                     \
            w[i] = w[i] - alpha * mi / (SQRT(hi) + eps);                                                    \
        }                                                                                                   \
    }

FR_ADAM(fr_adam_f32, float, sqrtf)
FR_ADAM(fr_adam_f64, double, sqrt)
