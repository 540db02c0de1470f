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


# Bumped whenever what a family's `profile_forward` counts changes (2: a CoCa's text tower counted twice,
# as model_profile.csv does), so the on-disk cache never returns a count made the old way.
COUNT_VERSION = 2


def arch_key(lm: LoadedModel) -> str:
    key = [lm.family, lm.model_cfg, COUNT_VERSION]
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _vision_gflops(v: dict[str, Any], embed: int) -> tuple[float, int, int] | None:
    """(GFLOPs, tokens incl. CLS, width) of a plain ViT image tower, or None if not one."""
    layers, size, patch = v.get("layers"), v.get("image_size", 224), v.get("patch_size")
    if not isinstance(layers, int) or not patch or "timm_model_name" in v:
        return None
    size = size if isinstance(size, int) else max(size)
    patch = patch if isinstance(patch, int) else max(patch)
    width = int(v.get("width", 768))
    patches = (size // patch) ** 2
    gflops = (_transformer_gflops(layers, width, patches + 1, float(v.get("mlp_ratio", 4.0)))
              + 2 * patches * 3 * patch * patch * width / 1e9 + 2 * width * embed / 1e9)
    return gflops, patches + 1, width


def _mammut_text_gflops(t: dict[str, Any], image_tokens: int, vision_width: int) -> float:
    """The fork's training forward of the MaMMUT text tower, as `MaMMUTFamily.profile_forward` runs it.

    (1) the contrastive pass: every self-attention block (no cross-attention) over the full context L;
    (2) the captioning pass over L - 1 tokens: the same blocks (causal; the counter counts the full
    score matrix) plus a cross-attention block after every `cross_step`-th layer (queries from the
    text, keys/values from the image tokens mapped by `map_viz2txt_kv`), then the LM head;
    (3) the vocabulary projection of the contrastive pass that the fork computes and discards.
    Blocks at cross-attention layers have no MLP when `has_mlp` is false; the decoder's MLP ratio is
    always 4 (the fork does not forward `mlp_ratio`).
    """
    w, layers = int(t.get("width", 512)), int(t.get("layers", 12))
    L, vocab = int(t.get("context_length", 77)), int(t.get("vocab_size", 49408))
    n_cross = max(layers // int(t.get("cross_attn_ratio", 1)), 1)
    step = layers // n_cross
    cross_at = {i for i in range(layers) if i % step == 0}
    has_mlp = bool(t.get("has_mlp", True))

    def self_stack(tokens: int) -> float:
        total = 0.0
        for i in range(layers):
            mlp = has_mlp or i not in cross_at
            total += 2 * tokens * (4 * w * w + (8 * w * w if mlp else 0)) + 4 * tokens * tokens * w
        return total

    m, cap = image_tokens, L - 1
    cross = n_cross * (2 * cap * 2 * w * w          # q and out projections of the text
                       + 2 * m * 2 * w * w          # k and v projections of the image tokens
                       + 4 * cap * m * w            # scores and weighted sum
                       + 2 * cap * 8 * w * w)       # the block's MLP
    flops = (self_stack(L) + self_stack(cap) + cross + 2 * m * vision_width * w
             + 2 * cap * w * vocab + 2 * L * w * vocab)
    return flops / 1e9


def estimate_gflops(cfg: dict[str, Any]) -> float | None:
    """Image + text forward GFLOPs of a ViT CLIP or MaMMUT config, in closed form from the config alone.

    Within a few percent of the profiler's count (model_profile.csv, `count_gflops`), with no model
    built, so every shard of a grid can weigh checkpoints the same way before loading any. MaMMUT
    (`does_full_decoding` text towers) counts the fork's training forward as the profiler does. None
    for towers it cannot count this way (ResNets, timm or Hugging Face towers, CoCa's multimodal decoder).
    """
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    embed = int(cfg.get("embed_dim", 512))
    if "hf_model_name" in t or "multimodal_cfg" in cfg:
        return None  # CoCa's separate multimodal decoder is not in this closed form
    vision = _vision_gflops(v, embed)
    if vision is None:
        return None
    image, image_tokens, vision_width = vision
    if t.get("does_full_decoding"):  # MaMMUT: one text tower, contrastive and captioning
        return image + _mammut_text_gflops(t, image_tokens, vision_width)
    text_width = int(t.get("width", 512))
    text = (_transformer_gflops(int(t.get("layers", 12)), text_width, int(t.get("context_length", 77)),
                                float(t.get("mlp_ratio", 4.0))) + 2 * text_width * embed / 1e9)
    return image + text
