/*
 * threads.c -- the kernels' thread pool, barrier and floating-point mode.
 *
 * A kernel's time loop runs as one parallel region: fr_parallel(n, fn, ctx) calls fn(ctx, tid, n) on n
 * threads, the caller being thread 0, and returns when all are done.  Inside, threads meet at
 * fr_barrier_wait once or twice per time step, so the barrier spins (a sleep/wake costs tens of
 * microseconds, a whole step at small sizes costs a few).  Workers persist between calls and sleep on a
 * condition variable when idle, after spinning briefly so that back-to-back calls (layers, directions)
 * do not pay a wake-up each.
 *
 * One region at a time: a caller that finds the pool busy (another Python thread's kernel) runs its
 * region alone (n = 1), which is correct, only slower.  So kernels stay safe to call from many threads.
 *
 * Every thread of a region runs with denormals flushed (FTZ and DAZ): a recurrent network whose state
 * decays would otherwise crawl through microcode assists.  The caller's mode is restored on return.
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_X86 1
#else
#define FR_X86 0
#endif

/* ---- floating-point mode -------------------------------------------------------------------------------- */
unsigned fr_fpmode_enter(void) {
#if FR_X86
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
#else
    return 0;
#endif
}

void fr_fpmode_leave(unsigned old) {
#if FR_X86
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

static inline void fr_pause(void) {
#if FR_X86
    _mm_pause();
#endif
}

/* Spins (pauses of ~25 ns on the project's VMs, so about 50 us) after which a waiting thread yields its
 * CPU.  A wait that long means the thread waited for is not running: other processes share the cores.
 * Yielding lets it run; when nothing else is runnable the yield returns at once, for a syscall's cost. */
#define FR_SPINS_BEFORE_YIELD 2000u

/* One round of a spin-wait: a pause, and a yield every FR_SPINS_BEFORE_YIELD rounds (spins: the caller's
 * count, from 0). */
static inline void fr_backoff(unsigned *spins) {
    fr_pause();
    if (++*spins > FR_SPINS_BEFORE_YIELD) {
        sched_yield();
        *spins = 0;
    }
}

/* ---- interrupts (threads.h) -------------------------------------------------------------------------------- */
volatile int fr_interrupt_flag = 0;
static _Thread_local int t_armed = 0;
static struct sigaction g_prev_sigint;

static void on_sigint(int sig) {
    (void)sig;
    fr_interrupt_flag = 1; /* async-signal-safe: the loops read it */
}

int fr_interrupt_arm(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, &g_prev_sigint) != 0) return -1;
    if (g_prev_sigint.sa_handler == SIG_IGN) { /* the program ignores SIGINT: so do we */
        sigaction(SIGINT, &g_prev_sigint, NULL);
        return -1;
    }
    fr_interrupt_flag = 0;
    t_armed = 1;
    return 0;
}

int fr_interrupt_disarm(void) {
    if (!t_armed) return 0;
    sigaction(SIGINT, &g_prev_sigint, NULL);
    t_armed = 0;
    int hit = fr_interrupt_flag;
    fr_interrupt_flag = 0;
    return hit;
}

int fr_interrupt_armed(void) { return t_armed; }

/* ---- barrier --------------------------------------------------------------------------------------------- */
void fr_barrier_init(fr_barrier_t *b, int n) {
    for (int i = 0; i < n && i < FR_MAX_THREADS; i++) atomic_init(&b->slot[i].epoch, 0);
    b->n = n;
    b->watch = fr_interrupt_armed(); /* called by the region's caller (fr_parallel) */
    atomic_init(&b->stop_at, 0);
}

int fr_barrier_wait_stop(fr_barrier_t *b, int tid) {
    if (b->n <= 1) return fr_stop_alone(b);
    const int e = atomic_load_explicit(&b->slot[tid].epoch, memory_order_relaxed) + 1;
    if (tid == 0 && fr_stop_requested(b) && atomic_load_explicit(&b->stop_at, memory_order_relaxed) == 0)
        atomic_store_explicit(&b->stop_at, e, memory_order_relaxed); /* published by the epoch's release */
    fr_barrier_wait(b, tid);
    const int at = atomic_load_explicit(&b->stop_at, memory_order_relaxed); /* ordered by the wait's acquire */
    return at != 0 && at <= e;
}

void fr_barrier_wait(fr_barrier_t *b, int tid) {
    if (b->n <= 1) return;
    /* Only this thread writes its slot; the counts only grow, so a thread already past this barrier (and
     * waiting at the next one) still satisfies ">= e" for the ones here. */
    int e = atomic_load_explicit(&b->slot[tid].epoch, memory_order_relaxed) + 1;
    atomic_store_explicit(&b->slot[tid].epoch, e, memory_order_release);
    for (int i = 0; i < b->n; i++) {
        unsigned spins = 0;
        while (atomic_load_explicit(&b->slot[i].epoch, memory_order_acquire) < e) fr_backoff(&spins);
    }
}

/* Waits until *v <= target (acquire), by fr_backoff as the barrier does, for one thread trailing another
 * through a sequence of steps (seq.h, seq_backward). */
void fr_wait_at_most(atomic_int *v, int target) {
    unsigned spins = 0;
    while (atomic_load_explicit(v, memory_order_acquire) > target) fr_backoff(&spins);
}

/* ---- thread count ---------------------------------------------------------------------------------------- */
static int usable_cpus(void) {
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static atomic_int g_threads = 0; /* 0: not chosen yet */

int fr_get_num_threads(void) {
    int n = atomic_load(&g_threads);
    if (n > 0) return n;
    const char *env = getenv("OMP_NUM_THREADS");
    n = env ? atoi(env) : 0;
    if (n <= 0) n = usable_cpus();
    if (n > FR_MAX_THREADS) n = FR_MAX_THREADS;
    atomic_store(&g_threads, n);
    return n;
}

void fr_set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > FR_MAX_THREADS) n = FR_MAX_THREADS;
    atomic_store(&g_threads, n);
}

/* ---- pool ------------------------------------------------------------------------------------------------- */
static struct {
    pthread_mutex_t busy;  /* held by the caller whose region runs */
    pthread_mutex_t lock;  /* guards the sleep / wake-up hand-over below */
    pthread_cond_t wake;
    int nworkers;          /* workers started (thread ids 1..nworkers) */
    atomic_int generation; /* bumped for every region */
    atomic_int done;       /* workers finished with the current region */
    fr_task_fn fn;
    void *ctx;
    int n;                 /* threads in the current region */
} g_pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* The generation current when worker tid was created, before the region that created it was announced:
 * a worker reading the counter itself when it first runs could already see that region's number and
 * sleep through it. */
static int g_start_generation[FR_MAX_THREADS];

/* How long an idle worker spins for the next region before it sleeps on the condition variable: long
 * enough to cover the Python between a training step's calls (fit's Dense, loss and optimizer between the
 * forward and the backward, then batching: 0.05-0.2 ms), which a wake-up through the condition variable
 * (tens of us on these VMs) would otherwise be paid for on every call.  4000 pauses (~0.1 ms) measured
 * LSTM(64) fit x1.05-1.08 slower than ~1 ms (docs/tuning.md, Worker spin).  OpenMP runtimes spin a
 * similar while (libgomp's GOMP_SPINCOUNT).  FASTRNN_SPIN_US in the environment sets it (0: sleep at once). */
#ifndef FR_WORKER_SPIN_US
#define FR_WORKER_SPIN_US 1000L
#endif

static long worker_spin_ns(void) {
    const char *e = getenv("FASTRNN_SPIN_US");
    long us = FR_WORKER_SPIN_US;
    if (e && *e) {
        char *end = NULL;
        const long v = strtol(e, &end, 10);
        if (end && *end == '\0' && v >= 0 && v <= 1000000) us = v;
    }
    return us * 1000L;
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *worker_main(void *arg) {
    int tid = (int)(size_t)arg;
    int seen = g_start_generation[tid];
    const long spin_ns = worker_spin_ns();
    for (;;) {
        /* Spin for the next region a while (the clock read every 64 pauses), then sleep. */
        int gen = atomic_load_explicit(&g_pool.generation, memory_order_acquire);
        if (gen == seen && spin_ns > 0) {
            const long t0 = now_ns();
            unsigned spins = 0;
            while ((gen = atomic_load_explicit(&g_pool.generation, memory_order_acquire)) == seen) {
                fr_pause();
                if ((++spins & 63u) == 0 && now_ns() - t0 >= spin_ns) break;
            }
        }
        if (gen == seen) {
            pthread_mutex_lock(&g_pool.lock);
            while ((gen = atomic_load_explicit(&g_pool.generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&g_pool.wake, &g_pool.lock);
            pthread_mutex_unlock(&g_pool.lock);
        }
        seen = gen;
        if (tid < g_pool.n) {
            unsigned mode = fr_fpmode_enter();
            g_pool.fn(g_pool.ctx, tid, g_pool.n);
            fr_fpmode_leave(mode);
        }
        atomic_fetch_add_explicit(&g_pool.done, 1, memory_order_acq_rel);
    }
    return NULL;
}

static void omp_after_fork_child(void);

/* After fork() only the forking thread exists in the child: forget the workers (and a held lock), and use
 * the pool rather than an OpenMP runtime, whose threads are gone too (libgomp does not restart them). */
static void pool_after_fork_child(void) {
    omp_after_fork_child();
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    g_pool.busy = fresh;
    g_pool.lock = fresh;
    g_pool.wake = fresh_cond;
    g_pool.nworkers = 0;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void pool_init_once(void) { pthread_atfork(NULL, NULL, pool_after_fork_child); }

/* Start workers up to n - 1 (called with `busy` held). */
static void pool_grow(int n) {
    while (g_pool.nworkers < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        g_start_generation[g_pool.nworkers + 1] = atomic_load(&g_pool.generation);
        int ok = pthread_create(&t, &attr, worker_main, (void *)(size_t)(g_pool.nworkers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        g_pool.nworkers++;
    }
}

/* ---- an OpenMP runtime's threads instead of the pool (fr_set_omp) -----------------------------------------
 * In a process where another library's OpenMP threads run between the kernels' calls (torch's ops, MKL),
 * those threads keep spinning for a while after each of their parallel regions (libgomp's default is
 * 300,000 pauses: ~15 ms on CPUs whose pause takes ~140 cycles).  On a machine with as many cores as threads,
 * the pool's workers then share cores with spinners, and a barrier-synchronised time loop runs at the pace
 * of its most preempted thread.  Running the regions on that runtime's own threads instead (GOMP_parallel,
 * from the caller: the same threads the caller's OpenMP regions use) leaves one set of threads, and a
 * spinning one takes the region at once.  fastrnn.torch sets this up with torch's runtime. */
typedef void (*fr_omp_parallel_fn)(void (*fn)(void *), void *data, unsigned nthreads, unsigned flags);
typedef int (*fr_omp_int_fn)(void);
static struct {
    fr_omp_parallel_fn _Atomic parallel; /* GOMP_parallel, or NULL: the pool */
    fr_omp_int_fn thread_num, num_threads, in_parallel;
} g_omp;

int fr_set_omp(void *parallel, void *thread_num, void *num_threads, void *in_parallel) {
    if (parallel && !(thread_num && num_threads && in_parallel)) return -1;
    atomic_store(&g_omp.parallel, NULL); /* a region already running keeps the pointers it read */
    if (!parallel) return 0;
    g_omp.thread_num = (fr_omp_int_fn)thread_num;
    g_omp.num_threads = (fr_omp_int_fn)num_threads;
    g_omp.in_parallel = (fr_omp_int_fn)in_parallel;
    atomic_store(&g_omp.parallel, (fr_omp_parallel_fn)parallel); /* published after the others */
    return 0;
}

int fr_omp_enabled(void) { return atomic_load(&g_omp.parallel) != NULL; }

static void omp_after_fork_child(void) { atomic_store(&g_omp.parallel, NULL); }

typedef struct {
    fr_task_fn fn;
    void *ctx;
    int n;
    int ran; /* written by thread 0 of the team (the caller) */
} omp_region_t;

static void omp_body(void *arg) {
    omp_region_t *r = (omp_region_t *)arg;
    /* A team smaller than asked (a nested region, OMP_THREAD_LIMIT, dynamic teams) cannot run a region
     * whose threads wait for each other at barriers: every thread of it sees the same size and leaves,
     * and the caller runs the region on the pool instead. */
    if (g_omp.num_threads() != r->n) return;
    const int tid = g_omp.thread_num();
    unsigned mode = fr_fpmode_enter();
    r->fn(r->ctx, tid, r->n);
    fr_fpmode_leave(mode);
    if (tid == 0) r->ran = 1;
}

/* Runs the region on the OpenMP runtime's threads; 0 when it could not (the caller then uses the pool). */
static int omp_run(int n, fr_task_fn fn, void *ctx, fr_barrier_t *bar) {
    fr_omp_parallel_fn par = atomic_load(&g_omp.parallel);
    if (!par || g_omp.in_parallel()) return 0;
    omp_region_t r = {fn, ctx, n, 0};
    if (bar) fr_barrier_init(bar, n);
    par(omp_body, &r, (unsigned)n, 0);
    return r.ran;
}

int fr_parallel(int n, fr_task_fn fn, void *ctx, fr_barrier_t *bar) {
    int max = fr_get_num_threads();
    if (n > max) n = max;
    if (n > 1) {
        pthread_once(&g_once, pool_init_once);
        if (pthread_mutex_trylock(&g_pool.busy) != 0) n = 1; /* another caller's region is running */
    }
    if (n > 1 && omp_run(n, fn, ctx, bar)) {
        pthread_mutex_unlock(&g_pool.busy);
        return n;
    }
    if (n <= 1) {
        if (bar) fr_barrier_init(bar, 1);
        unsigned mode = fr_fpmode_enter();
        fn(ctx, 0, 1);
        fr_fpmode_leave(mode);
        return 1;
    }
    pool_grow(n);
    if (n > g_pool.nworkers + 1) n = g_pool.nworkers + 1;
    if (bar) fr_barrier_init(bar, n);
    g_pool.fn = fn;
    g_pool.ctx = ctx;
    g_pool.n = n;
    atomic_store_explicit(&g_pool.done, 0, memory_order_relaxed);
    pthread_mutex_lock(&g_pool.lock);
    atomic_fetch_add_explicit(&g_pool.generation, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&g_pool.wake);
    pthread_mutex_unlock(&g_pool.lock);

    unsigned mode = fr_fpmode_enter();
    fn(ctx, 0, n);
    fr_fpmode_leave(mode);

    /* Every worker, taking part or not, reports once per region: then none still reads fn/ctx. */
    unsigned spins = 0;
    while (atomic_load_explicit(&g_pool.done, memory_order_acquire) < g_pool.nworkers) fr_backoff(&spins);
    pthread_mutex_unlock(&g_pool.busy);
    return n;
}
