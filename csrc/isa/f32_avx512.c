/* The f32 kernels for the avx512 path: the AVX2 instance's code plus 16-wide tile kernels (recurrent.h,
 * gen/tiles_avx512.h) and GEMM microkernel (gemm_kernel.h), with panels twice as wide.  float64 has no avx512
 * instance: its kernels exist for gradient checks, so the avx512 path uses the f64 avx2 table. */
#define FR_DOUBLE 0
#define FR_AVX2 1
#define FR_AVX512 1
#define FR_DTYPE_NAME f32_
#define FR_ISA_NAME avx512
/* Everything below may use AVX-512 F/VL/DQ/BW, AVX2 and FMA: this file is only called on CPUs that have
 * them (dispatch.c). */
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#include "../instance.h"
