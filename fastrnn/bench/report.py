"""Rows and what is made of them: rows rebuilt from the pytest-benchmark suite's flat records, the ratios
peer ms / fastrnn ms, %peak recomputed from a better peak, the text table and its legend, and the JSON file.
"""
from __future__ import annotations

import datetime
import json
import sys

from ..runtime import machine_info
from .checks import TOLERANCE
from .peers import thread_control_note
from .shapes import Case

def update_peaks(rows, peaks):
    """Recompute every row's sgemm_peak_gflops / pct_peak from `peaks` ({threads: sgemm_peak dict})."""
    for row in rows:
        p = peaks.get(row["threads"])
        if not p:
            continue
        row["sgemm_peak_gflops"] = p["gflops"]
        for e in row["engines"].values():
            if "gflops" in e:
                e["pct_peak"] = 100.0 * e["gflops"] / p["gflops"]


def rows_from_records(records):
    """Rows as `run` returns them, from flat per-(case, threads, mode, engine) records (the pytest-benchmark
    suite's results). A record: case_id, threads, mode, engine, ok, check_err, tol, reference,
    sgemm_peak_gflops, and when timed median_ms, q1_ms, q3_ms, min_ms, rounds, iterations (or "skipped")."""
    rows, index = [], {}
    for rec in records:
        key = (rec["case_id"], int(rec["threads"]), rec["mode"])
        if key not in index:
            case = Case.from_id(rec["case_id"])
            index[key] = {"cell": case.cell, "label": case.label, "group": case.group, "T": case.T, "B": case.B,
                          "I": case.I, "H": case.H, "threads": int(rec["threads"]), "mode": rec["mode"],
                          "flops": case.flops(rec["mode"]), "sgemm_peak_gflops": rec.get("sgemm_peak_gflops"),
                          "loadavg": rec.get("loadavg"), "engines": {}, "ratios": {}, "ratio_best_peer": None}
            rows.append(index[key])
        row = index[key]
        if rec.get("other_cpus") is not None:
            row["other_cpus"] = max(row.get("other_cpus") or 0.0, rec["other_cpus"])
        e = {k: rec[k] for k in ("ok", "check_err", "tol", "reference", "check_detail", "median_ms", "q1_ms",
                                 "q3_ms", "min_ms", "rounds", "iterations", "skipped", "inexact")
             if rec.get(k) is not None}
        if "median_ms" in e:
            e["gflops"] = row["flops"] / (e["median_ms"] * 1e-3) / 1e9
            peak = row["sgemm_peak_gflops"]
            e["pct_peak"] = 100.0 * e["gflops"] / peak if peak else None
        row["engines"][rec["engine"]] = e
    for row in rows:
        add_ratios(row)
    return rows


def add_ratios(row):
    """Fill row["ratios"] ({peer: peer ms / fastrnn ms}, for the peers timed) and row["ratio_best_peer"] (the
    fastest peer's), when fastrnn was timed."""
    fr = row["engines"].get("fastrnn", {})
    if "median_ms" in fr:
        for eng, e in row["engines"].items():
            if eng != "fastrnn" and "median_ms" in e:
                row["ratios"][eng] = e["median_ms"] / fr["median_ms"]
        if row["ratios"]:
            row["ratio_best_peer"] = min(row["ratios"].values())
    return row


_COLS = (("cell", 8, "<"), ("shape (T,B,I,H)", 17, "<"), ("thr", 3, ">"), ("mode", 7, "<"),
         ("fastrnn ms", 10, ">"), ("GFLOP/s", 7, ">"), ("%peak", 5, ">"), ("torch ms", 9, ">"), ("x torch", 7, ">"),
         ("ORT ms", 8, ">"), ("x ORT", 6, ">"), ("x best", 6, ">"), ("other", 5, ">"))


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}")


def _cell(e, key="median_ms"):
    """Table text of one engine entry."""
    if not e or "skipped" in e:
        return "-"
    if not e.get("ok", True):
        return "WRONG"
    return _fmt_ms(e.get(key)) + ("?" if e.get("inexact") else "")


def format_header():
    line = " ".join(f"{name:{al}{w}}" for name, w, al in _COLS)
    return line + "\n" + "-" * len(line)


def format_row(row):
    en = row["engines"]
    fr = en.get("fastrnn", {})
    group = "*" if row.get("group") == "deepbench" else ""
    vals = [row["label"] + group, f"{row['T']},{row['B']},{row['I']},{row['H']}", str(row["threads"]),
            "fwd" if row["mode"] == "forward" else "train", _cell(fr)]
    ok = "median_ms" in fr
    vals.append(f"{fr['gflops']:.1f}" if ok else "-")
    vals.append(f"{fr['pct_peak']:.1f}" if ok and fr.get("pct_peak") is not None else "-")
    for eng in ("torch", "ort"):
        vals.append(_cell(en.get(eng)))
        r = row["ratios"].get(eng)
        vals.append(f"{r:.2f}" if r is not None else "-")
    vals.append(f"{row['ratio_best_peer']:.2f}" if row.get("ratio_best_peer") is not None else "-")
    oc = row.get("other_cpus")
    vals.append("-" if oc is None else f"{oc:.2f}" + ("!" if oc > 0.25 else ""))
    return " ".join(f"{v:{al}{w}}" for v, (_, w, al) in zip(vals, _COLS))


def format_table(rows):
    return "\n".join([format_header()] + [format_row(r) for r in rows])


TABLE_LEGEND = ("ms: median per call; GFLOP/s and %peak: fastrnn's (forward 2*T*B*G*H*(I+H) flops, train step 3x; "
                "peak = measured sgemm at the same threads); x peer = peer ms / fastrnn ms (> 1: fastrnn "
                "faster); x best = against the fastest peer timed; fwd = inference forward, train = forward + "
                "backward (input and weight gradients); * = DeepBench training shape (I = H, vanilla = ReLU RNN); "
                "WRONG = failed the correctness check, not timed; ? = a peer's result outside the tolerance of float64 "
                "(timed anyway); - = not installed / not applicable; other = CPUs taken by "
                "other processes or the hypervisor while the row was timed (0 on an idle machine; ! above 0.25: "
                "that row's multi-threaded timings are unreliable)")


def write_json(path, rows, peaks, failures=(), extra=None):
    doc = {"schema": "fastrnn-bench/1", "created": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": sys.argv, "machine": machine_info(), "thread_control": thread_control_note(),
           "tolerance": TOLERANCE, "sgemm_peak": {str(k): v for k, v in peaks.items()},
           "flops": "forward 2*T*B*G*H*(I+H); training step 3x forward", "results": rows,
           "failures": list(failures)}
    if extra:
        doc.update(extra)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    return doc
