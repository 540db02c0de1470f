"""Bring existing evaluation results into evalkit's tidy results table.

`import_clip_benchmark` reads the JSON files clip_benchmark writes (one per dataset x model x
pretrained: keys dataset, model, pretrained, task, metrics, language) so that evaluations made
before evalkit feed the same scaling-law fitter. Epoch and run name come from the checkpoint path
(or the JSON's path): ``.../<run>/checkpoints/epoch_<N>.pt``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from evalkit.atomic import atomic_write
from evalkit.results import RESULT_COLUMNS

# The tidy schema (one row per checkpoint x task x metric), as evalkit.results defines it.
TIDY_COLUMNS: tuple[str, ...] = tuple(c for c in RESULT_COLUMNS if c != "unit_id")

_REQUIRED_KEYS = ("dataset", "model", "pretrained", "metrics")
_EPOCH_RE = re.compile(r"epoch[_-]?(\d+)")
_TASK_TYPES = {"zeroshot_classification": "zeroshot_classification", "zeroshot_retrieval": "zeroshot_retrieval",
               "linear_probe": "linear_probe", "captioning": "captioning"}


class ImportError_(ValueError):
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


def run_name_of(pretrained: str, json_path: Path) -> str:
    """The training run: the folder above ``checkpoints/`` in the checkpoint path, else the JSON's folder."""
    parts = Path(pretrained).parts
    if "checkpoints" in parts:
        i = len(parts) - 1 - parts[::-1].index("checkpoints")
        if i > 0:
            return parts[i - 1]
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
            "task": dataset, "task_type": _TASK_TYPES.get(task, task), "dataset": dataset,
            "split": "test", "metric": metric, "value": float(value), "n_samples": None,
            "task_hash": None, "evalkit_version": None, "open_clip_version": None, "torch_version": None,
            "device": None, "precision": None, "batch_size": None, "duration_s": None,
            "finished_at": None, "status": "ok", "error": None, "language": language, "source": str(path),
        })
    return rows


def import_clip_benchmark(paths: Iterable[str | os.PathLike], out: str | os.PathLike | None = None, *,
                          gflops_per_sample: dict[str, float] | None = None,
                          samples_per_epoch: float | None = None):
    """Read every clip_benchmark JSON under `paths` into a tidy table; write it to `out` if given.

    Compute columns need `gflops_per_sample` (arch -> GFLOPs per sample) and `samples_per_epoch`;
    without them they stay empty and the rows cannot be placed on a compute axis.
    """
    import pandas as pd

    files = _json_files(paths)
    if not files:
        raise ImportError_(f"no JSON files found under {', '.join(map(str, paths))}")
    rows = [r for f in files for r in read_clip_benchmark_json(f, gflops_per_sample, samples_per_epoch)]
    df = pd.DataFrame(rows, columns=[*TIDY_COLUMNS, "language", "source"])
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
