"""The PNG chart of the ratios (matplotlib, imported only when a chart is asked for)."""
from __future__ import annotations

import numpy as np

from .shapes import ENGINE_NAMES, MODES


def plot(rows, path):
    """A PNG of the speed-up of fastrnn over each peer (peer ms / fastrnn ms) per case. Needs matplotlib;
    raises ImportError with a clear message without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the PNG chart needs matplotlib (pip install matplotlib); no chart written") from None
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 0.32 * max(
        sum(r["mode"] == m for r in rows) for m in modes) + 1.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['label']} {r['T']},{r['B']},{r['I']},{r['H']} t{r['threads']}" for r in rs]
        y = np.arange(len(rs))
        peers = [p for p in ("torch", "ort") if any(p in r["ratios"] for r in rs)]
        h = 0.8 / max(1, len(peers))
        for j, p in enumerate(peers):
            ratios = [r["ratios"].get(p, 1.0) for r in rs]  # bars grow from 1: right = fastrnn faster
            ax.barh(y + (j - (len(peers) - 1) / 2) * h, [v - 1.0 for v in ratios], left=1.0, height=h,
                    label=f"{ENGINE_NAMES[p]} ms / fastrnn ms")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{mode}: speed-up of fastrnn (> 1: faster)")
        if peers:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
