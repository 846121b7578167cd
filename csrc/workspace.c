/*
 * workspace.c -- a small cache of the kernels' large buffers (weight panels, projections, dG, the GEMM's
 * packed blocks), so that a call does not take fresh pages from the kernel.
 *
 * Why: glibc serves large allocations with mmap and gives them back to the kernel on free, so every call
 * page-faulted its buffers in again and had the kernel zero them.  Measurements: docs/tuning.md,
 * Workspace cache.  Reusing the buffers avoids both.
 *
 * A buffer carries a 64-byte header with its size.  Buffers of at least FR_WS_MIN_BYTES go back to the
 * cache on fr_ws_free: at most FR_WS_SLOTS of them and FR_WS_CACHE_BYTES in all (256 MB; the environment's
 * FASTRNN_WORKSPACE_MB sets another cap, 0 none: the oldest leave first), so the cache holds about one
 * call's large buffers; fr_ws_release (fastrnn.release_workspace()) frees them.  A request takes the
 * smallest kept buffer that fits it and is at most twice its size.  A mutex guards the cache: kernels run
 * from many Python threads, and GEMM workers allocate inside regions.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "workspace.h"

#ifndef FR_WS_MIN_BYTES
#define FR_WS_MIN_BYTES ((size_t)256 << 10)
#endif
#ifndef FR_WS_CACHE_BYTES
#define FR_WS_CACHE_BYTES ((size_t)256 << 20)
#endif
#define FR_WS_SLOTS 32
#define FR_WS_HEAD 64 /* the header keeps the payload 64-byte aligned */
#define FR_WS_HUGE ((size_t)2 << 20)      /* a huge page */
#define FR_WS_HUGE_MIN ((size_t)4 << 20)  /* blocks from this size start on one and ask for them (numpy's) */

static struct {
    pthread_mutex_t lock;
    void *base[FR_WS_SLOTS]; /* kept blocks (header included), oldest first */
    size_t size[FR_WS_SLOTS]; /* their payload bytes */
    int n;
    size_t total;
} g_ws = {PTHREAD_MUTEX_INITIALIZER, {0}, {0}, 0, 0};

/* Testing knob (fr_ws_set_poison): every buffer handed out is first filled with 0xFF bytes (NaN in float32
 * and float64), so a kernel that read work memory before writing it would give NaN, reused or not. */
static atomic_int g_poison;

int fr_ws_set_poison(int on) { return atomic_exchange(&g_poison, on != 0); }

/* After fork() in a thread other than one holding the lock, the child's copy of it may be held by a thread
 * that does not exist there: the child starts with a fresh lock and an empty cache (the kept blocks stay
 * mapped, copy-on-write, unused). */
static pthread_once_t g_ws_once = PTHREAD_ONCE_INIT;

static void ws_after_fork_child(void) {
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_ws.lock = fresh;
    g_ws.n = 0;
    g_ws.total = 0;
}

/* The cap on kept bytes: FR_WS_CACHE_BYTES, or FASTRNN_WORKSPACE_MB from the environment (0: keep none). */
static size_t g_ws_cap = FR_WS_CACHE_BYTES;

static void ws_init_once(void) {
    const char *e = getenv("FASTRNN_WORKSPACE_MB");
    if (e && *e) {
        char *end = NULL;
        const unsigned long long mb = strtoull(e, &end, 10);
        if (end && *end == '\0' && mb <= ((unsigned long long)SIZE_MAX >> 20)) g_ws_cap = (size_t)mb << 20;
    }
    pthread_atfork(NULL, NULL, ws_after_fork_child);
}

/* Removes slot i (lock held) and returns its block. */
static void *ws_take(int i) {
    void *b = g_ws.base[i];
    g_ws.total -= g_ws.size[i];
    for (int k = i; k + 1 < g_ws.n; k++) {
        g_ws.base[k] = g_ws.base[k + 1];
        g_ws.size[k] = g_ws.size[k + 1];
    }
    g_ws.n--;
    return b;
}

void *fr_ws_alloc(size_t bytes) {
    pthread_once(&g_ws_once, ws_init_once);
    if (bytes > SIZE_MAX - FR_WS_HEAD - 63) return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes == 0) bytes = 64;
    if (bytes >= FR_WS_MIN_BYTES) {
        void *b = NULL;
        pthread_mutex_lock(&g_ws.lock);
        int best = -1;
        for (int i = 0; i < g_ws.n; i++)
            if (g_ws.size[i] >= bytes && g_ws.size[i] / 2 <= bytes && (best < 0 || g_ws.size[i] < g_ws.size[best]))
                best = i;
        if (best >= 0) b = ws_take(best);
        pthread_mutex_unlock(&g_ws.lock);
        if (b) {
            if (atomic_load(&g_poison)) memset((char *)b + FR_WS_HEAD, 0xFF, bytes);
            return (char *)b + FR_WS_HEAD;
        }
    }
    void *b = NULL;
    if (bytes > SIZE_MAX - FR_WS_HEAD - FR_WS_HUGE) return NULL;
    const int huge = bytes >= FR_WS_HUGE_MIN;
    if (posix_memalign(&b, huge ? FR_WS_HUGE : 64, bytes + FR_WS_HEAD) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    /* Transparent huge pages where the system leaves them to madvise (its default): fewer TLB misses over
     * large panels, projections and outputs, as numpy's own large arrays get them (docs/tuning.md,
     * Workspace cache).  Advice only: a refusal changes nothing. */
    if (huge) madvise(b, (bytes + FR_WS_HEAD) & ~(FR_WS_HUGE - 1), MADV_HUGEPAGE);
#endif
    *(size_t *)b = bytes;
    if (atomic_load(&g_poison)) memset((char *)b + FR_WS_HEAD, 0xFF, bytes);
    return (char *)b + FR_WS_HEAD;
}

void fr_ws_free(void *p) {
    if (p == NULL) return;
    void *b = (char *)p - FR_WS_HEAD;
    const size_t bytes = *(size_t *)b;
    if (bytes < FR_WS_MIN_BYTES || bytes > g_ws_cap) {
        free(b);
        return;
    }
    void *evict[FR_WS_SLOTS];
    int ne = 0;
    pthread_mutex_lock(&g_ws.lock);
    while (g_ws.n > 0 && (g_ws.n == FR_WS_SLOTS || g_ws.total + bytes > g_ws_cap)) evict[ne++] = ws_take(0);
    g_ws.base[g_ws.n] = b;
    g_ws.size[g_ws.n] = bytes;
    g_ws.n++;
    g_ws.total += bytes;
    pthread_mutex_unlock(&g_ws.lock);
    for (int i = 0; i < ne; i++) free(evict[i]); /* outside the lock */
}

size_t fr_ws_release(void) {
    void *all[FR_WS_SLOTS];
    pthread_mutex_lock(&g_ws.lock);
    const int n = g_ws.n;
    const size_t total = g_ws.total;
    for (int i = 0; i < n; i++) all[i] = g_ws.base[i];
    g_ws.n = 0;
    g_ws.total = 0;
    pthread_mutex_unlock(&g_ws.lock);
    for (int i = 0; i < n; i++) free(all[i]);
    return total;
}

size_t fr_ws_cached(void) {
    pthread_mutex_lock(&g_ws.lock);
    const size_t total = g_ws.total;
    pthread_mutex_unlock(&g_ws.lock);
    return total;
}
