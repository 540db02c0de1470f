"""Small builders shared by tests: tiny open_clip models saved in every real checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used, so data-only tests (the fit oracles) stay light
    import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures"  # verbatim copies of the reference oracles and data (tests/fixtures/README.md)
TINY_S = REPO / "evalkit" / "models" / "model_configs" / "tinyclip-S.json"
TINY_M = REPO / "evalkit" / "models" / "model_configs" / "tinyclip-M.json"


def fill_disk(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of `folder` (a test's tmpfs) until about `leave_bytes` remain free."""
    import os

    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))


def fixture_path(*parts: str) -> Path:
    """A file or folder under tests/fixtures; a missing one is an error (a test never skips for want of it)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test fixture missing: {path} (the repository ships it; see tests/fixtures/README.md)")
    return path


def tiny_clip(config: Path = TINY_S, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny CLIP built by open_clip itself (the reference loader)."""
    import open_clip
    import torch

    open_clip.add_model_config(str(config))
    torch.manual_seed(seed)
    return open_clip.create_model(config.stem, pretrained=None).eval()


def save_training_checkpoint(model: torch.nn.Module, path: Path, epoch: int = 3) -> Path:
    """open_clip's training format: DDP `module.` prefix, AdamW state, a numpy scalar as real runs carry."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # real optimizer state, weights unchanged
    loss = sum(p.float().pow(2).sum() for p in model.parameters()) * 0.0 + model.logit_scale * 1.0
    loss.backward()
    opt.step()
    opt.zero_grad()
    ckpt = {
        "epoch": epoch,
        "name": "tiny-run",
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scaler": {"scale": np.float64(65536.0), "growth_factor": 2.0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def save_local_dir(model: torch.nn.Module, config: Path, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    cfg = json.loads(config.read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return folder
