"""The zoo: named models and grids declared in `checkpoints.yaml`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from evalkit.models.configs import ModelNotFound
from evalkit.models.spec import ModelSpec

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
    """`${EVALKIT_EMBEDDED_HOME}`-style variables and paths relative to the zoo file."""
    if not isinstance(value, str):
        return value
    if "${EVALKIT_EMBEDDED_HOME}" in value:
        from evalkit.embedded.paths import embedded_home

        value = value.replace("${EVALKIT_EMBEDDED_HOME}", str(embedded_home()))
    return os.path.expandvars(value)


def zoo_spec(name: str) -> ModelSpec | None:
    zoo = read_zoo()
    entry = zoo["models"].get(name)
    if entry is None:
        return None
    base = Path(zoo.get("path", ".")).parent
    weights = _expand(entry.get("weights"), base)
    model = _expand(entry.get("model") or entry.get("arch"), base)
    pretrained = weights
    if isinstance(weights, str) and weights.startswith(("hf-hub:", "local-dir:")):
        model, pretrained = weights, None
    return ModelSpec(model=model, pretrained=pretrained, name=name, **{k: entry.get(k) for k in SPEC_FIELDS})


def grid_specs(name: str) -> list[ModelSpec]:
    from evalkit.models.runs import specs_from_glob

    zoo = read_zoo()
    entry = zoo["grids"].get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(zoo["grids"]), n=5, cutoff=0.4)
        raise ModelNotFound(f"Unknown grid '{name}' in {zoo.get('path')}." + (f" Close names: {', '.join(close)}." if close else ""))
    base = Path(zoo.get("path", ".")).parent
    return specs_from_glob(
        _expand(entry["glob"], base), model=_expand(entry.get("arch"), base), family=entry.get("family"),
        samples_per_epoch=entry.get("samples_per_epoch"), pretrain_dataset=entry.get("pretrain_dataset"),
        lr_scheduler=entry.get("lr_scheduler"),
    )


def resolve_model_arg(model: str, pretrained: str | None = None) -> ModelSpec:
    """`--model` as the user gave it: a zoo name first, else an open_clip/evalkit source."""
    spec = zoo_spec(model) if not pretrained else None
    if spec is not None:
        return spec
    if model.startswith(("hf-hub:", "local-dir:")) or model.endswith(".json"):
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
