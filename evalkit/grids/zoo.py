"""The zoo: named models and grids declared in `checkpoints.yaml`.

An entry (model or grid) may carry `preprocess:` (size, mean, std, interpolation, resize_mode: see
`spec.check_preprocess`), which overrides what the checkpoint's config implies, e.g. SigLIP's mean/std
of 0.5 and squash resizing. `${NAME}` in a value is a path variable a plug-in registered
(evalkit/data/roots.py; `${EVALKIT_EMBEDDED_HOME}` comes from evalkit.embedded), else the environment's.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from evalkit.errors import UsageError
from evalkit.grids.source import Layout, register_layout
from evalkit.models.configs import ModelNotFound
from evalkit.models.source import CONFIG, parse_source
from evalkit.models.spec import ModelSpec, check_preprocess

SPEC_FIELDS = ("family", "arch", "samples_seen", "pretrain_dataset", "lr_scheduler", "epoch")


def zoo_path() -> Path:
    """`$EVALKIT_ZOO`, else `./checkpoints.yaml`, else the repository's top-level `checkpoints.yaml` in a
    source checkout or editable install, else the copy an installed wheel ships (setup.py)."""
    if os.environ.get("EVALKIT_ZOO"):
        return Path(os.environ["EVALKIT_ZOO"])
    if Path("checkpoints.yaml").is_file():
        return Path("checkpoints.yaml")
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "checkpoints.yaml").is_file():
        return root / "checkpoints.yaml"
    from importlib.resources import files

    return Path(str(files("evalkit").joinpath("_registry", "checkpoints.yaml")))


def read_zoo(path: Path | None = None) -> dict[str, Any]:
    import yaml

    path = path or zoo_path()
    if not path.is_file():
        return {"models": {}, "grids": {}}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ModelNotFound(f"{path}: not valid YAML ({e}).") from None
    return {"models": data.get("models", {}) or {}, "grids": data.get("grids", {}) or {}, "path": str(path)}


def _expand(value: Any, base: Path) -> Any:
    """`${NAME}` variables: a plug-in's path variables (`${EVALKIT_EMBEDDED_HOME}`), then the environment's."""
    if not isinstance(value, str):
        return value
    if "$" in value:
        from evalkit.data.roots import expand_path_variables

        value = expand_path_variables(value)
    return os.path.expandvars(value)


def _preprocess(entry: dict[str, Any], where: str) -> dict[str, Any] | None:
    if entry.get("preprocess") is None:
        return None
    try:
        return check_preprocess(entry["preprocess"], where)
    except ValueError as e:
        raise ModelNotFound(str(e)) from None


def zoo_spec(name: str) -> ModelSpec | None:
    zoo = read_zoo()
    entry = zoo["models"].get(name)
    if entry is None:
        return None
    base = Path(zoo.get("path", ".")).parent
    weights = _expand(entry.get("weights"), base)
    model = _expand(entry.get("model") or entry.get("arch"), base)
    pretrained = weights
    if isinstance(weights, str) and parse_source(weights).includes_weights:
        model, pretrained = weights, None
    return ModelSpec(model=model, pretrained=pretrained, name=name, **{k: entry.get(k) for k in SPEC_FIELDS},
                     preprocess=_preprocess(entry, f"{zoo.get('path')}: models: {name}"))


def grid_specs(name: str) -> list[ModelSpec]:
    from evalkit.grids.runs import specs_from_glob

    zoo = read_zoo()
    entry = zoo["grids"].get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(zoo["grids"]), n=5, cutoff=0.4)
        raise ModelNotFound(f"Unknown grid '{name}' in {zoo.get('path')}." + (f" Close names: {', '.join(close)}." if close else ""))
    base = Path(zoo.get("path", ".")).parent
    preprocess = _preprocess(entry, f"{zoo.get('path')}: grids: {name}")
    specs = specs_from_glob(
        _expand(entry["glob"], base), model=_expand(entry.get("arch"), base), family=entry.get("family"),
        samples_per_epoch=entry.get("samples_per_epoch"), pretrain_dataset=entry.get("pretrain_dataset"),
        lr_scheduler=entry.get("lr_scheduler"),
    )
    for spec in specs:
        spec.preprocess = dict(preprocess) if preprocess else None
    return specs


def resolve_model_arg(model: str, pretrained: str | None = None) -> ModelSpec:
    """`--model` as the user gave it: a zoo name first, else an open_clip/evalkit source."""
    spec = zoo_spec(model) if not pretrained else None
    if spec is not None:
        return spec
    source = parse_source(model)
    if source.includes_weights or source.kind == CONFIG:
        return ModelSpec(model=model, pretrained=pretrained)
    import open_clip

    from evalkit.models.configs import CONFIG_DIR

    if (CONFIG_DIR / f"{model}.json").is_file() or open_clip.get_model_config(model) is not None:
        return ModelSpec(model=model, pretrained=pretrained)
    known = list(read_zoo()["models"]) + [p.stem for p in CONFIG_DIR.glob("*.json")] + list(open_clip.list_models())
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
    raise ModelNotFound(
        f"Unknown model '{model}'." + (f" Close names: {', '.join(close)}." if close else "")
        + " `evalkit models` lists the zoo; an open_clip architecture, hf-hub:ORG/REPO, local-dir:DIR or a config JSON also work."
    )


def _zoo_grid_specs(name: str, model: str | None = None, family: str | None = None, where: Any = None,
                    epochs: Any = None) -> list[ModelSpec]:
    from evalkit.grids.runs import select_specs

    return select_specs(grid_specs(name), where, epochs)


def _model_specs(model: str, family: str | None = None, where: Any = None, epochs: Any = None,
                 pretrained: str | None = None) -> list[ModelSpec]:
    if where or epochs:
        raise UsageError("--where/--epochs select among grid checkpoints (--checkpoints, --run-dir, --grid)")
    spec = resolve_model_arg(model, pretrained)
    if family:
        spec.family = family
    return [spec]


register_layout(Layout("zoo-grid", "grid", lambda value: True, _zoo_grid_specs))
register_layout(Layout("model", "model", lambda value: True, _model_specs))
