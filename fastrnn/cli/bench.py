"""`fastrnn bench`: check fastrnn against the peers installed, time them with the same threads, print the table
(and write the JSON / PNG).  The measuring is fastrnn.bench's; this module is its command line and console
output.
"""
import os
import sys
import time

NAME = "bench"


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_parser(subparsers):
    b = subparsers.add_parser(
        NAME, help="check and time fastrnn against the peers installed (torch.nn, ONNX Runtime)",
        description="Check fastrnn against torch.nn (or a numpy reference), then time it beside the peers "
                    "installed, with the same number of threads for all, and print a table: ms (median), GFLOP/s, "
                    "%% of the measured sgemm peak, and the ratio peer ms / fastrnn ms (> 1: fastrnn faster). A "
                    "result that fails its check is not timed (WRONG) and the exit status is 1.")
    b.add_argument("--cell", nargs="+", choices=("lstm", "gru", "rnn"), default=["lstm", "gru", "rnn"],
                   help="cells to run (default: all three; rnn includes the ReLU RNN of DeepBench)")
    b.add_argument("--shapes", choices=("quick", "grid", "deepbench", "all", "deepbench-full"), default="quick",
                   help="quick: 3 shapes (T,B,I,H) 100,1,64,128 / 100,16,64,128 / 50,64,512,512; grid: those "
                        "and 100,32,128,256 / 25,64,1024,1024; deepbench: a subset of DeepBench's training shapes "
                        "that runs in minutes on 2 cores; all: grid + deepbench; deepbench-full: DeepBench's "
                        "whole training set (hours). Default: quick")
    b.add_argument("--threads", nargs="+", type=int, default=None,
                   help=f"thread counts (default: the usable CPUs, here {_usable_cpus()})")
    b.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="rounds per case (median over N rounds); default: as many as fit --budget, 3..15")
    b.add_argument("--budget", type=float, default=4.0, metavar="S",
                   help="seconds of timing per case and thread count when --repeat is not given (default 4)")
    b.add_argument("--json", metavar="PATH", help="write every measurement, the machine and the peaks as JSON")
    b.add_argument("--png", metavar="PATH", help="write a chart of the ratios (needs matplotlib)")
    b.add_argument("--no-peers", action="store_true",
                   help="time fastrnn only (torch, when installed, still serves as the correctness reference)")
    b.add_argument("--tol", type=float, default=None, help="check tolerance, normwise relative (default 1e-3)")
    b.add_argument("--seed", type=int, default=0, help="seed of the inputs and weights (default 0)")
    b.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help="shared machines: re-measure a case up to N times when other processes took more than "
                        "0.25 CPU while it was timed, after waiting (up to 2 min) for the machine to go idle; "
                        "the least disturbed measurement is kept (default 0)")
    b.add_argument("--torch-loop", action="store_true",
                   help="instead of the kernel table: whole training steps of a converted model (fastrnn.torch) "
                        "against the same model on torch.nn, and the autograd wrapper's per-call overhead "
                        "(needs torch; with --quick, fewer shapes and repetitions)")
    b.add_argument("--quick", action="store_true", help="with --torch-loop: a short run")
    return b


def run(args):
    if args.torch_loop:
        try:
            import torch  # noqa: F401
        except ImportError:
            print('fastrnn bench --torch-loop needs PyTorch: pip install "fastrnn[torch]"', file=sys.stderr)
            return 2
        from ..bench import torch_loop
        torch_loop.run(quick=args.quick)
        return 0
    from .. import bench as fb

    threads = args.threads or [_usable_cpus()]
    if any(t < 1 for t in threads):
        print("fastrnn bench: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print("fastrnn bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    case_list = fb.cases(args.cell, args.shapes)
    avail = fb.peers_available()
    engines = ["fastrnn"] if args.no_peers else [e for e in fb.ENGINES if avail[e] is None]
    tol = fb.TOLERANCE if args.tol is None else args.tol

    info = fb.machine_info()
    git = f" (git {info['fastrnn_git']})" if info.get("fastrnn_git") else ""
    print(f"fastrnn {info['fastrnn']}{git} bench: {len(case_list)} cases x threads {threads}; kernels "
          f"{info['fastrnn_isa']}; {info['cpu']} ({info['usable_cpus']} usable CPUs)")
    print("versions: " + ", ".join(f"{k} {info[k]}" for k in ("numpy", "scipy", "torch", "onnxruntime", "onnx")
                                    if info.get(k)))
    for eng in ("torch", "ort"):
        if args.no_peers:
            print(f"peer {fb.ENGINE_NAMES[eng]}: not timed (--no-peers)")
        elif avail[eng]:
            print(f"peer {fb.ENGINE_NAMES[eng]}: not timed ({avail[eng]})")
    ref = "torch.nn autograd (float32)" if avail["torch"] is None else \
        "fastrnn's float64 oracle, fastrnn.reference (no torch installed)"
    print(f"checked before timing against {ref}, normwise tolerance {tol:.0e}")
    print(f"threads: {fb.thread_control_note()}")
    c0 = fb._cpu_counters()
    time.sleep(1.0)
    busy = fb.other_cpus(c0, fb._cpu_counters())
    la, ncpu = fb.load_average()
    if busy is not None:
        print(f"other processes before the run: {busy:.2f} CPUs busy of {ncpu} (load average {la:.2f})" +
              (" -- THE MACHINE IS BUSY: timings (especially multi-threaded ones, whose threads wait on each "
               "other) are unreliable; see the 'other' column, rerun on an idle machine or use --retry-busy"
               if busy > 0.25 else ""))
    peaks = {}

    def show_peak(t, p, when=""):
        busy = p.get("other_cpus")
        print(f"sgemm peak{when}, {t} thread{'s' if t > 1 else ''}: {p['gflops']:.1f} GFLOP/s (numpy "
              f"{p['numpy']:.1f}, scipy {p['scipy']:.1f}; best of 3, n={p['size']}"
              + (f"; other processes used {busy:.2f} CPUs meanwhile" if busy is not None and busy > 0.25 else "")
              + ")")

    for t in threads:
        peaks[t] = fb.sgemm_peak(t)
        for attempt in range(args.retry_busy):
            if (peaks[t].get("other_cpus") or 0.0) <= 0.25:
                break
            fb.wait_idle(120.0)
            peaks[t] = fb.sgemm_peak(t, refresh=True)
        show_peak(t, peaks[t])
    print()
    print(fb.format_header(), flush=True)
    notes, refused = [], []

    def on_row(row):
        print(fb.format_row(row), flush=True)

    def on_note(msg):
        if msg.startswith("retry"):
            print("  .. " + msg, flush=True)
            return
        notes.append(msg)
        print("  !! " + msg, flush=True)
        if msg.startswith("REFUSED"):
            refused.append(msg)

    rows = fb.run(case_list, threads, engines=engines, rounds=args.repeat, budget=args.budget, tol=tol,
                  seed=args.seed, on_row=on_row, on_note=on_note, retry_busy=args.retry_busy)
    # measured again after the run: the peak is a best-of, and the first measurement may have been disturbed
    changed = False
    for t in threads:
        before = peaks[t]["gflops"]
        peaks[t] = fb.sgemm_peak(t, refresh=True)
        if peaks[t]["gflops"] > 1.05 * before:
            changed = True
            show_peak(t, peaks[t], " (measured again after the run, higher: %peak recomputed)")
    if changed:
        fb.update_peaks(rows, peaks)
        print()
        print(fb.format_table(rows))
    print()
    print(fb.TABLE_LEGEND)
    if args.json:
        fb.write_json(args.json, rows, peaks, failures=notes)
        print(f"JSON written to {args.json}")
    if args.png:
        try:
            fb.plot(rows, args.png)
            print(f"chart written to {args.png}")
        except ImportError as e:
            print(f"--png: {e}", file=sys.stderr)
    fr_wrong = [r for r in rows if r["engines"].get("fastrnn", {}).get("ok") is False]
    if refused:
        print(f"{len(refused)} result(s) failed the correctness check and were not timed "
              f"({len(fr_wrong)} of fastrnn).", file=sys.stderr)
    return 1 if fr_wrong else 0
