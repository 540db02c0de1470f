"""Held-out losses: the training objectives of arXiv:2506.04598's tables (`contrastive_loss`,
`caption_loss`, `cosine_distance`) on an image-text set in any retrieval layout (COCO / Flickr
Karpathy files, a clip_benchmark retrieval webdataset, a Hugging Face folder); the paper used a
held-out Re-LAION-2B webdataset. Each image is paired with its first caption (a webdataset's one).

- `caption_loss`: the captioning loss as training defines it (open_clip's `CoCaLoss` caption term,
  without its weight): next-token cross-entropy over the full vocabulary, averaged over every non-pad
  target token of the whole set (token-weighted, so it does not depend on a batch size). MaMMUT, CoCa,
  cap; NaN for a model without a decoder.
- `contrastive_loss`: CLIP's symmetric InfoNCE with the checkpoint's logit scale (SigLIP: its sigmoid
  loss with scale and bias) over consecutive batches of `batch_size` pairs in the data's order (default
  1,024, recorded in the task hash), averaged over pairs. It depends on the batch size by nature: more
  negatives, a larger loss. NaN for `cap` (no contrastive head).
- `cosine_distance`: the mean of 1 - cos(image, its caption) over the set. NaN for `cap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evalkit.data.sources import ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import (
    BOTH,
    RunContext,
    TaskResult,
    TaskRunner,
    context_width,
    register_protocol,
    unpack_both,
)
from evalkit.tasks.spec import TaskError, TaskSpec
from evalkit.tasks.text import encode_texts

DEFAULT_BATCH = 1024


@dataclass
class LossOptions:
    """Task-file keys of a losses task beyond the common ones."""

    batch_size: int = DEFAULT_BATCH  # pairs per contrastive batch (the loss depends on it)
    annotation_file: str | None = None  # the captions file, when not the layout's default name


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, batch: int) -> torch.Tensor:
    """Symmetric InfoNCE over consecutive batches of normalised features, averaged over pairs."""
    total = img.new_zeros((), dtype=torch.float64)
    for s in range(0, img.shape[0], batch):
        logits = scale * img[s:s + batch] @ txt[s:s + batch].T
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        total += loss.double() * logits.shape[0]
    return total / img.shape[0]


def siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                batch: int) -> torch.Tensor:
    """open_clip's SigLipLoss per batch (-sum log sigmoid(label * logit) / batch), averaged over pairs."""
    total = img.new_zeros((), dtype=torch.float64)
    for s in range(0, img.shape[0], batch):
        logits = scale * img[s:s + batch] @ txt[s:s + batch].T + bias
        n = logits.shape[0]
        labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        total += (-F.logsigmoid(labels * logits).sum() / n).double() * n
    return total / img.shape[0]


@register_protocol("losses")
class Losses(TaskRunner):
    Options = LossOptions
    needs = BOTH  # set per model in `prepare`
    default_metrics = ["contrastive_loss", "caption_loss", "cosine_distance"]
    default_main_metric = "contrastive_loss"

    @classmethod
    def eval_type_of(cls, spec: TaskSpec, metric: str) -> str:
        return "log_likelihood" if metric == "caption_loss" else "similarity"

    @classmethod
    def heads(cls, spec: TaskSpec) -> frozenset[str]:
        return frozenset()  # each metric reads the head it needs; a missing head gives NaN for its metrics

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        if int(spec.options.get("batch_size") or 0) < 1:
            raise TaskError(f"{spec.source}: batch_size must be a positive integer, not {spec.options.get('batch_size')}.")

    @classmethod
    def open_source(cls, root, spec: TaskSpec) -> ImageSource:
        from evalkit.data.formats.captions import open_retrieval

        return open_retrieval(root, split=spec.split, annotation=spec.options.get("annotation_file"))

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        captions = [caps[0] if isinstance(caps, list) else caps for caps in self.source.targets]
        if not captions or not all(isinstance(c, str) for c in captions):
            raise TaskError(f"task {self.spec.name}: {self.source.name} is not an image-text set "
                            "(every image needs a caption)")
        self.lm, self.ctx = lm, ctx
        self.contrastive, self.captioner = lm.has_contrastive, lm.has_captioner
        if not (self.contrastive or self.captioner):
            raise TaskError(f"task {self.spec.name}: {lm.arch} has neither a contrastive head nor a decoder")
        n = len(captions)
        self.needs = BOTH if self.contrastive and self.captioner else (
            "image_features" if self.contrastive else "caption_context")
        if self.contrastive:
            self.text = encode_texts(lm, captions, ctx)
            self.image = torch.zeros(n, self.text.shape[1], dtype=torch.float32, device=ctx.device)
        if self.captioner:
            self.pad = lm.require_captioner().pad_id
            self.tokens = lm.tokenizer(captions).to(ctx.device)
            self.width = context_width(lm)
            self.log_lik = torch.zeros(n, dtype=torch.float64, device=ctx.device)
        self.seen = torch.zeros(n, dtype=torch.bool)

    def update(self, index: torch.Tensor, readout: torch.Tensor) -> None:
        dev = readout.device
        i = index.to(dev, non_blocking=True)
        if self.needs == BOTH:
            feats, context = unpack_both(readout, self.text.shape[1], self.width)
        else:
            feats, context = (readout, None) if self.needs == "image_features" else (None, readout)
        if feats is not None:
            self.image[i] = feats.float()
        if context is not None:
            with self.ctx.autocast():
                self.log_lik[i] = self.lm.caption_log_likelihood(context, self.tokens[i]).double()
        self.seen[index] = True

    def result(self, log_samples: bool = False) -> TaskResult:
        if not bool(self.seen.all()):
            raise RuntimeError(f"task {self.spec.name}: {int((~self.seen).sum())} images were never encoded")
        nan = math.nan
        metrics = {"contrastive_loss": nan, "caption_loss": nan, "cosine_distance": nan}
        extra = {"batch_size": int(self.spec.options.get("batch_size") or DEFAULT_BATCH)}
        if self.captioner:
            n_tokens = int((self.tokens[:, 1:] != self.pad).sum())
            metrics["caption_loss"] = float(-self.log_lik.sum() / n_tokens)
            extra["n_tokens"] = n_tokens
        if self.contrastive:
            img, txt = F.normalize(self.image, dim=-1), self.text.to(self.image.device)
            model = self.lm.model
            scale = model.logit_scale.detach().float().exp().reshape(())
            bias = getattr(model, "logit_bias", None)
            with torch.no_grad():
                if bias is not None:
                    loss = siglip_loss(img, txt, scale, bias.detach().float().reshape(()), extra["batch_size"])
                else:
                    loss = clip_loss(img, txt, scale, extra["batch_size"])
            metrics["contrastive_loss"] = float(loss)
            metrics["cosine_distance"] = float((1 - (img * txt).sum(dim=-1)).double().mean())
        return TaskResult(metrics=metrics, n_samples=len(self.source), extra=extra)
