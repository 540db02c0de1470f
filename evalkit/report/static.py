"""`--figures DIR`: the page's figures as PNG and SVG files for papers, drawn with matplotlib from the same
figure specs (the same points, frontiers, laws and bands; the page's hover is what they lack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evalkit.atomic import atomic_write
from evalkit.report.figures import SYMBOLS, X_LABELS, Figure
from evalkit.report.summary import View


def _scatter(ax, fig: Figure, view: View) -> None:
    xs = view.ckpt[fig.x].to_numpy(dtype=float)
    tv = view.task(fig.task)
    err = 1.0 - tv.values
    for g in fig.groups:
        i = np.asarray(g["idx"], dtype=int)
        ax.scatter(xs[i], err[i], s=22, marker=SYMBOLS[g["symbol"]][1], color=g["color"], alpha=0.8,
                   edgecolors="#222", linewidths=0.4, label=f"{g['family']} {g['arch']}")
    for fr in fig.frontier:
        i = np.asarray(fr["idx"], dtype=int)
        ax.step(xs[i], err[i], where="post", color=fr["color"], linestyle=":", linewidth=1.3)
    for law in fig.laws:
        x, y = np.asarray(law["x"], dtype=float), np.asarray(law["error"], dtype=float)
        inside = x <= law["x_fitted_max"] * (1 + 1e-12)
        ax.plot(x[inside], y[inside], color=law["color"], linewidth=2, label=f"{law['group']}: {law['label']}")
        if (~inside).any():
            k = max(int(inside.sum()) - 1, 0)
            ax.plot(x[k:], y[k:], color=law["color"], linewidth=1.6, linestyle="--")
        if law.get("low") and law.get("high"):
            lo = np.asarray([np.nan if v is None else v for v in law["low"]], dtype=float)
            hi = np.asarray([np.nan if v is None else v for v in law["high"]], dtype=float)
            ax.fill_between(x, lo, hi, color=law["color"], alpha=0.18, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[fig.x])
    ax.set_ylabel(f"error (1 - {fig.metric})")


def _curves(ax, fig: Figure, view: View) -> None:
    ep = view.ckpt["epoch"].to_numpy(dtype=float)
    v = view.task(fig.task).values
    for fam in fig.runs:
        for k, run in enumerate(fam["runs"]):
            i = np.asarray(run, dtype=int)
            ax.plot(ep[i], v[i], marker="o", markersize=3, color=fam["color"], linewidth=1,
                    label=fam["family"] if k == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(fig.metric)


def _compare(ax, fig: Figure) -> None:
    c = fig.compare
    ours, theirs, beyond = (np.asarray(c[k]) for k in ("ours", "theirs", "beyond"))
    lo, hi = float(min(ours.min(), theirs.min())), float(max(ours.max(), theirs.max()))
    pad = (hi - lo) * 0.05 + c["tol"]
    line = np.array([lo - pad, hi + pad])
    ax.fill_between(line, line - c["tol"], line + c["tol"], color="#2ca02c", alpha=0.15, linewidth=0,
                    label=f"tolerance ±{c['tol']:g}")
    ax.plot(line, line, color="#555", linestyle=":", linewidth=1)
    ax.scatter(theirs[~beyond], ours[~beyond], s=14, color="#1f77b4", label="within")
    if beyond.any():
        ax.scatter(theirs[beyond], ours[beyond], s=18, color="#d62728", label="beyond")
    ax.set_xlabel("theirs")
    ax.set_ylabel("ours")


def write_figures(view: View, figs: list[Figure], folder: str | Path) -> list[Path]:
    """Every non-empty figure as `<id>.png` and `<id>.svg` in `folder` (atomic writes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fig in figs:
        if fig.empty:
            continue
        f, ax = plt.subplots(figsize=(7, 5))
        try:
            if fig.kind == "scatter":
                _scatter(ax, fig, view)
            elif fig.kind == "curves":
                _curves(ax, fig, view)
            else:
                _compare(ax, fig)
            ax.set_title(fig.title, fontsize=10)
            ax.grid(True, which="both", linestyle="--", linewidth=0.5, alpha=0.5)
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                ax.legend(fontsize=6, loc="best", ncol=2 if len(handles) > 8 else 1)
            f.tight_layout()
            for ext in ("png", "svg"):
                path = folder / f"{fig.id}.{ext}"
                atomic_write(path, lambda p, e=ext, fg=f: fg.savefig(p, format=e, dpi=150))
                written.append(path)
        finally:
            plt.close(f)
    return written
