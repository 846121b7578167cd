"""fastrnn.runtime: the process-wide controls of the kernels, in one module.

ISA (get_isa / set_isa / cpu_has_*), threads (get_num_threads / set_num_threads), the kept work buffers
(workspace_bytes / release_workspace), and machine_info() for reports.  Depends on fastrnn._core only.
"""
import importlib
import os
import platform
import subprocess

import numpy as np

from ._version import __version__
from ._core import (cpu_has_avx2, cpu_has_avx512, get_isa, get_num_threads, release_workspace, set_isa,
                    set_num_threads, workspace_bytes)

__all__ = ["get_isa", "set_isa", "cpu_has_avx2", "cpu_has_avx512", "get_num_threads", "set_num_threads",
           "release_workspace", "workspace_bytes", "machine_info", "mem_available", "BLAS_ENV"]

# Environment variables that set the BLAS / OpenMP pools' threads (reported, never changed here).
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def mem_available():
    """Bytes of memory the kernel says are available (MemAvailable in /proc/meminfo), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version_of(name):
    """The __version__ of an installed package, without failing when it is absent or broken.  Imports it:
    call only from reports (fastrnn bench / info), never at import time."""
    try:
        return getattr(importlib.import_module(name), "__version__", None)
    except Exception:  # ImportError, or a broken install
        return None


def _git_state():
    """'<commit>[+dirty]' of the checkout fastrnn is imported from (an editable install), else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--", ".."],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    """CPU, Python, the versions of fastrnn and of the peers installed, the kernels' ISA, the BLAS pools."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": usable, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "fastrnn": __version__,
            "fastrnn_isa": get_isa()}
    for name in ("scipy", "torch", "onnxruntime", "onnx", "threadpoolctl"):
        info[name] = _version_of(name)
    try:
        import threadpoolctl
        info["thread_pools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                                      "num_threads", "threading_layer", "architecture")}
                                for p in threadpoolctl.threadpool_info()]
    except Exception:
        pass
    info["env"] = {k: os.environ[k] for k in BLAS_ENV if k in os.environ}
    info["fastrnn_git"] = _git_state()
    return info
