"""Where a dataset lives: `--data-root` (a folder, or a template with `{dataset}` as in clip_benchmark),
then `EVALKIT_DATA_ROOT_<DATASET>`, then `data_roots:` in the user config file, then `EVALKIT_DATA_ROOT`.

The user config file is `$EVALKIT_CONFIG` or `~/.config/evalkit/config.yaml`:
    data_roots:
      imagenet1k: /datasets/imagenet
      mscoco_captions: /datasets/coco

Plug-ins (the embedded world) add locations without the data and model layers importing them: a root
scheme (`embedded:PATH` as a task's `default_root`) and path variables (`${EVALKIT_EMBEDDED_HOME}` in the
zoo), registered when the plug-in's package is imported. Plug-in packages are found through the entry-point
group `evalkit.plugins` (evalkit's own pyproject.toml lists the embedded world there): nothing here names one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from evalkit.data.sources import DataError
from evalkit.registry import Registry

# Plug-in packages (entry-point group `evalkit.plugins`, each naming a module) register their schemes and
# variables when imported; the first lookup of either imports them.
PLUGIN_GROUP = "evalkit.plugins"
ROOT_SCHEMES: Registry[Callable[[str], Path]] = Registry("data-root scheme", (), PLUGIN_GROUP)
PATH_VARIABLES: Registry[Callable[[], str | Path]] = Registry("path variable", (), PLUGIN_GROUP)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_.+-]+):(.*)$", re.S)  # 2+ letters: not a drive letter
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def register_root_scheme(name: str, resolver: Callable[[str], Path]) -> None:
    """`name:REST` as a data root resolves to `resolver(REST)`."""
    ROOT_SCHEMES.register(name, resolver)


def register_path_variable(name: str, resolver: Callable[[], str | Path]) -> None:
    """`${name}` in a zoo value (or any string given to `expand_path_variables`) becomes `resolver()`."""
    PATH_VARIABLES.register(name, resolver)


def root_scheme(name: str) -> Callable[[str], Path] | None:
    """The resolver of a root scheme (the plug-ins loaded on first use); None if unknown."""
    return ROOT_SCHEMES.get(name)


def resolve_scheme_root(root: str) -> Path | None:
    """`scheme:REST` for a registered scheme -> its folder; None for anything else (a plain path)."""
    m = _SCHEME.match(root)
    if m is None:
        return None
    resolver = root_scheme(m.group(1))
    return resolver(m.group(2)) if resolver is not None else None


def expand_path_variables(value: str) -> str:
    """`${NAME}` for every registered path variable replaced by its value; other text left as it is."""
    def sub(m: re.Match) -> str:
        resolver = PATH_VARIABLES.get(m.group(1))
        return str(resolver()) if resolver is not None else m.group(0)

    return _VARIABLE.sub(sub, value)


def user_config_path() -> Path:
    return Path(os.environ.get("EVALKIT_CONFIG", Path.home() / ".config" / "evalkit" / "config.yaml"))


def _user_roots() -> dict[str, str]:
    path = user_config_path()
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e}).") from None
    roots = data.get("data_roots", {}) if isinstance(data, dict) else {}
    if not isinstance(roots, dict):
        raise DataError(f"{path}: 'data_roots' must map dataset names to folders.")
    return {str(k): str(v) for k, v in roots.items()}


def env_key(dataset: str) -> str:
    return "EVALKIT_DATA_ROOT_" + re.sub(r"[^A-Za-z0-9]", "_", dataset).upper()


def resolve_root(dataset: str, data_root: str | None, default: str | None = None) -> Path:
    """The folder of `dataset` (the task name without its `wds/` prefix).

    `default` (a task's `default_root`) is the last resort: a folder, or `SCHEME:PATH` of a registered
    root scheme (`embedded:PATH` points into the embedded world).
    """
    given = Path(data_root.replace("{dataset}", dataset)).expanduser() if data_root else None
    if given is not None and (given.exists() or not default):
        return given
    if os.environ.get(env_key(dataset)):
        return Path(os.environ[env_key(dataset)]).expanduser()
    roots = _user_roots()
    if dataset in roots:
        return Path(roots[dataset]).expanduser()
    if os.environ.get("EVALKIT_DATA_ROOT"):
        return Path(os.environ["EVALKIT_DATA_ROOT"].replace("{dataset}", dataset)).expanduser()
    if default:
        scheme_root = resolve_scheme_root(default)
        if scheme_root is not None:
            return scheme_root
        return Path(default).expanduser()
    raise DataError(
        f"No data root for '{dataset}'. Pass --data-root DIR (or a template like /data/{{dataset}}), set "
        f"{env_key(dataset)}, or add it under data_roots: in {user_config_path()}."
    )
