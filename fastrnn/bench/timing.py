"""Timing: interleaved rounds of bursts (`measure`, `plan_rounds`), the waits that keep one engine's spinning
thread pools off the next one's timing, the counters of CPU taken by other processes (`other_cpus`,
`wait_idle`, `load_average`), and the machine's float32 GEMM peak (`sgemm_peak`) that %peak refers to.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import threading
import time

import numpy as np

from .. import _core
from .peers import thread_limits

_PEAKS = {}


def _blas_limited(threads):
    """Whether numpy's / scipy's BLAS will use at most `threads` threads in thread_limits(threads)."""
    from .peers import _threadpoolctl
    if _threadpoolctl() is not None or threads >= (load_average()[1] or 1):
        return True
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(k, "")
        if v.isdigit() and int(v) <= threads:
            return True
    return False


def sgemm_peak(threads, sizes=(2048, 3072), trials=3, refresh=False):
    """The machine's float32 GEMM peak at `threads` threads, GFLOP/s: the best of `trials` runs of numpy's
    matmul, of scipy's BLAS sgemm (Fortran-ordered operands, no copies) and of fastrnn's own GEMM (the one
    its cells use, at the ISA in use) on square matrices of `sizes`.
    Cached per thread count; `refresh=True` measures again and keeps the better of the two (a peak measured
    while other processes ran is too low). Returns a dict: gflops (the best), numpy, scipy, size (of the
    best), other_cpus (CPUs other processes used during the measurement)."""
    key = (int(threads), tuple(sizes), int(trials))
    if key in _PEAKS and not refresh:
        return _PEAKS[key]
    try:
        from scipy.linalg import blas as sblas
    except Exception:  # scipy is a dependency, but keep the peak measurable without it
        sblas = None
    rng = np.random.default_rng(1)
    res = {"gflops": 0.0, "numpy": 0.0, "scipy": 0.0, "fastrnn": 0.0, "size": None, "threads": int(threads)}
    # numpy's and scipy's BLAS count toward the peak only when they run on `threads` threads: limited by
    # threadpoolctl, by the environment, or when `threads` is every usable CPU.  Otherwise (no threadpoolctl)
    # they would run on all CPUs and a 1-thread "peak" would be the machine's (measured: 175 GFLOP/s for
    # numpy against 88 for one thread on a 2-vCPU Xeon).
    blas_ok = _blas_limited(int(threads))
    res["blas_counted"] = blas_ok
    c0 = _cpu_counters()
    with thread_limits(threads):
        for n in sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c = np.empty((n, n), np.float32)
            flops = 2.0 * n ** 3
            runs = [("numpy", lambda: np.matmul(a, b, out=c))]
            if sblas is not None:
                af, bf = np.asfortranarray(a), np.asfortranarray(b)
                cf = np.asfortranarray(c)
                runs.append(("scipy", lambda: sblas.sgemm(1.0, af, bf, 0.0, cf, overwrite_c=1)))
            runs.append(("fastrnn", lambda: _core.gemm(False, False, 1.0, a, b, 0.0, c)))
            for name, fn in runs:
                fn()  # warm-up (thread pool start, page faults)
                for _ in range(trials):
                    t0 = time.perf_counter()
                    fn()
                    g = flops / (time.perf_counter() - t0) / 1e9
                    if g > res[name]:
                        res[name] = g
                    if g > res["gflops"] and (blas_ok or name == "fastrnn"):
                        res["gflops"], res["size"] = g, n
            del a, b, c
    res["other_cpus"] = other_cpus(c0, _cpu_counters())
    old = _PEAKS.get(key)
    if old is not None and old["gflops"] >= res["gflops"]:
        return old
    _PEAKS[key] = res
    return res


@dataclasses.dataclass
class Timing:
    median: float   # seconds per call: median over rounds of the mean of a round's burst
    q1: float
    q3: float
    min: float
    rounds: int
    iterations: int  # calls per burst

    def as_dict(self):
        return {"median_ms": 1e3 * self.median, "q1_ms": 1e3 * self.q1, "q3_ms": 1e3 * self.q3,
                "min_ms": 1e3 * self.min, "rounds": self.rounds, "iterations": self.iterations}


def _estimate(fn, burst):
    """Seconds per call after a warm-up call (a couple of calls more when they are short)."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t < burst:
        k = max(1, min(50, int(0.2 * burst / max(t, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        t = (time.perf_counter() - t0) / k
    return t


def plan_rounds(t_call, budget, burst=0.05, min_rounds=3, max_rounds=15):
    """(rounds, iterations) to spend about `budget` seconds on a callable of `t_call` seconds."""
    it = max(1, int(round(burst / max(t_call, 1e-7))))
    rounds = int(budget / max(it * t_call, 1e-7))
    return max(min_rounds, min(max_rounds, rounds)), it


def _threads_runtime():
    """Nanoseconds of CPU used so far by this process's threads other than the calling one (Linux
    /proc/self/task/*/schedstat), or None where that is not readable."""
    me = str(threading.get_native_id())
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            if tid == me:
                continue
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # the thread ended meanwhile
    except OSError:
        return None
    return total


def wait_quiet_threads(gap=0.02, max_wait=0.3, window=0.005, quiet_fraction=0.1):
    """Sleep `gap` seconds, then until this process's other threads use less than `quiet_fraction` of a CPU
    over a `window` (at most `max_wait` seconds in all).  Peers' pools keep spinning after their last call
    (ONNX Runtime's workers longer than a fixed 20 ms gap: docs/tuning.md, Benchmark), and on a 2-core machine
    that spinning would slow whichever engine is timed next."""
    time.sleep(gap)
    deadline = time.perf_counter() + max(0.0, max_wait - gap)
    prev = _threads_runtime()
    while prev is not None and time.perf_counter() < deadline:
        time.sleep(window)
        cur = _threads_runtime()
        if cur is None or cur - prev < quiet_fraction * window * 1e9:
            return
        prev = cur


def measure(fns, rounds=None, budget=4.0, burst=0.05, min_rounds=3, max_rounds=15, gap=0.02):
    """Interleaved timing of the callables in `fns` ({key: fn}): each round runs a burst of calls of every
    callable (rotating the order; the burst length is re-planned every round from the median so far, to
    last about `burst` seconds), the burst's mean is one sample; returns {key: Timing} with the median over
    rounds. `rounds` fixes the number of rounds; otherwise rounds continue until `budget` seconds are spent
    (at least `min_rounds`, at most `max_rounds`).  Each burst starts after `gap` seconds of idleness and
    once the process's other threads are quiet (wait_quiet_threads): thread pools (ORT's, OpenMP's,
    OpenBLAS's) keep spinning for a while after their last call."""
    keys = list(fns)
    if not keys:
        return {}
    est = {k: _estimate(fns[k], burst) for k in keys}
    samples = {k: [] for k in keys}
    its_used = {k: [] for k in keys}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    try:
        r = 0
        while True:
            if rounds:
                if r >= int(rounds):
                    break
            elif r >= max_rounds or (r >= min_rounds and time.perf_counter() - start >= budget):
                break
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in order:
                t_call = float(np.median(samples[k])) if samples[k] else est[k]
                n = max(1, int(round(burst / max(t_call, 1e-7))))
                fn = fns[k]
                if gap > 0:
                    wait_quiet_threads(gap)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[k].append((time.perf_counter() - t0) / n)
                its_used[k].append(n)
            r += 1
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for k in keys:
        s = np.asarray(samples[k])
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        out[k] = Timing(float(med), float(q1), float(q3), float(s.min()), len(s), int(np.median(its_used[k])))
    return out


def _cpu_counters():
    """(wall s, CPU-seconds busy on the whole machine incl. steal, CPU-seconds of this process) or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(a) for a in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / hz  # user nice system irq softirq steal
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def cpu_snapshot():
    """A snapshot to pass to other_cpus (None when the OS does not tell)."""
    return _cpu_counters()


def other_cpus(start, end):
    """CPUs used by other processes (and stolen by the hypervisor) between two _cpu_counters() snapshots:
    0 on an idle machine; 1 means one whole CPU was taken from us."""
    if not start or not end or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def wait_idle(max_wait=60.0, window=2.0, threshold=0.1):
    """Sleep until other processes use less than `threshold` CPUs over a `window`-second window, or until
    `max_wait` seconds have passed. Returns the last measured use (None when the OS does not tell)."""
    deadline = time.perf_counter() + max_wait
    oc = None
    while True:
        c0 = _cpu_counters()
        time.sleep(window)
        oc = other_cpus(c0, _cpu_counters())
        if oc is None or oc < threshold or time.perf_counter() >= deadline:
            return oc


def load_average():
    """1-minute load average and the usable CPUs (None when the OS does not tell)."""
    try:
        la = os.getloadavg()[0]
    except (AttributeError, OSError):
        la = None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count()
    return la, n
