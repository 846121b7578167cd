"""What is benchmarked: the engines and modes, the Case (one layer shape), the shape sets (the grid, the quick
subset, DeepBench's training set and its default subset) and `cases()`, which lists them.

The bottom of fastrnn.bench: depends on nothing else in it (the cell descriptors of fastrnn.nn, the standard library).
"""
from __future__ import annotations

import dataclasses

from ..nn.cells import CELLS
from ..runtime import mem_available

ENGINES = ("fastrnn", "torch", "ort")
ENGINE_NAMES = {"fastrnn": "fastrnn", "torch": "torch", "ort": "ORT"}
MODES = ("forward", "train")
GATES = {name: cell.G for name, cell in CELLS.items()}  # from the cell descriptors (fastrnn/nn/cells.py)

# (T, B, I, H): the benchmark grid (latency: B=1 and 16 at H=128; mid-size; large: H=512 and 1024).
GRID_SHAPES = ((100, 1, 64, 128), (100, 16, 64, 128), (100, 32, 128, 256), (50, 64, 512, 512),
               (25, 64, 1024, 1024))
QUICK_SHAPES = ((100, 1, 64, 128), (100, 16, 64, 128), (50, 64, 512, 512))

# DeepBench (baidu-research/DeepBench, code/kernels/rnn_problems.h), `training_set`, as
# (hidden, batch, timesteps, type). DeepBench's cuDNN runs use CUDNN_SKIP_INPUT with input size = hidden;
# here every layer has its full W_ih and I = H. "vanilla" is the ReLU RNN (DeepBench's MIOpen/cuDNN mode).
DEEPBENCH_TRAINING = (
    (1760, 16, 50, "vanilla"), (1760, 32, 50, "vanilla"), (1760, 64, 50, "vanilla"), (1760, 128, 50, "vanilla"),
    (2048, 16, 50, "vanilla"), (2048, 32, 50, "vanilla"), (2048, 64, 50, "vanilla"), (2048, 128, 50, "vanilla"),
    (2560, 16, 50, "vanilla"), (2560, 32, 50, "vanilla"), (2560, 64, 50, "vanilla"), (2560, 128, 50, "vanilla"),
    (512, 16, 25, "lstm"), (512, 32, 25, "lstm"), (512, 64, 25, "lstm"), (512, 128, 25, "lstm"),
    (1024, 16, 25, "lstm"), (1024, 32, 25, "lstm"), (1024, 64, 25, "lstm"), (1024, 128, 25, "lstm"),
    (2048, 16, 25, "lstm"), (2048, 32, 25, "lstm"), (2048, 64, 25, "lstm"), (2048, 128, 25, "lstm"),
    (4096, 16, 25, "lstm"), (4096, 32, 25, "lstm"), (4096, 64, 25, "lstm"), (4096, 128, 25, "lstm"),
    (1536, 8, 50, "lstm"), (1536, 16, 50, "lstm"), (1536, 32, 50, "lstm"),
    (256, 16, 150, "lstm"), (256, 32, 150, "lstm"), (256, 64, 150, "lstm"),
    (2816, 32, 750, "gru"), (2816, 32, 375, "gru"), (2816, 32, 187, "gru"),
    (2048, 32, 1500, "gru"), (2048, 32, 750, "gru"), (2048, 32, 375, "gru"), (2048, 32, 187, "gru"),
    (1536, 32, 1500, "gru"), (1536, 32, 750, "gru"), (1536, 32, 375, "gru"), (1536, 32, 187, "gru"),
    (2560, 32, 1500, "gru"), (2560, 32, 750, "gru"), (2560, 32, 375, "gru"), (2560, 32, 187, "gru"),
    (512, 32, 1, "gru"), (1024, 32, 1500, "gru"), (1024, 64, 1500, "gru"),
)
# The subset run by default (`--shapes deepbench`): every cell type and both ends of the size range, each
# case a few seconds per engine on a 2-core machine (the whole training set takes hours there:
# `--shapes deepbench-full`). All of them fit in 24 GiB; the largest, GRU H=2560 T=1500 B=32, needs ~6 GiB.
DEEPBENCH = (
    (1760, 16, 50, "vanilla"), (1760, 64, 50, "vanilla"), (2560, 32, 50, "vanilla"),
    (512, 16, 25, "lstm"), (512, 128, 25, "lstm"), (1024, 32, 25, "lstm"), (2048, 16, 25, "lstm"),
    (1536, 8, 50, "lstm"), (256, 32, 150, "lstm"),
    (512, 32, 1, "gru"), (1536, 32, 187, "gru"),
)
SHAPE_SETS = ("quick", "grid", "deepbench", "all", "deepbench-full")


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer shape: a single-layer, unidirectional, float32, time-major layer with biases."""
    cell: str                 # "rnn", "lstm", "gru"
    T: int
    B: int
    I: int
    H: int
    group: str = "grid"       # "grid" | "deepbench"
    nonlinearity: str = "tanh"  # RNN only

    @property
    def G(self):
        return GATES[self.cell]

    @property
    def label(self):
        return "rnn-relu" if self.cell == "rnn" and self.nonlinearity == "relu" else self.cell

    @property
    def shape(self):
        return f"{self.T},{self.B},{self.I},{self.H}"

    @property
    def id(self):
        return f"{self.label}-T{self.T}-B{self.B}-I{self.I}-H{self.H}" + ("-db" if self.group == "deepbench" else "")

    @classmethod
    def from_id(cls, s):
        """Inverse of `id`."""
        parts = s.split("-")
        group = "grid"
        if parts[-1] == "db":
            group, parts = "deepbench", parts[:-1]
        nonlin = "tanh"
        if parts[0] == "rnn" and parts[1] == "relu":
            nonlin, parts = "relu", [parts[0]] + parts[2:]
        dims = {p[0]: int(p[1:]) for p in parts[1:]}
        return cls(parts[0], dims["T"], dims["B"], dims["I"], dims["H"], group, nonlin)

    def flops(self, mode="forward"):
        """2*T*B*G*H*(I+H) per forward; a training step counts 3 forwards (forward + 2 GEMM-sized backward)."""
        f = 2.0 * self.T * self.B * self.G * self.H * (self.I + self.H)
        return f if mode == "forward" else 3.0 * f

    def memory_bytes(self):
        """Rough peak memory of a training step of every engine at once (float32)."""
        T, B, I, H, G = self.T, self.B, self.I, self.H, self.G
        return 4 * (4 * T * B * (I + H) + 8 * T * B * G * H + 8 * G * H * (I + H))


def _mem_available():
    return mem_available()


def cases(cells=("lstm", "gru", "rnn"), shapes="grid", memory_fraction=0.6):
    """The list of Cases for `shapes` in SHAPE_SETS, cell-major in the order of `cells`.
    Cases whose estimated memory exceeds `memory_fraction` of the available memory are left out."""
    if shapes not in SHAPE_SETS:
        raise ValueError(f"shapes: expected one of {SHAPE_SETS}, got {shapes!r}")
    cells = list(cells)
    for c in cells:
        if c not in GATES:
            raise ValueError(f"cell: expected one of {tuple(GATES)}, got {c!r}")
    out = []
    if shapes in ("quick", "grid", "all"):
        grid = QUICK_SHAPES if shapes == "quick" else GRID_SHAPES
        out += [Case(c, *s) for c in cells for s in grid]
    if shapes in ("deepbench", "all", "deepbench-full"):
        table = DEEPBENCH_TRAINING if shapes == "deepbench-full" else DEEPBENCH
        kind = {"vanilla": "rnn", "lstm": "lstm", "gru": "gru"}
        for c in cells:
            for H, B, T, typ in table:
                if kind[typ] == c:
                    out.append(Case(c, T, B, H, H, "deepbench", "relu" if typ == "vanilla" else "tanh"))
    avail = _mem_available()
    if avail:
        out = [c for c in out if c.memory_bytes() <= memory_fraction * avail]
    return out
