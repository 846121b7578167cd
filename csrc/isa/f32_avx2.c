/* The f32 kernels for the avx2 path. */
#define FR_DOUBLE 0
#define FR_AVX2 1
#define FR_DTYPE_NAME f32_
#define FR_ISA_NAME avx2
/* Everything below, the cells included, may use AVX2 and FMA: this file is only called on CPUs
 * that have them (dispatch.c). */
#pragma GCC target("avx2,fma")
#include "../instance.h"
