/*
 * dispatch.c -- which ISA's kernel table serves the calls.
 */
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"

int fr_cpu_has_avx2(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* -1 until first use; then FR_ISA_*.  A plain int: written once at start-up or by fr_set_isa (a testing
 * and tuning knob, not meant to race with running kernels). */
static volatile int g_isa = -1;

static int choose_isa(void) {
    const char *env = getenv("FASTRNN_ISA");
    int best = fr_cpu_has_avx2() ? FR_ISA_AVX2 : FR_ISA_PORTABLE;
    if (env != NULL && (strcmp(env, "portable") == 0 || strcmp(env, "generic") == 0)) return FR_ISA_PORTABLE;
    return best;
}

int fr_get_isa(void) {
    if (g_isa < 0) g_isa = choose_isa();
    return g_isa;
}

int fr_set_isa(int isa) {
    g_isa = (isa == FR_ISA_AVX2 && fr_cpu_has_avx2()) ? FR_ISA_AVX2 : FR_ISA_PORTABLE;
    return g_isa;
}

const fr_kernels_f32_t *fr_kernels_f32(void) {
    return fr_get_isa() == FR_ISA_AVX2 ? &fr_kernels_f32_avx2 : &fr_kernels_f32_portable;
}

const fr_kernels_f64_t *fr_kernels_f64(void) {
    return fr_get_isa() == FR_ISA_AVX2 ? &fr_kernels_f64_avx2 : &fr_kernels_f64_portable;
}
