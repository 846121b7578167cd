/* The f64 kernels for the portable path. */
#define FR_DOUBLE 1
#define FR_AVX2 0
#define FR_DTYPE_NAME f64_
#define FR_ISA_NAME portable
#include "../instance.h"
