"""Where a dataset lives: `--data-root` (a folder, or a template with `{dataset}` as in clip_benchmark),
then `EVALKIT_DATA_ROOT_<DATASET>`, then `data_roots:` in the user config file, then `EVALKIT_DATA_ROOT`.

The user config file is `$EVALKIT_CONFIG` or `~/.config/evalkit/config.yaml`:
    data_roots:
      imagenet1k: /datasets/imagenet
      mscoco_captions: /datasets/coco
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evalkit.data.sources import DataError


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

    `default` (a task's `default_root`) is the last resort; `embedded:PATH` points into the embedded world.
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
        if default.startswith("embedded:"):
            from evalkit.embedded.paths import data_root as embedded_data

            return embedded_data() / default.split(":", 1)[1]
        return Path(default).expanduser()
    raise DataError(
        f"No data root for '{dataset}'. Pass --data-root DIR (or a template like /data/{{dataset}}), set "
        f"{env_key(dataset)}, or add it under data_roots: in {user_config_path()}."
    )
