"""Generative zero-shot classification: a class's score is the captioning decoder's log-likelihood of
its prompts given the image, as LAION's clip_benchmark branch `log_likelihood_eval` computes it
(`clip_benchmark/metrics/generative_zeroshot_classification.py`, `run_classification`), the paper's
`eval_type = log_likelihood` (arXiv:2506.04598, figure 11).

Per image and class: prompts `template.format(c=classname)` for every template, tokenized by the
model's tokenizer; the score of a prompt is the sum over its target tokens (positions 1..n: the EOT
counts, SOT is input only, pads excluded) of the full-vocabulary log-softmax of the decoder's
next-token logits (no length normalisation); the class score is the sum over templates. Metrics as the
branch: acc1, acc5 (5+ classes), mean_per_class_recall (the same rules as `zeroshot_classification`).

Options (all in the task hash):
- `normalize` / `normalize_coef`: the branch's prior normalisation, `score - coef * prior` per prompt,
  the prior being the model's own score of the prompt without the image. As the branch computes it
  (its `model.forward(image=None, image_embs=None, text=...)` on the fork), the decoder then runs with
  no causal mask and no cross-attention, so a position reads the token it predicts and the pads up to
  the longest prompt; evalkit reproduces that (see `evalkit.models.decoding.prior_scores`). Off by
  default, as the paper ran it.
- `max_per_class: N`: the first N images of each class in the data's order (the paper's 5k-image
  ImageNet val subset from the full folder is `max_per_class: 5`), applied where the data is opened,
  so only those images are decoded and encoded.
- `rerank_top_k: K`: score only the K classes the model's contrastive head ranks highest for each image
  (MaMMUT, CoCa); the others score -inf. An approximation, never the default.
- `prompt_batch_size`: prompts per decoder forward (all images of the batch at once); memory only.

Speed (the decoder is the whole cost; evalkit/models/decoding.py): the image context and each cross
layer's keys/values once per image, the template words before `{c}` once per chunk of prompts, each
chunk cut to its longest prompt, the LM head only at target positions, bf16 autocast on CUDA.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

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
from evalkit.tasks.protocols.zeroshot_classification import (
    build_classifier,
    check_classification_data,
    classification_metrics,
)
from evalkit.tasks.spec import TaskError, TaskSpec, open_clip_list
from evalkit.tasks.text import tokenizer_identity

PROMPT_COST = 0.02  # decoder cost of one prompt against one image, in per-sample forwards (cost_per_image)


@dataclass
class GenerativeOptions:
    """Task-file keys of a generative classification task beyond the common ones."""

    normalize: bool = False
    normalize_coef: float | int = 1.0
    max_per_class: int | None = None
    rerank_top_k: int | None = None
    prompt_batch_size: int | None = None  # prompts per decoder forward (default 64); memory, not numbers


def subset_per_class(source: ImageSource, n: int) -> ImageSource:
    """The first `n` images of each class, in the data's order; its own fingerprint (another task)."""
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(source.targets):
        c = int(t)
        if seen.get(c, 0) < n:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    opener = source.opener
    fp = hashlib.sha1(f"{source.fingerprint}|max_per_class={n}".encode()).hexdigest()
    # its own name too: the engine shares one image pass between tasks of the same source name
    return replace(source, name=f"{source.name} (first {n} per class)", ids=[source.ids[i] for i in keep],
                   opener=lambda j: opener(keep[j]),
                   targets=[source.targets[i] for i in keep], fingerprint=fp,
                   meta={**source.meta, "subset_of": len(source), "max_per_class": n})


# (tokenizer identity, context, prompts) -> tokens, and with (prompt batch, device) -> a plan: every
# checkpoint of a grid shares its tokenizer, so 80,000 prompts are tokenized and planned once per run
_TOKENS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_PLANS: OrderedDict[tuple, object] = OrderedDict()


def _cached(cache: OrderedDict, key: tuple, make, size: int = 4):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def prompt_tokens(lm: LoadedModel, prompts: list[str]) -> torch.Tensor:
    digest = hashlib.sha1("\0".join(prompts).encode()).hexdigest()
    key = (tokenizer_identity(lm.tokenizer), lm.context_length, len(prompts), digest)
    return _cached(_TOKENS, key, lambda: lm.tokenizer(prompts))


def truncated_prompts(prompts: list[str], context_length: int = 77) -> int:
    """Prompts longer than CLIP's tokenizer context (cut as the tokenizer cuts them, EOT last). Only
    prompts of more than `context_length - 2` characters can be: a BPE token covers at least one."""
    long = [p for p in prompts if len(p) > context_length - 2]
    if not long:
        return 0
    import open_clip

    toks = open_clip.SimpleTokenizer(context_length=context_length)(long)
    return int((toks[:, -1] != 0).sum())


def _as_list(value: list[str] | str | None, from_data: list[str] | None) -> list[str] | None:
    """A task's class names or templates as a list where they can be known before resolution."""
    if isinstance(value, list):
        return value
    if value == "dataset":
        return from_data
    if isinstance(value, str) and value.startswith("open_clip:"):
        return open_clip_list(value.split(":", 1)[1])
    return None


@register_protocol("generative_zeroshot_classification")
class GenerativeZeroShotClassification(TaskRunner):
    Options = GenerativeOptions
    needs = "caption_context"
    default_metrics = ["acc1", "acc5", "mean_per_class_recall"]
    default_main_metric = "acc1"
    eval_type = "log_likelihood"

    def __init__(self, spec: TaskSpec, source: ImageSource) -> None:
        super().__init__(spec, source)
        o = spec.options
        self.normalize, self.coef = bool(o.get("normalize")), float(o.get("normalize_coef", 1.0))
        self.top_k = o.get("rerank_top_k")
        self.prompt_batch = o.get("prompt_batch_size")
        if self.top_k:
            self.needs = BOTH

    @classmethod
    def heads(cls, spec: TaskSpec) -> frozenset[str]:
        return frozenset({"captioner", "contrastive"} if spec.options.get("rerank_top_k") else {"captioner"})

    @classmethod
    def cost_per_image(cls, spec: TaskSpec) -> float:
        """In image + text forwards: one decoder pass per prompt costs ~0.02 of a MaMMUT's per-sample
        forward (measured: 0.66 GFLOPs per ImageNet prompt for mammut_ViT-B-32, whose sample is 26.9;
        bench/RESULTS.md), so an ImageNet-1k unit weighs ~1,600 classification units per image."""
        n = len(spec.classnames or []) if isinstance(spec.classnames, list) else 1000
        t = len(spec.templates or []) if isinstance(spec.templates, list) else 80
        k = spec.options.get("rerank_top_k")
        return 1.0 + PROMPT_COST * (min(int(k), n) if k else n) * t

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        for key in ("max_per_class", "rerank_top_k", "prompt_batch_size"):
            v = spec.options.get(key)
            if v is not None and v < 1:
                raise TaskError(f"{spec.source}: {key} must be a positive integer, not {v}.")

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        source = super().open_source(root, spec)
        n = spec.options.get("max_per_class")
        if n:
            source = subset_per_class(source, int(n))
        classnames, templates = _as_list(spec.classnames, source.classnames), _as_list(spec.templates, source.templates)
        if classnames and templates:
            cut = truncated_prompts([t.format(c=c) for c in classnames for t in templates])
            source.meta["task_data"] = {**source.meta.get("task_data", {}), "prompts_truncated_at_77": cut}
        return source

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        check_classification_data(spec, source)

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        if not self.spec.classnames or not self.spec.templates:
            raise TaskError(f"task {self.spec.name}: classnames and templates are required")
        lm.require_captioner()
        self.lm, self.ctx = lm, ctx
        classes, templates = list(self.spec.classnames), list(self.spec.templates)
        self.n_classes, self.n_templates = len(classes), len(templates)
        prompts = [t.format(c=c) for c in classes for t in templates]  # class-major, as the branch
        tokens = prompt_tokens(lm, prompts)
        pad = lm.require_captioner().pad_id
        key = (tokenizer_identity(lm.tokenizer), lm.context_length, len(prompts),
               hashlib.sha1("\0".join(prompts).encode()).hexdigest(), self.prompt_batch, str(ctx.device))
        self.tokens = tokens.to(ctx.device)
        self.plan = _cached(_PLANS, key, lambda: lm.plan_sequences(self.tokens, self.prompt_batch))
        self.prior = None
        if self.normalize:
            # the branch cuts every prompt to the longest one's length before its image-free pass
            cut = int((tokens != pad).sum(dim=1).max())
            with ctx.autocast():
                prior = lm.caption_prior(self.tokens[:, :cut], self.prompt_batch)
            self.prior = self.coef * prior.float().view(1, self.n_classes, self.n_templates)
        if self.top_k:
            self.classifier = build_classifier(lm, classes, templates, ctx)
            self.context_width = context_width(lm)
        self.logits = torch.empty(len(self.source), self.n_classes, dtype=torch.float32, device=ctx.device)

    def _class_scores(self, prompt_scores: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C'] class scores from prompt scores [B, C' * T] (class-major), as the branch: minus the
        scaled prior per prompt, then the sum over templates."""
        s = prompt_scores.view(prompt_scores.shape[0], -1, self.n_templates)
        if self.prior is not None:
            s = s - (self.prior if classes is None else self.prior[0, classes])
        return s.sum(dim=-1)

    def update(self, index: torch.Tensor, readout: torch.Tensor) -> None:
        index = index.to(self.logits.device, non_blocking=True)
        if not self.top_k:
            with self.ctx.autocast():
                scores = self.lm.caption_scores(readout, self.plan)
            self.logits[index] = self._class_scores(scores)
            return
        feats, context = unpack_both(readout, self.classifier.shape[0], self.context_width)
        k = min(int(self.top_k), self.n_classes)
        top = (feats @ self.classifier).topk(k, dim=1).indices                  # [B, K] by the contrastive head
        rows = torch.full((len(index), self.n_classes), float("-inf"), device=self.logits.device)
        steps = torch.arange(self.n_templates, device=top.device)
        for i in range(len(index)):  # each image has its own candidate prompts
            sel = (top[i, :, None] * self.n_templates + steps).reshape(-1)
            with self.ctx.autocast():
                s = self.lm.caption_scores(context[i : i + 1], self.tokens[sel], self.prompt_batch)
            rows[i, top[i]] = self._class_scores(s, top[i])[0]
        self.logits[index] = rows

    def result(self, log_samples: bool = False) -> TaskResult:
        logits = self.logits.cpu()
        target = torch.as_tensor(np.asarray(self.source.targets), dtype=torch.long)
        metrics = classification_metrics(logits, target)
        samples = None
        if log_samples:
            import pandas as pd

            k = min(5, logits.shape[1])
            scores, idx = logits.topk(k, 1, True, True)
            samples = pd.DataFrame({"sample": self.source.ids, "target": target.numpy(),
                                    "top_indices": idx.numpy().tolist(), "top_scores": scores.numpy().tolist()})
        return TaskResult(metrics=metrics, n_samples=len(target), samples=samples)
