"""FLOPs per sample as open_clip's profiler counts them: one `model(image, text)` forward at batch 1,
the model's resolution and context length, under `torch.utils.flop_counter`. Cached per architecture,
because the count depends only on the config (the paper's `gflops` column in model_profile.csv)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from evalkit.atomic import atomic_write_text
from evalkit.models.family import LoadedModel


def _cache_file() -> Path:
    return Path(os.environ.get("EVALKIT_FLOPS_CACHE", Path.home() / ".cache" / "evalkit" / "flops.json"))


def arch_key(lm: LoadedModel) -> str:
    return hashlib.sha1(json.dumps([lm.family, lm.model_cfg], sort_keys=True, default=str).encode()).hexdigest()[:16]


def count_gflops(model: torch.nn.Module, image_size: int, context_length: int, family: str | None = None) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from evalkit.models.family import FAMILIES, family_for

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    image = torch.ones(1, 3, image_size, image_size, device=device, dtype=dtype)
    text = torch.ones(1, context_length, device=device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    # Not under no_grad: there nn.MultiheadAttention takes a fused fast path whose FLOPs the counter
    # misses; open_clip's profiler runs with grad enabled, and so do we.
    fam = FAMILIES[family] if family else family_for(getattr(model, "evalkit_arch", ""), {})
    with torch.enable_grad(), counter:
        fam.profile_forward(model, image, text)
    return sum(counter.get_flop_counts()["Global"].values()) / 1e9


def gflops_per_sample(lm: LoadedModel) -> float:
    """GFLOPs of one image + text forward of `lm`'s architecture (cached on disk by config)."""
    path = _cache_file()
    key = arch_key(lm)
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return float(cache[key]["gflops"])
    value = count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family)
    cache[key] = {"arch": lm.arch, "gflops": value}
    atomic_write_text(path, json.dumps(cache, indent=1))
    return value
