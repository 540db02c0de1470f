"""Model families: how an architecture is built, tokenized, preprocessed and read out.

A family is one module that subclasses `ModelFamily`, overrides the hooks it needs (each is declared
here with a default) and decorates the class with `@register_family` (docs/adding-a-model-family.md).
The registry is filled lazily, on the first `families()` call, from the one list of built-in family
modules (`FAMILY_MODULES`) and from the `evalkit.families` entry points of installed packages.
Everything above the models layer only sees `LoadedModel`, so adding a family never touches tasks or
the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from evalkit.data.preprocess import PreprocessCfg
from evalkit.errors import UserError
from evalkit.registry import Registry

if TYPE_CHECKING:
    from evalkit.models.decoding import CaptionDecoder, SequencePlan

log = logging.getLogger(__name__)

# The built-in families, imported on the first `families()` call: the one place that names them.
FAMILY_MODULES: tuple[str, ...] = ("evalkit.models.families.clip", "evalkit.models.families.mammut")
# Installed packages add families through entry points of this group; each names a module (importing it
# registers its families) or a `ModelFamily` subclass (registered as it is).
ENTRY_POINT_GROUP = "evalkit.families"


class NoCaptioner(UserError, ValueError):
    """A generative task on a model without a captioning decoder (CLIP, SigLIP)."""


class NoContrastiveHead(UserError, ValueError):
    """A contrastive readout of a model trained without the contrastive loss (`cap`)."""


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

    @property
    def family_cls(self) -> type[ModelFamily]:
        return get_family(self.family)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features [B, E]."""
        self._contrastive()
        return self.family_cls.encode_image(self.model, images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised text features [B, E]."""
        self._contrastive()
        return self.family_cls.encode_text(self.model, tokens)

    def encode_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Like `encode_text`, but a family may skip work that cannot change the result (see clip.py)."""
        self._contrastive()
        return self.family_cls.encode_text_prefix(self.model, tokens)

    def image_patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] of the image tower (for segmentation probes)."""
        return self.family_cls.image_patch_tokens(self.model, images)

    def image_dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features [B, N, E] in the joint image-text space, unnormalised (zero-shot segmentation)."""
        self._contrastive()
        return self.family_cls.image_dense_features(self.model, images)

    def _contrastive(self) -> None:
        if not self.family_cls.has_contrastive:
            raise NoContrastiveHead(f"{self.arch} (family {self.family}) was trained without the contrastive loss, so "
                                    "its image/text embeddings mean nothing: it runs the generative tasks only "
                                    "(generative_zeroshot_classification, generative_image_caption_selection, losses).")

    # -- the captioning decoder (generative protocols; evalkit/models/decoding.py) --------------------

    @property
    def has_contrastive(self) -> bool:
        """Whether the model has a contrastive head (image/text embeddings in one space); `cap` has none."""
        return self.family_cls.has_contrastive

    @property
    def has_captioner(self) -> bool:
        """Whether the model has a captioning decoder (MaMMUT, CoCa, cap)."""
        return self.caption_decoder is not None

    @property
    def caption_decoder(self) -> CaptionDecoder | None:
        """The family's decoder as `decoding` reads it (built once per loaded model), or None."""
        if "_caption_decoder" not in self.__dict__:
            self.__dict__["_caption_decoder"] = self.family_cls.caption_decoder(self.model)
        return self.__dict__["_caption_decoder"]

    def require_captioner(self) -> CaptionDecoder:
        dec = self.caption_decoder
        if dec is None:
            raise NoCaptioner(f"{self.arch} (family {self.family}) has no captioning decoder: generative tasks "
                              "need MaMMUT, CoCa or a cap model; it runs the contrastive tasks "
                              "(zeroshot_classification, zeroshot_retrieval, image_caption_selection, ...).")
        return dec

    def caption_context(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's image context [B, N, D] (what its cross-attention reads), once per image batch."""
        self.require_captioner()
        return self.family_cls.caption_context(self.model, images)

    def caption_scores(self, context: torch.Tensor, tokens: torch.Tensor | SequencePlan,
                       prompt_batch_size: int | None = None) -> torch.Tensor:
        """log p(sequence | image) [B, P] float32 for every image of `context` [B, N, D] and every token
        sequence [P, L] (SOT ... EOT, pads): the sum over target positions 1..L of the full-vocabulary
        log-softmax of the next-token logits, pads excluded, the EOT counted. `tokens` may be a
        `plan_sequences` plan, built once and reused for every image batch. Prompts go through the
        decoder `prompt_batch_size` at a time, all images of the batch at once."""
        from evalkit.models.decoding import sequence_scores

        return sequence_scores(self.require_captioner(), context, tokens, prompt_batch_size)

    def caption_log_likelihood(self, context: torch.Tensor, tokens: torch.Tensor,
                               batch_size: int | None = None) -> torch.Tensor:
        """log p(tokens[i] | image i) [B] for aligned pairs (context [B, N, D], tokens [B, L])."""
        from evalkit.models.decoding import aligned_scores

        return aligned_scores(self.require_captioner(), context, tokens, batch_size)

    def caption_prior(self, tokens: torch.Tensor, prompt_batch_size: int | None = None) -> torch.Tensor:
        """The clip_benchmark branch's image-free prior of each sequence [P] (its normalisation; see
        `decoding.prior_scores` for the fork's quirk: no causal mask without an image)."""
        from evalkit.models.decoding import prior_scores

        return prior_scores(self.require_captioner(), tokens, prompt_batch_size)

    def plan_sequences(self, tokens: torch.Tensor, prompt_batch_size: int | None = None) -> SequencePlan:
        """Sort and chunk token sequences once for many `caption_scores` calls."""
        from evalkit.models.decoding import plan_sequences

        return plan_sequences(tokens, prompt_batch_size, self.require_captioner().pad_id)


class ModelFamily:
    """One family of architectures. Subclasses set `name` and override the classmethods they need:
    `build` always; every other hook has a default that fits an open_clip-like two-tower model."""

    name: ClassVar[str] = ""
    # "eot": causal text tower pooled at the EOT token (prompts may be cut after the longest one);
    # "mean": pooled over all positions. Per built model: `text_pooling_for`.
    text_pooling: ClassVar[str] = "eot"

    # -- which architectures are this family's --------------------------------------------------------

    @classmethod
    def matches(cls, model_name: str, model_cfg: dict[str, Any]) -> bool:
        """Whether an architecture (name and model config) is this family's. Default: never, so the
        family is used only when asked for by name (`--family`, a zoo entry's `family:`)."""
        return False

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        """Whether a checkpoint's keys look like this family (used when the name is ambiguous)."""
        return False

    # -- building and loading ----------------------------------------------------------------------

    @classmethod
    def build(cls, model_name: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
        """The randomly initialised module of an architecture (weights are loaded into it next)."""
        raise NotImplementedError(f"family {cls.name or cls.__name__} does not define build()")

    @classmethod
    def prepare_state_dict(cls, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt a loaded state dict to the model (resize position embeddings, scalar shapes)."""
        return state

    @classmethod
    def preprocess(cls, model_name: str, model_cfg: dict[str, Any]) -> dict[str, Any]:
        """The family's image preprocessing (keys of `PreprocessCfg`: size, mean, std, interpolation,
        resize_mode) where it differs from open_clip's defaults. A hub config's `preprocess_cfg`, a
        pretrained tag's and a zoo entry's `preprocess:` override it, in that order."""
        return {}

    # -- text ------------------------------------------------------------------------------------------

    @classmethod
    def tokenizer(cls, model_name: str, model_cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
        import open_clip

        ctx = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
        return open_clip.SimpleTokenizer(context_length=ctx)

    @classmethod
    def text_pooling_for(cls, model: torch.nn.Module) -> str:
        """The text pooling of a built model ("eot" or "mean"); default: the class's `text_pooling`."""
        return cls.text_pooling

    # -- readouts --------------------------------------------------------------------------------------

    @classmethod
    def encode_image(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features [B, E]."""
        return model.encode_image(images, normalize=True)

    @classmethod
    def encode_text(cls, model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised text features [B, E]."""
        return model.encode_text(tokens, normalize=True)

    @classmethod
    def encode_text_prefix(cls, model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Prompt encoding: `encode_text`, which a family may shortcut where the result cannot change
        (clip.py cuts the padding after the last EOT under a causal mask)."""
        return cls.encode_text(model, tokens)

    @classmethod
    def image_patch_tokens(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] of the image tower (segmentation probes)."""
        raise NotImplementedError(f"family {cls.name} has no patch-token readout yet")

    @classmethod
    def image_dense_features(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features [B, N, E] in the joint space, unnormalised (zero-shot segmentation)."""
        raise NotImplementedError(f"family {cls.name}: no dense projection into the joint space (zero-shot segmentation)")

    @classmethod
    def profile_forward(cls, model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor) -> None:
        """The forward whose FLOPs count as the model's per-sample compute (open_clip's profiler)."""
        model(image, text)

    # -- captioning decoder ----------------------------------------------------------------------------
    # A family whose models caption returns a `CaptionDecoder` (evalkit/models/decoding.py does the
    # scoring for all of them) and its image context. `has_contrastive = False` marks a family without
    # a contrastive head (`cap`): the plan leaves its contrastive tasks out and its embeddings refuse.
    has_contrastive: ClassVar[bool] = True

    @classmethod
    def caption_decoder(cls, model: torch.nn.Module) -> CaptionDecoder | None:
        """The model's captioning decoder, or None (the default: a two-tower model has none)."""
        return None

    @classmethod
    def caption_context(cls, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """What the decoder's cross-attention reads for each image [B, N, D], before its `ln_1_kv`."""
        raise NotImplementedError(f"family {cls.name} has no captioning decoder")


# ---------------------------------------------------------------------------------------------------
# The registry

def _check_family(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ModelFamily)):
        raise TypeError(f"register_family: {cls!r} is not a ModelFamily subclass")


FAMILIES: Registry[type[ModelFamily]] = Registry("model family", FAMILY_MODULES, ENTRY_POINT_GROUP, _check_family)


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make `cls` a family under `cls.name` (the registry's collision policy applies)."""
    if not (isinstance(cls, type) and issubclass(cls, ModelFamily)):
        raise TypeError(f"register_family: {cls!r} is not a ModelFamily subclass")
    if not cls.name:
        raise ValueError(f"register_family: {cls.__module__}.{cls.__qualname__} has no `name`")
    return FAMILIES.register(cls.name, cls)


def unregister_family(name: str) -> type[ModelFamily] | None:
    """Remove a family (tests, plug-ins replacing one); returns it, or None if there was none."""
    return FAMILIES.unregister(name)


def families() -> Mapping[str, type[ModelFamily]]:
    """Every registered family by name (read-only), the built-in modules and the entry points loaded
    on the first call."""
    return FAMILIES


def get_family(name: str) -> type[ModelFamily]:
    """The family registered as `name`; an unknown name is a `ModelNotFound` listing the known ones."""
    fams = families()
    if name not in fams:
        from evalkit.models.configs import ModelNotFound

        raise ModelNotFound(f"unknown model family '{name}' (known: {', '.join(sorted(fams))}).")
    return fams[name]


def family_for(model_name: str, model_cfg: dict[str, Any], state_keys: set[str] | None = None) -> type[ModelFamily]:
    """The family of an architecture: by name and config first, then by checkpoint keys, else CLIP."""
    ordered = [f for f in families().values() if f.name != "clip"]  # clip claims everything: the fallback
    for fam in ordered:
        if fam.matches(model_name, model_cfg):
            return fam
    if state_keys is not None:
        for fam in ordered:
            if fam.matches_state_dict(state_keys):
                return fam
    return get_family("clip")
