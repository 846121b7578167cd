"""`run`: check and time every case at every thread count, and build the rows (the top of fastrnn.bench)."""
from __future__ import annotations

import gc

from .checks import TOLERANCE, CaseData
from .peers import thread_limits
from .report import add_ratios
from .shapes import ENGINES, MODES
from .timing import _cpu_counters, load_average, measure, other_cpus, sgemm_peak, wait_idle


def run(case_list, threads_list, engines=ENGINES, modes=MODES, rounds=None, budget=4.0, tol=TOLERANCE,
        seed=0, on_row=None, on_note=None, retry_busy=0, busy_threshold=0.25, idle_wait=120.0):
    """Check and time every case at every thread count; returns the rows (also passed to `on_row` one by
    one, as they are measured). On a shared machine, `retry_busy` > 0 re-measures a (case, threads) whose
    timing overlapped other processes using more than `busy_threshold` CPUs, after waiting (up to
    `idle_wait` s) for the machine to go idle; the least disturbed measurement is kept.
    A row is one (case, threads, mode):

        {"cell", "label", "group", "T", "B", "I", "H", "threads", "mode", "flops", "sgemm_peak_gflops",
         "engines": {engine: {"ok", "check_err", "tol", "reference", "median_ms", ..., "gflops", "pct_peak"}
                     or {"skipped": reason}},
         "ratios": {peer: peer_ms / fastrnn_ms}, "ratio_best_peer": min(peer ms) / fastrnn ms}
    """
    note = on_note or (lambda s: None)
    rows = []
    for case in case_list:
        data = CaseData(case, seed=seed, tol=tol)
        for threads in threads_list:
            peak = sgemm_peak(threads)["gflops"]
            with thread_limits(threads):
                fns, checks, skipped = {}, {}, {}
                for mode in modes:
                    for eng in engines:
                        why = data.available(eng, mode)
                        if why:
                            skipped[(eng, mode)] = why
                            continue
                        chk = data.check(eng, mode, threads)
                        checks[(eng, mode)] = chk
                        if chk.ok:
                            fns[(eng, mode)] = data.fn(eng, mode, threads)
                            if chk.inexact:
                                note(f"INEXACT peer result, timed anyway: {case.id} threads={threads}: "
                                     f"{chk.message()}")
                        else:
                            note(f"REFUSED to time {case.id} threads={threads}: {chk.message()}")
                best = None
                for attempt in range(int(retry_busy) + 1):
                    if attempt:
                        note(f"retry {attempt}/{retry_busy} of {case.id} threads={threads}: other processes used "
                             f"{others:.2f} CPUs while it was timed; waiting for an idle machine")
                        wait_idle(idle_wait)
                    c0 = _cpu_counters()
                    timings = measure(fns, rounds=rounds, budget=budget)
                    others = other_cpus(c0, _cpu_counters())
                    if best is None or (others is not None and best[1] is not None and others < best[1]):
                        best = (timings, others)
                    if others is None or others <= busy_threshold:
                        break
                timings, others = best
            for mode in modes:
                row = {"cell": case.cell, "label": case.label, "group": case.group, "T": case.T, "B": case.B,
                       "I": case.I, "H": case.H, "threads": threads, "mode": mode, "flops": case.flops(mode),
                       "sgemm_peak_gflops": peak, "loadavg": load_average()[0], "other_cpus": others,
                       "engines": {}, "ratios": {},
                       "ratio_best_peer": None}
                for eng in engines:
                    k = (eng, mode)
                    if k in skipped:
                        row["engines"][eng] = {"skipped": skipped[k]}
                        continue
                    chk = checks[k]
                    e = {"ok": chk.ok, "check_err": chk.err, "tol": chk.tol, "reference": chk.reference}
                    if chk.detail:
                        e["check_detail"] = chk.detail
                    if chk.inexact:
                        e["inexact"] = True
                    if k in timings:
                        t = timings[k]
                        e.update(t.as_dict())
                        e["gflops"] = case.flops(mode) / t.median / 1e9
                        e["pct_peak"] = 100.0 * e["gflops"] / peak if peak else None
                    row["engines"][eng] = e
                add_ratios(row)
                rows.append(row)
                if on_row:
                    on_row(row)
        data = None
        gc.collect()
    return rows
