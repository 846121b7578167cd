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

int fr_cpu_has_avx512(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return fr_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

/* The best ISA this CPU supports at or below `isa`. */
static int supported_at_most(int isa) {
    if (isa >= FR_ISA_AVX512 && fr_cpu_has_avx512()) return FR_ISA_AVX512;
    if (isa >= FR_ISA_AVX2 && fr_cpu_has_avx2()) return FR_ISA_AVX2;
    return FR_ISA_PORTABLE;
}

/* -1 until first use; then FR_ISA_*.  A plain int: written once at start-up or by fr_set_isa (a testing
 * and tuning knob, not meant to race with running kernels). */
static volatile int g_isa = -1;

static int choose_isa(void) {
    const char *env = getenv("FASTRNN_ISA");
    if (env != NULL && (strcmp(env, "portable") == 0 || strcmp(env, "generic") == 0)) return FR_ISA_PORTABLE;
    if (env != NULL && strcmp(env, "avx2") == 0) return supported_at_most(FR_ISA_AVX2);
    return supported_at_most(FR_ISA_AVX512);
}

int fr_get_isa(void) {
    if (g_isa < 0) g_isa = choose_isa();
    return g_isa;
}

int fr_set_isa(int isa) {
    g_isa = supported_at_most(isa);
    return g_isa;
}

const fr_kernels_f32_t *fr_kernels_f32(void) {
    switch (fr_get_isa()) {
    case FR_ISA_AVX512: return &fr_kernels_f32_avx512;
    case FR_ISA_AVX2: return &fr_kernels_f32_avx2;
    default: return &fr_kernels_f32_portable;
    }
}

const fr_kernels_f64_t *fr_kernels_f64(void) {
    /* no f64 avx512 instance: float64 serves gradient checks, where the AVX2 kernels are plenty */
    return fr_get_isa() >= FR_ISA_AVX2 ? &fr_kernels_f64_avx2 : &fr_kernels_f64_portable;
}

/* ---- chunk sizes (fastrnn.h) ---------------------------------------------------------------------------- */
static size_t g_chunk_bytes = (size_t)4 << 20; /* bounds inference memory; each chunk is still one big GEMM */
static int g_proj_min_rows = 1024;            /* a GEMM packs W_ih anew: fewer rows do not pay that back */

size_t fr_chunk_bytes(void) { return g_chunk_bytes; }
int fr_proj_min_rows(void) { return g_proj_min_rows; }

void fr_set_chunking(size_t chunk_bytes, int proj_min_rows) {
    if (chunk_bytes > 0) g_chunk_bytes = chunk_bytes;
    if (proj_min_rows > 0) g_proj_min_rows = proj_min_rows;
}

/* ---- block stealing (fastrnn.h, recurrent.h's rec_steal) ------------------------------------------------- */
static int g_steal_mode = 0;
int fr_steal_mode(void) { return g_steal_mode; }
int fr_set_steal_mode(int mode) {
    int old = g_steal_mode;
    if (mode >= 0 && mode <= 2) g_steal_mode = mode;
    return old;
}
