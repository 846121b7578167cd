/*
 * optim.h -- fused optimizer updates over one flat vector of weights (optim.c), for fastrnn.optimizers.
 */
#ifndef FR_OPTIM_H
#define FR_OPTIM_H

#include <stddef.h>

/* Keras 3's Adam step, in place, element by element over n weights, in numpy's order of operations:
 *   m += (g - m) * c1;  v += (g*g - v) * c2;  (vh = max(vh, v); v = vh when vh);  w -= alpha * m / (sqrt(v) + eps)
 * with c1 = 1 - beta_1, c2 = 1 - beta_2 and alpha the bias-corrected step size, all rounded to the dtype first.
 * w, m, v, vh: (n) in/out (vh NULL without amsgrad); g: (n); five distinct arrays (restrict). */
void fr_adam_f32(size_t n, float *w, const float *g, float *m, float *v, float *vh, float c1, float c2,
                 float alpha, float eps);
void fr_adam_f64(size_t n, double *w, const double *g, double *m, double *v, double *vh, double c1, double c2,
                 double alpha, double eps);

#endif /* FR_OPTIM_H */
