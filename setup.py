"""Builds fastrnn._core: the C kernels in csrc/ and the Cython binding in fastrnn/_core.pyx.

The kernels are compiled once per dtype and ISA (csrc/isa/*.c); the AVX2+FMA instances get their target
through `#pragma GCC target` inside those files, so the extension itself is built for the baseline x86-64
and runs anywhere (no flag for the build machine's own CPU). No BLAS is linked: scipy's is passed in at import time.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)

sources = ["fastrnn/_core.pyx", "csrc/gemm.c", "csrc/dispatch.c", "csrc/threads.c", "csrc/workspace.c", "csrc/optim.c"] + sorted(glob.glob("csrc/isa/*.c"))
depends = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/*.c")) + ["fastrnn/_core.pxd"]

# FASTRNN_SANITIZE=address,undefined (any -fsanitize list) builds an instrumented extension for .ci/sanitize
# (docs/reliability.md): -O1 -g with frame pointers for readable reports; run it with the sanitizer runtime
# preloaded (LD_PRELOAD=$(gcc -print-file-name=libasan.so)), as Python itself is not instrumented.
sanitize = os.environ.get("FASTRNN_SANITIZE", "").strip()
# FASTRNN_OPT overrides the optimisation flags (FASTRNN_OPT=-O0: a quick build for checks that do not run the
# kernels for speed, as tests/test_packaging.py's wheel; never for timing).
opt_args = os.environ.get("FASTRNN_OPT", "-O3").split()
san_args = []
if sanitize:
    opt_args = ["-O1", "-g", "-fno-omit-frame-pointer"]
    san_args = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=undefined"]

ext = Extension(
    "fastrnn._core",
    sources=sources,
    depends=depends,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # -O3 for vectorisation; no -ffast-math (it breaks NaN propagation and the exactness tests rely on);
    # -fno-math-errno lets sqrt/exp inline without touching errno.
    extra_compile_args=opt_args + san_args + ["-fno-math-errno", "-Wall", "-Wno-unused-function"],
    extra_link_args=san_args + ["-lm", "-pthread"],
)

setup(ext_modules=cythonize([ext], language_level=3, compiler_directives={"boundscheck": False,
                                                                             "wraparound": False}))
