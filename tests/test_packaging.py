"""The wheel holds every subpackage: build it from this source tree, install it into an empty folder and
import each package from there (an editable install would hide a missing one)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "fastrnn")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "pyproject.toml")),
                                reason="needs the source tree")


def _source_packages():
    out = []
    for root, dirs, files in os.walk(SRC):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            out.append(os.path.relpath(root, ROOT).replace(os.sep, "."))
    return sorted(out)


def _ignore(folder, names):
    """What a clean checkout does not have: build products, except the compiled objects (build/temp.*, kept
    with their times so the copy's build reuses them instead of compiling the kernels again)."""
    skip = {".git", "__pycache__", ".pytest_cache", ".benchmarks", "dist"}
    out = [n for n in names if n in skip or n.endswith((".egg-info", ".so")) or n.startswith(".venv")]
    if os.path.basename(folder) == "build":
        out += [n for n in names if not n.startswith("temp.")]
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src") / "fastrnn-src"
    shutil.copytree(ROOT, src, ignore=_ignore)  # stale build/lib files would hide a missing package
    # -O0: this wheel is checked for its contents and imported, never timed; the -O3 build of the kernels
    # takes about 100 s of CI's time, -O0 a fraction of it.
    env = dict(os.environ, FASTRNN_OPT="-O0")
    env.pop("FASTRNN_SANITIZE", None)  # an instrumented wheel would not import without the sanitizer runtime
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(src)], capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0 and "No module named" in r.stderr and ("Cython" in r.stderr or "setuptools" in r.stderr):
        pytest.skip("the build tools are not installed in this environment")
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = [p for p in out.iterdir() if p.suffix == ".whl"]
    return whl


def test_wheel_holds_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    pkgs = _source_packages()
    assert len(pkgs) >= 8, pkgs  # fastrnn, nn, torch, layers, models, optimizers, losses, callbacks, ...
    missing = [p for p in pkgs if p.replace(".", "/") + "/__init__.py" not in names]
    assert not missing, f"missing from the wheel: {missing}"
    assert any(n.startswith("fastrnn/_core") and n.endswith(".so") for n in names)


def test_installed_wheel_imports_each_package(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    pkgs = _source_packages()
    code = ("import importlib, sys\n"
            f"pkgs = {pkgs!r}\n"
            "for p in pkgs:\n"
            "    try:\n"
            "        m = importlib.import_module(p)\n"
            "    except ImportError as e:\n"
            "        if p == 'fastrnn.torch' and 'fastrnn[torch]' in str(e):\n"
            "            continue  # torch not installed: the promised message\n"
            "        raise\n"
            f"    assert m.__file__.startswith({str(target)!r}), (p, m.__file__)\n"
            "import fastrnn, numpy as np\n"
            "y, h = fastrnn.GRU(3, 4)(np.ones((2, 1, 3), np.float32))\n"
            "assert y.shape == (2, 1, 4)\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
