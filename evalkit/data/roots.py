"""Where a dataset lives: `--data-root` (a folder, or a template with `{dataset}` as in clip_benchmark),
then `EVALKIT_DATA_ROOT_<DATASET>`, then `data_roots:` in the user config file, then `EVALKIT_DATA_ROOT`.

The user config file is `$EVALKIT_CONFIG` or `~/.config/evalkit/config.yaml`:
    data_roots:
      imagenet1k: /datasets/imagenet
      mscoco_captions: /datasets/coco

Plug-ins (the embedded world) add locations without the data and model layers importing them: a root
scheme (`embedded:PATH` as a task's `default_root`) and path variables (`${EVALKIT_EMBEDDED_HOME}` in the
zoo), registered when the plug-in's package is imported. `PLUGINS` is the one place naming plug-in
packages; a scheme or variable nobody registered yet imports them (once) before giving up.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from evalkit.data.sources import DataError

# Plug-in packages, imported on the first lookup they may answer; each registers its schemes/variables.
PLUGINS: dict[str, str] = {"embedded": "evalkit.embedded"}

_SCHEMES: dict[str, Callable[[str], Path]] = {}
_VARIABLES: dict[str, Callable[[], str | Path]] = {}
_PLUGINS_LOADED = False
_LOCK = threading.RLock()
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_.+-]+):(.*)$", re.S)  # 2+ letters: not a drive letter
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def register_root_scheme(name: str, resolver: Callable[[str], Path]) -> None:
    """`name:REST` as a data root resolves to `resolver(REST)`."""
    _SCHEMES[name] = resolver


def register_path_variable(name: str, resolver: Callable[[], str | Path]) -> None:
    """`${name}` in a zoo value (or any string given to `expand_path_variables`) becomes `resolver()`."""
    _VARIABLES[name] = resolver


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    with _LOCK:
        if _PLUGINS_LOADED:
            return
        _PLUGINS_LOADED = True
        for module in PLUGINS.values():
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:  # a plug-in that is not installed answers nothing
                if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                    raise  # the plug-in is there but broken: say so


def root_scheme(name: str) -> Callable[[str], Path] | None:
    """The resolver of a root scheme, loading the plug-ins if nobody registered it yet; None if unknown."""
    if name not in _SCHEMES:
        _load_plugins()
    return _SCHEMES.get(name)


def resolve_scheme_root(root: str) -> Path | None:
    """`scheme:REST` for a registered scheme -> its folder; None for anything else (a plain path)."""
    m = _SCHEME.match(root)
    if m is None:
        return None
    resolver = root_scheme(m.group(1))
    return resolver(m.group(2)) if resolver is not None else None


def expand_path_variables(value: str) -> str:
    """`${NAME}` for every registered path variable replaced by its value; other text left as it is."""
    names = set(_VARIABLE.findall(value))
    if names - set(_VARIABLES):
        _load_plugins()

    def sub(m: re.Match) -> str:
        resolver = _VARIABLES.get(m.group(1))
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
