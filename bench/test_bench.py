"""The pytest-benchmark suite: cell x shape x mode (forward, train) x threads (1, 2) x engine (fastrnn, torch, ort).

Every test first checks its engine's result against the reference (torch.nn autograd, or fastrnn's float64
oracle, fastrnn/reference.py, without torch) and fails, untimed, when it is wrong; then it times the engine with
benchmark.pedantic under the same thread limits as every other engine. See bench/README.md.
"""
import pytest

import fastrnn.bench as fb


def test_bench(case_id, mode, threads, engine, bench_state, benchmark):
    data = bench_state.data_for(case_id)
    case = data.case
    why = data.available(engine, mode)
    if why:
        pytest.skip(why)
    peak = fb.sgemm_peak(threads)["gflops"]
    rec = {"case_id": case.id, "threads": threads, "mode": mode, "engine": engine, "sgemm_peak_gflops": peak,
           "cell": case.cell, "T": case.T, "B": case.B, "I": case.I, "H": case.H, "group": case.group,
           "flops": case.flops(mode)}
    benchmark.group = f"{case.id} threads={threads} {mode}"
    with fb.thread_limits(threads):
        chk = data.check(engine, mode, threads)
        rec.update(ok=chk.ok, check_err=chk.err, tol=chk.tol, reference=chk.reference)
        if chk.detail:
            rec["check_detail"] = chk.detail
        if chk.inexact:
            rec["inexact"] = True  # a peer outside the tolerance of float64: timed anyway, flagged
        benchmark.extra_info.update(rec)
        if not chk.ok:
            bench_state.record(rec)
            pytest.fail(f"REFUSED to time {case.id} threads={threads}: {chk.message()}", pytrace=False)
        fn = data.fn(engine, mode, threads)
        t_call = fb._estimate(fn, 0.02)
        rounds, iterations = fb.plan_rounds(t_call, bench_state.budget, burst=0.02, min_rounds=3, max_rounds=50)
        rec["loadavg"] = fb.load_average()[0]
        fb.wait_quiet_threads()  # the previous case's pools (ORT's, OpenMP's) stop spinning first
        c0 = fb._cpu_counters()
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
        rec["other_cpus"] = fb.other_cpus(c0, fb._cpu_counters())
        benchmark.extra_info["other_cpus"] = rec["other_cpus"]
    meta = benchmark.stats
    if meta is not None and meta.stats:
        s = meta.stats
        rec.update(median_ms=1e3 * s.median, q1_ms=1e3 * s.q1, q3_ms=1e3 * s.q3, min_ms=1e3 * s.min,
                   rounds=s.rounds, iterations=iterations)
        rec["gflops"] = case.flops(mode) / s.median / 1e9
        rec["pct_peak"] = 100.0 * rec["gflops"] / peak if peak else None
        benchmark.extra_info.update(gflops=rec["gflops"], pct_peak=rec["pct_peak"])
    bench_state.record(rec)
