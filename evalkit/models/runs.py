"""open_clip training runs on disk: `<run>/params.txt` beside `<run>/checkpoints/epoch_N.pt`.

open_clip writes every training argument to params.txt as `key: value` lines; the architecture,
samples per epoch, schedule and dataset found there become the checkpoint's table identity.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from evalkit.models.spec import ModelSpec

EPOCH_RE = re.compile(r"epoch_(\d+)\.(?:pt|pth|bin|safetensors)$")


def read_params(path: Path) -> dict[str, str]:
    params: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            params[k.strip()] = v.strip()
    return params


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "None") else None
    except ValueError:
        return None


def spec_for_checkpoint(path: str | Path, model: str | None = None, family: str | None = None,
                        samples_per_epoch: float | None = None, pretrain_dataset: str | None = None,
                        lr_scheduler: str | None = None, name: str | None = None) -> ModelSpec:
    """A spec for one checkpoint file, filling what the caller left open from the run's params.txt."""
    path = Path(path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    params_file = run_dir / "params.txt"
    params = read_params(params_file) if params_file.is_file() else {}
    arch = model or params.get("model")
    if not arch:
        raise ValueError(
            f"{path}: no architecture: {params_file} is missing or has no 'model:' line. Pass --model ARCH."
        )
    m = EPOCH_RE.search(path.name)
    epoch = int(m.group(1)) if m else None
    per_epoch = samples_per_epoch if samples_per_epoch is not None else _float(params.get("train_num_samples"))
    samples_seen = epoch * per_epoch if epoch is not None and per_epoch is not None else None
    run_name = params.get("name") or run_dir.name
    return ModelSpec(
        model=arch, pretrained=str(path), name=name or f"{run_name}/{path.stem}", family=family,
        epoch=epoch, samples_seen=samples_seen,
        pretrain_dataset=pretrain_dataset or params.get("train_data_name") or params.get("dataset_name") or None,
        lr_scheduler=lr_scheduler or params.get("lr_scheduler") or None,
        extra={"run": run_name, **{k: params[k] for k in ("lr", "warmup", "batch_size", "epochs") if k in params}},
    )


def _epoch_key(p: str) -> tuple[str, int]:
    m = EPOCH_RE.search(p)
    return (str(Path(p).parent), int(m.group(1)) if m else -1)


def specs_from_glob(pattern: str, **kw) -> list[ModelSpec]:
    files = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True), key=_epoch_key)
    if not files:
        raise FileNotFoundError(f"--checkpoints '{pattern}' matches no file.")
    return [spec_for_checkpoint(f, **kw) for f in files]


def specs_from_run_dir(root: str | Path, **kw) -> list[ModelSpec]:
    """Every `epoch_N` checkpoint of every open_clip run under `root`."""
    root = Path(root).expanduser()
    files = sorted((str(p) for p in root.glob("**/checkpoints/epoch_*") if EPOCH_RE.search(p.name)), key=_epoch_key)
    if not files:
        raise FileNotFoundError(f"{root}: no open_clip run (no */checkpoints/epoch_N.pt below it).")
    return [spec_for_checkpoint(f, **kw) for f in files]
