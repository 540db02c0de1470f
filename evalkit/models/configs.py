"""Where architectures come from: evalkit's model_configs/, open_clip's registry, or a JSON file.

A model is data (a config) plus a family's small builder, as in open_clip's `model_configs/*.json`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from evalkit.errors import UserError

CONFIG_DIR = Path(__file__).parent / "model_configs"


class ModelNotFound(UserError, LookupError):
    """An architecture or model name that evalkit cannot resolve; the message lists close names."""


def evalkit_config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A model config JSON (plain, or hf-hub style with a `model_cfg` key)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"{path}: cannot read the model config JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ModelNotFound(f"{path}: a model config must be a JSON object with vision_cfg and text_cfg.")
    cfg = data.get("model_cfg", data)
    if "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ModelNotFound(f"{path}: not an open_clip model config (needs 'vision_cfg' and 'text_cfg').")
    return cfg


def get_arch_config(arch: str) -> dict[str, Any]:
    """The model config of an architecture name: evalkit's own configs first, then open_clip's."""
    own = CONFIG_DIR / f"{arch}.json"
    if own.is_file():
        return read_config_file(own)
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        known = evalkit_config_names() + list(open_clip.list_models())
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ModelNotFound(
            f"Unknown architecture '{arch}'.{hint} Give an open_clip or evalkit architecture name "
            "(`evalkit models --archs`), a zoo name, hf-hub:ORG/REPO, local-dir:DIR, or a model-config JSON path."
        )
    return cfg
