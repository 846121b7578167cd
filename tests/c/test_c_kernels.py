"""The C-level randomized test of the kernels (tests/c/kernel_check.c) against its plain C reference:
compiled here with gcc from the package's C sources (as setup.py lists them), then run; it fails on any
mismatch of a forward against the reference or of a gradient against a central difference.

FASTRNN_SANITIZE=address,undefined (as .ci/sanitize sets) compiles it with those sanitizers too."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ([os.path.join(HERE, "kernel_check.c")] +
           [os.path.join(ROOT, "csrc", f) for f in ("gemm.c", "dispatch.c", "threads.c", "workspace.c")] +
           sorted(glob.glob(os.path.join(ROOT, "csrc", "isa", "*.c"))))
CC = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")

pytestmark = pytest.mark.skipif(CC is None or not os.path.isdir(os.path.join(ROOT, "csrc")),
                                reason="needs a C compiler and the csrc/ sources")


def _build(tmp_path, extra):
    exe = str(tmp_path / "kernel_check")
    cmd = [CC, "-std=gnu11", "-fno-math-errno", "-Wall", "-Wno-unused-function", "-I", os.path.join(ROOT, "csrc"),
           *extra, *SOURCES, "-lm", "-pthread", "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}"
    return exe


def _run(exe, cases, seed, env=None):
    r = subprocess.run([exe, str(cases), str(seed)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"kernel_check {cases} {seed} failed (status {r.returncode}):\n{out[-6000:]}"
    assert f"{cases} cases" in out and "0 failures" in out, out[-2000:]
    return out


def test_kernels_against_the_plain_c_reference(tmp_path):
    """600 random cases (every cell and option, odd sizes, every ISA, 1-2 threads, small chunks), optimised
    build as setup.py makes it."""
    exe = _build(tmp_path, ["-O3"])
    _run(exe, 600, 17)


@pytest.mark.skipif(not os.environ.get("FASTRNN_SANITIZE"), reason="set FASTRNN_SANITIZE (see .ci/sanitize)")
def test_kernels_under_sanitizers(tmp_path):
    """The same program built with -fsanitize=$FASTRNN_SANITIZE: any out-of-bounds access, use after free,
    signed overflow or misaligned access halts it with a report."""
    san = os.environ["FASTRNN_SANITIZE"]
    exe = _build(tmp_path, ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={san}",
                            "-fno-sanitize-recover=all"])
    # 150 cases: about a minute under ASan on the 2-vCPU VM (CI's time budget); leaks are checked here (the
    # program frees everything it allocates), unlike in the Python tests.
    _run(exe, 150, 29, env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"})


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
@pytest.mark.parametrize("flags", [["-O3"], ["-O2"]], ids=["O3", "O2"])
def test_prefetches_survive_the_build(tmp_path, flags):
    """The tape and backward prefetch helpers have no effect but prefetching, which GCC may take for none at
    all and delete (csrc/common.h, FR_PREFETCH_FN): without -fwrapv it did.  The AVX-512 float32 object,
    built without Python's CFLAGS, must still prefetch in the LSTM/GRU training forwards and the LSTM
    backward."""
    obj = str(tmp_path / "f32_avx512.o")
    src = os.path.join(ROOT, "csrc", "isa", "f32_avx512.c")
    r = subprocess.run([CC, "-std=gnu11", "-fno-math-errno", "-I", os.path.join(ROOT, "csrc"), *flags, "-c", src,
                        "-o", obj], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True,
                         timeout=300).stdout
    count, fn = {}, None
    for line in dis.splitlines():
        if line.endswith(">:"):
            fn = line[line.index("<") + 1:-2]
        elif fn and "prefetch" in line:
            count[fn] = count.get(fn, 0) + 1
    for task in ("lstm_fwd_task", "gru_fwd_task", "lstm_bwd_task"):
        got = sum(n for f, n in count.items() if f.startswith(task))
        assert got > 0, f"no prefetch instruction left in {task} ({' '.join(flags)}); per function: {count}"
