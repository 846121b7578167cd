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
} fr_barrier_t;
void fr_barrier_init(fr_barrier_t *b, int n);
void fr_barrier_wait(fr_barrier_t *b, int tid);

/* Run fn(ctx, tid, nthreads) for tid = 0 .. nthreads-1 on up to min(n, fr_get_num_threads()) threads, the
 * caller being tid 0, with denormals flushed on each; returns nthreads once all have returned.  If another
 * caller's region holds the pool, runs fn on the caller alone (nthreads = 1).  `bar` (or NULL) is
 * initialised for nthreads before any thread starts, so fn may wait on it. */
int fr_parallel(int n, fr_task_fn fn, void *ctx, fr_barrier_t *bar);

/* Flush denormals (FTZ + DAZ) for the calling thread; returns the mode to restore with fr_fpmode_leave. */
unsigned fr_fpmode_enter(void);
void fr_fpmode_leave(unsigned saved);

#endif /* FR_THREADS_H */
