"""FLOPs per sample as open_clip's profiler counts them: one `model(image, text)` forward at batch 1,
the model's resolution and context length, under `torch.utils.flop_counter`. Cached per architecture,
because the count depends only on the config (the paper's `gflops` column in model_profile.csv)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

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


def _transformer_gflops(layers: int, width: int, tokens: int, mlp_ratio: float) -> float:
    """Matmul FLOPs (2 per multiply-add) of a pre-norm transformer: qkv + out + MLP, and attention."""
    dense = 2 * tokens * (4 * width * width + 2 * width * int(width * mlp_ratio))
    attention = 4 * tokens * tokens * width
    return layers * (dense + attention) / 1e9


def estimate_gflops(cfg: dict[str, Any]) -> float | None:
    """Image + text forward GFLOPs of a ViT CLIP config, in closed form from the config alone.

    Within a few percent of the profiler's count (model_profile.csv), with no model built, so every
    shard of a grid can weigh checkpoints the same way before loading any. None for towers it
    cannot count this way (ResNets, timm or Hugging Face towers, captioning decoders).
    """
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    layers, size, patch = v.get("layers"), v.get("image_size", 224), v.get("patch_size")
    if (not isinstance(layers, int) or not patch or "timm_model_name" in v or "hf_model_name" in t
            or t.get("does_full_decoding") or "multimodal_cfg" in cfg):
        return None  # the captioning decoders of MaMMUT / CoCa are not in this closed form
    size = size if isinstance(size, int) else max(size)
    width, embed = int(v.get("width", 768)), int(cfg.get("embed_dim", 512))
    patches = (size // patch) ** 2
    image = (_transformer_gflops(layers, width, patches + 1, float(v.get("mlp_ratio", 4.0)))
             + 2 * patches * 3 * patch * patch * width / 1e9 + 2 * width * embed / 1e9)
    text_width = int(t.get("width", 512))
    text = (_transformer_gflops(int(t.get("layers", 12)), text_width, int(t.get("context_length", 77)),
                                float(t.get("mlp_ratio", 4.0))) + 2 * text_width * embed / 1e9)
    return image + text
