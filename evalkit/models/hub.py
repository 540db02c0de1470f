"""Hugging Face hub layout (`open_clip_config.json` + weights), from the hub or the local cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


class HubUnavailable(RuntimeError):
    """A hub model that is neither in the local cache nor reachable; the message says how to fetch it."""


def read_dir_layout(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(model_cfg, preprocess_cfg, weights path) from a folder in the hf-hub layout."""
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{folder}: no open_clip_config.json. A local-dir: model needs open_clip_config.json "
            "({'model_cfg', 'preprocess_cfg'}) beside its weights."
        )
    data = json.loads(cfg_path.read_text())
    if "model_cfg" not in data:
        raise ValueError(f"{cfg_path}: missing 'model_cfg'.")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return data["model_cfg"], data.get("preprocess_cfg", {}), folder / name
    raise FileNotFoundError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_FILES)}).")


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hub(repo_id: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Download (or find in the local HF cache) an open_clip hub model's config and weights."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        cfg_file = Path(hf_hub_download(repo_id, "open_clip_config.json"))
    except Exception as e:  # offline, missing repo, network: all end the same way for the user
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        where = _cache_dir() / f"models--{repo_id.replace('/', '--')}"
        how = (
            f"fetch it on a machine with access (`huggingface-cli download {repo_id}`) and copy {where} here, "
            "or point --model at local-dir:DIR holding open_clip_config.json and the weights"
        )
        state = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({type(e).__name__})"
        raise HubUnavailable(f"hf-hub:{repo_id}: not in the local Hugging Face cache ({where}) and {state}; {how}.") from None
    data = json.loads(cfg_file.read_text())
    for name in WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(repo_id, name))
            return data["model_cfg"], data.get("preprocess_cfg", {}), weights
        except EntryNotFoundError:
            continue
        except Exception:
            continue
    raise HubUnavailable(
        f"hf-hub:{repo_id}: config found ({cfg_file}) but no weights file ({', '.join(WEIGHT_FILES)}) in the cache or hub."
    )
