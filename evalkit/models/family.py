"""Model families: how an architecture is built, tokenized and read out.

A family is one small module (see `clip.py`, `mammut.py`) that subclasses `ModelFamily` and
decorates it with `@register_family`. Everything above the models layer only sees `LoadedModel`,
so adding a family never touches tasks or the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from evalkit.data.preprocess import PreprocessCfg

FAMILIES: dict[str, type[ModelFamily]] = {}


@dataclass
class LoadedModel:
    """A model ready for zero-shot use, whatever its family."""

    model: torch.nn.Module
    family: str
    arch: str
    preprocess: PreprocessCfg
    tokenizer: Callable[[list[str]], torch.Tensor]
    context_length: int
    # "eot": causal text tower pooled at the EOT token, so prompts may be cut after the longest
    # real prompt without changing any feature; "mean": pooled over all positions, no shortcut.
    text_pooling: str
    model_cfg: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)

    def encode_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Like `encode_text`, but a family may skip work that cannot change the result (see clip.py)."""
        fam = FAMILIES[self.family]
        if hasattr(fam, "encode_text_prefix"):
            return fam.encode_text_prefix(self.model, tokens)
        return self.encode_text(tokens)

    def image_patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] of the image tower (for segmentation probes)."""
        return FAMILIES[self.family].image_patch_tokens(self.model, images)

    def image_dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features [B, N, E] in the joint image-text space, unnormalised (zero-shot segmentation)."""
        return FAMILIES[self.family].image_dense_features(self.model, images)


class ModelFamily:
    """One family of architectures. Subclasses override the classmethods."""

    name: ClassVar[str] = ""
    text_pooling: ClassVar[str] = "eot"

    @classmethod
    def matches(cls, model_name: str, model_cfg: dict[str, Any]) -> bool:
        raise NotImplementedError

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        """Whether a checkpoint's keys look like this family (used when the name is ambiguous)."""
        return False

    @classmethod
    def build(cls, model_name: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def tokenizer(cls, model_name: str, model_cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
        import open_clip

        ctx = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
        return open_clip.SimpleTokenizer(context_length=ctx)

    @classmethod
    def prepare_state_dict(cls, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt a loaded state dict to the model (resize position embeddings, scalar shapes)."""
        return state

    @classmethod
    def profile_forward(cls, model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor) -> None:
        """The forward whose FLOPs count as the model's per-sample compute (open_clip's profiler)."""
        model(image, text)

    @classmethod
    def image_patch_tokens(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"family {cls.name} has no patch-token readout yet")

    @classmethod
    def image_dense_features(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"family {cls.name}: no dense projection into the joint space (zero-shot segmentation)")


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    FAMILIES[cls.name] = cls
    return cls


def family_for(model_name: str, model_cfg: dict[str, Any], state_keys: set[str] | None = None) -> type[ModelFamily]:
    """The family of an architecture: by name and config first, then by checkpoint keys, else CLIP."""
    ordered = sorted(FAMILIES.values(), key=lambda f: f.name == "clip")  # clip is the fallback
    for fam in ordered:
        if fam.name != "clip" and fam.matches(model_name, model_cfg):
            return fam
    if state_keys is not None:
        for fam in ordered:
            if fam.name != "clip" and fam.matches_state_dict(state_keys):
                return fam
    return FAMILIES["clip"]
