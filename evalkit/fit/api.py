"""`fit_table`: results table in, per-group scaling laws, intervals, comparison and files out."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.errors import UsageError
from evalkit.fit.bootstrap import BootstrapResult, bootstrap_fit
from evalkit.fit.compare import compare_groups, crossovers
from evalkit.fit.forms import get_form
from evalkit.fit.frontier import select_frontier
from evalkit.fit.outputs import markdown_table, write_csv, write_text
from evalkit.fit.solver import FitResult, fit_curve
from evalkit.fit.table import Filters, load_points, normalise_x


@dataclass
class GroupFit:
    """One group's points (with `frontier`, `fitted`, `heldout` flags), its fit and bootstrap."""

    group: str
    points: pd.DataFrame
    result: FitResult
    boot: BootstrapResult | None = None

    @property
    def heldout(self) -> pd.DataFrame:
        return self.points[self.points["heldout"]]

    @property
    def heldout_rmse(self) -> float:
        h = self.heldout
        if h.empty:
            return float("nan")
        return float(np.sqrt(np.mean((self.result.predict(h["x"].to_numpy()) - h["y"].to_numpy()) ** 2)))


@dataclass
class FitReport:
    """Everything `fit_table` computed; `files` maps output names to the paths written."""

    groups: dict[str, GroupFit]
    coefficients: pd.DataFrame
    predictions: pd.DataFrame
    comparison: pd.DataFrame | None = None
    crossover_x: list[float] | None = None
    settings: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def fit_groups(points: pd.DataFrame, *, form: str = "saturation_both", frontier: str = "bins",
               holdout_above: float | None = None, bootstrap: int = 0, seed: int = 0, level: float = 0.95,
               reference_method: str = "bin") -> dict[str, GroupFit]:
    """Frontier, hold-out split, fit and (optionally) bootstrap, per group of a `load_points` frame."""
    get_form(form)
    out: dict[str, GroupFit] = {}
    for k, (name, g) in enumerate(sorted(points.groupby("group"), key=lambda t: str(t[0]))):
        g = g.reset_index(drop=True).copy()
        g["frontier"] = select_frontier(g["x"].to_numpy(), g["y"].to_numpy(), frontier,
                                        reference_method=reference_method)
        above = g["x"] > holdout_above if holdout_above is not None else np.zeros(len(g), dtype=bool)
        g["fitted"] = g["frontier"] & ~above
        g["heldout"] = g["frontier"] & above
        fit_pts = g[g["fitted"]].sort_values(["x", "y"])
        try:
            res = fit_curve(fit_pts["x"].to_numpy(), fit_pts["y"].to_numpy(), form)
        except ValueError as exc:
            raise UsageError(f"group {name!r}: {exc} (frontier {frontier!r}, {int(g['frontier'].sum())} "
                             "frontier points); try --frontier all or a higher --holdout-above") from exc
        boot = None
        if bootstrap > 0:
            boot = bootstrap_fit(fit_pts["x"].to_numpy(), fit_pts["y"].to_numpy(), res, bootstrap,
                                 seed=seed + 1000 * k, level=level)
        out[str(name)] = GroupFit(str(name), g, res, boot)
    return out


def coefficients_frame(fits: dict[str, GroupFit]) -> pd.DataFrame:
    """One row per group; interval columns when bootstrapped."""
    rows = []
    for name, gf in fits.items():
        r = gf.result
        row = {"group": name, "form": r.form, "a": r.a, "b": r.b, "ln_b": r.ln_b, "c": r.c, "d": r.d,
               "n_points": r.n_points, "n_frontier": int(gf.points["frontier"].sum()), "rmse": r.rmse,
               "mse": r.mse, "n_heldout": int(gf.points["heldout"].sum()), "heldout_rmse": gf.heldout_rmse}
        if gf.boot is not None:
            for pname, (lo, hi) in gf.boot.coef_intervals().items():
                row[f"{pname}_low"], row[f"{pname}_high"] = lo, hi
            row["ln_b_low"] = float(np.log(row["b_low"])) if row["b_low"] > 0 else float("-inf")
            row["ln_b_high"] = float(np.log(row["b_high"])) if row["b_high"] > 0 else float("-inf")
            row["n_bootstrap"] = gf.boot.n
            row["level"] = gf.boot.level
        rows.append(row)
    return pd.DataFrame(rows)


def predictions_frame(fits: dict[str, GroupFit], predict: Sequence[float]) -> pd.DataFrame:
    """Requested predictions and held-out frontier points, with intervals when bootstrapped."""
    rows = []
    for name, gf in fits.items():
        h = gf.heldout.sort_values("x")
        parts = [("requested", np.asarray(predict, dtype=float), None, None),
                 ("heldout", h["x"].to_numpy(), h["y"].to_numpy(), h["model"].to_numpy())]
        for kind, xs, ys, models in parts:
            if len(xs) == 0:
                continue
            pred = gf.result.predict(xs)
            lo, hi = gf.boot.band(xs) if gf.boot is not None else (np.full(len(xs), np.nan),) * 2
            for i, xv in enumerate(xs):
                y_true = float(ys[i]) if ys is not None else np.nan
                rows.append({"group": name, "kind": kind, "x": float(xv), "error_pred": float(pred[i]),
                             "error_low": float(lo[i]), "error_high": float(hi[i]),
                             "metric_pred": 1.0 - float(pred[i]), "error_true": y_true,
                             "abs_err": abs(float(pred[i]) - y_true) if ys is not None else np.nan,
                             "model": models[i] if models is not None else ""})
    cols = ["group", "kind", "x", "error_pred", "error_low", "error_high", "metric_pred", "error_true", "abs_err",
            "model"]
    return pd.DataFrame(rows, columns=cols)


def _comparison_xs(fits: dict[str, GroupFit], predict: Sequence[float]) -> np.ndarray:
    xs = np.concatenate([gf.points.loc[gf.points["frontier"], "x"].to_numpy() for gf in fits.values()])
    lo, hi = np.floor(np.log10(xs.min())), np.ceil(np.log10(max(xs.max(), *predict, 0)))
    return np.unique(np.concatenate([10.0 ** np.arange(lo, hi + 1), np.asarray(predict, dtype=float)]))


def _describe_filters(filters: Filters | None) -> str:
    if filters is None or filters == Filters():
        return "none"
    return ", ".join(f"{k}={v}" for k, v in asdict(filters).items() if v not in (None, False))


def fit_table(table: str | os.PathLike | pd.DataFrame, *, task: str, metric: str, x: str = "gflops_total",
              by: str = "family", form: str = "saturation_both", frontier: str = "bins",
              holdout_above: float | None = None, predict: Sequence[float] = (), bootstrap: int = 0,
              out: str | os.PathLike | None = None, reference_filters: bool | None = None,
              filters: Filters | None = None, groups: Sequence[str] | None = None, seed: int = 0,
              level: float = 0.95, reference_pareto: str = "auto", plots: bool = True) -> FitReport:
    """Fit one law per group of a results table and, if `out` is given, write the outputs there.

    `reference_filters` (default: on with ``frontier="reference"``) applies the LAION fitter's row
    filters; explicit `filters` win over both. `reference_pareto` picks the reference frontier:
    "auto" = pareto_naive on the samples axis and pareto_bin on compute, as the paper's scripts do.
    """
    x = normalise_x(x)
    if filters is None:
        use_ref = frontier == "reference" if reference_filters is None else reference_filters
        filters = Filters.reference(x, task) if use_ref else Filters()
    ref_method = reference_pareto if reference_pareto != "auto" else ("naive" if x == "samples_seen" else "bin")
    points = load_points(table, task=task, metric=metric, x=x, by=by, filters=filters,
                         groups=list(groups) if groups else None)
    fits = fit_groups(points, form=form, frontier=frontier, holdout_above=holdout_above, bootstrap=bootstrap,
                      seed=seed, level=level, reference_method=ref_method)
    predict = [float(v) for v in predict]
    report = FitReport(fits, coefficients_frame(fits), predictions_frame(fits, predict))
    report.settings = {"table": str(table) if not isinstance(table, pd.DataFrame) else "<frame>", "task": task,
                       "metric": metric, "x": x, "by": by, "form": form, "frontier": frontier,
                       "reference_pareto": ref_method if frontier == "reference" else "",
                       "holdout_above": holdout_above, "bootstrap": bootstrap, "level": level, "seed": seed,
                       "filters": _describe_filters(filters)}
    if len(fits) == 2:
        (na, ga), (nb, gb) = fits.items()
        xs = _comparison_xs(fits, predict)
        report.comparison = compare_groups(na, ga.result, ga.boot, nb, gb.result, gb.boot, xs, level)
        all_x = np.concatenate([g.points["x"].to_numpy() for g in fits.values()])
        report.crossover_x = crossovers(ga.result, gb.result, float(all_x.min()),
                                        float(max(all_x.max() * 1e3, *predict, 0)))
    if out is not None:
        write_outputs(report, Path(out), plots=plots)
    return report


def _coefficients_md(report: FitReport) -> str:
    s = report.settings
    form = get_form(s["form"])
    lines = [f"# Scaling-law fit: {s['task']} {s['metric']} vs {s['x']}", "",
             f"Form `{s['form']}`: {form.formula}, error = 1 - {s['metric']}; least squares on the error.",
             f"Frontier `{s['frontier']}`{' (' + s['reference_pareto'] + ')' if s['reference_pareto'] else ''}; "
             f"filters: {s['filters']}; groups by `{s['by']}`."]
    if s["holdout_above"] is not None:
        lines.append(f"Fitted on frontier points with x <= {s['holdout_above']:g}; points above are held out.")
    if s["bootstrap"]:
        lines.append(f"Intervals: {s['level']:.0%} percentile bootstrap over the fitted frontier points "
                     f"({s['bootstrap']} resamples, seed {s['seed']}).")
    lines += ["", markdown_table(report.coefficients)]
    if not report.predictions.empty:
        lines += ["## Predictions", "", markdown_table(report.predictions)]
    return "\n".join(lines)


def _comparison_md(report: FitReport) -> str:
    cmp = report.comparison
    a, b = cmp["group_a"].iloc[0], cmp["group_b"].iloc[0]
    cross = report.crossover_x or []
    lines = [f"# {a} vs {b}", "", f"Gap = error({a}) - error({b}); negative means {a} is better.",
             "Crossover x: " + (", ".join(f"{v:.4g}" for v in cross) if cross else "none in range") + ".", "",
             markdown_table(cmp)]
    return "\n".join(lines)


def _json_default(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def fit_record(report: FitReport, n_grid: int = 120) -> dict:
    """What `fit.json` holds, for readers that draw a fit over the table it came from (evalkit report):
    the settings, and per group the law, the fitted x range, the curve (and bootstrap band) on a log
    grid from the first fitted x to the largest x asked about (extrapolation included), and the points
    it was fitted to (model, x, y), so a reader can tell whether a table is the one fitted."""
    x_pred = report.predictions["x"].tolist() if not report.predictions.empty else []
    groups = {}
    for name, gf in report.groups.items():
        pts, fitted = gf.points, gf.points[gf.points["fitted"]]
        lo, hi_fit = float(fitted["x"].min()), float(fitted["x"].max())
        hi = max([hi_fit, float(pts["x"].max()), *x_pred])
        grid = np.geomspace(lo, hi, n_grid) if hi > lo else np.array([lo])
        band = gf.boot.band(grid) if gf.boot is not None else None
        r = gf.result
        groups[name] = {
            "form": r.form, "a": r.a, "b": r.b, "c": r.c, "d": r.d, "rmse": r.rmse, "n_points": r.n_points,
            "x_fitted": [lo, hi_fit],
            "curve": {"x": _finite(grid), "error": _finite(r.predict(grid)),
                      "low": _finite(band[0]) if band is not None else None,
                      "high": _finite(band[1]) if band is not None else None},
            "points": {"model": fitted["model"].astype(str).tolist(), "x": _finite(fitted["x"].to_numpy()),
                       "error": _finite(fitted["y"].to_numpy())},
        }
    return {"format": 1, "settings": report.settings, "groups": groups}


def write_outputs(report: FitReport, out: Path, *, plots: bool = True) -> None:
    """coefficients.csv/.md, predictions.csv, comparison.csv/.md (2 groups), fit.json and PNG plots, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    f = report.files
    f["coefficients.csv"] = write_csv(report.coefficients, out / "coefficients.csv")
    f["coefficients.md"] = write_text(_coefficients_md(report), out / "coefficients.md")
    f["predictions.csv"] = write_csv(report.predictions, out / "predictions.csv")
    if report.comparison is not None:
        cmp = report.comparison.copy()
        cmp["kind"] = "gap"
        extra = pd.DataFrame({"kind": "crossover", "x": report.crossover_x or [],
                              "group_a": cmp["group_a"].iloc[0], "group_b": cmp["group_b"].iloc[0]})
        cmp = pd.concat([cmp, extra], ignore_index=True) if len(extra) else cmp
        f["comparison.csv"] = write_csv(cmp, out / "comparison.csv")
        f["comparison.md"] = write_text(_comparison_md(report), out / "comparison.md")
    f["fit.json"] = write_text(json.dumps(fit_record(report), default=_json_default), out / "fit.json")
    if plots:
        from evalkit.fit.plot import plot_groups

        s = report.settings
        y_label = f"error (1 - {s['metric']})"
        x_max = max([*(report.predictions["x"].tolist() if not report.predictions.empty else [])], default=None)
        title = f"{s['task']} {s['metric']}, {s['form']}, frontier {s['frontier']}"
        f["fit.png"] = plot_groups(list(report.groups.values()), out / "fit.png", x_axis=s["x"], y_label=y_label,
                                   x_max=x_max, title=title)
        for name, gf in report.groups.items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            f[f"fit_{safe}.png"] = plot_groups([gf], out / f"fit_{safe}.png", x_axis=s["x"], y_label=y_label,
                                               x_max=x_max, title=title)
