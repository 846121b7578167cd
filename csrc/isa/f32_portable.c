/* The f32 kernels for the portable path. */
#define FR_DOUBLE 0
#define FR_AVX2 0
#define FR_DTYPE_NAME f32_
#define FR_ISA_NAME portable
#include "../instance.h"
