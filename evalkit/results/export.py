"""`evalkit export`: evalkit's tidy results table in the wide shape of the reference's tables.

LAION's scaling-law tables (arXiv:2506.04598; ``results.parquet`` in the hub repo,
``segmentation_results.parquet``) hold one row per checkpoint x downstream dataset with one column per
metric. `to_scaling_laws` writes evalkit's results in that shape, so the reference's fitter scripts
read them unchanged, and `evalkit fit` on the export gives the fit of the tidy table:

- identity: ``name`` (= ``full_name``) is the run (the ``run`` column, else ``model`` without a trailing
  ``/epoch_<k>``), ``namespace`` (else ``family``), ``model_simple`` (else ``arch`` without its
  ``<family>_`` prefix), ``pretrain_dataset``, ``lr_scheduler``, ``samples_seen``,
  ``samples_seen_scale_pretty``, ``epoch``, ``total_epochs``, ``global_batch_size``; ``model`` is the
  architecture as the reference writes it (``mammut_ViT-B-32``), ``path`` the checkpoint;
- compute as in segmentation_results.parquet: ``gflops`` is the total (= ``gflops_total``, also written),
  ``model_gflops`` per sample; ``samples_seen_per_epoch`` and ``total_samples_seen`` (the run's total)
  where epoch and total_epochs are known;
- ``downstream_dataset`` is the task (``wds/`` dropped), ``task`` the reference's task type
  (``zeroshot_classification``, ``zeroshot_retrieval``, ``semantic_segmentation``), ``eval_type`` how the
  score was read (``similarity``, ``log_likelihood``); a generative task is named as the reference names
  it, by its contrastive twin: ``imagenet1k_generative`` is ``downstream_dataset = imagenet1k``, ``task =
  zeroshot_classification``, ``eval_type = log_likelihood`` (what the paper's figure 11 selects), and
  importing maps it back;
- metric columns: ``acc1, acc5, mean_per_class_recall, image_retrieval_recall@5, text_retrieval_recall@5,
  miou`` always (empty where not measured), then every other metric of the table;
- a suite's average (tidy rows with metric ``average``, task = the suite's name) becomes the row of
  ``downstream_dataset`` = the suite with the value in ``acc1``, where the reference keeps its suite
  averages (``datacomp_classification``, ``imagenet_distribution_shift``); an explicit ``acc1`` of the same
  task wins. Importing the export back reads that value as ``acc1``.

Only rows with ``status == ok`` and a finite value are exported.
"""

from __future__ import annotations

import os
import re

from evalkit.errors import UserError

LEADING_COLUMNS = ("name", "namespace", "model_simple", "pretrain_dataset", "lr_scheduler", "samples_seen",
                   "samples_seen_scale_pretty", "epoch", "total_epochs", "gflops", "downstream_dataset")
REFERENCE_METRICS = ("acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@5", "text_retrieval_recall@5",
                     "miou")
TRAILING_COLUMNS = ("task", "eval_type", "model", "full_name", "global_batch_size", "model_gflops", "gflops_total",
                    "samples_seen_per_epoch", "total_samples_seen", "path")
AVERAGE_METRIC = "average"
AVERAGE_COLUMN = "acc1"
FORMATS = ("scaling-laws",)
_EPOCH_SUFFIX = re.compile(r"/epoch_\d+(\.\w+)?$")


class ExportError(UserError, ValueError):
    """A table that cannot be exported; the message says why and what to do."""


def _col(df, name: str, default=None):
    import pandas as pd

    if name in df.columns:
        return df[name]
    return pd.Series(default, index=df.index, dtype=object)


def _as_int_if_whole(s):
    """int64 where every value is present and whole (as the reference's tables type them)."""
    import numpy as np
    import pandas as pd

    v = pd.to_numeric(s, errors="coerce")
    if len(v) and v.notna().all() and np.all(np.mod(v.to_numpy(dtype=float), 1) == 0):
        return v.astype("int64")
    return v


def _kind(eval_type: str) -> str:
    return "" if eval_type == "similarity" else f" ({eval_type})"


def run_names(df):
    """The run of each tidy row: ``run`` where filled, else ``model`` without a trailing ``/epoch_<k>``."""
    model = _col(df, "model").astype(str).str.replace(_EPOCH_SUFFIX, "", regex=True)
    run = _col(df, "run")
    return run.where(run.notna() & (run.astype(str) != ""), model).astype(str)


def to_scaling_laws(tidy, src: str = "<table>"):
    """The wide (reference) shape of a tidy results table, as a DataFrame."""
    import numpy as np
    import pandas as pd

    from evalkit.results.importers import default_eval_type, is_tidy, reference_names

    if not is_tidy(tidy):
        raise ExportError(f"{src}: not evalkit's tidy results table (no metric/value columns)"
                          + ("; it is already in the wide shape" if "downstream_dataset" in tidy.columns else ""))
    missing = [c for c in ("model", "task") if c not in tidy.columns]
    if missing:
        raise ExportError(f"{src}: missing column(s) {', '.join(missing)}; expected the table of `evalkit run`")
    df = tidy
    if "status" in df.columns:
        df = df[df["status"].fillna("ok") == "ok"]
    value = pd.to_numeric(df["value"], errors="coerce")
    df = df[np.isfinite(value.to_numpy(dtype=float))]
    if df.empty:
        raise ExportError(f"{src}: no rows with status ok and a value; nothing to export")

    family = _col(df, "family")
    namespace = _col(df, "namespace")
    namespace = namespace.where(namespace.notna(), family)
    arch = _col(df, "arch")
    arch = arch.where(arch.notna(), df["model"])
    model_simple = _col(df, "model_simple")
    derived = [a[len(f) + 1:] if isinstance(a, str) and isinstance(f, str) and a.startswith(f"{f}_") else a
               for a, f in zip(arch, namespace)]
    model_simple = model_simple.where(model_simple.notna(), pd.Series(derived, index=df.index, dtype=object))
    metric = df["metric"].astype(str)
    recorded = _col(df, "eval_type")
    eval_type = [e if isinstance(e, str) and e else default_eval_type(t, m)
                 for e, t, m in zip(recorded, _col(df, "task_type"), metric)]
    names = [reference_names(t, tt, e) for t, tt, e in zip(df["task"].fillna("").astype(str), _col(df, "task_type"),
                                                            eval_type)]
    is_avg = (metric == AVERAGE_METRIC).to_numpy()
    epoch = pd.to_numeric(_col(df, "epoch"), errors="coerce")
    long = pd.DataFrame({
        "_name": run_names(df).to_numpy(),
        "_ckpt": _col(df, "checkpoint").fillna("").astype(str).to_numpy(),
        "_epoch": epoch.fillna(-1).to_numpy(),
        "downstream_dataset": [n[0] for n in names],
        "eval_type": eval_type,
        "_metric": np.where(is_avg, AVERAGE_COLUMN, metric.to_numpy()),
        "_avg": is_avg,
        "_value": pd.to_numeric(df["value"]).to_numpy(dtype=float),
        "namespace": namespace.to_numpy(), "model_simple": model_simple.to_numpy(),
        "pretrain_dataset": _col(df, "pretrain_dataset").to_numpy(),
        "lr_scheduler": _col(df, "lr_scheduler").to_numpy(),
        "samples_seen": pd.to_numeric(_col(df, "samples_seen"), errors="coerce").to_numpy(),
        "samples_seen_scale_pretty": _col(df, "samples_seen_scale_pretty").to_numpy(),
        "epoch": epoch.to_numpy(),
        "total_epochs": pd.to_numeric(_col(df, "total_epochs"), errors="coerce").to_numpy(),
        "gflops": pd.to_numeric(_col(df, "gflops_total"), errors="coerce").to_numpy(),
        "task": [n[1] for n in names], "model": arch.to_numpy(),
        "global_batch_size": pd.to_numeric(_col(df, "global_batch_size"), errors="coerce").to_numpy(),
        "model_gflops": pd.to_numeric(_col(df, "gflops_per_sample"), errors="coerce").to_numpy(),
        "path": _col(df, "checkpoint").to_numpy(),
    })
    cell = ["_name", "_ckpt", "_epoch", "downstream_dataset", "eval_type", "_metric"]
    if is_avg.any():  # an explicit acc1 of the suite beats its average
        explicit = pd.MultiIndex.from_frame(long.loc[~long["_avg"], cell])
        shadowed = pd.MultiIndex.from_frame(long.loc[long["_avg"], cell]).isin(explicit)
        long = long.drop(index=long.index[long["_avg"].to_numpy()][shadowed])
    dup = long.duplicated(cell, keep=False)
    if dup.any():
        r = long[dup].iloc[0]
        raise ExportError(f"{src}: {int(dup.sum())} rows share a (checkpoint, task, metric) with another, e.g. "
                          f"{r['_name']} epoch {int(r['_epoch'])} {r['downstream_dataset']}{_kind(r['eval_type'])} {r['_metric']} "
                          f"(checkpoint {r['_ckpt'] or '-'}): two results of one measurement (other task hash or "
                          "precision). Collect the folder again (`evalkit collect OUT` keeps the current one) or "
                          "filter the table first")
    row = cell[:-1]
    values = long.set_index(cell)["_value"].unstack("_metric")
    ident_cols = [c for c in long.columns if c not in cell and c not in ("_avg", "_value")]
    ident = long.groupby(row, sort=False)[ident_cols].first()
    wide = ident.join(values).reset_index()

    wide["name"] = wide["_name"]
    wide["full_name"] = wide["_name"]
    wide["gflops_total"] = wide["gflops"]
    e = wide["epoch"]
    per_epoch = wide["samples_seen"] / e.where(e > 0)
    wide["samples_seen_per_epoch"] = per_epoch
    wide["total_samples_seen"] = per_epoch * wide["total_epochs"]
    for c in ("samples_seen", "epoch", "total_epochs", "global_batch_size", "samples_seen_per_epoch",
              "total_samples_seen"):
        wide[c] = _as_int_if_whole(wide[c])
    for m in REFERENCE_METRICS:
        if m not in wide.columns:
            wide[m] = np.nan
    others = sorted(c for c in values.columns if c not in REFERENCE_METRICS)
    wide = wide.sort_values(["_name", "_epoch", "_ckpt", "downstream_dataset", "eval_type"], kind="stable")
    cols = [*LEADING_COLUMNS, *REFERENCE_METRICS, *others, *TRAILING_COLUMNS]
    return wide[cols].reset_index(drop=True)


def export_results(results, out: str | os.PathLike | None = None, fmt: str = "scaling-laws"):
    """Read a results table (file or results folder), convert it, write it to `out` (.parquet or .csv)."""
    import pandas as pd

    from evalkit.results.importers import read_results_table, write_table

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}")
    src = "<table>" if isinstance(results, pd.DataFrame) else os.fspath(results)
    tidy = results if isinstance(results, pd.DataFrame) else read_results_table(results)
    wide = to_scaling_laws(tidy, src)
    if out is not None:
        write_table(wide, out)
    return wide
