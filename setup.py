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

sources = ["fastrnn/_core.pyx", "csrc/gemm.c", "csrc/dispatch.c", "csrc/threads.c", "csrc/workspace.c"] + sorted(glob.glob("csrc/isa/*.c"))
depends = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.c") + glob.glob("csrc/gen/*.h"))

ext = Extension(
    "fastrnn._core",
    sources=sources,
    depends=depends,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # -O3 for vectorisation; no -ffast-math (it breaks NaN propagation and the exactness tests rely on);
    # -fno-math-errno lets sqrt/exp inline without touching errno.
    extra_compile_args=["-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function"],
    extra_link_args=["-lm", "-pthread"],
)

setup(ext_modules=cythonize([ext], language_level=3, compiler_directives={"boundscheck": False,
                                                                             "wraparound": False}))
