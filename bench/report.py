"""Turn the JSON of a bench/ run (pytest --benchmark-json=FILE) into fastrnn's ratio table.

    python bench/report.py FILE [--png chart.png] [--json rows.json]

Prints one row per (cell, shape, threads, mode): fastrnn ms (median), GFLOP/s, % of the sgemm peak measured
in the run, each peer's ms and the ratio peer ms / fastrnn ms (> 1: fastrnn faster), and the ratio to the
fastest peer. Results that failed their correctness check show as WRONG.
"""
import argparse
import json
import sys


def records_from_json(doc):
    """Flat records (see rows_from_records in fastrnn/bench/report.py) from a pytest-benchmark JSON document."""
    recs = []
    for b in doc.get("benchmarks", []):
        ei = dict(b.get("extra_info") or {})
        if "case_id" not in ei:
            continue
        st = b.get("stats") or {}
        if st.get("median") is not None:
            ei.update(median_ms=1e3 * st["median"], q1_ms=1e3 * st["q1"], q3_ms=1e3 * st["q3"],
                      min_ms=1e3 * st["min"], rounds=st.get("rounds"), iterations=st.get("iterations"))
        recs.append(ei)
    seen = {(r["case_id"], r["threads"], r["mode"], r["engine"]) for r in recs}
    # checks that failed are not benchmarks: the suite keeps them in its own section
    for r in (doc.get("fastrnn") or {}).get("records", []):
        if (r["case_id"], r["threads"], r["mode"], r["engine"]) not in seen and r.get("ok") is False:
            recs.append(r)
    order = {}
    for r in (doc.get("fastrnn") or {}).get("records", []):
        order.setdefault((r["case_id"], r["threads"], r["mode"], r["engine"]), len(order))
    recs.sort(key=lambda r: order.get((r["case_id"], r["threads"], r["mode"], r["engine"]), len(order)))
    return recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_file", help="the file written by pytest bench --benchmark-json=FILE")
    ap.add_argument("--png", help="also write a chart of the ratios (needs matplotlib)")
    ap.add_argument("--json", help="also write the rows (the same format as `fastrnn bench --json`)")
    args = ap.parse_args(argv)

    import fastrnn.bench as fb

    with open(args.json_file) as f:
        doc = json.load(f)
    rows = fb.rows_from_records(records_from_json(doc))
    if not rows:
        print(f"{args.json_file}: no fastrnn bench results in it", file=sys.stderr)
        return 1
    extra = doc.get("fastrnn") or {}
    machine = extra.get("machine") or {}
    if machine:
        print(f"{machine.get('cpu')} ({machine.get('usable_cpus')} usable CPUs); fastrnn {machine.get('fastrnn')} "
              f"({machine.get('fastrnn_isa')}), torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}")
    if extra.get("thread_control"):
        print("threads: " + extra["thread_control"])
    for k, v in sorted((extra.get("sgemm_peak") or {}).items()):
        print(f"sgemm peak, {k} thread(s): {v['gflops']:.1f} GFLOP/s")
    print(fb.format_table(rows))
    print(fb.TABLE_LEGEND)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": args.json_file, "machine": machine, "results": rows}, f, indent=1)
    if args.png:
        try:
            fb.plot(rows, args.png)
            print(f"chart written to {args.png}")
        except ImportError as e:
            print(f"--png: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
