"""The figures of a report as plain data: which checkpoints each plot shows, in which colour and marker,
its frontier, the laws over it, and why it is empty when it is. The page draws them with plotly from
the embedded table, `--figures` with matplotlib, both from these specs.

Scale: a scatter shows every checkpoint up to `max_points`; above that, one stratified sample per
(family, architecture) shared by all scatters, plus every point of each plot's frontier; the frontier
and the laws always use every checkpoint. Training curves show up to `max_runs` runs (sampled per family
above that). Each plot says when it is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evalkit.report.fits import Fit
from evalkit.report.summary import TaskView, View

FAMILY_COLORS = {"clip": "#1f77b4", "mammut": "#ff7f0e", "coca": "#2ca02c", "siglip": "#d62728", "cap": "#9467bd"}
OTHER_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31")
# plotly marker names, and the matplotlib marker drawn for each in the static figures
SYMBOLS = (("circle", "o"), ("square", "s"), ("diamond", "D"), ("triangle-up", "^"), ("triangle-down", "v"),
           ("cross", "P"), ("x", "X"), ("pentagon", "p"), ("hexagon", "h"), ("star", "*"), ("triangle-left", "<"),
           ("triangle-right", ">"), ("hourglass", "$\u29d6$"), ("bowtie", "$\u22c8$"), ("star-diamond", "d"),
           ("octagon", "8"))
X_LABELS = {"gflops_total": "total compute (GFLOPs)", "samples_seen": "samples seen"}
MAX_POINTS = 4000
MAX_RUNS = 150


@dataclass
class Styles:
    family_color: dict[str, str]
    arch_symbol: dict[str, int]  # index into SYMBOLS

    @classmethod
    def of(cls, view: View) -> Styles:
        fams = sorted(set(view.ckpt["family"]), key=lambda f: (f not in FAMILY_COLORS, f))
        others = iter(OTHER_COLORS * (1 + len(fams) // len(OTHER_COLORS)))
        colors = {f: FAMILY_COLORS.get(f) or next(others) for f in fams}
        archs = sorted(set(view.ckpt["arch"]))
        return cls(colors, {a: i % len(SYMBOLS) for i, a in enumerate(archs)})

    def color(self, group: str) -> str:
        return self.family_color.get(group, FAMILY_COLORS.get(group.lower(), "#444444"))


@dataclass
class Figure:
    """One plot. `kind`: scatter (error vs x, log-log), curves (metric vs epoch per run), compare."""

    id: str
    kind: str
    title: str
    task: str = ""
    metric: str = ""
    x: str = ""
    empty: str = ""  # why nothing is drawn (the page shows it in the plot's place)
    notes: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # scatter: family, arch, color, symbol, idx
    frontier: list[dict[str, Any]] = field(default_factory=list)  # family, color, idx (sorted by x)
    laws: list[dict[str, Any]] = field(default_factory=list)  # group, color, label, x, error, low, high, x_fitted_max
    runs: list[dict[str, Any]] = field(default_factory=list)  # curves: family, color, runs: [[idx...], ...]
    compare: dict[str, Any] = field(default_factory=dict)  # compare: ours, theirs, name, epoch, beyond, tol

    def n_points(self) -> int:
        """Markers the plot draws (what the browser test counts)."""
        if self.kind == "scatter":
            return sum(len(g["idx"]) for g in self.groups)
        if self.kind == "curves":
            return sum(len(r) for f in self.runs for r in f["runs"])
        if self.kind == "compare":
            return len(self.compare.get("ours", []))
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], {})} | {"id": self.id, "kind": self.kind}


def _slug(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts if p)


def shared_sample(view: View, max_points: int, seed: int = 0) -> np.ndarray | None:
    """None (show all) up to `max_points` checkpoints; else a sorted index sample stratified by
    (family, arch): each stratum its share, at least a few, drawn with a fixed seed."""
    n = len(view.ckpt)
    if n <= max_points:
        return None
    rng = np.random.default_rng(seed)
    strata = view.ckpt.groupby(["family", "arch"], sort=True).indices
    floor = max(1, max_points // (4 * max(len(strata), 1)))
    picks = []
    for _, idx in sorted(strata.items()):
        k = min(len(idx), max(floor, int(round(max_points * len(idx) / n))))
        picks.append(rng.choice(idx, size=k, replace=False))
    return np.unique(np.concatenate(picks))


def _scatter(view: View, tv: TaskView, x: str, styles: Styles, sample: np.ndarray | None, fits: list[Fit]) -> Figure:
    from evalkit.fit.frontier import select_frontier

    fig = Figure(_slug("scatter", tv.task, tv.metric, x), "scatter",
                 f"{tv.task}: error (1 - {tv.metric}) vs {X_LABELS[x]}", tv.task, tv.metric, x)
    xs = view.ckpt[x].to_numpy(dtype=float)
    err = 1.0 - tv.values
    has_value = np.isfinite(err)
    if not has_value.any():
        fig.empty = (f"no ok {tv.metric} result for {tv.task}"
                     + (f" ({tv.n_failed} failed units: see Failures)" if tv.n_failed else ""))
        return fig
    has_x = np.isfinite(xs) & (xs > 0)
    if not (has_value & has_x).any():
        fig.empty = (f"no checkpoint with a {tv.metric} value has {x}: "
                     + ("FLOPs were not counted for these architectures, or the table was imported without "
                        "them (`evalkit import ... --gflops-profile`); the samples-seen plot still shows"
                        if x == "gflops_total" else
                        "these checkpoints have no training context (a single --model, no run folder)"))
        return fig
    valid = has_value & has_x
    if (has_value & ~has_x).any():
        fig.notes.append(f"{int((has_value & ~has_x).sum()):,} checkpoints without {x} left out")
    if (valid & (err <= 0)).any():
        fig.notes.append(f"{int((valid & (err <= 0)).sum()):,} checkpoints with error 0 cannot show on a log axis")
    valid &= err > 0
    fam = view.ckpt["family"].to_numpy()
    front: set[int] = set()
    for f in sorted(set(fam[valid])):
        idx = np.flatnonzero(valid & (fam == f))
        mask = select_frontier(xs[idx], err[idx], "nondominated")
        on = idx[mask][np.argsort(xs[idx[mask]], kind="stable")]
        fig.frontier.append({"family": f, "color": styles.color(f), "idx": on.tolist()})
        front.update(on.tolist())
    shown = valid.copy()
    if sample is not None:
        shown = np.zeros_like(valid)
        shown[sample] = True
        shown[list(front)] = True
        shown &= valid
        fig.notes.append(f"showing {int(shown.sum()):,} of {int(valid.sum()):,} checkpoints: a stratified sample "
                         "per family and architecture plus every frontier point; the frontiers and laws use all")
    arch = view.ckpt["arch"].to_numpy()
    for (f, a) in sorted({(fam[i], arch[i]) for i in np.flatnonzero(shown)}):
        idx = np.flatnonzero(shown & (fam == f) & (arch == a))
        fig.groups.append({"family": f, "arch": a, "color": styles.color(f), "symbol": styles.arch_symbol[a],
                           "idx": idx.tolist()})
    for fit in fits:
        if fit.drawn and (fit.task, fit.metric, fit.x) == (tv.task, tv.metric, x):
            for law in fit.laws:
                fig.laws.append({"group": law.group, "color": styles.color(law.group), "label": law.label,
                                 "x": law.x, "error": law.error, "low": law.low, "high": law.high,
                                 "x_fitted_max": law.x_fitted_max, "fit": str(fit.folder)})
            if fit.note:
                fig.notes.append(f"{fit.folder}: {fit.note}")
    return fig


def _curves(view: View, tv: TaskView, styles: Styles, max_runs: int, seed: int = 0) -> Figure:
    fig = Figure(_slug("curves", tv.task, tv.metric), "curves", f"{tv.task}: {tv.metric} vs epoch, per run",
                 tv.task, tv.metric, "epoch")
    ep = view.ckpt["epoch"].to_numpy(dtype=float)
    ok = np.isfinite(tv.values) & np.isfinite(ep)
    if not ok.any():
        fig.empty = (f"no {tv.metric} value with an epoch for {tv.task}" if np.isfinite(tv.values).any()
                     else f"no ok {tv.metric} result for {tv.task}")
        return fig
    sel = np.flatnonzero(ok)
    run, _ = pd.factorize(view.ckpt["run"].to_numpy()[sel], sort=True)
    order = np.lexsort((sel, ep[sel], run))  # by run name, then epoch, then table order
    sel, run = sel[order], run[order]
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    segments = np.split(sel, starts[1:])
    fam = view.ckpt["family"].to_numpy()[sel[starts]]
    keep = np.arange(len(segments))
    if len(segments) > max_runs:
        rng = np.random.default_rng(seed)
        picked = []
        for f in sorted(set(fam)):
            mine = np.flatnonzero(fam == f)
            k = min(len(mine), max(1, int(round(max_runs * len(mine) / len(segments)))))
            picked.append(rng.choice(mine, size=k, replace=False))
        keep = np.sort(np.concatenate(picked))
        fig.notes.append(f"showing {len(keep):,} of {len(segments):,} runs (sampled per family)")
    for f in sorted(set(fam[keep])):
        fig.runs.append({"family": f, "color": styles.color(f),
                         "runs": [segments[k].tolist() for k in keep if fam[k] == f]})
    return fig


def _compare(cmp: Any, tv: TaskView, max_points: int, seed: int = 0) -> Figure:
    task = tv.task.removeprefix("wds/")
    fig = Figure(_slug("compare", tv.task, tv.metric), "compare", f"{tv.task} {tv.metric}: ours vs theirs",
                 tv.task, tv.metric, "theirs")
    m = cmp.matched
    m = m[(m["task"] == task) & (m["metric"] == tv.metric)]
    if m.empty:
        fig.empty = f"no {tv.task} {tv.metric} value of ours is in the other table"
        return fig
    if len(m) > max_points:
        beyond = m[m["beyond_tol"]]
        rest = m[~m["beyond_tol"]].sample(n=max(0, max_points - len(beyond)), random_state=seed)
        fig.notes.append(f"showing {len(beyond) + len(rest):,} of {len(m):,} matched values (every one beyond "
                         "the tolerance, the rest sampled)")
        m = m.loc[sorted(set(beyond.index) | set(rest.index))]
    fig.compare = {"ours": m["ours"].astype(float).tolist(), "theirs": m["theirs"].astype(float).tolist(),
                   "name": m["name"].astype(str).tolist(), "epoch": m["epoch"].astype(str).tolist(),
                   "beyond": m["beyond_tol"].astype(bool).tolist(), "tol": float(cmp.tol)}
    n_b = int(m["beyond_tol"].sum())
    fig.notes.append(f"{n_b:,} of {len(m):,} beyond the tolerance {cmp.tol:g}" if n_b else
                     f"all {len(m):,} within the tolerance {cmp.tol:g}")
    return fig


def build_figures(view: View, fits: list[Fit], cmp: Any = None, *, max_points: int = MAX_POINTS,
                  max_runs: int = MAX_RUNS) -> tuple[list[Figure], Styles, np.ndarray | None]:
    """Per task: error vs compute, error vs samples seen, the training curves, and the comparison."""
    styles = Styles.of(view)
    sample = shared_sample(view, max_points)
    figs: list[Figure] = []
    for tv in view.tasks:
        figs.append(_scatter(view, tv, "gflops_total", styles, sample, fits))
        figs.append(_scatter(view, tv, "samples_seen", styles, sample, fits))
        figs.append(_curves(view, tv, styles, max_runs))
        if cmp is not None:
            figs.append(_compare(cmp, tv, max_points))
    return figs, styles, sample
