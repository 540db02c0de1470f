"""Plots in the paper's style: log-log error vs compute, all points faint, frontier marked, fitted
curves (solid over the fitted range, dashed beyond) with bootstrap bands, held-out points as X.

matplotlib is imported inside the function so that `import evalkit.fit` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evalkit.fit.outputs import atomic_write

if TYPE_CHECKING:
    from evalkit.fit.api import GroupFit

_COLORS = {"clip": "tab:blue", "mammut": "tab:orange", "coca": "tab:green", "siglip": "tab:red"}
_X_LABELS = {"gflops_total": "Total compute (GFLOPs)", "samples_seen": "Samples seen"}


def plot_groups(fits: Sequence[GroupFit], path: Path, *, x_axis: str, y_label: str, x_max: float | None = None,
                title: str | None = None) -> Path:
    """One figure with every group in `fits`; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    palette = iter(["tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"])
    for g in fits:
        color = _COLORS.get(g.group.lower()) or next(palette, "black")
        pts = g.points
        ax.scatter(pts["x"], pts["y"], s=8, alpha=0.12, color=color, linewidths=0)
        fitted = pts[pts["fitted"]]
        ax.scatter(fitted["x"], fitted["y"], s=26, alpha=0.8, color=color, edgecolors="black", linewidths=0.4)
        held = pts[pts["heldout"]]
        if len(held):
            ax.scatter(held["x"], held["y"], s=60, marker="X", color=color, edgecolors="black", linewidths=0.5,
                       label=f"{g.group} held out")
        lo_x, hi_fit = float(fitted["x"].min()), float(fitted["x"].max())
        hi_x = max(x_max or 0.0, float(pts["x"].max()), hi_fit)
        grid_in = np.geomspace(lo_x, hi_fit, 200)
        grid_out = np.geomspace(hi_fit, hi_x, 100) if hi_x > hi_fit else np.array([])
        r = g.result
        base = f"(C + e^{r.ln_b:.3f})" if r.b > 0 else "C"
        label = f"{g.group}: {r.a:.4g} {base}^{{{r.c:.4f}}}" + (f" + {r.d:.4f}" if r.d else "")
        ax.plot(grid_in, r.predict(grid_in), color=color, linewidth=1.4, label=label)
        if grid_out.size:
            ax.plot(grid_out, r.predict(grid_out), color=color, linewidth=1.2, linestyle="--")
        if g.boot is not None:
            full = np.geomspace(lo_x, hi_x, 300)
            blo, bhi = g.boot.band(full)
            ax.fill_between(full, blo, bhi, color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_X_LABELS.get(x_axis, x_axis))
    ax.set_ylabel(y_label)
    ax.grid(True, which="both", linestyle="--", linewidth=0.5, alpha=0.6)
    ax.spines["right"].set_visible(False)
    ax.spines["top"].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=130))
    finally:
        plt.close(fig)
    return path
