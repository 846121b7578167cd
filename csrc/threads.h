/*
 * threads.h -- parallel regions for the kernels' time loops (threads.c).
 */
#ifndef FR_THREADS_H
#define FR_THREADS_H

#include <stdatomic.h>

#include "fastrnn.h"

typedef void (*fr_task_fn)(void *ctx, int tid, int nthreads);

/* Run fn(ctx, tid, nthreads) for tid = 0 .. nthreads-1 on up to min(n, fr_get_num_threads()) threads, the
 * caller being tid 0, with denormals flushed on each; returns nthreads once all have returned.  If another
 * caller's region holds the pool, runs fn on the caller alone (nthreads = 1). */
int fr_parallel(int n, fr_task_fn fn, void *ctx);

/* A spinning barrier for the nthreads of one region (init with that count). */
typedef struct {
    atomic_int arrived;
    atomic_int phase;
    int n;
} fr_barrier_t;
void fr_barrier_init(fr_barrier_t *b, int n);
void fr_barrier_wait(fr_barrier_t *b);

/* Flush denormals (FTZ + DAZ) for the calling thread; returns the mode to restore with fr_fpmode_leave. */
unsigned fr_fpmode_enter(void);
void fr_fpmode_leave(unsigned saved);

#endif /* FR_THREADS_H */
