"""fastrnn.runtime: the process-wide controls of the kernels, in one module.

ISA (get_isa / set_isa / cpu_has_*), threads (get_num_threads / set_num_threads, and whose threads run the
kernels: use_openmp / thread_pool), the kept work buffers (workspace_bytes / release_workspace), and
machine_info() for reports.  Depends on fastrnn._core only.
"""
import importlib
import os
import platform
import subprocess

import numpy as np

from ._version import __version__
from ._core import (_omp_enabled, _set_omp, cpu_has_avx2, cpu_has_avx512, get_isa, get_num_threads,
                    release_workspace, set_isa, set_num_threads, workspace_bytes)

__all__ = ["get_isa", "set_isa", "cpu_has_avx2", "cpu_has_avx512", "get_num_threads", "set_num_threads",
           "release_workspace", "workspace_bytes", "machine_info", "mem_available", "use_openmp", "thread_pool",
           "loaded_openmp", "BLAS_ENV"]

# Environment variables that set the BLAS / OpenMP pools' threads (reported, never changed here).
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


_OMP_NAMES = ("libgomp", "libiomp5", "libomp")  # GNU, Intel and LLVM OpenMP (all three export GOMP_parallel)
_pool = [None]  # the OpenMP library whose threads run the kernels, or None: fastrnn's own pool


def loaded_openmp():
    """Paths of the OpenMP runtimes loaded in this process (from /proc/self/maps; [] where unknown)."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(None, 5)[-1] if line.count(" ") >= 5 else ""
                base = os.path.basename(path)
                if path.startswith("/") and base.startswith(_OMP_NAMES) and ".so" in base and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def use_openmp(library):
    """Run the kernels' threads as the threads of an OpenMP runtime already loaded in the process (a path
    from loaded_openmp(), e.g. torch's libgomp), or on fastrnn's own thread pool (library=None).

    With another library's OpenMP ops running between the kernels' calls (a torch training loop), its
    threads spin for a while after each of its regions; on the kernels' own pool those spinners share the
    cores with the kernels' threads.  On the runtime's own threads there is one set of threads.  The
    thread count is still set_num_threads'; a region that cannot get a full team (called inside another
    OpenMP region, OMP_THREAD_LIMIT) runs on the pool.  fastrnn.torch calls this with torch's runtime."""
    if library is None:
        _set_omp(0, 0, 0, 0)
        _pool[0] = None
        return
    if not isinstance(library, str):
        raise TypeError(f"use_openmp: expected a library path (str) or None, got {type(library).__name__}")
    import ctypes
    try:
        lib = ctypes.CDLL(library)
        fns = [ctypes.cast(getattr(lib, n), ctypes.c_void_p).value
               for n in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads", "omp_in_parallel")]
    except (OSError, AttributeError) as e:
        raise ValueError(f"use_openmp: {library!r} is not an OpenMP runtime with GOMP_parallel ({e})") from None
    _set_omp(*fns)
    _pool[0] = (library, lib)  # keeps the library loaded while its functions are in use


def thread_pool():
    """Whose threads run the kernels: "fastrnn" (the own pool) or the OpenMP library's path (use_openmp)."""
    return "fastrnn" if _pool[0] is None or not _omp_enabled() else _pool[0][0]


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
            "fastrnn_isa": get_isa(), "fastrnn_threads": get_num_threads(), "fastrnn_pool": thread_pool()}
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
