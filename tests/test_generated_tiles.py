"""The generated tile kernels in csrc/gen/ are exactly what their generator writes.

csrc/gen/gen_tiles.py writes csrc/gen/tiles_avx2.h and csrc/gen/tiles_avx512.h, which are committed (the
build does not run Python).  This test runs the generator into a temporary directory and compares the
files byte for byte with the committed ones, so an edit of either side alone fails here.
"""

import filecmp
import os
import subprocess
import sys

import pytest

GEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "gen")
FILES = ["tiles_avx2.h", "tiles_avx512.h"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_tiles")
    subprocess.run([sys.executable, os.path.join(GEN, "gen_tiles.py"), str(out)], check=True)
    return out


@pytest.mark.parametrize("name", FILES)
def test_committed_tiles_match_generator(generated, name):
    committed = os.path.join(GEN, name)
    assert os.path.exists(committed), f"{committed} is missing"
    assert filecmp.cmp(committed, os.path.join(generated, name), shallow=False), (
        f"csrc/gen/{name} differs from what csrc/gen/gen_tiles.py writes: run `python csrc/gen/gen_tiles.py` "
        "and commit its output")


def test_generator_writes_only_these(generated):
    assert sorted(os.listdir(generated)) == FILES
