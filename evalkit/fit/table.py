"""Read a results table (evalkit's tidy shape or the reference's wide shape) into fit points.

The output is one row per checkpoint with the group (e.g. family), x (compute or samples) and y,
the error = 1 - metric, after the filters asked for. Both shapes are accepted so that old LAION
tables and evalkit's own results feed the same fitter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from evalkit.errors import UserError
from evalkit.results.importers import evalkit_names
from evalkit.results.schema import TIDY_COLUMNS

X_AXES = {"gflops_total": ("gflops_total", "gflops"), "samples_seen": ("samples_seen", "total_samples_seen")}
X_ALIASES = {"total_samples_seen": "samples_seen", "gflops": "gflops_total", "compute": "gflops_total",
             "samples": "samples_seen"}
TIDY_REQUIRED = ("task", "metric", "value", "gflops_total", "samples_seen")
# In the LAION segmentation table the zero-shot classification columns are ImageNet-1k results of the
# same checkpoint, while `downstream_dataset` names the segmentation benchmark (ade20k).
_SEGMENTATION_ZEROSHOT_TASK = "imagenet1k"
_CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_WIDE_METRIC_HINTS = ("acc", "recall", "miou", "loss", "map", "mean_")
_FAMILY_COLUMNS = ("family", "namespace")


class TableError(UserError, ValueError):
    """A problem with the input table; the message names the file and says what to do."""


@dataclass(frozen=True)
class Filters:
    """Row filters. All off by default; `Filters.reference(...)` gives the LAION fitter's settings."""

    min_flops: float | None = None
    max_x: float | None = None
    max_samples_seen: float | None = None
    imagenet_rule: bool = False  # drop ImageNet-1k rows with C > 1e11 and error >= 0.7
    drop_h_models: bool = False  # drop "H-" models (the reference does on the samples axis)
    lr_scheduler: str | None = None
    pretrain_dataset: str | None = None
    final_only: bool = False  # epoch == total_epochs, where both columns exist
    percent_rule: bool = False  # error = 1 - v if v < 1 else 100 - v, exactly as the reference

    @classmethod
    def reference(cls, x: str, task: str, **overrides: object) -> Filters:
        """The reference's defaults (scripts fig1/fig8 on compute, fig3 on samples); None overrides skip."""
        samples_axis = normalise_x(x) == "samples_seen"
        base = cls(
            min_flops=1e6,
            max_x=1.3e10 if samples_axis else 1e12,
            max_samples_seen=1.3e10 if samples_axis else 1e10,
            imagenet_rule=task == "imagenet1k",
            drop_h_models=samples_axis,
            lr_scheduler="cosine",
            pretrain_dataset="datacomp_1b",
            final_only=task not in ("ade20k",),
            percent_rule=True,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def normalise_x(x: str) -> str:
    x = X_ALIASES.get(x, x)
    if x not in X_AXES:
        raise TableError(f"unknown x axis {x!r}; use gflops_total or samples_seen")
    return x


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Parquet or CSV (optionally gzipped), chosen by extension."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise TableError(f"{p}: no such file; pass the results table written by `evalkit run` (Parquet or CSV)")
    try:
        if p.endswith((".parquet", ".pq")):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise TableError(f"{p}: cannot read as a table ({exc}); expected Parquet or CSV") from exc


def table_shape(df: pd.DataFrame) -> str:
    """'tidy' (one row per checkpoint x task x metric) or 'wide' (metric columns per checkpoint)."""
    return "tidy" if {"metric", "value"}.issubset(df.columns) else "wide"


def _family_from_model(model: str) -> str:
    m = str(model).lower()
    for fam in ("siglip", "cap", "mammut", "coca"):
        if fam in m:
            return fam
    return "clip"


def _first_col(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def _tidy_rows(df: pd.DataFrame, src: str, task: str, metric: str) -> pd.DataFrame:
    missing = [c for c in TIDY_REQUIRED if c not in df.columns]
    if missing:
        raise TableError(f"{src}: missing column(s) {', '.join(missing)}; the tidy results table needs "
                         f"{', '.join(TIDY_REQUIRED)} (full schema: {', '.join(TIDY_COLUMNS)})")
    if "status" in df.columns:
        df = df[df["status"].fillna("ok") == "ok"]
    # the task exactly: `ade20k` is not `ade20k@zero-shot`, though both have dataset ade20k
    task_col = "task" if "task" in df.columns else "dataset"
    hit = (df[task_col] == task).to_numpy()
    if not hit.any():
        known = sorted({str(v) for v in df[task_col].dropna().unique()})
        raise TableError(f"{src}: no rows for task {task!r}; tasks in this table: {', '.join(known)}. "
                         "Pass one of them with --task")
    df = df[hit]
    _refuse_mixed_results(df, src, task)
    if not (df["metric"] == metric).any():
        known = sorted(map(str, df["metric"].dropna().unique()))
        raise TableError(f"{src}: no metric {metric!r} for task {task!r}; metrics there: {', '.join(known)}. "
                         "Pass one of them with --metric")
    out = df[df["metric"] == metric].copy()
    out["_value"] = out["value"].astype(float)
    return out


def _refuse_mixed_results(df: pd.DataFrame, src: str, task: str) -> None:
    """One (checkpoint, task) with two task hashes or precisions is two different results: a fit
    would mix them. `evalkit collect` keeps only the current one; a hand-merged table may not."""
    ident = [c for c in ("model", "checkpoint") if c in df.columns]
    variant = [c for c in ("task_hash", "precision") if c in df.columns]
    if not ident or not variant:
        return
    v = df[ident + variant].astype(str).drop_duplicates()
    dup = v[v.duplicated(ident, keep=False)]
    if dup.empty:
        return
    first = dup.groupby(ident, sort=True)
    name, rows = next(iter(first))
    shown = "; ".join(", ".join(f"{c}={r[c]}" for c in variant) for _, r in rows.iterrows())
    raise TableError(f"{src}: task {task!r} has {first.ngroups} checkpoint(s) with more than one result, e.g. "
                     f"{' '.join(map(str, name if isinstance(name, tuple) else (name,)))}: {shown}. Collect the "
                     "folder again (`evalkit collect OUT` keeps the current one) or filter the table to one "
                     "task_hash and precision")


def _wide_rows(df: pd.DataFrame, src: str, task: str, metric: str) -> pd.DataFrame:
    if metric not in df.columns:
        known = [c for c in df.columns if any(h in c.lower() for h in _WIDE_METRIC_HINTS)]
        raise TableError(f"{src}: no metric column {metric!r} (wide table); metric columns there: "
                         f"{', '.join(known) or 'none'}. Pass one of them with --metric")
    for axis, names in X_AXES.items():
        if _first_col(df, names) is None:
            raise TableError(f"{src}: missing column {axis} (or {names[1]}); a wide table needs compute and "
                             "samples columns")
    task_col = _first_col(df, ("downstream_dataset", "dataset", "task"))
    if task_col is None:
        raise TableError(f"{src}: missing column downstream_dataset; cannot tell which task a row is")
    row_task = df[task_col].astype(str)
    if "eval_type" in df.columns:  # a generative row is evalkit's `<task>_generative` (results/importers.py)
        ref_task = df["task"] if "task" in df.columns and task_col != "task" else pd.Series(None, index=df.index)
        row_task = pd.Series([evalkit_names(d, t, e)[0] for d, t, e in zip(row_task, ref_task, df["eval_type"])],
                             index=df.index)
    if metric in _CLASSIFICATION_METRICS and "task" in df.columns:
        row_task = row_task.where(df["task"] != "semantic_segmentation", _SEGMENTATION_ZEROSHOT_TASK)
    hit = (row_task == task).to_numpy()
    if not hit.any():
        raise TableError(f"{src}: no rows for task {task!r} with metric {metric!r}; tasks there: "
                         f"{', '.join(sorted(row_task.unique()))}. Pass one of them with --task")
    out = df[hit].copy()
    out["_value"] = out[metric].astype(float)
    out["gflops_total"] = out[_first_col(df, X_AXES["gflops_total"])].astype(float)
    out["samples_seen"] = out[_first_col(df, X_AXES["samples_seen"])].astype(float)
    return out


def load_points(table: str | os.PathLike | pd.DataFrame, *, task: str, metric: str, x: str = "gflops_total",
                by: str = "family", filters: Filters | None = None,
                groups: list[str] | None = None) -> pd.DataFrame:
    """Rows (group, x, y, model, gflops_total, samples_seen, epoch) ready for the frontier and fit."""
    src = "<table>" if isinstance(table, pd.DataFrame) else os.fspath(table)
    df = table if isinstance(table, pd.DataFrame) else read_table(table)
    x = normalise_x(x)
    filters = filters or Filters()
    shape = table_shape(df)
    rows = _tidy_rows(df, src, task, metric) if shape == "tidy" else _wide_rows(df, src, task, metric)
    rows = rows[np.isfinite(rows["_value"]) & rows[x].notna()]
    if rows.empty:
        raise TableError(f"{src}: no rows with both a {metric} value and {x} for task {task!r}; fill {x} "
                         "(e.g. `evalkit import clip-benchmark --samples-per-epoch/--gflops-profile`)")
    if "model" not in rows.columns:
        rows["model"] = rows.get("arch", pd.Series("", index=rows.index))
    if by == "family":
        col = _first_col(rows, _FAMILY_COLUMNS)
        if filters.percent_rule or col is None:  # the reference derives the family from the model name
            rows["_group"] = rows["model"].map(_family_from_model)
        else:
            rows["_group"] = rows[col].astype(str)
    elif by in rows.columns:
        rows["_group"] = rows[by].astype(str)
    else:
        raise TableError(f"{src}: cannot group by {by!r}: no such column; use --by family or a column name")

    v = rows["_value"].to_numpy(dtype=float)
    if filters.percent_rule:
        err = np.where(v < 1, 1 - v, 100 - v)
    elif np.nanmax(v) > 1.0:  # a percent-scaled table
        err = 1 - v / 100.0
    else:
        err = 1 - v
    rows["_y"] = err
    rows["_x"] = rows[x].astype(float)

    keep = np.ones(len(rows), dtype=bool)
    if filters.max_x is not None:
        keep &= (rows["_x"] <= filters.max_x).to_numpy()
    if filters.lr_scheduler is not None and "lr_scheduler" in rows.columns:
        keep &= (rows["lr_scheduler"] == filters.lr_scheduler).to_numpy()
    if filters.final_only and {"epoch", "total_epochs"}.issubset(rows.columns):
        keep &= (rows["epoch"] == rows["total_epochs"]).to_numpy()
    if filters.min_flops is not None:
        keep &= (rows["gflops_total"] >= filters.min_flops).to_numpy()
    if filters.max_samples_seen is not None:
        keep &= (rows["samples_seen"] <= filters.max_samples_seen).to_numpy()
    if filters.imagenet_rule:
        keep &= ~((rows["gflops_total"] > 1e11) & (rows["_y"] >= 0.7)).to_numpy()
    if filters.drop_h_models:
        keep &= ~rows["model"].astype(str).str.contains("H-", regex=False).to_numpy()
    if filters.pretrain_dataset is not None and "pretrain_dataset" in rows.columns:
        keep &= (rows["pretrain_dataset"] == filters.pretrain_dataset).to_numpy()
    keep &= (rows["_x"] > 0).to_numpy()
    rows = rows[keep]
    if groups:
        rows = rows[rows["_group"].isin(groups)]
    if rows.empty:
        raise TableError(f"{src}: no rows left for task {task!r}, metric {metric!r} after filtering; "
                         "loosen the filters or check --groups")
    out = pd.DataFrame({
        "group": rows["_group"].to_numpy(),
        "x": rows["_x"].to_numpy(dtype=float),
        "y": rows["_y"].to_numpy(dtype=float),
        "model": rows["model"].astype(str).to_numpy(),
        "gflops_total": rows["gflops_total"].to_numpy(dtype=float),
        "samples_seen": rows["samples_seen"].to_numpy(dtype=float),
        "epoch": rows["epoch"].to_numpy() if "epoch" in rows.columns else np.nan,
    })
    return out.reset_index(drop=True)
