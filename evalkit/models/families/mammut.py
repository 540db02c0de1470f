"""MaMMUT as trained by LAION's `open_clip_mammut` fork, which open_clip itself does not ship.

Written from the behaviour the fork documents (see the MaMMUT spec kept with the oracles), not from
its code. What matters for evaluation, and what a careless port gets wrong:

- one text tower (`text.*`) is both the contrastive text encoder and the captioning decoder. The
  contrastive pass runs it *bidirectionally* (no causal mask, no pad mask) without cross-attention
  and takes the plain mean of `ln_final` over all context positions, pads included, with no
  projection, so the text feature size is the text width;
- the image feature is the mean over *all* vision tokens (CLS included), then `ln_post`, then `proj`;
- the token embedding always has 49408 rows, and `text.text_projection` is the LM head
  (`width x vocab_size`), unused by zero-shot evaluation;
- a cross-attention block follows self-attention layer `i` iff `i % cross_step == 0`; with
  `has_mlp: false` the self-attention blocks at those layers have no MLP;
- every norm returns its input's dtype (the fork's `LayerNorm`, not `nn.LayerNorm`), so under CUDA
  autocast the vision residual stream stays in bf16/fp16 as the fork's does.

The state dict has exactly the fork's keys and shapes, so its checkpoints load strictly.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import UsageError
from evalkit.models.checkpoint import CheckpointError
from evalkit.models.decoding import CaptionDecoder
from evalkit.models.family import ModelFamily, register_family

log = logging.getLogger(__name__)

# The fork never passes the config's vocab size to the decoder's embedding table (spec §4, quirk 3).
TOKEN_EMBEDDING_ROWS = 49408


def _pair(v: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


class QuickGELU(nn.Module):
    """Only for configs that set `quick_gelu`; no mammut config does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` whose output has its input's dtype: the fork's norm (open_clip's `LayerNorm`).

    It matters under autocast only. On CUDA, autocast computes layer_norm in float32 and returns float32,
    so a plain `nn.LayerNorm` would turn the vision residual stream (bf16/fp16 from the patch conv) into
    float32 at `ln_pre` and keep it there, while the fork's stays in the autocast dtype. The fork takes
    `LayerNormFp32` instead only for weights cast to fp16/bf16 (open_clip's `bf16`/`fp16` precisions);
    evalkit keeps float32 weights (fp32, amp_bf16, amp_fp16), where the fork uses this class everywhere.
    Same parameters as `nn.LayerNorm`, so the state-dict keys do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Block(nn.Module):
    """Pre-LN residual block: `x + attn(ln_1(x)[, ln_1_kv(kv)])`, then `x + mlp(ln_2(x))` if it has one.

    `nn.MultiheadAttention` keeps q/k/v packed in `in_proj_weight`, the layout of open_clip checkpoints.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        has_mlp: bool = True,
        cross: bool = False,
        act: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1_kv = LayerNorm(width) if cross else None
        self.ln_2: LayerNorm | None = None
        self.mlp: nn.Sequential | None = None
        if has_mlp:
            hidden = int(width * mlp_ratio)
            self.ln_2 = LayerNorm(width)
            self.mlp = nn.Sequential(
                OrderedDict(c_fc=nn.Linear(width, hidden), gelu=act(), c_proj=nn.Linear(hidden, width))
            )

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.ln_1(x)
        k = q if kv is None else self.ln_1_kv(kv)  # type: ignore[misc]
        x = x + self.attn(q, k, k, need_weights=False, attn_mask=attn_mask)[0]
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))  # type: ignore[misc]
        return x


class _Stack(nn.Module):
    """Holds `resblocks` so the keys read `visual.transformer.resblocks.N.*`, as in open_clip."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


class VisionTower(nn.Module):
    """open_clip's ViT (patch conv without bias, CLS, pre-LN) with the fork's `avg_all` pooling."""

    def __init__(self, cfg: dict[str, Any], embed_dim: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        unsupported = [k for k in ("timm_model_name", "attentional_pool", "ls_init_value", "no_ln_pre") if cfg.get(k)]
        if unsupported or isinstance(cfg.get("layers", 12), (list, tuple)):
            raise NotImplementedError(f"MaMMUT vision tower: unsupported vision_cfg options {unsupported or ['layers']}")
        width = int(cfg.get("width", 768))
        layers = int(cfg.get("layers", 12))
        heads = width // int(cfg.get("head_width", 64))
        self.image_size = _pair(cfg.get("image_size", 224))
        self.patch_size = _pair(cfg.get("patch_size", 16))
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.pool_type = str(cfg.get("pool_type", "tok"))
        if self.pool_type not in ("avg_all", "avg", "tok"):
            raise NotImplementedError(f"MaMMUT vision tower: pool_type {self.pool_type!r}")
        self.final_ln_after_pool = bool(cfg.get("final_ln_after_pool", False))

        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        n_pos = self.grid_size[0] * self.grid_size[1] + 1
        self.positional_embedding = nn.Parameter(scale * torch.randn(n_pos, width))
        self.ln_pre = LayerNorm(width)
        mlp_ratio = float(cfg.get("mlp_ratio", 4.0))
        self.transformer = _Stack([Block(width, heads, mlp_ratio, act=act) for _ in range(layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Transformer output [B, 1+N, width], CLS first, before `ln_post`."""
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.transformer(self.ln_pre(x))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg_all":
            return x.mean(dim=1)
        if self.pool_type == "avg":
            return x[:, 1:].mean(dim=1)
        return x[:, 0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled @ proj, pre-ln_post tokens)."""
        tokens = self.tokens(image)
        if self.final_ln_after_pool:
            pooled = self.ln_post(self._pool(tokens))
        else:
            pooled = self._pool(self.ln_post(tokens))
        return pooled @ self.proj, tokens


class TextDecoder(nn.Module):
    """The fork's `MultimodalTransformer` with full decoding: embeddings, self-attn stack, sparse cross-attn."""

    def __init__(self, cfg: dict[str, Any], act: Callable[[], nn.Module]) -> None:
        super().__init__()
        if cfg.get("hf_model_name") or cfg.get("ls_init_value"):
            raise NotImplementedError("MaMMUT text tower: hf_model_name / ls_init_value are not supported")
        if not cfg.get("does_full_decoding", False):
            raise NotImplementedError("MaMMUT text tower: only does_full_decoding=true (all fork configs)")
        width = int(cfg.get("width", 512))
        heads = int(cfg.get("heads", 8))
        layers = int(cfg.get("layers", 12))
        ratio = int(cfg.get("cross_attn_ratio", 1))
        has_mlp = bool(cfg.get("has_mlp", True))
        self.context_length = int(cfg.get("context_length", 77))
        n_cross = layers // ratio
        if n_cross < 1:
            raise UsageError(f"MaMMUT text tower: cross_attn_ratio {ratio} > layers {layers}")
        self.cross_step = layers // n_cross
        cross_at = [i for i in range(layers) if i % self.cross_step == 0]
        if len(cross_at) != n_cross:  # the fork asserts the same
            raise UsageError(f"MaMMUT text tower: layers {layers} / cross_attn_ratio {ratio} gives uneven cross-attn")

        # mlp_ratio is not forwarded to the decoder by the fork: always 4 (spec §4, quirk 2).
        self.resblocks = nn.ModuleList(
            [Block(width, heads, 4.0, has_mlp=has_mlp or i not in cross_at, act=act) for i in range(layers)]
        )
        self.cross_attn = nn.ModuleList([Block(width, heads, 4.0, cross=True, act=act) for _ in cross_at])
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, int(cfg.get("vocab_size", 49408))))
        self.token_embedding = nn.Embedding(TOKEN_EMBEDDING_ROWS, width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, text: torch.Tensor, image_embs: torch.Tensor | None = None) -> torch.Tensor:
        """`ln_final` hidden states [B, L, width].

        Without `image_embs` (contrastive pass) attention is fully bidirectional and cross-attention is
        skipped; with them (captioning) self-attention is causal and cross-attention reads the image.
        """
        seq_len = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:seq_len]
        mask = None
        if image_embs is not None:
            mask = torch.full((seq_len, seq_len), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        for idx, blk in enumerate(self.resblocks):
            x = blk(x, attn_mask=mask)
            if image_embs is not None and idx % self.cross_step == 0:
                x = self.cross_attn[idx // self.cross_step](x, kv=image_embs)
        return self.ln_final(x)


class MaMMUT(nn.Module):
    """MaMMUT from an open_clip-style config dict (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        vision_cfg = dict(cfg.get("vision_cfg", {}))
        text_cfg = dict(cfg.get("text_cfg", {}))
        embed_dim = int(cfg["embed_dim"])
        text_width = int(text_cfg.get("width", 512))
        if embed_dim != text_width:
            # The text feature is the un-projected mean hidden state, so the two towers only meet here.
            raise UsageError(f"MaMMUT needs embed_dim == text_cfg.width, got {embed_dim} vs {text_width}")
        act: Callable[[], nn.Module] = QuickGELU if cfg.get("quick_gelu", False) else nn.GELU
        self.context_length = int(text_cfg.get("context_length", 77))
        self.pad_id = 0
        vision_width = int(vision_cfg.get("width", 768))
        # Only the captioning path uses it (vision width -> text width); the fork inits it unscaled
        # randn, here it is scaled so a fresh model trains smoothly. Shapes and keys are the same.
        self.map_viz2txt_kv = nn.Parameter(torch.randn(vision_width, text_width) * vision_width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.text = TextDecoder(text_cfg, act)
        self.visual = VisionTower(vision_cfg, embed_dim, act)

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.visual(image)[0]
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Mean of `ln_final` over every position; pad to the full context (77) or features change."""
        feats = self.text(text).mean(dim=1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Vision transformer output [B, 1+N, width], CLS first, before `ln_post` (segmentation probes)."""
        return self.visual.tokens(image)

    def caption_logits(self, image_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, vocab] of the causal decoder reading the image tokens."""
        hidden = self.text(text, image_embs=image_tokens @ self.map_viz2txt_kv)
        return hidden @ self.text.text_projection

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None, is_training: bool = True
    ) -> dict[str, torch.Tensor | None]:
        """CoCa-style outputs, so `open_clip.CoCaLoss` trains it (contrastive + captioning).

        Training: the contrastive text features, and logits for `text[:, :-1]` against labels
        `text[:, 1:]`. With `is_training=False` (as the fork), no text features and logits for all of
        `text`.
        """
        out: dict[str, torch.Tensor | None] = {"logit_scale": self.logit_scale.exp()}
        tokens = None
        if image is not None:
            feats, tokens = self.visual(image)
            out["image_features"] = F.normalize(feats, dim=-1)
        else:
            out["image_features"] = None
        if text is None:
            return out
        out["text_features"] = self.encode_text(text) if is_training else None
        if tokens is None:
            raise ValueError("MaMMUT.forward: captioning needs the image")
        out["labels"] = text[:, 1:]
        out["logits"] = self.caption_logits(tokens, text[:, :-1] if is_training else text)
        return out

    def coca_losses(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        caption_loss_weight: float = 2.0,
        clip_loss_weight: float = 1.0,
        vocab: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(contrastive, captioning) losses equal to `open_clip.CoCaLoss(...)(**self(image, text))`, cheaper.

        The vocab-wide logits dominate a tiny model's step, so the decoder runs only up to the batch's
        last non-pad token (under the causal mask earlier positions cannot see the dropped columns)
        and the LM head only at non-pad labels (the ones CoCaLoss ignores are skipped). Single process.
        """
        feats, tokens = self.visual(image)
        if clip_loss_weight:
            img = F.normalize(feats, dim=-1)
            txt = self.encode_text(text)
            logits = self.logit_scale.exp() * img @ txt.T
            target = torch.arange(logits.shape[0], device=logits.device)
            clip = clip_loss_weight * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        else:  # a cap run: no contrastive pass at all (its gradient would be exactly zero)
            clip = feats.new_zeros(())
        nonpad = (text != self.pad_id).any(dim=0).nonzero()
        text = text[:, : max(int(nonpad.max()) + 1 if nonpad.numel() else 0, 2)]
        labels = text[:, 1:]
        keep = labels != self.pad_id
        hidden = self.text(text[:, :-1], image_embs=tokens @ self.map_viz2txt_kv)
        if vocab is None:
            caption = F.cross_entropy(hidden[keep] @ self.text.text_projection, labels[keep])
        else:  # sampled softmax over `vocab` (sorted ids holding every label): cheap for tiny models
            target = torch.searchsorted(vocab, labels[keep])
            caption = F.cross_entropy(hidden[keep] @ self.text.text_projection[:, vocab], target)
        return clip, caption_loss_weight * caption


@register_family
class MaMMUTFamily(ModelFamily):
    """The fork's MaMMUT: mean-pooled bidirectional text tower, so prompts cannot be truncated."""

    name = "mammut"
    text_pooling = "mean"

    @classmethod
    def profile_forward(cls, model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor) -> None:
        """The fork's training forward, FLOP for FLOP: its contrastive text pass also projects every
        position onto the vocabulary and discards the result, so that matmul is counted too (it is what
        makes model_profile.csv's mammut GFLOPs)."""
        model(image, text)
        hidden = torch.zeros(text.shape[0], text.shape[1], model.text.text_projection.shape[0],
                             dtype=model.text.text_projection.dtype, device=text.device)
        hidden @ model.text.text_projection

    @classmethod
    def matches(cls, model_name: str, model_cfg: dict[str, Any]) -> bool:
        # The fork's rule: "coca" in the name is checked first, then custom_text + "mammut" in the name.
        lname = model_name.lower()
        return "coca" not in lname and "mammut" in lname and bool(model_cfg.get("custom_text", False))

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return "map_viz2txt_kv" in keys and any(k.startswith("text.cross_attn.") for k in keys)

    @classmethod
    def build(cls, model_name: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
        model = MaMMUT(model_cfg)
        model.evalkit_arch = model_name
        return model

    @classmethod
    def tokenizer(cls, model_name: str, model_cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
        """open_clip's SimpleTokenizer (CLIP BPE, pad 0), as the fork's `get_tokenizer` for mammut configs."""
        import open_clip

        text_cfg = model_cfg.get("text_cfg", {})
        if text_cfg.get("hf_tokenizer_name"):
            raise NotImplementedError("MaMMUT with an HF tokenizer is not supported")
        return open_clip.SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))

    @classmethod
    def prepare_state_dict(cls, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the fork's loader does: logit_scale to the model's rank, resize the vision position grid.

        A text position table of another length is resized linearly by the fork; the mean over all
        positions then changes meaning, so we do the same but say so.
        """
        from open_clip.model import resize_pos_embed, resize_text_pos_embed

        state = dict(state)
        own = model.state_dict()
        if "logit_scale" in state and state["logit_scale"].shape != own["logit_scale"].shape:
            state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
        for key in ("visual.positional_embedding", "text.positional_embedding"):
            if key in state and state[key].shape[-1] != own[key].shape[-1]:
                raise CheckpointError(
                    f"{key}: width {state[key].shape[-1]} in the checkpoint, {own[key].shape[-1]} in the "
                    "architecture. Pass the architecture the checkpoint was trained with."
                )
        vpos = state.get("visual.positional_embedding")
        if vpos is not None and vpos.shape != own["visual.positional_embedding"].shape:
            if math.isqrt(vpos.shape[0] - 1) ** 2 != vpos.shape[0] - 1:
                raise CheckpointError(f"visual.positional_embedding: {tuple(vpos.shape)} is not 1 + a square grid")
            resize_pos_embed(state, model)
        tpos = state.get("text.positional_embedding")
        if tpos is not None and tpos.shape != own["text.positional_embedding"].shape:
            log.warning(
                "MaMMUT text positions resized %d -> %d (as the fork does); mean-pooled text features "
                "depend on the context length", tpos.shape[0], own["text.positional_embedding"].shape[0]
            )
            resize_text_pos_embed(state, model)
        return state

    @classmethod
    def image_patch_tokens(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, width] without CLS, before `ln_post` (what the captioning decoder reads)."""
        return model.image_tokens(images)[:, 1:]

    @classmethod
    def image_dense_features(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`ln_post(token) @ proj` per patch: with avg_all pooling the image embedding is this map applied
        to the mean token, so each patch lands in the joint space the same way."""
        v = model.visual
        return v.ln_post(model.image_tokens(images)[:, 1:]) @ v.proj

    # -- the captioning decoder ----------------------------------------------------------------------

    @classmethod
    def caption_decoder(cls, model: torch.nn.Module) -> CaptionDecoder:
        """The text tower as a causal decoder: self-attention layer i, then cross-attention block
        i // cross_step after every layer with i % cross_step == 0 (as `TextDecoder.forward` with
        `image_embs`), `ln_final`, and `text_projection` as the LM head."""
        t = model.text
        layers: list[tuple[str, nn.Module]] = []
        for idx, blk in enumerate(t.resblocks):
            layers.append(("self", blk))
            if idx % t.cross_step == 0:
                layers.append(("cross", t.cross_attn[idx // t.cross_step]))

        def embed(tokens: torch.Tensor) -> torch.Tensor:
            return t.token_embedding(tokens) + t.positional_embedding[: tokens.shape[1]]

        return CaptionDecoder(embed=embed, layers=layers, final=t.ln_final, head=t.text_projection, pad_id=model.pad_id)

    @classmethod
    def caption_context(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Every vision token (CLS included, before `ln_post`) mapped to the text width by
        `map_viz2txt_kv`, as the fork's captioning forward feeds its cross-attention."""
        return model.image_tokens(images) @ model.map_viz2txt_kv


@register_family
class CapFamily(MaMMUTFamily):
    """The paper's `cap_*` runs: MaMMUT's architecture (the same keys) trained with the captioning
    loss only. Its contrastive head was never trained, so only generative tasks are meaningful: the
    plan leaves the contrastive ones out and its embeddings refuse (`LoadedModel.has_contrastive`)."""

    name = "cap"
    has_contrastive = False

    @classmethod
    def matches(cls, model_name: str, model_cfg: dict[str, Any]) -> bool:
        return False  # a cap checkpoint looks like a MaMMUT one: chosen by name (the grid's namespace, --family)

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return False
