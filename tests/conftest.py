"""pytest configuration: import path, markers, the ISA and thread-count fixtures, and the end-of-run error summary."""

import os
import sys

import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__))


# helpers.py and reference.py sit beside this file.
sys.path.insert(0, _TESTS)

import helpers  # noqa: E402

ISAS = ["portable", "avx2", "avx512"]


def pytest_configure(config):
    config.addinivalue_line("markers", "options: multi-layer / bidirectional / proj / lengths / dropout cases")
    config.addinivalue_line("filterwarnings",
                            "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


@pytest.fixture(scope="session", autouse=True)
def poisoned_workspace():
    """Every test runs with the kernels' work buffers filled with NaN bytes before use (a testing knob of
    csrc/workspace.c): buffers are reused between calls, so a kernel that read one before writing it would
    see the previous call's numbers -- this makes any such read show as NaN in the results instead."""
    import fastrnn
    previous = fastrnn._core._set_workspace_poison(True)
    yield
    fastrnn._core._set_workspace_poison(previous)


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test with the kernels on 1 and on 2 threads, restoring the count afterwards."""
    import fastrnn
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(request.param)
    yield request.param
    fastrnn.set_num_threads(previous)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per ISA path, restoring the ISA in use afterwards."""
    import fastrnn
    if request.param == "avx2" and not fastrnn.cpu_has_avx2():
        pytest.skip("this CPU has no AVX2+FMA")
    if request.param == "avx512" and not fastrnn.cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512 (F, VL, DQ, BW)")
    previous = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    assert fastrnn.get_isa() == request.param, f"set_isa({request.param!r}) left {fastrnn.get_isa()!r}"
    try:
        yield request.param
    finally:
        fastrnn.set_isa(previous)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not helpers.RECORD:
        return
    tr = terminalreporter
    tr.section("fastrnn: largest errors seen (normwise relative; tolerance from tests/helpers.py)")
    for (suite, dtype), r in sorted(helpers.RECORD.items()):
        tr.write_line(f"{suite:<22} {dtype:<8} max rel err {r['max_rel']:.3e} (tol there {r['tol_at_max']:.2e})"
                      f" at {r['name_at_max']}")
        tr.write_line(f"{'':<22} {'':<8} max err/tol {r['max_ratio']:.3f} at {r['name_at_ratio']}"
                      f"  [{r['count']} comparisons]")


# ---- hypothesis profiles (tests/test_properties.py; docs/reliability.md) -------------------------------------
# "ci" (default): a bounded number of examples, derandomized (a fixed seed: the same examples every run), no
# deadline (the 2-vCPU CI machine is shared and noisy).  "long": HYPOTHESIS_PROFILE=long pytest tests/test_properties.py
# -- many more examples from random seeds (failures are still replayed from hypothesis's example database).
try:
    from hypothesis import HealthCheck, settings as _hyp_settings

    _hyp_settings.register_profile("ci", max_examples=400, derandomize=True, deadline=None, print_blob=True,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hyp_settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test dependency; without it test_properties.py skips itself
    pass


_configure_before_reliability = pytest_configure


def pytest_configure(config):  # noqa: F811 - extends the hook above with the reliability tests' marker
    _configure_before_reliability(config)
    config.addinivalue_line("markers", "slow: long or memory-hungry cases (skipped unless the machine has room)")
