"""Training runs on disk, three layouts, one `ModelSpec` per `epoch_N` checkpoint.

- open_clip runs: `<run>/params.txt` beside `<run>/checkpoints/epoch_N.pt`. open_clip writes every
  training argument to params.txt as `key: value` lines; the architecture, samples per epoch,
  schedule and dataset found there become the checkpoint's table identity.
- the paper's grid as `laion/scaling-laws-for-comparison` publishes it (`download_models.py`):
  `<root>/<full_name>/epoch_N.pt` (+ an `epoch_latest.pt` link, never a checkpoint of its own),
  with the hub's metadata table at `<root>/cache/results.parquet` when present;
- the paper's training logs: `<root>/<run name>/checkpoints/epoch_N.pt`, no params.txt.

For the last two, family, architecture, pretrain dataset, lr schedule, global batch, total samples
and total epochs come from the metadata table when there is one (it wins), else from the run name
(evalkit/grids/paper.py); `model` (`--model`) overrides the architecture only.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
from pathlib import Path
from typing import Any

from evalkit.errors import NotFound, UsageError
from evalkit.grids import paper as pg
from evalkit.grids.source import Layout, register_layout
from evalkit.models.spec import ModelSpec

log = logging.getLogger(__name__)

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
        raise UsageError(
            f"{path}: no architecture: {params_file} is missing or has no 'model:' line. Pass --model ARCH."
        )
    m = EPOCH_RE.search(path.name)
    epoch = int(m.group(1)) if m else None
    per_epoch = samples_per_epoch if samples_per_epoch is not None else _float(params.get("train_num_samples"))
    samples_seen = epoch * per_epoch if epoch is not None and per_epoch is not None else None
    run_name = params.get("name") or run_dir.name
    world = _int(params.get("world_size"))
    local_bs = _int(params.get("batch_size"))
    return ModelSpec(
        model=arch, pretrained=str(path), name=name or f"{run_name}/{path.stem}", family=family or _cap_run(params, arch),
        epoch=epoch, samples_seen=samples_seen,
        pretrain_dataset=pretrain_dataset or params.get("train_data_name") or params.get("dataset_name") or None,
        lr_scheduler=lr_scheduler or params.get("lr_scheduler") or None,
        extra={"run": run_name, **{k: params[k] for k in ("lr", "warmup", "batch_size", "epochs") if k in params}},
        total_epochs=_int(params.get("epochs")), run=run_name,
        global_batch_size=local_bs * world if local_bs and world else None,
    )


def _cap_run(params: dict[str, str], arch: str) -> str | None:
    """"cap" for a MaMMUT run trained without its contrastive loss (params.txt's
    `coca_contrastive_loss_weight: 0`, how the paper's cap runs were trained): its weights look like any
    MaMMUT's, but it has no contrastive head worth evaluating. None (the weights decide) otherwise."""
    weight = _float(params.get("coca_contrastive_loss_weight"))
    return "cap" if weight == 0 and "mammut" in arch.lower() else None


def _int(v: str | None) -> int | None:
    f = _float(v)
    return int(f) if f is not None and f.is_integer() else None


def _epoch_key(p: str) -> tuple[str, int]:
    m = EPOCH_RE.search(p)
    return (str(Path(p).parent), int(m.group(1)) if m else -1)


def _run_dir(path: Path) -> Path:
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def checkpoint_files(files: list[str]) -> list[str]:
    """The checkpoints among `files`: no `epoch_latest*` (download_models.py's link to the last epoch),
    no link to another file of the list (each checkpoint is evaluated once)."""
    real = {os.path.realpath(f) for f in files if not os.path.islink(f)}
    keep = []
    for f in files:
        if Path(f).name.startswith("epoch_latest"):
            continue
        if os.path.islink(f) and os.path.realpath(f) in real:
            continue
        keep.append(f)
    return keep


@functools.lru_cache(maxsize=256)
def _arch_problem(arch: str) -> str | None:
    """None if evalkit or open_clip knows `arch`, else why not."""
    from evalkit.models.configs import ModelNotFound, get_arch_config

    try:
        get_arch_config(arch)
    except ModelNotFound as e:
        return str(e)
    return None


def _unsupported(info: pg.RunInfo) -> str | None:
    """Why a parsed run cannot be evaluated by evalkit, or None."""
    problem = _arch_problem(info.arch)
    if problem is None:
        return None
    if info.namespace in ("coca", "siglip"):
        return (f"{info.run}: namespace '{info.namespace}' with architecture '{info.arch}' is not supported: evalkit "
                f"builds {info.namespace} models through open_clip, and neither evalkit's configs nor open_clip's have a '{info.arch}' architecture. "
                "Pass --model ARCH (a config JSON of the architecture) to evaluate it anyway.")
    return (f"{info.run}: architecture '{info.arch}' (namespace {info.namespace}, model {info.model_simple}) is "
            "neither an evalkit nor an open_clip architecture; expected one of `evalkit models --archs` or "
            "open_clip's. Pass --model ARCH (or a config JSON) to evaluate it anyway.")


# cap: MaMMUT's architecture and keys, captioning loss only (its contrastive tasks are not planned)
_FAMILY_OF = {"clip": "clip", "mammut": "mammut", "cap": "cap", "siglip": "clip", "coca": "clip"}


def _metadata_for(root: Path) -> pg.MetadataTable | None:
    """`<root>/cache/results.parquet` (read once per file version), or None."""
    path = pg.metadata_path(root)
    return pg.read_metadata(path) if path.is_file() else None


def _epochs_on_disk(run_dir: Path) -> list[int]:
    found = []
    for sub in (run_dir, run_dir / "checkpoints"):
        if sub.is_dir():
            for p in sub.iterdir():
                m = EPOCH_RE.search(p.name)
                if m and not p.name.startswith("epoch_latest"):
                    found.append(int(m.group(1)))
    return sorted(set(found))


_FROM_FOLDER: Any = object()  # _grid_run_specs: read the table from <run_dir>/../cache/results.parquet


def _grid_run_specs(run_dir: Path, files: list[str], model: str | None, family: str | None,
                    warnings: list[str], table: pg.MetadataTable | None = _FROM_FOLDER) -> list[ModelSpec]:
    """Specs of one run of the paper's grid (no params.txt): metadata table first, else the name.
    `table`: the run's metadata table (None: none), by default the one beside the run's folder."""
    name = run_dir.name
    table = _metadata_for(run_dir.parent) if table is _FROM_FOLDER else table
    entry = table.get(name) if table is not None else None
    try:
        parsed: pg.RunInfo | None = pg.parse_run_name(name)
        parse_error = None
    except pg.RunNameError as e:
        parsed, parse_error = None, str(e)
    info: pg.RunInfo | None = parsed
    if entry is not None:
        try:
            info, disagree = pg.info_from_metadata(name, entry, table.path, parsed)
            warnings.extend(disagree)
        except pg.RunNameError as e:
            info, parse_error = None, str(e)
    elif table is not None:
        warnings.append(f"{run_dir}: no row with full_name '{name}' in the metadata table {table.path}; "
                        "identity taken from the folder name" + ("" if parsed else " (which does not parse)"))
    error = None
    if info is None:
        if model is None:
            error = f"{run_dir}: {parse_error} Pass --model ARCH to evaluate it anyway."
    else:
        if not info.total_epochs:
            present = _epochs_on_disk(run_dir) or [e for e in (_epoch_of(f) for f in files) if e is not None]
            if present:
                info.total_epochs = max(present)
                warnings.append(
                    f"{run_dir}: total epochs unknown (no row in a metadata table "
                    f"{table.path if table is not None else pg.metadata_path(run_dir.parent)} and "
                    f"no ep<N> in the name): taking the largest epoch present, {info.total_epochs}; "
                    "samples_seen = total samples x epoch / total epochs is wrong if the run trained longer")
        if model is None:
            error = _unsupported(info)
        if entry is not None and info.total_epochs:
            for f in files:
                e = _epoch_of(f)
                if e is not None and e > info.total_epochs:
                    warnings.append(f"{f}: epoch {e} is beyond total_epochs={info.total_epochs} that the metadata "
                                    f"table {table.path} gives for {name}")
    specs = []
    for f in files:
        epoch = _epoch_of(f)
        arch = model or (info.arch if info else name)
        specs.append(ModelSpec(
            model=arch, pretrained=str(f), name=f"{name}/{Path(f).stem}",
            family=family or (_FAMILY_OF.get(info.namespace) if info else None),
            arch=None if model or info is None else info.arch, epoch=epoch,
            samples_seen=info.samples_seen(epoch) if info else None,
            pretrain_dataset=info.pretrain_dataset if info else None,
            lr_scheduler=info.lr_scheduler if info else None,
            extra={"run": name, **({"lr": info.lr, "warmup": info.warmup, "total_samples": info.total_samples}
                                   if info else {})},
            namespace=info.namespace if info else None, model_simple=info.model_simple if info else None,
            samples_seen_scale_pretty=info.samples_seen_scale_pretty if info else None,
            total_epochs=info.total_epochs if info else None,
            global_batch_size=info.global_batch_size if info else None, run=name, error=error,
        ))
    return specs


def _epoch_of(path: str) -> int | None:
    m = EPOCH_RE.search(Path(path).name)
    return int(m.group(1)) if m else None


def specs_for_files(files: list[str], model: str | None = None, family: str | None = None,
                    samples_per_epoch: float | None = None, pretrain_dataset: str | None = None,
                    lr_scheduler: str | None = None, where: Any = None, epochs: Any = None) -> list[ModelSpec]:
    """Specs of checkpoint files, each run read from its params.txt when it has one, else as the
    paper's grid; then `--where` / `--epochs` selection. Warnings (missing total epochs, metadata
    disagreements) are logged for the selected runs only."""
    where, epoch_sel = pg.parse_where(where), pg.parse_epochs(epochs)
    files = checkpoint_files(sorted(files, key=_epoch_key))
    by_run: dict[Path, list[str]] = {}
    for f in files:
        by_run.setdefault(_run_dir(Path(f)), []).append(f)
    specs: list[ModelSpec] = []
    warnings: dict[str, list[str]] = {}
    for run_dir, run_files in by_run.items():
        if (run_dir / "params.txt").is_file():
            specs += [spec_for_checkpoint(f, model=model, family=family, samples_per_epoch=samples_per_epoch,
                                          pretrain_dataset=pretrain_dataset, lr_scheduler=lr_scheduler)
                      for f in run_files]
            continue
        if model is not None and not _looks_like_grid(run_dir):
            # today's behaviour for a plain folder of checkpoints with --model: no grid identity to read
            specs += [spec_for_checkpoint(f, model=model, family=family, samples_per_epoch=samples_per_epoch,
                                          pretrain_dataset=pretrain_dataset, lr_scheduler=lr_scheduler)
                      for f in run_files]
            continue
        run_specs = _grid_run_specs(run_dir, run_files, model, family, warnings.setdefault(str(run_dir), []))
        for s in run_specs:  # the grid entry's own fields (zoo grids) fill what the name left open
            s.pretrain_dataset = s.pretrain_dataset or pretrain_dataset
            s.lr_scheduler = s.lr_scheduler or lr_scheduler
            s.extra["run_dir"] = str(run_dir)
        specs += run_specs
    return _select_and_warn(specs, warnings, where, epoch_sel)


def specs_for_grid_listing(files_by_run: dict[Path, list[str]], table: pg.MetadataTable | None,
                           model: str | None = None, family: str | None = None, where: Any = None,
                           epochs: Any = None) -> list[ModelSpec]:
    """Specs of the paper's grid known from a file list and a metadata table rather than from a folder
    (a hub repo: evalkit/grids/hub.py): `files_by_run` maps each run's folder (its name is the
    run's full name) to the references of its `epoch_N` files, which become the specs' `pretrained`."""
    specs: list[ModelSpec] = []
    warnings: dict[str, list[str]] = {}
    for run_dir, run_files in files_by_run.items():
        run_specs = _grid_run_specs(run_dir, run_files, model, family, warnings.setdefault(str(run_dir), []),
                                    table=table)
        for s in run_specs:
            s.extra["run_dir"] = str(run_dir)
        specs += run_specs
    return _select_and_warn(specs, warnings, pg.parse_where(where), pg.parse_epochs(epochs))


def _select_and_warn(specs: list[ModelSpec], warnings: dict[str, list[str]], where: Any,
                     epochs: Any) -> list[ModelSpec]:
    """`--where`/`--epochs` selection, then the warnings of the selected runs, logged once each."""
    n = len(specs)
    specs = select_specs(specs, where, epochs)
    if n and not specs:
        raise NotFound(f"--where/--epochs select none of the {n} checkpoints found.")
    for run_dir in dict.fromkeys(s.extra.get("run_dir") for s in specs):
        for w in dict.fromkeys(warnings.get(run_dir or "", [])):
            log.warning("evalkit: warning: %s", w)
    return specs


def _looks_like_grid(run_dir: Path) -> bool:
    """Whether a folder without params.txt is a run of the paper's grid (name or metadata table)."""
    if pg.metadata_path(run_dir.parent).is_file():
        return True
    try:
        pg.parse_run_name(run_dir.name)
    except pg.RunNameError:
        return False
    return True


def _spec_values(s: ModelSpec) -> dict[str, Any]:
    return {"namespace": s.namespace, "model_simple": s.model_simple, "arch": s.arch or s.model,
            "pretrain_dataset": s.pretrain_dataset, "samples_seen_scale_pretty": s.samples_seen_scale_pretty,
            "lr_scheduler": s.lr_scheduler, "total_epochs": s.total_epochs,
            "global_batch_size": s.global_batch_size, "run": s.run}


def select_specs(specs: list[ModelSpec], where: Any = None, epochs: Any = None) -> list[ModelSpec]:
    """`--where key=v1|v2,...` (checkpoints whose value is one of those given, for every key) and
    `--epochs last|all|1,5,10` (`last`: each run's largest epoch among the selected checkpoints)."""
    where, epochs = pg.parse_where(where), pg.parse_epochs(epochs)
    if where:
        specs = [s for s in specs if pg.matches_where(_spec_values(s), where)]
    if epochs is None:
        return specs
    if epochs == "last":
        last: dict[str, int | None] = {}
        for s in specs:
            key = s.run or str(_run_dir(Path(s.pretrained or s.name)))
            if s.epoch is not None and (last.get(key) is None or s.epoch > last[key]):
                last[key] = s.epoch
        return [s for s in specs if s.epoch == last.get(s.run or str(_run_dir(Path(s.pretrained or s.name))))]
    return [s for s in specs if s.epoch in epochs]


def specs_from_glob(pattern: str, **kw) -> list[ModelSpec]:
    files = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True), key=_epoch_key)
    if not files:
        raise NotFound(f"--checkpoints '{pattern}' matches no file.")
    return specs_for_files(files, **kw)


def specs_from_run_dir(root: str | Path, **kw) -> list[ModelSpec]:
    """Every `epoch_N` checkpoint of every run under `root`: open_clip runs (`*/checkpoints/`), the
    paper's hub layout (`<full_name>/epoch_N.pt`) and its training logs (`<run>/checkpoints/`)."""
    root = Path(root).expanduser()
    files = sorted((str(p) for p in root.glob("**/epoch_*") if EPOCH_RE.search(p.name)
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)), key=_epoch_key)
    if not files:
        raise NotFound(
            f"{root}: no checkpoints (no */checkpoints/epoch_N.pt of an open_clip run or the paper's training "
            "logs, no <full_name>/epoch_N.pt of the paper's hub layout below it).")
    return specs_for_files(files, **kw)


register_layout(Layout("checkpoint-glob", "checkpoints", lambda value: True, specs_from_glob))
register_layout(Layout("run-dir", "run_dir", lambda value: True, specs_from_run_dir))
