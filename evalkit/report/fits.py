"""Fitted laws drawn over the table: the folders `evalkit fit` wrote (`--fit DIR`, or found in OUT).

A fit folder's `fit.json` gives the task, metric and axis, each group's law, its curve with the
bootstrap band on a grid that runs past the data (the extrapolation) and the points it was fitted
to. Those points are looked up in the report's table: a fit of another table (or of a task the
table lacks) is not drawn, and the page and a warning line say why. A folder from before fit.json
(coefficients.csv + coefficients.md only) is drawn from its coefficients, without a band and unchecked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.report.load import ReportError
from evalkit.report.summary import View

_TITLE = re.compile(r"^# Scaling-law fit: (\S+) (\S+) vs (\S+)\s*$", re.M)
_BY = re.compile(r"groups by `([^`]+)`")


@dataclass
class Law:
    group: str
    label: str  # the law as text, for legends
    x: list[float]  # curve grid (fitted range, then extrapolation)
    error: list[float]
    low: list[float] | None = None  # bootstrap band, when the fit had one
    high: list[float] | None = None
    x_fitted_max: float = float("nan")  # where the fitted range ends and the extrapolation starts


@dataclass
class Fit:
    folder: Path
    task: str
    metric: str
    x: str  # gflops_total | samples_seen
    by: str
    form: str
    laws: list[Law] = field(default_factory=list)
    problem: str = ""  # why it is not drawn (empty: drawn)
    note: str = ""  # drawn, with this caveat

    @property
    def drawn(self) -> bool:
        return not self.problem and bool(self.laws)


def find_fit_dirs(out: Path | None) -> list[Path]:
    """Fit folders inside a results folder (`OUT/fit`, `OUT/*/` or `OUT/*/*/` holding coefficients.csv)."""
    if out is None or not out.is_dir():
        return []
    found = [p.parent for pattern in ("coefficients.csv", "*/coefficients.csv", "*/*/coefficients.csv")
             for p in sorted(out.glob(pattern))]
    return [p for p in dict.fromkeys(found) if p.name not in ("units", "tasks", "samples")]


def _label(form: str, a: float, b: float, c: float, d: float) -> str:
    base = f"(C + {b:.3g})" if b > 0 else "C"
    return f"{a:.3g} {base}^{c:.3f}" + (f" + {d:.3f}" if d else "")


def _curve(a: float, b: float, c: float, d: float, lo: float, hi: float) -> tuple[list[float], list[float]]:
    from evalkit.fit.forms import evaluate

    grid = np.geomspace(lo, hi, 120) if hi > lo else np.array([lo])
    return grid.tolist(), evaluate(grid, a, b, c, d).tolist()


def _from_json(folder: Path, record: dict) -> Fit:
    s = record.get("settings") or {}
    fit = Fit(folder, str(s.get("task", "")), str(s.get("metric", "")), str(s.get("x", "gflops_total")),
              str(s.get("by", "family")), str(s.get("form", "")))
    for name, g in (record.get("groups") or {}).items():
        cur = g.get("curve") or {}
        fit.laws.append(Law(str(name), _label(g.get("form", ""), g["a"], g["b"], g["c"], g["d"]),
                            [float(v) for v in cur.get("x") or []],
                            [float("nan") if v is None else float(v) for v in cur.get("error") or []],
                            cur.get("low"), cur.get("high"), float((g.get("x_fitted") or [np.nan, np.nan])[1])))
    return fit


def _from_coefficients(folder: Path, view: View) -> Fit:
    """A fit folder without fit.json: task/metric/axis from coefficients.md's title, laws from the CSV."""
    md = folder / "coefficients.md"
    text = md.read_text() if md.is_file() else ""
    m = _TITLE.search(text)
    if m is None:
        raise ReportError(f"{folder}: neither fit.json nor a readable coefficients.md title; is it a folder "
                          "written by `evalkit fit`?")
    by = _BY.search(text)
    coef = pd.read_csv(folder / "coefficients.csv")
    fit = Fit(folder, m.group(1), m.group(2), m.group(3), by.group(1) if by else "family",
              str(coef["form"].iloc[0]) if "form" in coef and len(coef) else "",
              note="no fit.json (an older `evalkit fit`): drawn from coefficients.csv without a band, and not "
                   "checked against this table")
    xs = view.ckpt[fit.x].to_numpy(dtype=float) if fit.x in view.ckpt else np.array([])
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if xs.size:
        for r in coef.itertuples(index=False):
            gx, gy = _curve(r.a, r.b, r.c, r.d, float(xs.min()), float(xs.max()))
            fit.laws.append(Law(str(r.group), _label(r.form, r.a, r.b, r.c, r.d), gx, gy, None, None, float(xs.max())))
    return fit


def _check(fit: Fit, record: dict | None, view: View) -> None:
    """Refuse to draw a fit whose task, metric or points are not this table's."""
    tv = view.task(fit.task)
    if tv is None:
        fit.problem = (f"{fit.folder}: a fit of task {fit.task!r}, which this table does not have (tasks: "
                       f"{', '.join(t.task for t in view.tasks)}); not drawn")
        return
    if tv.metric != fit.metric:
        fit.problem = (f"{fit.folder}: a fit of {fit.task} {fit.metric}, but the report plots {fit.task}'s main "
                       f"metric {tv.metric}; not drawn")
        return
    if fit.x not in ("gflops_total", "samples_seen"):
        fit.problem = f"{fit.folder}: a fit against {fit.x!r}, which the report does not plot; not drawn"
        return
    if record is None:
        return
    ours = pd.DataFrame({"model": view.ckpt["model"].to_numpy(), "x": view.ckpt[fit.x].to_numpy(dtype=float),
                         "error": 1.0 - tv.values})
    ours = ours[np.isfinite(ours["x"]) & np.isfinite(ours["error"])]
    theirs = pd.DataFrame([(m, x, e) for g in record.get("groups", {}).values()
                           for m, x, e in zip(g["points"]["model"], g["points"]["x"], g["points"]["error"])],
                          columns=["model", "x", "error"])
    if theirs.empty:
        return
    hit = theirs.merge(ours, on="model", how="left", suffixes=("", "_ours"))
    same = (np.isclose(hit["x"], hit["x_ours"], rtol=1e-9, atol=0) & np.isclose(hit["error"], hit["error_ours"],
                                                                                    rtol=0, atol=1e-9))
    found = hit[same]["model"].nunique()
    if found < len(theirs):
        miss = theirs[~theirs["model"].isin(hit[same]["model"])].iloc[0]
        fit.problem = (f"{fit.folder}: fitted on another table: {len(theirs) - found} of its {len(theirs)} fitted "
                       f"points are not in this table's {fit.task} {fit.metric} (e.g. {miss['model']} at "
                       f"{fit.x}={miss['x']:.4g}, error {miss['error']:.4g}); not drawn. Fit this table again "
                       f"(`evalkit fit {view.results.source} --task {fit.task} --metric {fit.metric} --out DIR`)")


def read_fit(folder: str | Path, view: View) -> Fit:
    """One fit folder, checked against the view's table (`problem` says why it is not drawn)."""
    folder = Path(folder)
    if not (folder / "coefficients.csv").is_file() and not (folder / "fit.json").is_file():
        raise ReportError(f"{folder}: not a fit folder (no fit.json or coefficients.csv); pass the --out folder "
                          "of `evalkit fit`")
    record = None
    if (folder / "fit.json").is_file():
        try:
            record = json.loads((folder / "fit.json").read_text())
            fit = _from_json(folder, record)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReportError(f"{folder / 'fit.json'}: unreadable ({type(e).__name__}: {e}); run `evalkit fit` "
                              "again into that folder") from None
    else:
        try:
            fit = _from_coefficients(folder, view)
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ReportError(f"{folder}: unreadable fit folder ({type(e).__name__}: {e}); run `evalkit fit` "
                              "again into that folder") from None
    _check(fit, record, view)
    return fit
