"""Configuration of the pytest-benchmark suite in bench/ (not collected by `python -m pytest tests`).

Options (besides pytest-benchmark's own --benchmark-*):
  --quick               the quick subset (3 shapes x 3 cells x fwd/train x 1, 2 threads): a few minutes
  --bench-shapes S      quick | grid | deepbench | all | deepbench-full (default: all = grid + deepbench)
  --bench-cells C       comma-separated subset of lstm,gru,rnn (default: all three)
  --bench-threads N     comma-separated thread counts (default: 1,2)
  --bench-engines E     comma-separated subset of fastrnn,torch,ort (default: all; missing peers are skipped)
  --bench-budget S      seconds of timing per benchmark (default 1.0; 0.5 with --quick)

Each test checks its engine's result against the reference (CaseData.check, fastrnn/bench/checks.py) before timing it;
a wrong result fails the test and is not timed. At the end the ratio table is printed (the same as
`fastrnn bench` prints and `python bench/report.py <--benchmark-json file>` rebuilds).
"""
import gc

import pytest

try:
    import pytest_benchmark  # noqa: F401
    HAVE_PYTEST_BENCHMARK = True
except ImportError:
    HAVE_PYTEST_BENCHMARK = False

SHAPE_SETS = ("quick", "grid", "deepbench", "all", "deepbench-full")


def pytest_addoption(parser):
    g = parser.getgroup("fastrnn-bench", "fastrnn benchmark suite (bench/)")
    g.addoption("--quick", action="store_true", default=False,
                help="quick subset: shapes 100,1,64,128 / 100,16,64,128 / 50,64,512,512 (a few minutes)")
    g.addoption("--bench-shapes", default=None, choices=SHAPE_SETS,
                help="shape set (default: all = grid + deepbench; quick with --quick)")
    g.addoption("--bench-cells", default="lstm,gru,rnn", help="comma-separated cells (default lstm,gru,rnn)")
    g.addoption("--bench-threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    g.addoption("--bench-engines", default="fastrnn,torch,ort",
                help="comma-separated engines (default fastrnn,torch,ort)")
    g.addoption("--bench-budget", type=float, default=None,
                help="seconds of timing per benchmark (default 1.0; 0.5 with --quick)")


def pytest_configure(config):
    if not HAVE_PYTEST_BENCHMARK:
        raise pytest.UsageError("bench/ needs pytest-benchmark: pip install -e '.[bench]'")
    config._fastrnn_records = []


def _csv(s):
    return [p.strip() for p in s.split(",") if p.strip()]


def pytest_generate_tests(metafunc):
    if "case_id" not in metafunc.fixturenames:
        return
    import fastrnn.bench as fb
    cfg = metafunc.config
    shapes = cfg.getoption("--bench-shapes") or ("quick" if cfg.getoption("--quick") else "all")
    cells = _csv(cfg.getoption("--bench-cells"))
    threads = [int(t) for t in _csv(cfg.getoption("--bench-threads"))]
    engines = [e for e in fb.ENGINES if e in _csv(cfg.getoption("--bench-engines"))]
    params = []
    for case in fb.cases(cells, shapes):
        for t in threads:
            for mode in fb.MODES:
                for eng in engines:
                    if eng == "ort" and mode == "train":
                        continue  # ONNX Runtime: inference only
                    params.append(pytest.param(case.id, mode, t, eng, id=f"{case.id}-t{t}-{mode}-{eng}"))
    metafunc.parametrize("case_id,mode,threads,engine", params)


class BenchState:
    """Shared across the session: the data of the case being run (one at a time: big cases are big)."""

    def __init__(self, config):
        self.config = config
        self.case_id = None
        self.data = None

    def data_for(self, case_id):
        import fastrnn.bench as fb
        if case_id != self.case_id:
            self.data = self.case_id = None
            gc.collect()
            self.data = fb.CaseData(fb.Case.from_id(case_id))
            self.case_id = case_id
        return self.data

    @property
    def budget(self):
        b = self.config.getoption("--bench-budget")
        return b if b is not None else (0.5 if self.config.getoption("--quick") else 1.0)

    def record(self, rec):
        self.config._fastrnn_records.append(rec)


@pytest.fixture(scope="session")
def bench_state(request):
    return BenchState(request.config)


if HAVE_PYTEST_BENCHMARK:
    def pytest_benchmark_update_json(config, benchmarks, output_json):
        import fastrnn.bench as fb
        output_json["fastrnn"] = {
            "thread_control": fb.thread_control_note(), "tolerance": fb.TOLERANCE,
            "sgemm_peak": {str(k[0]): v for k, v in fb._PEAKS.items()}, "machine": fb.machine_info(),
            "flops": "forward 2*T*B*G*H*(I+H); training step 3x forward",
            "records": getattr(config, "_fastrnn_records", [])}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """The sgemm peak again now that the run is over (one measured while something else ran is too low): the
    records' %peak use the better of the two, in the JSON (written after this) and in the table."""
    records = getattr(session.config, "_fastrnn_records", [])
    if not records:
        return
    import fastrnn.bench as fb
    for k in list(fb._PEAKS):
        fb.sgemm_peak(k[0], refresh=True)
    peaks = {k[0]: v["gflops"] for k, v in fb._PEAKS.items()}
    for rec in records:
        peak = peaks.get(rec.get("threads"))
        if peak:
            rec["sgemm_peak_gflops"] = peak
            if rec.get("gflops"):
                rec["pct_peak"] = 100.0 * rec["gflops"] / peak


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = getattr(config, "_fastrnn_records", [])
    if not records:
        return
    import fastrnn.bench as fb
    tr = terminalreporter
    tr.section("fastrnn: ratio table (peer ms / fastrnn ms, > 1: fastrnn faster)")
    tr.write_line("threads: " + fb.thread_control_note())
    for k, v in sorted(fb._PEAKS.items()):
        tr.write_line(f"sgemm peak, {k[0]} thread(s): {v['gflops']:.1f} GFLOP/s")
    for line in fb.format_table(fb.rows_from_records(records)).splitlines():
        tr.write_line(line)
    tr.write_line(fb.TABLE_LEGEND)
