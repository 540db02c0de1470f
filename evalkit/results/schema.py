"""The results table's schema: one row per (checkpoint, task, metric), its columns in four groups, the
row builder and the unit id. Every writer and reader of the table (unit files, the collected table,
import/export, compare, fit) takes its columns from here; the grid identity comes from the ModelSpec
fields marked as columns (evalkit/models/spec.py), so adding an identity column is one line there.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from evalkit.models.spec import SPEC_COLUMNS, ModelSpec

# Identity: what was evaluated. `model` is the spec's name (zoo name or run name), `arch` the open_clip
# architecture, `family` the model family, `checkpoint` the weights' identity (path, hub id or tag).
IDENTITY_COLUMNS: tuple[str, ...] = ("model", "arch", "family", "checkpoint", *SPEC_COLUMNS)
# The identity columns the reference tables (LAION's scaling-law results) carry under these names; a
# table written before evalkit recorded them lacks them, and every reader tolerates that.
REFERENCE_IDENTITY_COLUMNS: tuple[str, ...] = tuple(c for c in SPEC_COLUMNS if c not in ("epoch", "samples_seen"))
COMPUTE_COLUMNS: tuple[str, ...] = ("gflops_per_sample", "gflops_total")
# `eval_type`: how the score was read from the model (similarity / log_likelihood, as the reference
# tables say it; probe for a fitted classifier). `limit`: N when `--limit N` cut the task to its first N
# samples (a smoke test), empty for the whole split
MEASURE_COLUMNS: tuple[str, ...] = ("task", "task_type", "eval_type", "dataset", "split", "metric", "value",
                                    "n_samples", "limit")
PROVENANCE_COLUMNS: tuple[str, ...] = ("task_hash", "evalkit_version", "open_clip_version", "torch_version", "device",
                                       "precision", "batch_size", "duration_s", "finished_at", "status", "error")
# The tidy table (what results.parquet holds, what importers write and fit reads) ...
TIDY_COLUMNS: tuple[str, ...] = (*IDENTITY_COLUMNS, *COMPUTE_COLUMNS, *MEASURE_COLUMNS, *PROVENANCE_COLUMNS)
# ... and a unit file's rows: the same plus the unit they belong to.
RESULT_COLUMNS: list[str] = [*TIDY_COLUMNS, "unit_id"]


def unit_id(model_key: str, task_name: str, task_hash: str, precision: str = "fp32") -> str:
    """Identity of a unit: the same checkpoint, resolved task and precision give the same id."""
    return hashlib.sha1(f"{model_key}\0{task_name}\0{task_hash}\0{precision}".encode()).hexdigest()[:20]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def identity(spec: ModelSpec, arch: str | None = None, family: str | None = None) -> dict[str, Any]:
    """The identity columns of a checkpoint (`arch`/`family` as loaded, when known)."""
    return {"model": spec.name, "arch": spec.arch or arch or spec.model, "family": family or spec.family,
            "checkpoint": spec.checkpoint, **{c: getattr(spec, c) for c in SPEC_COLUMNS}}


def build_rows(spec: ModelSpec, task: Any, uid: str, *, metrics: Mapping[str, float] | None, n_samples: int = 0,
               status: str, error: str = "", provenance: Mapping[str, Any], duration: float = 0.0,
               arch: str | None = None, family: str | None = None) -> list[dict[str, Any]]:
    """The rows of one unit: one per reported metric (a task file's `metrics:` selects among the
    protocol's), or one row with no value (metric = the task's main metric) for a failed unit."""
    from evalkit.tasks.base import eval_type

    base = {**identity(spec, arch, family), "gflops_per_sample": None, "gflops_total": None,
            "task": task.name, "task_type": task.type, "dataset": task.dataset, "split": task.split,
            "limit": getattr(task, "limit", None), "task_hash": task.hash, "duration_s": round(duration, 4), "finished_at": now(),
            "status": status, "error": error, "unit_id": uid, **provenance}
    if metrics is None:
        main = task.main_metric or "error"
        return [{**base, "eval_type": eval_type(task, main), "metric": main, "value": None, "n_samples": 0}]
    return [{**base, "eval_type": eval_type(task, m), "metric": m, "value": v, "n_samples": n_samples}
            for m, v in metrics.items() if not task.metrics or m in task.metrics]
