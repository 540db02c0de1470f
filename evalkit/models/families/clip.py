"""The CLIP family (and CoCa / other open_clip architectures), built by open_clip itself.

open_clip stays the source of truth for these architectures: evalkit only registers the config,
asks open_clip to build it, and loads weights through its own safe reader.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch

from evalkit.models.decoding import CaptionDecoder
from evalkit.models.family import ModelFamily, register_family


def _registered_name(model_name: str, model_cfg: dict[str, Any]) -> str:
    """Register `model_cfg` with open_clip under a stable name and return it."""
    import open_clip
    from open_clip import factory

    if open_clip.get_model_config(model_name) == model_cfg:
        return model_name
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    base = model_name.split(":")[-1].split("/")[-1]
    name = f"evalkit-{base}-{digest}"
    if "coca" in model_name.lower():
        name = f"coca-{name}"
    factory._MODEL_CONFIGS[name] = dict(model_cfg)
    return name


@register_family
class CLIPFamily(ModelFamily):
    name = "clip"
    text_pooling = "eot"

    @classmethod
    def matches(cls, model_name: str, model_cfg: dict[str, Any]) -> bool:
        return True

    @classmethod
    def build(cls, model_name: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
        import logging

        import open_clip

        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # open_clip warns "initialized randomly": evalkit loads weights next
        try:
            return open_clip.create_model(_registered_name(model_name, model_cfg), pretrained=None, device="cpu")
        finally:
            logger.setLevel(level)

    @classmethod
    def tokenizer(cls, model_name: str, model_cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
        """The tokenizer the config names (`hf_tokenizer_name`, through open_clip), else CLIP's BPE
        (open_clip's SimpleTokenizer), decided by the config alone as the fork that trained the paper's
        grid decides it. open_clip 3.x also picks SigLIP's sentencepiece tokenizer for any name holding
        "siglip" (none of its own configs relies on that), which is wrong for the paper's SigLIP runs:
        CLIP towers and tokenizer, sigmoid loss."""
        import open_clip

        text_cfg = model_cfg.get("text_cfg", {})
        if text_cfg.get("hf_tokenizer_name"):
            return open_clip.get_tokenizer(_registered_name(model_name, model_cfg))
        return open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77),
                                         **text_cfg.get("tokenizer_kwargs", {}))

    @classmethod
    def text_pooling_for(cls, model: torch.nn.Module) -> str:
        """EOT pooling under a causal mask allows prompt truncation; anything else does not."""
        pool = getattr(model, "text_pool_type", None)
        if pool is None and hasattr(model, "text"):
            pool = getattr(model.text, "pool_type", None)
        has_mask = getattr(model, "attn_mask", None) is not None or getattr(getattr(model, "text", None), "attn_mask", None) is not None
        return "eot" if pool in ("argmax", "eos", "last") and has_mask else "mean"

    @classmethod
    def profile_forward(cls, model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor) -> None:
        """A CoCa counts its text tower twice: model_profile.csv's coca GFLOPs are the forward plus one
        more text-tower pass (equal, to its two decimals, for coca S-32, S-14, M-32, M-16, B-32, B-16
        built on the CPU), so its gflops_total matches the paper's tables as CLIP's and MaMMUT's do."""
        from open_clip.coca_model import CoCa

        model(image, text)
        if isinstance(model, CoCa):
            model.text(text)

    @classmethod
    def prepare_state_dict(cls, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from open_clip.factory import convert_to_custom_text_state_dict
        from open_clip.model import resize_pos_embed, resize_text_pos_embed

        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        for key in ("logit_scale", "logit_bias"):
            own = getattr(model, key, None)
            if key in state and own is not None and own.ndim != state[key].ndim:
                state[key] = state[key].reshape(own.shape)
        if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
            state["logit_bias"] = torch.zeros_like(state["logit_scale"])
        state.pop("text.transformer.embeddings.position_ids", None)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        return state

    @classmethod
    def encode_text_prefix(cls, model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
        """Normalised text features computed on the shortest prefix that holds every EOT.

        Under a causal mask the EOT position never sees the padding after it, so cutting the padding
        changes nothing but the work (77 -> ~15 positions for ImageNet prompts). Only for open_clip's
        built-in CLIP text tower with argmax (EOT) pooling; anything else runs unchanged.
        """
        import torch.nn.functional as F
        from open_clip.model import CLIP
        from open_clip.transformer import text_global_pool

        if type(model) is not CLIP or model.text_pool_type != "argmax" or model.attn_mask is None:
            return model.encode_text(text, normalize=True)
        n = int(text.argmax(dim=-1).max().item()) + 1
        text = text[:, :n]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
        x = model.ln_final(x)
        x = text_global_pool(x, text, "argmax")
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        return F.normalize(x, dim=-1)

    @classmethod
    def caption_decoder(cls, model: torch.nn.Module) -> CaptionDecoder | None:
        """open_clip's CoCa: its unimodal text tower (causal, CLS appended last, not read) gives the
        decoder's input tokens, then `text_decoder`: causal self-attention block i, cross-attention
        block i, ..., `ln_final`, `text_projection`. None for every other open_clip model."""
        from open_clip.coca_model import CoCa

        if not isinstance(model, CoCa):
            return None
        d = model.text_decoder
        layers: list[tuple[str, torch.nn.Module]] = []
        for blk, cross in zip(d.resblocks, d.cross_attn):
            layers += [("self", blk), ("cross", cross)]

        def embed(tokens: torch.Tensor) -> torch.Tensor:
            return model.text(tokens)[1]  # token embeddings without the CLS, as CoCa.forward feeds them

        return CaptionDecoder(embed=embed, layers=layers, final=d.ln_final, head=d.text_projection,
                              pad_id=int(getattr(model, "pad_id", 0)))

    @classmethod
    def caption_context(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """CoCa's image embeddings (the attentional pooler's tokens after the first), as `_encode_image`."""
        return model._encode_image(images)[1]

    @classmethod
    def image_patch_tokens(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Final-block patch tokens (no CLS, no ln_post) from open_clip's `forward_intermediates`."""
        out = model.visual.forward_intermediates(images, indices=1, output_fmt="NLC", intermediates_only=True)
        return out["image_intermediates"][-1]

    @classmethod
    def image_dense_features(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """MaskCLIP (Zhou et al. 2022): the last block with each token attending only to itself, then
        `ln_post` and `proj`, so every patch lands in the joint space the CLS token is pooled into.

        With self-only attention a token's attention output is `out_proj(v)` of its own value; the
        block's residuals, layer scales and MLP are kept. The last block's input is taken from the
        tower's own forward pass (a hook for this call only), so any depth and embedding work.
        """
        import torch.nn.functional as F

        v = model.visual
        for attr in ("ln_post", "proj", "transformer"):
            if not hasattr(v, attr):
                raise NotImplementedError(f"{type(v).__name__}: image tower has no {attr}; no MaskCLIP dense path")
        if getattr(v, "attn_pool", None) is not None:
            raise NotImplementedError("attentional pooling has no MaskCLIP dense path")
        blk = v.transformer.resblocks[-1]
        if not isinstance(getattr(blk, "attn", None), torch.nn.MultiheadAttention) or not hasattr(blk, "mlp"):
            raise NotImplementedError(f"last vision block {type(blk).__name__} is not open_clip's "
                                      "ResidualAttentionBlock; no MaskCLIP path for it")
        seen: list[torch.Tensor] = []
        hook = blk.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            tokens = cls.image_patch_tokens(model, images)
        finally:
            hook.remove()
        x = seen[-1] if getattr(v.transformer, "batch_first", True) else seen[-1].transpose(0, 1)
        x = x[:, -tokens.shape[1]:]  # patches only: with self-only attention no token reads another
        d = x.shape[-1]
        w = blk.attn.in_proj_weight[2 * d:] if blk.attn.in_proj_weight is not None else blk.attn.v_proj_weight
        b = blk.attn.in_proj_bias[2 * d:] if blk.attn.in_proj_bias is not None else None
        a = blk.attn.out_proj(F.linear(blk.ln_1(x), w, b))
        x = x + (blk.ls_1(a) if hasattr(blk, "ls_1") else a)
        m = blk.mlp(blk.ln_2(x))
        x = x + (blk.ls_2(m) if hasattr(blk, "ls_2") else m)
        x = v.ln_post(x)
        return x @ v.proj if v.proj is not None else x
