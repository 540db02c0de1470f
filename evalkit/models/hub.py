"""Hugging Face hub layout (`open_clip_config.json` + weights), from the hub or the local cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evalkit.errors import NotFound, UserError

WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


class HubUnavailable(UserError, RuntimeError):
    """A hub model that is neither in the local cache nor reachable; the message says how to fetch it."""


class HubReadError(HubUnavailable):
    """A hub or local-dir file that exists but could not be read (permissions, corrupt JSON, an HTTP or
    disk error mid-download): reported with the file, never as a missing model or missing weights."""


def _read_config(path: Path, where: str) -> dict[str, Any]:
    """`open_clip_config.json` parsed; an unreadable or corrupt one is an error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubReadError(f"{where}: could not read {path} ({type(e).__name__}: {e}).") from e
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise HubReadError(f"{where}: {path} has no 'model_cfg' object: not an open_clip_config.json.")
    return data


def read_dir_layout(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(model_cfg, preprocess_cfg, weights path) from a folder in the hf-hub layout."""
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise NotFound(
            f"{folder}: no open_clip_config.json. A local-dir: model needs open_clip_config.json "
            "({'model_cfg', 'preprocess_cfg'}) beside its weights."
        )
    data = _read_config(cfg_path, f"local-dir:{folder}")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return data["model_cfg"], data.get("preprocess_cfg", {}), folder / name
    raise NotFound(f"{folder}: no weights file (looked for {', '.join(WEIGHT_FILES)}).")


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hub(repo_id: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Download (or find in the local HF cache) an open_clip hub model's config and weights.

    A file that is absent (from the repo, or from the cache when offline) moves on to the next weights
    name; any other error reading a file (permissions, HTTP, disk, corrupt config) stops with that file
    named, never reported as absent.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"hf-hub:{repo_id}"
    cache = _cache_dir() / f"models--{repo_id.replace('/', '--')}"
    try:
        cfg_file = Path(hf_hub_download(repo_id, "open_clip_config.json"))
    except LocalEntryNotFoundError:  # offline or unreachable, and not in the cache
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        how = (
            f"fetch it on a machine with access (`huggingface-cli download {repo_id}`) and copy {cache} here, "
            "or point --model at local-dir:DIR holding open_clip_config.json and the weights"
        )
        state = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise HubUnavailable(f"{where}: not in the local Hugging Face cache ({cache}) and {state}; {how}.") from None
    except EntryNotFoundError:
        raise HubUnavailable(f"{where}: the repo has no open_clip_config.json (not an open_clip model).") from None
    except RepositoryNotFoundError as e:
        raise HubUnavailable(f"{where}: no such repo, or it is private or gated (log in with "
                             f"`huggingface-cli login`) ({type(e).__name__}).") from e
    except Exception as e:
        raise HubReadError(f"{where}: reading open_clip_config.json (cache {cache}) failed: {type(e).__name__}: {e}") from e
    data = _read_config(cfg_file, where)
    absent = []
    for name in WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(repo_id, name))
        except LocalEntryNotFoundError:
            absent.append(f"{name} (not in the cache)")
            continue
        except EntryNotFoundError:
            absent.append(f"{name} (not in the repo)")
            continue
        except Exception as e:
            raise HubReadError(f"{where}: reading {name} (cache {cache}) failed: {type(e).__name__}: {e}") from e
        return data["model_cfg"], data.get("preprocess_cfg", {}), weights
    raise HubUnavailable(f"{where}: config found ({cfg_file}) but no weights file: {', '.join(absent)}.")
