"""The benchmark instrument (fastrnn.bench) and the `fastrnn` command (fastrnn.cli): the correctness gate that
keeps a wrong engine from being timed (against torch, and against fastrnn's float64 oracle without torch), the
ReLU-tie reference that keeps a float32 rounding coin-flip at a ReLU kink from failing a correct engine, and
the packages' structure (what they export, what they import, in which direction)."""
import ast
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

import fastrnn.bench as bench
from fastrnn.bench import peers
from fastrnn.reference import ref_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _needs_torch():
    return pytest.importorskip("torch")


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- the ReLU-tie reference (torch) --------------------------------------------------------------------------

def test_relu_tie_reference_is_torch_float64_without_ties():
    _needs_torch()
    d = bench.CaseData(bench.Case("rnn", 4, 3, 5, 6, nonlinearity="relu"))
    ref64 = d.reference64
    rt, flipped = d.relu_tie_reference(ref64["y"])
    assert flipped == 0
    _close(rt["y"], ref64["y"])
    _close(rt["dx"], ref64["dx"])
    for k, g in ref64["grads"].items():
        _close(rt["grads"][k], g)


def test_relu_tie_takes_the_engines_side():
    _needs_torch()
    d = bench.CaseData(bench.Case("rnn", 3, 2, 4, 5, nonlinearity="relu"))
    u = 2  # unit u's pre-activation at t = 0 is exactly 0: x_0 = 0, h0 = 0, b_ih[u] + b_hh[u] = 0
    d.x[0] = 0
    d.sd["bias_hh_l0"][u] = -d.sd["bias_ih_l0"][u]
    y_off = d.relu_tie_reference(np.zeros((3, 2, 5)))[0]["y"]
    y_eng = y_off.copy()
    y_eng[0, :, u] = 1e-30  # an engine that put the tie on the "on" side
    off, n_off = d.relu_tie_reference(y_off)
    on, n_on = d.relu_tie_reference(y_eng)
    assert (n_off, n_on) == (0, 2)  # float64 says off (p > 0 is false); the engine's side differs in 2 rows
    _close(on["y"], off["y"])  # p = 0 either way
    # but the gradient flows through the unit only when it is on: db_ih[u] gains sum_b dh_0[b, u]
    assert not np.allclose(on["grads"]["bias_ih_l0"][u], off["grads"]["bias_ih_l0"][u])


# ---- the gate: correct results pass, wrong ones are refused ---------------------------------------------------

def _perturb_weights(d, scale=1.05):
    """Give the fastrnn layer other weights than the case's (d.sd, torch's): its results are then wrong."""
    sd = d.layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * scale
    d.layer.load_state_dict(sd)


def _scaled_backward(d, scale=1.1):
    """Make the fastrnn layer's backward return gradients of the weight_ih scaled by `scale` (a wrong BPTT)."""
    backward = d.layer.backward

    def wrong(tape, dy, dstate=None):
        dx, dhx, grads = backward(tape, dy, dstate)
        grads = dict(grads, weight_ih_l0=grads["weight_ih_l0"] * scale)
        return dx, dhx, grads
    d.layer.backward = wrong


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_check_passes_correct_results_and_refuses_wrong_ones_against_torch(cell):
    _needs_torch()
    case = bench.Case(cell, 5, 2, 3, 4)
    d = bench.CaseData(case)
    for mode in bench.MODES:
        for eng in ("fastrnn", "torch"):
            r = d.check(eng, mode, 1)
            assert r.ok and not r.inexact and r.err <= r.tol, r
            assert r.reference.startswith("torch.nn")
    bad = bench.CaseData(case)
    _perturb_weights(bad)
    for mode in bench.MODES:
        r = bad.check("fastrnn", mode, 1)
        assert not r.ok and r.err > r.tol, r
    bad = bench.CaseData(case)
    _scaled_backward(bad)
    assert bad.check("fastrnn", "forward", 1).ok
    r = bad.check("fastrnn", "train", 1)
    assert not r.ok and "weight_ih_l0" in r.detail, r


def test_check_passes_a_correct_relu_training_step():
    _needs_torch()
    d = bench.CaseData(bench.Case("rnn", 5, 2, 3, 4, nonlinearity="relu"))
    r = d.check("fastrnn", "train", 1)
    assert r.ok and r.err <= r.tol, r


@pytest.fixture
def no_torch(monkeypatch):
    """fastrnn.bench as it runs where torch is not installed."""
    monkeypatch.setitem(peers._MODS, "torch", None)
    assert bench.peers_available()["torch"] == "torch is not installed"


@pytest.mark.parametrize("case", [bench.Case("lstm", 6, 3, 5, 7), bench.Case("gru", 5, 2, 4, 6),
                                  bench.Case("rnn", 5, 2, 3, 4), bench.Case("rnn", 5, 2, 3, 4, nonlinearity="relu")],
                         ids=lambda c: c.id)
def test_without_torch_the_oracle_is_fastrnn_reference(no_torch, case):
    d = bench.CaseData(case)
    assert d.module is None and d.available("torch", "forward") == "torch is not installed"
    y, _, _ = ref_forward(case.cell, d.sd, d.x, nonlinearity=case.nonlinearity)
    np.testing.assert_array_equal(d.reference["y"], y)
    assert d.reference["y"].dtype == np.float64
    fwd, train = d.check("fastrnn", "forward", 1), d.check("fastrnn", "train", 1)
    assert fwd.ok and fwd.reference == "numpy float64" and fwd.err < 1e-5, fwd
    assert train.ok and "BPTT" in train.reference and train.err < 1e-4, train


def test_without_torch_wrong_results_are_refused(no_torch):
    case = bench.Case("lstm", 6, 3, 5, 7)
    bad = bench.CaseData(case)
    _perturb_weights(bad)
    assert not bad.check("fastrnn", "forward", 1).ok
    bad = bench.CaseData(case)
    _scaled_backward(bad)  # y right, one gradient 10% off
    assert bad.check("fastrnn", "forward", 1).ok
    r = bad.check("fastrnn", "train", 1)
    assert not r.ok and r.err > r.tol and "worst vs the oracle's BPTT: weight_ih_l0" in r.detail, r


def test_without_torch_the_directional_derivative_checks_the_gradients(no_torch):
    d = bench.CaseData(bench.Case("gru", 5, 2, 4, 6))
    dx, _, grads = d.layer.backward(d.layer.forward(d.x, train=True)[2], d.dy)
    assert d._directional_check(dx, grads) < 1e-6
    # every gradient 10% off: refused by the directional derivative alone (normalised by the sum of |terms|,
    # it is much less sensitive than the per-quantity comparison: one gradient 10% off can stay under the
    # tolerance, which is why the oracle's BPTT is compared too)
    assert d._directional_check(1.1 * dx, {k: 1.1 * g for k, g in grads.items()}) > bench.TOLERANCE


# ---- fastrnn.bench: the package's interface and its layering -------------------------------------------------

# What bench/ (conftest.py, test_bench.py, report.py) and fastrnn/cli/bench.py use, besides __all__.
USED_BY_BENCH_SUITE = ("ENGINE_NAMES", "format_row", "TABLE_LEGEND", "other_cpus", "wait_quiet_threads",
                       "_PEAKS", "_estimate", "_cpu_counters")


def test_bench_exports():
    for name in tuple(bench.__all__) + USED_BY_BENCH_SUITE:
        assert hasattr(bench, name), name
    from fastrnn.bench import timing
    assert bench._PEAKS is timing._PEAKS  # bench/conftest.py reads the peaks sgemm_peak caches
    assert not hasattr(bench, "numpy_forward")  # one float64 oracle: fastrnn.reference


# Each module of fastrnn.bench may import only the ones of a lower rank.
BENCH_RANKS = {"shapes": 0, "peers": 1, "checks": 2, "timing": 2, "report": 3, "chart": 3, "runner": 4,
               "torch_loop": 4}


def _fastrnn_imports(path, package):
    """The fastrnn modules `path` (a module of fastrnn.<package>) imports, as absolute dotted names."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fastrnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = ["fastrnn", package][:3 - node.level] if node.level <= 2 else []
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "fastrnn":
                continue
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_bench_modules_depend_one_way():
    src = os.path.join(ROOT, "fastrnn", "bench")
    mods = {f[:-3] for f in os.listdir(src) if f.endswith(".py") and f != "__init__.py"}
    assert mods == set(BENCH_RANKS), mods
    for m in mods:
        deps = _fastrnn_imports(os.path.join(src, m + ".py"), "bench")
        for dep in deps:
            assert not dep.startswith("fastrnn.cli"), (m, dep)
            if dep.startswith("fastrnn.bench."):
                other = dep.split(".")[2]
                if other in BENCH_RANKS:
                    assert BENCH_RANKS[other] < BENCH_RANKS[m], f"fastrnn.bench.{m} imports {dep}"


def _run_python(code):
    # cwd outside the source tree (python -c puts it first on sys.path: a checkout would shadow the install)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=300)


def test_import_bench_imports_no_peer():
    r = _run_python("import sys, fastrnn.bench\n"
                    "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                    "('torch', 'onnx', 'onnxruntime', 'matplotlib', 'threadpoolctl')))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


# ---- fastrnn.cli ---------------------------------------------------------------------------------------------

def test_cli_commands_are_modules_with_add_parser_and_run():
    import importlib

    import fastrnn.cli as cli
    assert {"demo", "bench", "info"} <= set(cli.COMMANDS)
    for name in cli.COMMANDS:
        mod = importlib.import_module(f"fastrnn.cli.{name}")
        assert callable(mod.add_parser) and callable(mod.run), name
    p = cli.build_parser()
    assert p.parse_args(["bench", "--shapes", "grid", "--threads", "1", "2"]).threads == [1, 2]
    assert p.parse_args(["info"]).command == "info"
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "--shapes", "huge"])


def test_cli_main(capsys):
    from fastrnn import __version__
    from fastrnn.cli import main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastrnn {__version__}"
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--repeat", "0"]) == 2


def test_fastrnn_info_does_not_import_bench():
    r = _run_python("import sys\nfrom fastrnn.cli import main\nrc = main(['info'])\n"
                    "print('bench imported:', any(m.startswith('fastrnn.bench') for m in sys.modules), rc)")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "bench imported: False 0", r.stdout
    assert lines[0].startswith("fastrnn ") and "kernels:" in lines[0]
    assert any(line.startswith("peer torch: ") for line in lines) and any(line.startswith("peer ORT: ")
                                                                          for line in lines)


def test_python_m_fastrnn():
    r = subprocess.run([sys.executable, "-m", "fastrnn", "--version"], capture_output=True, text=True,
                       cwd=tempfile.gettempdir(),
                       timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("fastrnn "), (r.stdout, r.stderr)


def test_sgemm_peak_counts_blas_only_at_the_threads_asked(monkeypatch):
    """Without threadpoolctl numpy's BLAS runs on every CPU: a 1-thread peak then counts fastrnn's own GEMM
    only (which runs on the threads asked), unless the environment limits the BLAS."""
    from fastrnn.bench import timing
    monkeypatch.setattr(peers, "_threadpoolctl", lambda: None)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(timing, "load_average", lambda: (0.0, 4))
    assert not timing._blas_limited(1) and not timing._blas_limited(3) and timing._blas_limited(4)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert timing._blas_limited(1)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setattr(timing, "_PEAKS", {})
    res = timing.sgemm_peak(1, sizes=(96,), trials=1)
    assert res["blas_counted"] is False and res["gflops"] == res["fastrnn"] > 0
