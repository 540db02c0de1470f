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


_STRING_COLUMNS = ("model", "checkpoint", "task", "metric", "status", "error", "task_hash", "task_type", "run",
                   "namespace", "family", "model_simple", "arch", *PROVENANCE)


def _category(s: pd.Series, missing: str = "") -> pd.Categorical:
    """A column as a categorical of strings, `missing` where it is empty (factorised once, not per row)."""
    c = pd.Categorical(s)
    names = [str(v) for v in c.categories]
    if len(set(names)) < len(names):  # 1 and "1" in one column: compare them as text
        c = pd.Categorical(s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v)))
    else:
        c = c.rename_categories(names)
    if (c.codes < 0).any():
        if missing not in c.categories:
            c = c.add_categories([missing])
        c = c.fillna(missing)
    return c


def _compact(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a view reads, strings as categoricals: grouping and selecting a 900k-row table then
    moves integer codes, not strings. A row without a status counts as failed."""
    cols = {c: _category(table[c], "failed" if c == "status" else "") for c in _STRING_COLUMNS}
    for c in ("value", "epoch", "samples_seen", "gflops_total", "limit"):
        cols[c] = pd.to_numeric(table[c], errors="coerce") if c in table else np.full(len(table), np.nan)
    return pd.DataFrame(cols, index=table.index)


def build_view(results: Results) -> View:
    """Checkpoints, per-task main metrics, units, failures and provenance of a results table."""
    from evalkit.results.export import run_names

    t = _compact(results.table)
    codes, uniques = pd.factorize(pd.MultiIndex.from_arrays([t["model"].cat.codes, t["checkpoint"].cat.codes]),
                                  sort=False)
    t["_ck"] = codes
    n = len(uniques)

    first = t.drop_duplicates("_ck").set_index("_ck").sort_index()
    named = {c: first[c].astype(str) for c in ("model", "checkpoint", "run", "namespace", "family", "model_simple",
                                               "arch")}
    fam = named["namespace"].where(named["namespace"] != "", named["family"])
    arch = named["model_simple"].where(named["model_simple"] != "", named["arch"])
    ckpt = pd.DataFrame({
        "model": named["model"].to_numpy(dtype=object), "checkpoint": named["checkpoint"].to_numpy(dtype=object),
        "run": run_names(pd.DataFrame({"model": named["model"], "run": named["run"].replace("", None)})).to_numpy(
            dtype=object),
        "epoch": first["epoch"].to_numpy(dtype=float),
        "family": fam.replace("", "unknown").to_numpy(dtype=object),
        "arch": arch.replace("", "unknown").to_numpy(dtype=object),
    })
    for col in ("samples_seen", "gflops_total"):  # per checkpoint, its first value (failed rows lack them)
        v = t[["_ck", col]].dropna(subset=[col]).drop_duplicates("_ck").set_index("_ck")[col]
        ckpt[col] = v.reindex(range(n)).to_numpy(dtype=float)

    # a unit is ok when all its rows are (the engine writes one status per unit; a hand-merged table may not)
    t["_ok"] = (t["status"] == "ok").to_numpy()
    all_ok = t.groupby(["_ck", "task"], sort=False, observed=True)["_ok"].all()
    units = t.drop_duplicates(["_ck", "task"])[["_ck", "task", "error"]].rename(columns={"_ck": "ckpt"})
    ok = all_ok.reindex(pd.MultiIndex.from_arrays([units["ckpt"], units["task"]])).to_numpy()
    units = pd.DataFrame({"ckpt": units["ckpt"].to_numpy(), "task": units["task"].astype(str).to_numpy(dtype=object),
                          "error": units["error"].astype(str).to_numpy(dtype=object),
                          "status": np.where(ok, "ok", "failed")})

    tasks: list[TaskView] = []
    for name, rows in t.groupby("task", sort=True, observed=True):
        name = str(name)
        small = rows[["task_hash", "task_type", "status", "metric"]].astype(str)
        metric = _main_metric(name, small.drop_duplicates(), results.task_configs)
        hit = rows[(rows["status"] == "ok").to_numpy() & (rows["metric"] == metric).to_numpy()]
        values = np.full(n, np.nan)
        values[hit["_ck"].to_numpy()] = hit["value"].to_numpy(dtype=float)
        u = units["status"].to_numpy()[units["task"].to_numpy() == name]
        lim = rows["limit"].dropna()
        types = [v for v in small["task_type"].unique() if v]
        tasks.append(TaskView(name, metric, types[0] if types else "", values, int((u == "ok").sum()),
                              int((u != "ok").sum()), int(lim.max()) if len(lim) else None))
    view = View(results, ckpt, tasks, units)
    failed = units[units["status"] != "ok"].copy()
    if len(failed):
        failed["error"] = failed["error"].replace("", "(no error recorded)")
        for err, g in sorted(failed.groupby("error"), key=lambda kv: (-len(kv[1]), kv[0])):
            names = ckpt["model"].to_numpy()[g["ckpt"].to_numpy()]
            view.failures.append(FailureGroup(str(err), len(g), sorted(set(g["task"])), list(dict.fromkeys(names))))
    for col in PROVENANCE:
        view.provenance[col] = {str(k): int(v) for k, v in t[col].value_counts().items() if v}
        w = _mixed(view.provenance[col], {"device": "devices", "precision": "precisions"}.get(col, f"{col}s"))
        if w:
            view.warnings.append(w)
    for name, rows in t[(t["task_type"] != "suite").to_numpy()].groupby("task", sort=True, observed=True):
        view.task_hashes[str(name)] = {str(k): int(v) for k, v in rows["task_hash"].value_counts().items() if v}
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
