"""The package's dependency rule (docs/design.md, Layers and their dependency rule), read from the imports of
every module of the source tree, and the promise that `import fastrnn` imports no peer library.

    fastrnn._core (binding) <- fastrnn.nn (numpy layers) <- fastrnn.torch            (the PyTorch drop-in)
                                                         <- layers, models, optimizers, losses, callbacks,
                                                            metrics                   (the Keras-style API)
    fastrnn.runtime: the process-wide controls (binding only); fastrnn.reference: the float64 oracle
    nothing imports fastrnn.cli or fastrnn.bench (but themselves)
"""
import ast
import glob
import os
import subprocess
import sys
import tempfile

import pytest

import fastrnn

PKG = os.path.dirname(os.path.abspath(fastrnn.__file__))
KERAS = {"layers", "models", "optimizers", "losses", "callbacks", "metrics"}

# group -> the groups its modules may import (besides themselves and the standard library / numpy / scipy)
ALLOWED = {
    "_core": set(),
    "runtime": {"_core"},
    "nn": {"_core"},
    "reference": {"nn"},
    "torch": {"nn", "runtime", "_core"},
    "keras": {"nn", "runtime"},
    "bench": {"nn", "runtime", "reference", "_core", "torch", "keras", "top"},
    "cli": {"nn", "runtime", "reference", "_core", "bench", "keras", "torch", "top"},
    "top": {"nn", "runtime", "_core", "keras"},
}


def _group(module):
    """fastrnn.a.b -> its group name."""
    parts = module.split(".")
    if parts[0] != "fastrnn":
        return None
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return "top" if len(parts) == 1 or parts[1] == "__init__" else "cli"
    head = parts[1]
    return "keras" if head in KERAS else head


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield path, rel


def _imports(path, module):
    """Absolute names of the fastrnn modules `path` imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = path.endswith("__init__.py")
    package = module if is_pkg else module.rsplit(".", 1)[0]
    if is_pkg:
        package = module[: -len(".__init__")]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "fastrnn"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "fastrnn":
                continue
            for a in node.names:  # from pkg import x: x a submodule, or a name defined in pkg
                sub = os.path.join(os.path.dirname(PKG), *f"{name}.{a.name}".split("."))
                out.append(f"{name}.{a.name}" if os.path.isdir(sub) or os.path.exists(sub + ".py")
                           or os.path.exists(sub + ".pyx") or glob.glob(sub + ".*.so") else name)
    return out


def test_rule_holds_for_every_module():
    bad = []
    n = 0
    for path, module in _modules():
        src = _group(module)
        for imp in _imports(path, module):
            dst = _group(imp)
            n += 1
            if dst is None or dst == src or dst == "_version":
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{module} imports {imp} ({src} -> {dst})")
    assert n > 20, "the scan found almost no imports: is it reading the tree?"
    assert not bad, "dependency rule broken:\n" + "\n".join(bad)


def test_rule_checker_catches_a_violation(tmp_path):
    """The scan resolves relative imports: a keras-side module importing fastrnn.torch is seen."""
    p = tmp_path / "m.py"
    p.write_text("from ..torch import modules\nfrom .. import bench\nimport fastrnn.cli\n")
    got = _imports(str(p), "fastrnn.layers.m")
    groups = {_group(m) for m in got}
    assert {"torch", "bench", "cli"} <= groups, got
    assert _group("fastrnn.torch") not in ALLOWED["keras"] and "cli" not in ALLOWED["nn"]


def test_import_fastrnn_imports_no_peer():
    code = ("import sys, fastrnn, fastrnn.nn, fastrnn.runtime, fastrnn.reference\n"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'matplotlib', 'h5py')"
            " if m in sys.modules]\n"
            "assert not bad, bad\n")
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path, where a checkout's fastrnn/
    # (without the built extension of a non-editable install) would shadow the installed package
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr


def test_every_subpackage_is_a_package():
    """Every folder of the source tree holding Python modules is a package (an __init__.py), so
    packages.find puts it in the wheel."""
    missing = [root for root, _, files in os.walk(PKG)
               if any(f.endswith(".py") for f in files) and "__init__.py" not in files
               and "__pycache__" not in root]
    assert not missing, missing
