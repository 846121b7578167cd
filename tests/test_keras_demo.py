"""The demo's training really learns: its validation loss ends below the text's unigram entropy (a small,
seeded configuration that runs in seconds)."""
import argparse
import importlib
import importlib.util
import os

import numpy as np


def _demo():
    try:
        return importlib.import_module("fastrnn.cli.demo")
    except ImportError:  # before fastrnn/cli/ is a package (fastrnn/cli.py still a module)
        import fastrnn
        path = os.path.join(os.path.dirname(fastrnn.__file__), "cli", "demo.py")
        spec = importlib.util.spec_from_file_location("fastrnn_cli_demo", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def test_demo_small_run_beats_unigram_entropy(capsys, tmp_path):
    demo = _demo()
    p = argparse.ArgumentParser()
    demo._args(p)
    args = p.parse_args(["--units", "128", "--chars", "50000", "--epochs", "5", "--seq-len", "32", "--batch-size", "32",
                         "--generate", "40", "--no-torch", "--quiet"])
    assert demo.run(args) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("validation loss")][0]
    val, H0 = float(line.split()[2]), float(line.split("unigram entropy ")[1].split(";")[0])
    assert val < 0.85 * H0, out
    assert "characters/s" in out and "generated text" in out


def test_demo_rejects_bad_arguments(capsys):
    demo = _demo()
    p = argparse.ArgumentParser()
    demo._args(p)
    assert demo.run(p.parse_args(["--units", "0"])) == 2
    assert "--units" in capsys.readouterr().err
