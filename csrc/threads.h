/*
 * threads.h -- parallel regions for the kernels' time loops (threads.c).
 */
#ifndef FR_THREADS_H
#define FR_THREADS_H

#include <stdatomic.h>

#include "fastrnn.h"

typedef void (*fr_task_fn)(void *ctx, int tid, int nthreads);

#define FR_MAX_THREADS 64

/* A spinning barrier for the threads of one parallel region.  Each thread owns a cache line holding how
 * many barriers it has reached; waiting is publishing one's own count and reading the others'.  No line is
 * written by two threads, so a barrier costs one cache-line transfer per peer, not a queue of atomic
 * read-modify-writes on one line (on this project's VMs a transfer is ~0.5 us, so that matters). */
typedef struct {
    struct {
        atomic_int epoch;
        char pad[64 - sizeof(atomic_int)];
    } slot[FR_MAX_THREADS];
    int n;
    int watch;            /* the region's caller armed interrupts (fr_interrupt_arm) */
    atomic_int stop_at;   /* 0, or the epoch of the barrier at which the region stops (interrupted) */
} fr_barrier_t;
void fr_barrier_init(fr_barrier_t *b, int n);
void fr_barrier_wait(fr_barrier_t *b, int tid);

/* ---- interrupts ------------------------------------------------------------------------------------------
 * A long call from Python's main thread is interruptible: the binding arms it (fr_interrupt_arm installs a
 * SIGINT handler that only sets a flag, and marks the calling thread), the time loops ask between steps
 * whether to stop, and fr_interrupt_disarm restores the previous handler and tells whether SIGINT came (the
 * binding then hands it to Python).  A kernel that stops leaves its loops, skips what is left, frees what it
 * took and returns FR_EINTR; its outputs are then meaningless.
 *
 * fr_barrier_wait_stop is fr_barrier_wait that also returns whether the region stops at this barrier, the
 * same answer for every thread: thread 0 (the caller) records the epoch of the barrier it is about to reach
 * when it sees the flag, and every thread stops once past that epoch.  Loops without barriers (threads
 * working on their own rows) ask fr_stop_requested(b) instead; each thread then stops on its own. */
int fr_barrier_wait_stop(fr_barrier_t *b, int tid);
void fr_wait_at_most(atomic_int *v, int target); /* until *v <= target (acquire), spinning then yielding */
static inline int fr_stop_requested(const fr_barrier_t *b);
int fr_interrupt_arm(void);     /* 0 when armed; -1 when SIGINT is ignored or not ours to take (then not armed) */
int fr_interrupt_disarm(void);  /* 1 when SIGINT came while armed */
int fr_interrupt_armed(void);   /* the calling thread armed */
extern volatile int fr_interrupt_flag;
static inline int fr_stop_requested(const fr_barrier_t *b) { return b->watch && fr_interrupt_flag; }
/* A thread of a region without per-step barriers stops on its own; the region is then marked stopped. */
static inline int fr_stop_alone(fr_barrier_t *b) {
    if (!fr_stop_requested(b)) return 0;
    atomic_store_explicit(&b->stop_at, 1, memory_order_relaxed);
    return 1;
}
/* After fr_parallel: whether the region stopped (read before the barrier serves another region). */
static inline int fr_region_stopped(fr_barrier_t *b) { return atomic_load_explicit(&b->stop_at, memory_order_relaxed) != 0; }

/* Blocks of one step shared out with stealing.  Thread t starts with its own contiguous range of blocks
 * and takes them from the front; a thread whose range is empty takes from the back of another's.  With
 * every thread about as fast, each keeps (nearly) its own range, so its weight panels stay in its cache
 * from step to step; when one is slower (a VM's vCPU shared with another process, or simply later out of
 * the barrier), the others take its last blocks instead of waiting for them at the next barrier.
 * A range is (front, end) packed in one 64-bit word, changed by compare-and-swap.  Two sets, for steps
 * of even and odd index: each thread refills its own range of the set of step s + 1 at the start of step
 * s, when no thread can still be taking from it (the barrier closing step s - 1 is behind everyone) and
 * none takes from it before the barrier closing step s. */
typedef struct {
    struct {
        _Atomic unsigned long long r;
        char pad[64 - sizeof(unsigned long long)];
    } slot[2][FR_MAX_THREADS];
} fr_claims_t;

static inline void fr_claims_set(fr_claims_t *c, int set, int tid, int j0, int j1) {
    atomic_store_explicit(&c->slot[set][tid].r, (unsigned long long)(unsigned)j0 << 32 | (unsigned)j1,
                          memory_order_relaxed);
}

/* The next block for thread tid of nth in set `set`, or -1 when every range is empty.  *own: the block
 * came from tid's own range, whose current end goes to *end (the blocks before it may come next). */
static inline int fr_claim(fr_claims_t *c, int set, int tid, int nth, int *own, int *end) {
    for (int d = 0; d < nth; d++) {
        const int t = tid + d < nth ? tid + d : tid + d - nth;
        _Atomic unsigned long long *r = &c->slot[set][t].r;
        unsigned long long v = atomic_load_explicit(r, memory_order_relaxed);
        for (;;) {
            const int lo = (int)(v >> 32), hi = (int)(v & 0xffffffffu);
            if (lo >= hi) break;
            /* the owner takes the front, the others the back */
            const unsigned long long w = d == 0 ? v + (1ull << 32) : v - 1;
            if (atomic_compare_exchange_weak_explicit(r, &v, w, memory_order_relaxed, memory_order_relaxed)) {
                *own = d == 0;
                *end = hi;
                return d == 0 ? lo : hi - 1;
            }
        }
    }
    return -1;
}

/* Run fn(ctx, tid, nthreads) for tid = 0 .. nthreads-1 on up to min(n, fr_get_num_threads()) threads, the
 * caller being tid 0, with denormals flushed on each; returns nthreads once all have returned.  If another
 * caller's region holds the pool, runs fn on the caller alone (nthreads = 1).  `bar` (or NULL) is
 * initialised for nthreads before any thread starts, so fn may wait on it.  The threads are the pool's, or,
 * after fr_set_omp (fastrnn.h), an OpenMP runtime's team of exactly nthreads (else the pool's). */
int fr_parallel(int n, fr_task_fn fn, void *ctx, fr_barrier_t *bar);

/* Flush denormals (FTZ + DAZ) for the calling thread; returns the mode to restore with fr_fpmode_leave. */
unsigned fr_fpmode_enter(void);
void fr_fpmode_leave(unsigned saved);

#endif /* FR_THREADS_H */
