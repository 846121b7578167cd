"""fastrnn.bench: the benchmark instrument (used by `fastrnn bench` and by the pytest-benchmark suite in bench/).

For every case (cell, T, B, I, H) it

1. builds a fastrnn layer and, when torch is installed, the torch.nn layer with the same weights
   (``layer.load_state_dict(module.state_dict())``), and an ONNX Runtime session of the ONNX LSTM/GRU/RNN op
   built with onnx.helper from the same weights (gate blocks reordered for ONNX);
2. CHECKS every engine before it is timed: fastrnn's forward output, and for a training step its input
   gradient and every parameter gradient, against torch (torch's autograd forward + backward is the
   reference; torch's own no-grad forward and ONNX Runtime's output are checked against it too). Without
   torch the reference is fastrnn's float64 oracle (fastrnn.reference): its forward for the output, its BPTT
   for the gradients, and a float64 central difference along one random direction of (x, all parameters). A
   result outside the tolerance is never timed nor reported: the row says WRONG;
3. times, with the same number of threads for everybody, fastrnn inference ``layer(x)``, the fastrnn
   training step (``forward(train=True)`` + ``backward``), torch's forward under ``torch.no_grad()``, the torch
   training step (zero grads, forward, backward of ``dy``, input gradient included), and ONNX Runtime's
   forward. The engines are timed in interleaved rounds (each round runs a short burst of every engine, in
   rotating order), so that the noise of a shared machine falls on all of them alike; a row reports the
   median over rounds of the per-call time of a burst;
4. reports ms, GFLOP/s (forward ``2*T*B*G*H*(I+H)`` flops, training step 3x that), the percentage of the
   machine's measured sgemm peak at the same thread count, and the ratio of each peer's time to fastrnn's
   (> 1: fastrnn is faster).

Nothing here needs torch, onnx, onnxruntime, threadpoolctl or matplotlib: each is imported when present, the
first time a case needs it (`import fastrnn.bench` imports none of them).

One module per concern, dependencies one way (each imports only modules above it in this list):

    shapes   Case, the shape sets (grid, quick, DeepBench), cases(); ENGINES, MODES
    peers    optional imports of the peers, thread_limits / thread_control_note, the ONNX model
    checks   CaseData (the layers of one case and the check of every engine), CheckResult, TOLERANCE
    timing   measure / plan_rounds, quiet-thread and idle waits, CPU counters, sgemm_peak
    report   rows from records, ratios, the table and its legend, the JSON file
    chart    the PNG chart (matplotlib)
    runner   run(): check, time and report every case

This package re-exports their public names (and the few private ones bench/ uses), so
`import fastrnn.bench as fb; fb.run(...)` is the interface.
"""
from __future__ import annotations

# Re-exported: the public names below, and the private ones bench/ and fastrnn.cli use (_PEAKS, _estimate,
# _cpu_counters, ...).
from ..runtime import machine_info
from .chart import plot
from .checks import TOLERANCE, CaseData, CheckResult, rel_err  # noqa: F401
from .peers import (_MODS, _onnx, _opt_import, _ort, _threadpoolctl, _torch, onnx_model_bytes,  # noqa: F401
                    peers_available, thread_control_note, thread_limits)
from .report import (TABLE_LEGEND, add_ratios, format_header, format_row, format_table,  # noqa: F401
                     rows_from_records, update_peaks, write_json)
from .runner import run
from .shapes import (DEEPBENCH, DEEPBENCH_TRAINING, ENGINE_NAMES, ENGINES, GATES, GRID_SHAPES, MODES,  # noqa: F401
                     QUICK_SHAPES, SHAPE_SETS, Case, _mem_available, cases)
from .timing import (_PEAKS, Timing, _cpu_counters, _estimate, _threads_runtime, load_average,  # noqa: F401
                     measure, other_cpus, plan_rounds, sgemm_peak, wait_idle, wait_quiet_threads)

__all__ = ["Case", "GRID_SHAPES", "QUICK_SHAPES", "DEEPBENCH", "DEEPBENCH_TRAINING", "SHAPE_SETS", "cases",
           "thread_limits", "thread_control_note", "sgemm_peak", "CaseData", "CheckResult", "Timing",
           "measure", "plan_rounds", "run", "format_table", "format_header", "machine_info", "write_json",
           "plot", "rows_from_records", "update_peaks", "wait_idle", "load_average", "TOLERANCE", "ENGINES", "MODES",
           "peers_available"]
