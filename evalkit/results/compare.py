"""`evalkit compare OURS THEIRS`: two results tables side by side, per checkpoint and metric.

Either table may be evalkit's tidy table (a file or a results folder) or one of the reference's wide
tables (results.parquet, segmentation_results.parquet; read with `import_scaling_laws`). Rows are
matched on (run, epoch, task, metric): the run is the ``run`` column, else ``model`` without a trailing
``/epoch_<k>`` (the importers set both to the reference's ``full_name``/``name``); ``wds/`` is dropped from
task names. Only rows with ``status == ok`` and a finite value take part.

Result: one row per matched value (both values, ``diff = ours - theirs``, ``abs_diff``, ``beyond_tol``) plus
the values found on one side only (``side`` = ``ours only`` / ``theirs only``), and a summary per task and
metric (n matched, max and mean |diff|, n beyond tolerance, n on one side only). Values on one side only
are reported but are no failure: re-evaluating part of the published grid leaves most of it unmatched.

Exit status of the command: 0 when every matched value is within ``--tol``, 1 when some are not (so CI
can gate on it), 2 when the tables cannot be read or share no (run, epoch, task, metric) at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evalkit.errors import UserError

KEY = ("name", "epoch", "task", "metric")
ROW_COLUMNS = (*KEY, "ours", "theirs", "diff", "abs_diff", "beyond_tol", "side")
SUMMARY_COLUMNS = ("task", "metric", "n", "max_abs_diff", "mean_abs_diff", "n_beyond_tol", "n_ours_only",
                   "n_theirs_only")
DEFAULT_TOL = 0.005


class CompareError(UserError, ValueError):
    """Tables that cannot be compared; the message names the file and says what to do."""


@dataclass
class Comparison:
    rows: Any  # DataFrame, ROW_COLUMNS: matched values first, then one-sided ones
    summary: Any  # DataFrame, SUMMARY_COLUMNS
    tol: float

    @property
    def matched(self):
        return self.rows[self.rows["side"] == "both"]

    @property
    def beyond(self):
        return self.rows[self.rows["beyond_tol"]]


def _epoch_text(epoch):
    """Epochs as join keys: "12" for 12 and 12.0, "" where missing."""
    import numpy as np

    v = epoch.to_numpy(dtype=float)
    whole = np.isfinite(v) & (np.mod(np.nan_to_num(v), 1) == 0)
    return np.where(whole, np.nan_to_num(v).astype(np.int64).astype(str), np.where(np.isfinite(v), v.astype(str), ""))


def _values(table, label: str):
    """(name, epoch, task, metric, value) of a table given as a path or DataFrame, tidy or wide."""
    import numpy as np
    import pandas as pd

    from evalkit.results.export import run_names
    from evalkit.results.importers import import_scaling_laws, is_tidy, read_results_table

    src = f"<{label}>" if isinstance(table, pd.DataFrame) else os.fspath(table)
    df = table if isinstance(table, pd.DataFrame) else read_results_table(table)
    if not is_tidy(df):
        df = import_scaling_laws(df)
    missing = [c for c in ("model", "task", "metric", "value") if c not in df.columns]
    if missing:
        raise CompareError(f"{src}: missing column(s) {', '.join(missing)}; expected evalkit's results table or "
                           "the reference's results.parquet / segmentation_results.parquet")
    if "status" in df.columns:
        df = df[df["status"].fillna("ok") == "ok"]
    value = pd.to_numeric(df["value"], errors="coerce")
    df = df[np.isfinite(value.to_numpy(dtype=float))]
    epoch = pd.to_numeric(df["epoch"], errors="coerce") if "epoch" in df.columns else pd.Series(np.nan, df.index)
    out = pd.DataFrame({
        "name": run_names(df).to_numpy(),
        "epoch": _epoch_text(epoch),
        "task": df["task"].fillna("").astype(str).str.removeprefix("wds/").to_numpy(),
        "metric": df["metric"].astype(str).to_numpy(),
        "value": pd.to_numeric(df["value"]).to_numpy(dtype=float),
    })
    dup = out.duplicated(list(KEY), keep=False)
    if dup.any():
        r = out[dup].iloc[0]
        raise CompareError(f"{src}: {int(dup.sum())} rows share a (run, epoch, task, metric) with another, e.g. "
                           f"{r['name']} epoch {r['epoch'] or '-'} {r['task']} {r['metric']}: two results of one "
                           "measurement (another task hash or precision). Collect the folder again (`evalkit "
                           "collect OUT` keeps the current one) or filter the table to one of them")
    return out, src


def compare(ours, theirs, tol: float = DEFAULT_TOL) -> Comparison:
    """Match `ours` against `theirs` (paths or DataFrames, tidy or wide) and measure the differences."""
    import numpy as np
    import pandas as pd

    if not tol >= 0:
        raise CompareError(f"--tol {tol}: need a tolerance >= 0")
    a, src_a = _values(ours, "ours")
    b, src_b = _values(theirs, "theirs")
    m = a.merge(b, on=list(KEY), how="outer", suffixes=("_ours", "_theirs"), indicator=True)
    if not (m["_merge"] == "both").any():
        ka, kb = a.iloc[0] if len(a) else None, b.iloc[0] if len(b) else None

        def show(k):
            return "(empty)" if k is None else f"{k['name']} epoch {k['epoch'] or '-'} {k['task']} {k['metric']}"

        raise CompareError(f"{src_a} and {src_b} share no (run, epoch, task, metric): e.g. ours has {show(ka)}, "
                           f"theirs {show(kb)}. Compare results of the same checkpoints (run names as the "
                           "reference's full_name / name)")
    rows = pd.DataFrame({c: m[c] for c in KEY})
    rows["ours"] = m["value_ours"]
    rows["theirs"] = m["value_theirs"]
    rows["diff"] = rows["ours"] - rows["theirs"]
    rows["abs_diff"] = rows["diff"].abs()
    rows["beyond_tol"] = (rows["abs_diff"] > tol).to_numpy()
    rows["side"] = m["_merge"].map({"both": "both", "left_only": "ours only", "right_only": "theirs only"}).astype(str)
    order = {"both": 0, "ours only": 1, "theirs only": 2}
    rows["_o"] = rows["side"].map(order)
    rows["_e"] = pd.to_numeric(rows["epoch"], errors="coerce")
    rows = rows.sort_values(["_o", "task", "metric", "name", "_e"], kind="stable").drop(columns=["_o", "_e"])
    rows = rows.reset_index(drop=True)[list(ROW_COLUMNS)]

    both = rows[rows["side"] == "both"]
    g = both.groupby(["task", "metric"], sort=True)["abs_diff"]
    summary = pd.DataFrame({"n": g.size(), "max_abs_diff": g.max(), "mean_abs_diff": g.mean(),
                            "n_beyond_tol": both.groupby(["task", "metric"])["beyond_tol"].sum()})
    one_sided = rows[rows["side"] != "both"].groupby(["task", "metric", "side"]).size().unstack("side")
    summary = summary.join(one_sided, how="outer")
    summary = summary.rename(columns={"ours only": "n_ours_only", "theirs only": "n_theirs_only"})
    for c in SUMMARY_COLUMNS[2:]:
        if c not in summary.columns:
            summary[c] = 0
    for c in ("n", "n_beyond_tol", "n_ours_only", "n_theirs_only"):
        summary[c] = summary[c].fillna(0).astype(np.int64)
    summary = summary.reset_index()[list(SUMMARY_COLUMNS)]
    return Comparison(rows=rows, summary=summary, tol=tol)


def summary_path(out: str | os.PathLike) -> str:
    """Where the summary CSV goes beside the rows CSV: ``cmp.csv`` -> ``cmp_summary.csv``."""
    root, ext = os.path.splitext(os.fspath(out))
    return f"{root}_summary{ext or '.csv'}"


def write_comparison(cmp: Comparison, out: str | os.PathLike) -> tuple[str, str]:
    """The rows CSV at `out` and the summary CSV beside it, each written atomically."""
    from evalkit.atomic import atomic_write

    out = os.fspath(out)
    side = summary_path(out)
    atomic_write(out, lambda p: cmp.rows.to_csv(p, index=False))
    atomic_write(side, lambda p: cmp.summary.to_csv(p, index=False))
    return out, side
