"""Bring existing evaluation results into evalkit's tidy results table.

`import_clip_benchmark` reads the JSON files clip_benchmark writes (one per dataset x model x
pretrained: keys dataset, model, pretrained, task, metrics, language) so that evaluations made
before evalkit feed the same scaling-law fitter. Epoch and run name come from the checkpoint path
(or the JSON's path): ``.../<run>/checkpoints/epoch_<N>.pt``, or the paper's own layout
``<run>/checkpoints/imagenet1k_epoch_12.pt_mammut_ViT-L-32_en_zeroshot_classification.json``.

`import_scaling_laws` reads the reference's wide tables (LAION's ``results.parquet`` from the hub
repo, ``segmentation_results.parquet``: one row per checkpoint x downstream dataset, one column per
metric) into the same tidy shape; `evalkit.results.export` writes that wide shape back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from evalkit.atomic import atomic_write
from evalkit.errors import UserError
from evalkit.results.schema import REFERENCE_IDENTITY_COLUMNS, TIDY_COLUMNS

# evalkit task types that the reference names otherwise (the `task` column of its tables).
REFERENCE_TASK_TYPES = {"segmentation": "semantic_segmentation"}
EVALKIT_TASK_TYPES = {v: k for k, v in REFERENCE_TASK_TYPES.items()}  # the reference's name -> evalkit's
# The reference tables name a generative result by its contrastive twin's dataset and task type plus
# `eval_type = log_likelihood` (arXiv:2506.04598's figure 11 selects imagenet1k, log_likelihood);
# evalkit's task and protocol names carry it (imagenet1k_generative, generative_zeroshot_classification).
GENERATIVE_TASK_SUFFIX = "_generative"
GENERATIVE_TYPE_PREFIX = "generative_"
LOG_LIKELIHOOD = "log_likelihood"


def default_eval_type(task_type: object, metric: object = None) -> str:
    """`eval_type` of a row that does not record one (a table written before the column existed)."""
    if str(task_type).startswith(GENERATIVE_TYPE_PREFIX) or metric == "caption_loss":
        return LOG_LIKELIHOOD
    return "probe" if task_type in ("linear_probe", "segmentation", "semantic_segmentation") else "similarity"


def reference_names(task: str, task_type: object, eval_type: object) -> tuple[str, object]:
    """(downstream_dataset, task) of the reference table for evalkit's (task, task_type, eval_type)."""
    dataset = task.removeprefix("wds/")
    if eval_type == LOG_LIKELIHOOD:  # a generative task or the suite of generative tasks
        dataset = dataset.removesuffix(GENERATIVE_TASK_SUFFIX)
        if isinstance(task_type, str):
            task_type = task_type.removeprefix(GENERATIVE_TYPE_PREFIX)
    return dataset, REFERENCE_TASK_TYPES.get(task_type, task_type)


def evalkit_names(dataset: str, ref_task: object, eval_type: object) -> tuple[str, object]:
    """(task, task_type) of evalkit for a reference row's (downstream_dataset, task, eval_type): the inverse
    of `reference_names` for the protocols evalkit has both ways (classification, caption selection)."""
    task_type = EVALKIT_TASK_TYPES.get(ref_task, ref_task)
    generative = eval_type == LOG_LIKELIHOOD or str(task_type).startswith(GENERATIVE_TYPE_PREFIX)
    if not generative or dataset.endswith(GENERATIVE_TASK_SUFFIX):
        return dataset, task_type
    if task_type in ("zeroshot_classification", "image_caption_selection"):
        return dataset + GENERATIVE_TASK_SUFFIX, GENERATIVE_TYPE_PREFIX + task_type
    if task_type == "suite" or str(task_type).startswith(GENERATIVE_TYPE_PREFIX):
        return dataset + GENERATIVE_TASK_SUFFIX, task_type
    return dataset, task_type


# In the reference's segmentation table (task semantic_segmentation, downstream_dataset ade20k) the
# zero-shot classification columns hold the ImageNet-1k results of the same checkpoint (its `path`
# is the imagenet1k JSON); evalkit.fit.table reads them the same way.
SEGMENTATION_ZEROSHOT_TASK = "imagenet1k"
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
# Metric columns of the reference's wide tables (training statistics such as train_contrastive_loss and
# the derived main_metric_value are not results of an evaluation and stay out).
WIDE_METRIC_RE = re.compile(r"^(acc\d*|image_acc|text_acc|mean_per_class_recall|(image|text)_retrieval_recall@\d+|"
                            r"mean_recall@\d+|miou|pixel_acc|contrastive_loss|caption_loss|cosine_distance)$")

_REQUIRED_KEYS = ("dataset", "model", "pretrained", "metrics")
_EPOCH_RE = re.compile(r"epoch[_-]?(\d+)")
_TASK_TYPES = {"zeroshot_classification": "zeroshot_classification", "zeroshot_retrieval": "zeroshot_retrieval",
               "linear_probe": "linear_probe", "captioning": "captioning"}


class ImportError_(UserError, ValueError):
    """A clip_benchmark file that cannot be imported; the message names the file."""


def family_of(model: str) -> str:
    """Model family from an architecture / run name (mammut, coca, siglip, or clip)."""
    m = model.lower()
    for fam in ("mammut", "coca", "siglip"):
        if fam in m:
            return fam
    return "clip"


def epoch_of(*texts: str) -> int | None:
    """The N of the last ``epoch_N`` in the first text that has one."""
    for t in texts:
        hits = _EPOCH_RE.findall(os.path.basename(t)) or _EPOCH_RE.findall(t)
        if hits:
            return int(hits[-1])
    return None


def _above_checkpoints(parts: tuple[str, ...]) -> str | None:
    if "checkpoints" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("checkpoints")
        if i > 0:
            return parts[i - 1]
    return None


def run_name_of(pretrained: str, json_path: Path) -> str:
    """The training run: the folder above ``checkpoints/`` in the checkpoint path, else in the JSON's
    path (the paper's runs wrote ``<run>/checkpoints/<dataset>_epoch_<N>.pt_<model>_<lang>_<task>.json``),
    else the checkpoint's folder, else the JSON's folder."""
    parts = Path(pretrained).parts
    run = _above_checkpoints(parts) or _above_checkpoints(json_path.parts)
    if run:
        return run
    if len(parts) > 1:
        return parts[-2]
    return json_path.parent.name


def _json_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise ImportError_(f"{p}: no such file or directory; pass folders holding clip_benchmark JSON files")
    return files


def read_clip_benchmark_json(path: Path, gflops_per_sample: dict[str, float] | None = None,
                             samples_per_epoch: float | None = None) -> list[dict]:
    """Tidy rows (one per numeric metric) from one clip_benchmark result file."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportError_(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(obj, dict) or any(k not in obj for k in _REQUIRED_KEYS):
        missing = [k for k in _REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
        raise ImportError_(f"{path}: not a clip_benchmark result (missing {', '.join(missing)}); "
                           "expected the JSON written by `clip_benchmark eval`")
    arch, pretrained = str(obj["model"]), str(obj["pretrained"])
    epoch = epoch_of(pretrained, str(path))
    run = run_name_of(pretrained, path)
    dataset = str(obj["dataset"]).removeprefix("wds/")
    task = str(obj.get("task", ""))
    task_type = _TASK_TYPES.get(task, task)
    # the log_likelihood_eval branch writes `generative_<task>` JSONs: evalkit's generative task of the dataset
    task_name = dataset + GENERATIVE_TASK_SUFFIX if task.startswith(GENERATIVE_TYPE_PREFIX) else dataset
    language = obj.get("language", "en")
    if isinstance(language, list):
        language = ",".join(map(str, language))
    samples = float(epoch * samples_per_epoch) if (epoch is not None and samples_per_epoch) else float("nan")
    gps = (gflops_per_sample or {}).get(arch, float("nan"))
    rows = []
    for metric, value in (obj["metrics"] or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rows.append({
            "model": run, "arch": arch, "family": family_of(f"{run} {arch}"), "checkpoint": pretrained,
            "epoch": epoch, "samples_seen": samples, "pretrain_dataset": None, "lr_scheduler": None,
            "gflops_per_sample": gps, "gflops_total": gps * samples,
            "task": task_name, "task_type": task_type, "eval_type": default_eval_type(task_type, metric),
            "dataset": dataset,
            "split": "test", "metric": metric, "value": float(value), "n_samples": None,
            "task_hash": None, "evalkit_version": None, "open_clip_version": None, "torch_version": None,
            "device": None, "precision": None, "batch_size": None, "duration_s": None,
            "finished_at": None, "status": "ok", "error": None, "run": run, "language": language,
            "source": str(path),
        })
    return rows


def import_clip_benchmark(paths: Iterable[str | os.PathLike], out: str | os.PathLike | None = None, *,
                          gflops_per_sample: dict[str, float] | None = None,
                          samples_per_epoch: float | None = None,
                          metadata: str | os.PathLike | None = None):
    """Read every clip_benchmark JSON under `paths` into a tidy table; write it to `out` if given.

    Compute columns need `gflops_per_sample` (arch -> GFLOPs per sample) and `samples_per_epoch`, or
    a `metadata` table: a reference table (results.parquet, segmentation_results.parquet) whose rows
    for the same (run name, epoch) fill samples_seen, compute and the identity columns. Without any,
    they stay empty and the rows cannot be placed on a compute axis.
    """
    import pandas as pd

    paths = list(paths)
    files = _json_files(paths)
    if not files:
        raise ImportError_(f"no JSON files found under {', '.join(map(str, paths))}")
    rows = [r for f in files for r in read_clip_benchmark_json(f, gflops_per_sample, samples_per_epoch)]
    df = pd.DataFrame(rows, columns=[*TIDY_COLUMNS, "language", "source"])
    if metadata is not None:
        df = fill_identity(df, import_scaling_laws(metadata))
    if out is not None:
        write_table(df, out)
    return df


# Filled from a metadata table by (run name, epoch): what a clip_benchmark JSON cannot say.
_FILLED_FROM_METADATA = ("family", "samples_seen", "gflops_per_sample", "gflops_total", "pretrain_dataset",
                         "lr_scheduler", *REFERENCE_IDENTITY_COLUMNS)


def fill_identity(df, meta):
    """`df`'s empty identity and compute cells filled from tidy table `meta`, matched on (model, epoch)."""
    import pandas as pd

    cols = [c for c in dict.fromkeys(_FILLED_FROM_METADATA) if c in meta.columns and c in df.columns]
    ident = meta.groupby(["model", "epoch"], sort=False)[cols].first()
    key = pd.MultiIndex.from_arrays([df["model"], pd.to_numeric(df["epoch"], errors="coerce")])
    found = ident.reindex(key)
    out = df.copy()
    for c in cols:
        theirs = found[c].to_numpy()
        out[c] = out[c].where(out[c].notna(), pd.Series(theirs, index=out.index))
    return out


def read_results_table(path: str | os.PathLike):
    """A table as evalkit writes or reads it: Parquet (.parquet/.pq), CSV (optionally .gz), or a results
    folder (its results.parquet)."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / "results.parquet"
    if not p.is_file():
        raise ImportError_(f"{p}: no such file; pass a results table (Parquet or CSV) or a results folder")
    try:
        if p.suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ImportError_(f"{p}: cannot read as a table ({exc}); expected Parquet or CSV") from exc


def is_tidy(df) -> bool:
    """evalkit's tidy shape (one row per checkpoint x task x metric) rather than the reference's wide one."""
    return {"metric", "value"}.issubset(df.columns)


def _task_type_of_metric(metric: str) -> str:
    if metric in ("miou", "pixel_acc"):
        return "segmentation"
    if "retrieval" in metric or metric.startswith("mean_recall"):
        return "zeroshot_retrieval"
    return "zeroshot_classification"


def import_scaling_laws(table, out: str | os.PathLike | None = None):
    """The reference's wide table (a path or a DataFrame) as evalkit's tidy table; written to `out` if given.

    One tidy row per non-empty metric cell. Identity: ``model`` = ``run`` = the run's name (``full_name``,
    else ``name``), ``arch`` = the reference's ``model`` (e.g. ``mammut_ViT-L-32``), ``family`` =
    ``namespace``, ``checkpoint`` = ``<name>/epoch_<k>.pt``; ``task`` = ``dataset`` = ``downstream_dataset``
    (``wds/`` dropped), ``task_type`` = the reference's ``task`` (``semantic_segmentation`` becomes evalkit's
    ``segmentation``). The classification columns of a segmentation row become ImageNet-1k rows (see
    SEGMENTATION_ZEROSHOT_TASK), unless the table has that checkpoint's own imagenet1k row.

    Compute: ``gflops_total`` if the table has it (then ``gflops`` is per sample, as in the reference's
    all_results table); else ``gflops`` is the total (segmentation_results: ``gflops`` = ``model_gflops`` x
    ``samples_seen``), unless every value is below 1e4, which only a per-sample column can be. samples_seen
    is ``samples_seen``, else ``total_samples_seen`` x epoch / total_epochs.
    """
    import numpy as np
    import pandas as pd

    src = "<table>" if isinstance(table, pd.DataFrame) else os.fspath(table)
    w = table if isinstance(table, pd.DataFrame) else read_results_table(table)
    if is_tidy(w):
        raise ImportError_(f"{src}: already evalkit's tidy table (it has metric and value columns); nothing to import")
    name_col = next((c for c in ("full_name", "name") if c in w.columns), None)
    ds_col = next((c for c in ("downstream_dataset", "dataset") if c in w.columns), None)
    missing = [what for what, col in (("full_name or name", name_col), ("downstream_dataset", ds_col),
                                      ("epoch", "epoch" if "epoch" in w.columns else None)) if col is None]
    if missing:
        raise ImportError_(f"{src}: not a scaling-laws results table (missing {', '.join(missing)}); expected the "
                           "reference's results.parquet or segmentation_results.parquet")
    metric_cols = [c for c in w.columns if WIDE_METRIC_RE.match(str(c))]
    if not metric_cols:
        raise ImportError_(f"{src}: no metric columns (acc1, miou, image_retrieval_recall@5, ...)")
    w = w.reset_index(drop=True)

    def num(c: str) -> pd.Series:
        return pd.to_numeric(w[c], errors="coerce") if c in w.columns else pd.Series(np.nan, index=w.index)

    def text(c: str) -> pd.Series:
        return w[c].astype(object).where(w[c].notna(), None) if c in w.columns else pd.Series(None, index=w.index,
                                                                                              dtype=object)

    name = w[name_col].astype(str)
    epoch = num("epoch")
    total_epochs = num("total_epochs")
    samples = num("samples_seen") if "samples_seen" in w.columns else num("total_samples_seen") * epoch / total_epochs
    gflops = num("gflops")
    if "gflops_total" in w.columns:
        total = num("gflops_total")
        per = num("model_gflops") if "model_gflops" in w.columns else gflops
    elif "model_gflops" in w.columns:
        per = num("model_gflops")
        total = gflops.where(gflops.notna(), per * samples) if "gflops" in w.columns else per * samples
    elif bool((gflops.dropna() < 1e4).all()) and gflops.notna().any():
        per, total = gflops, gflops * samples
    else:
        total, per = gflops, gflops / samples
    namespace = text("namespace")
    model_simple = text("model_simple")
    arch = text("model")
    no_arch = arch.isna() & model_simple.notna()
    arch[no_arch] = [s if ns in (None, "clip") else f"{ns}_{s}" for ns, s in zip(namespace[no_arch], model_simple[no_arch])]
    family = namespace.where(namespace.notna(), [family_of(f"{n} {a or ''}") for n, a in zip(name, arch)])
    checkpoint = name + "/epoch_" + epoch.map(lambda e: "" if pd.isna(e) else str(int(e))) + ".pt"
    ident = pd.DataFrame({
        "model": name, "arch": arch, "family": family, "checkpoint": checkpoint, "epoch": w["epoch"],
        "samples_seen": samples, "pretrain_dataset": text("pretrain_dataset"), "lr_scheduler": text("lr_scheduler"),
        "gflops_per_sample": per, "gflops_total": total,
        "namespace": namespace, "model_simple": model_simple,
        "samples_seen_scale_pretty": text("samples_seen_scale_pretty"), "total_epochs": w.get("total_epochs"),
        "global_batch_size": w.get("global_batch_size"), "run": name,
    })
    dataset = w[ds_col].astype(str).str.removeprefix("wds/")
    ref_task = text("task")
    eval_types = text("eval_type")
    names = [evalkit_names(d, t, e) for d, t, e in zip(dataset, ref_task, eval_types)]
    task_name = pd.Series([n[0] for n in names], index=w.index, dtype=object)
    task_type = pd.Series([n[1] for n in names], index=w.index, dtype=object)
    seg_row = (ref_task == "semantic_segmentation") if "task" in w.columns else (dataset == "ade20k")

    parts = []
    for m in metric_cols:
        v = pd.to_numeric(w[m], errors="coerce")
        ok = np.isfinite(v.to_numpy(dtype=float))
        if not ok.any():
            continue
        part = ident[ok].copy()
        part["task"] = task_name[ok].to_numpy()
        part["dataset"] = dataset[ok].to_numpy()
        part["task_type"] = task_type[ok].where(task_type[ok].notna(), _task_type_of_metric(m)).to_numpy()
        part["eval_type"] = [e if isinstance(e, str) and e else default_eval_type(t, m)
                             for e, t in zip(eval_types[ok], part["task_type"])]
        part["_derived"] = False
        if m in CLASSIFICATION_METRICS:
            moved = seg_row[ok].to_numpy()
            part.loc[moved, ["task", "dataset"]] = SEGMENTATION_ZEROSHOT_TASK
            part.loc[moved, "task_type"] = "zeroshot_classification"
            part.loc[moved, "eval_type"] = "similarity"
            part["_derived"] = moved
        part["metric"] = m
        part["value"] = v[ok].to_numpy(dtype=float)
        parts.append(part)
    if not parts:
        raise ImportError_(f"{src}: every metric cell is empty; nothing to import")
    df = pd.concat(parts, ignore_index=True)
    key = ["model", "epoch", "task", "metric"]
    if df["_derived"].any():  # a checkpoint's own imagenet1k row beats one read from its segmentation row
        derived = df["_derived"].to_numpy()
        own = pd.MultiIndex.from_frame(df.loc[~derived, key])
        dup = pd.MultiIndex.from_frame(df.loc[derived, key]).isin(own)
        df = df.drop(index=df.index[derived][dup])
    df["status"] = "ok"
    df["source"] = src
    df = df.sort_values(key, kind="stable").reset_index(drop=True)
    df = df.reindex(columns=[*TIDY_COLUMNS, "source"])
    if out is not None:
        write_table(df, out)
    return df


def write_table(df, out: str | os.PathLike) -> None:
    """Write Parquet (.parquet) or CSV atomically: a temp file in the same folder, then os.replace."""
    out = Path(out)
    if out.suffix in (".parquet", ".pq"):
        atomic_write(out, lambda p: df.to_parquet(p, index=False))
    else:
        atomic_write(out, lambda p: df.to_csv(p, index=False))
