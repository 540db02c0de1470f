"""What every output of a report is made from: one row per checkpoint, the main metric of each task
aligned to those rows, the units with their status, failures grouped by error, and provenance.

The HTML page, the static figures and the Markdown/terminal table all read this `View`, so they
show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evalkit.report.load import Results

# When the stored task configs do not say (a table file without OUT/tasks), the main metric is the
# first of these a task has: the protocols' own main metrics, then the suites' average.
MAIN_METRIC_PREFERENCE = ("acc1", "mean_recall@1", "miou", "average", "image_retrieval_recall@5", "acc5")
PROVENANCE = ("evalkit_version", "open_clip_version", "torch_version", "device", "precision")
_EPOCH_SUFFIX = r"/epoch_\d+(\.pt)?$"


@dataclass
class TaskView:
    """One task's main metric, per checkpoint (NaN where it has no ok value)."""

    task: str
    metric: str
    task_type: str
    values: np.ndarray
    n_ok: int
    n_failed: int
    limit: int | None = None  # the --limit the rows were computed with (None: the whole split)

    @property
    def key(self) -> str:
        return f"{self.task}|{self.metric}"


@dataclass
class FailureGroup:
    error: str
    units: int
    tasks: list[str]
    checkpoints: list[str]


@dataclass
class View:
    results: Results
    ckpt: pd.DataFrame  # one row per checkpoint: model, checkpoint, run, epoch, family, arch, samples_seen, gflops_total
    tasks: list[TaskView]
    units: pd.DataFrame  # one row per unit: ckpt (index), task, status, error
    failures: list[FailureGroup] = field(default_factory=list)
    provenance: dict[str, dict[str, int]] = field(default_factory=dict)
    task_hashes: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def task(self, name: str) -> TaskView | None:
        return next((t for t in self.tasks if t.task == name), None)

    @property
    def n_runs(self) -> int:
        return int(self.ckpt["run"].nunique())

    def unit_counts(self) -> dict[str, int]:
        s = self.units["status"].fillna("failed")
        return {"ok": int((s == "ok").sum()), "failed": int((s != "ok").sum()),
                "superseded": self.results.not_in_table}

    def last_checkpoints(self) -> np.ndarray:
        """Index of each run's last checkpoint (highest epoch, then samples seen), in run order."""
        c = self.ckpt.assign(_e=pd.to_numeric(self.ckpt["epoch"], errors="coerce").fillna(-1),
                             _s=self.ckpt["samples_seen"].fillna(-1), _i=np.arange(len(self.ckpt)))
        last = c.sort_values(["run", "_e", "_s", "_i"], kind="stable").groupby("run", sort=True).tail(1)
        return last["_i"].to_numpy()


def _text(s: pd.Series) -> pd.Series:
    return s.where(s.notna(), "").astype(str)


def _first(df: pd.DataFrame, col: str) -> pd.Series:
    """Per checkpoint, the first non-empty value of a column (suite rows copy some, failed rows lack them)."""
    v = df[["_ck", col]].dropna(subset=[col])
    return v.drop_duplicates("_ck").set_index("_ck")[col]


def _main_metric(task: str, rows: pd.DataFrame, configs: dict[str, dict]) -> str:
    for h in rows["task_hash"].dropna().astype(str).unique():
        main = (configs.get(h) or {}).get("main_metric")
        if main:
            return str(main)
    if (rows["task_type"] == "suite").any():
        return "average"
    # a failed unit's row names the task's main metric (results.schema.build_rows)
    failed = [m for m in rows.loc[rows["status"] != "ok", "metric"].dropna().astype(str) if m and m != "error"]
    if failed:
        return failed[0]
    have = list(dict.fromkeys(rows.loc[rows["status"] == "ok", "metric"].dropna().astype(str)))
    for m in MAIN_METRIC_PREFERENCE:
        if m in have:
            return m
    return sorted(have)[0] if have else ""


def _mixed(counts: dict[str, int], what: str) -> str | None:
    if len(counts) <= 1:
        return None
    shown = ", ".join(f"{k or '(empty)'}: {v:,} rows" for k, v in sorted(counts.items(), key=lambda t: -t[1]))
    return f"the table mixes {len(counts)} {what} ({shown})"


def build_view(results: Results) -> View:
    """Checkpoints, per-task main metrics, units, failures and provenance of a results table."""
    from evalkit.results.export import run_names

    t = results.table
    t = t.assign(model=_text(t["model"]), checkpoint=_text(t["checkpoint"]), task=_text(t["task"]),
                 metric=_text(t["metric"]), status=t["status"].where(t["status"].notna(), "failed").astype(str))
    key = t["model"] + "\0" + t["checkpoint"]
    codes, uniques = pd.factorize(key, sort=False)
    t = t.assign(_ck=codes, _run=run_names(t).to_numpy())
    n = len(uniques)

    first = t.drop_duplicates("_ck").set_index("_ck").sort_index()
    fam = first["namespace"].where(first["namespace"].notna() & (first["namespace"].astype(str) != ""),
                                   first["family"]) if "namespace" in first else first["family"]
    arch = first["model_simple"].where(first["model_simple"].notna() & (first["model_simple"].astype(str) != ""),
                                       first["arch"])
    ckpt = pd.DataFrame({
        "model": first["model"].to_numpy(), "checkpoint": first["checkpoint"].to_numpy(),
        "run": first["_run"].astype(str).to_numpy(),
        "epoch": pd.to_numeric(first["epoch"], errors="coerce").to_numpy(dtype=float),
        "family": _text(fam).replace("", "unknown").to_numpy(), "arch": _text(arch).replace("", "unknown").to_numpy(),
    })
    for col in ("samples_seen", "gflops_total"):
        vals = pd.to_numeric(_first(t, col), errors="coerce").reindex(range(n))
        ckpt[col] = vals.to_numpy(dtype=float)

    units = t.drop_duplicates(["_ck", "task"])[["_ck", "task", "status", "error"]].rename(columns={"_ck": "ckpt"})
    unit_status = t.groupby(["_ck", "task"], sort=False)["status"].agg(lambda s: "ok" if (s == "ok").all() else "failed")
    units = units.set_index(["ckpt", "task"])
    units["status"] = unit_status.reindex(units.index).to_numpy()
    units = units.reset_index()

    tasks: list[TaskView] = []
    for name, rows in t.groupby("task", sort=True):
        metric = _main_metric(str(name), rows, results.task_configs)
        ok = rows[(rows["status"] == "ok") & (rows["metric"] == metric)]
        v = pd.to_numeric(ok["value"], errors="coerce")
        values = np.full(n, np.nan)
        values[ok["_ck"].to_numpy()] = v.to_numpy(dtype=float)
        u = units[units["task"] == name]
        lim = pd.to_numeric(rows["limit"], errors="coerce").dropna() if "limit" in rows else pd.Series([], dtype=float)
        tasks.append(TaskView(str(name), metric, str(rows["task_type"].dropna().iloc[0]) if rows["task_type"].notna().any()
                              else "", values, int((u["status"] == "ok").sum()), int((u["status"] != "ok").sum()),
                              int(lim.max()) if len(lim) else None))

    view = View(results, ckpt, tasks, units)
    failed = units[units["status"] != "ok"].copy()
    if len(failed):
        failed["error"] = _text(failed["error"]).replace("", "(no error recorded)")
        for err, g in sorted(failed.groupby("error"), key=lambda kv: (-len(kv[1]), kv[0])):
            names = ckpt["model"].to_numpy()[g["ckpt"].to_numpy()]
            view.failures.append(FailureGroup(str(err), len(g), sorted(set(g["task"])), list(dict.fromkeys(names))))
    for col in PROVENANCE:
        view.provenance[col] = {str(k): int(v) for k, v in _text(t[col]).value_counts().items()}
        w = _mixed(view.provenance[col], {"device": "devices", "precision": "precisions"}.get(col, f"{col}s"))
        if w:
            view.warnings.append(w)
    for name, rows in t[t["task_type"] != "suite"].groupby("task", sort=True):
        view.task_hashes[str(name)] = {str(k): int(v) for k, v in _text(rows["task_hash"]).value_counts().items()}
        w = _mixed(view.task_hashes[str(name)], f"task hashes for {name} (another task file, class list, "
                                                 "templates or data)")
        if w:
            view.warnings.append(w)
    limited = [f"{tv.task} (first {tv.limit})" for tv in tasks if tv.limit is not None]
    if limited:
        view.warnings.append(f"smoke-test numbers: {', '.join(limited)} were evaluated on their first samples only "
                             "(`--limit`); they are not comparable with whole-split results")
    return view


def checkpoint_label(view: View, i: int) -> str:
    return str(view.ckpt["model"].iat[i])


def as_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict(orient="records")
