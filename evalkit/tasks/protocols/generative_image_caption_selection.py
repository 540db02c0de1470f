"""Caption selection with the captioning decoder (MaMMUT, CoCa, cap), as LAION's clip_benchmark branch
`log_likelihood_eval` computes it (`metrics/generative_image_caption_selection.py`).

The score of an (image, caption) pair is log p(caption | image): the sum over the caption's target
tokens (positions 1..L, the EOT counted, SOT input only, pads excluded) of the full-vocabulary
log-softmax of the decoder's next-token logits given the image (`LoadedModel.caption_log_likelihood`).
Per instance the scores form an [I, C] matrix, judged as `image_caption_selection` judges similarities,
with the branch's tie rule: a row whose C scores are all equal (the image prefers no caption) counts
wrong, so does a column whose I scores are all equal, and an instance with a NaN score counts wrong
in both directions. Metrics `image_acc`, `text_acc`, `acc` as in `image_caption_selection`.

Option `normalize: true` subtracts `normalize_coef` x the model's own image-free prior of each caption
(`LoadedModel.caption_prior`), as the branch does without an external normaliser LM. The branch cuts an
instance's captions to its longest one before that pass, and the fork's image-free decoder reads all
positions (no causal mask), so the prior depends on that cut: it is reproduced (captions grouped per
instance, cut to the instance's longest).

Differences from the branch, all outside real data: an instance whose captions all fill the context
(77 tokens, no pad) is scored on its full tokens (the branch's cut at the first pad would take none of
them), and a NaN in an image's context fails only that image's instances (the branch returns
`acc = 0` for the whole run).

Work: the image context once per image (the engine's image path, an image shared by instances once),
each caption tokenized once per run; the pairs of a batch's images go through the decoder together,
`prompt_batch_size` pairs per forward (memory only, never a number).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from evalkit.data.formats.selection import SelectionInstance
from evalkit.data.sources import ImageSource
from evalkit.models.family import LoadedModel, NoCaptioner
from evalkit.progress import WARNINGS
from evalkit.tasks.base import RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.protocols.image_caption_selection import (
    SELECTION_METRICS,
    check_selection_options,
    flat_captions,
    open_selection_source,
    selection_metrics,
    selection_samples,
    shape_groups,
    validate_selection,
)
from evalkit.tasks.spec import TaskError, TaskSpec
from evalkit.tasks.text import text_plan

log = logging.getLogger(__name__)


@dataclass
class GenerativeSelectionOptions:
    """Task-file keys of a generative caption-selection task beyond the common ones."""

    subset: str | None = None  # SugarCrepe: which <root>/<subset>.json
    normalize: bool = False  # subtract normalize_coef x the caption's image-free prior (the branch's option)
    normalize_coef: float | int = 1.0
    prompt_batch_size: int | None = None  # (image, caption) pairs per decoder forward (default 64); memory only


def tie_correct(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_correct, image_correct) [N] of log-likelihood matrices [N, I, C], the branch's rule: argmax
    per row (column), a row (column) of all-equal scores counts wrong (when C > 1, resp. I > 1), an
    instance holding a NaN counts wrong both ways; then the first n = min(I, C) must be the diagonal."""
    n_images, n_captions = scores.shape[1], scores.shape[2]
    n = min(n_images, n_captions)
    gt = torch.arange(n, device=scores.device)
    best_caption = scores.argmax(dim=2)  # [N, I]
    if n_captions > 1:
        best_caption[(scores == scores[:, :, :1]).all(dim=2)] = -1
    best_image = scores.argmax(dim=1)  # [N, C]
    if n_images > 1:
        best_image[(scores == scores[:, :1, :]).all(dim=1)] = -1
    finite = ~torch.isnan(scores).flatten(1).any(dim=1)
    text_ok = (best_caption[:, :n] == gt).all(dim=1) & finite
    image_ok = (best_image[:, :n] == gt).all(dim=1) & finite
    return text_ok, image_ok


def _token_count(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Tokens up to and including the last non-pad one (SOT..EOT) per row."""
    pos = torch.arange(1, tokens.shape[1] + 1).expand_as(tokens)
    return torch.where(tokens != pad_id, pos, torch.zeros_like(pos)).amax(dim=1)


@register_protocol("generative_image_caption_selection")
class GenerativeImageCaptionSelection(TaskRunner):
    """Per image batch, every (image, caption) pair of the batch's images is scored by the decoder; the
    [I, C] matrices are judged at the end."""

    Options = GenerativeSelectionOptions
    needs = "caption_context"
    default_metrics = list(SELECTION_METRICS)
    default_main_metric = "acc"
    eval_type = "log_likelihood"

    @classmethod
    def heads(cls, spec: TaskSpec) -> frozenset[str]:
        return frozenset({"captioner"})

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        check_selection_options(cls, spec)
        size = spec.options.get("prompt_batch_size")
        if size is not None and size < 1:
            raise TaskError(f"{spec.source}: prompt_batch_size must be a positive integer, not {size}.")

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        return open_selection_source(root, spec)

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        validate_selection(spec, source)

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        if not lm.has_captioner:
            raise NoCaptioner(f"{lm.arch} (family {lm.family}) has no captioning decoder: {self.spec.type} needs "
                              "MaMMUT, CoCa or a cap model; it can run image_caption_selection (the contrastive one).")
        self.lm, self.ctx = lm, ctx
        self.batch = self.spec.options.get("prompt_batch_size")
        self.instances: list[SelectionInstance] = list(self.source.targets)
        texts, self.caption_pos = flat_captions(self.instances)
        plan = text_plan(lm, texts)  # distinct captions tokenized once per run (cached across checkpoints)
        pad = lm.caption_decoder.pad_id
        self.tokens = plan.tokens.to(ctx.device)
        self.caption_row = plan.slot  # caption j of the flat list -> its row of `tokens`
        self.truncated = int((self.tokens[:, -1] != pad).sum())  # filled the context: cut by the tokenizer
        if self.truncated:
            WARNINGS.warn(log, f"truncated:{self.spec.name}:{lm.context_length}",
                          "evalkit: warning: task %s: %d caption(s) longer than the context (%d tokens), cut as the "
                          "tokenizer cuts them", self.spec.name, self.truncated, lm.context_length)
        # every (instance, image slot, caption slot) pair, grouped by image so a batch finds its own
        pairs = [(inst.images[i], n, i, c) for n, inst in enumerate(self.instances)
                 for i in range(len(inst.images)) for c in range(len(inst.captions))]
        pairs.sort(key=lambda p: p[0])
        self.pair_image = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        self.pair_caption = torch.tensor([self.caption_pos[n][c] for _, n, _, c in pairs], dtype=torch.long)
        self.pair_slot = [(n, i, c) for _, n, i, c in pairs]
        counts = torch.bincount(self.pair_image, minlength=len(self.source))
        self.pair_start = torch.cumsum(counts, 0) - counts
        self.pair_count = counts
        self.pair_score = torch.full((len(pairs),), float("nan"), dtype=torch.float32)
        self.seen = torch.zeros(len(self.source), dtype=torch.bool)
        self.prior = self._prior(pad) if self.spec.options.get("normalize") else None

    def _prior(self, pad: int) -> torch.Tensor:
        """Per flat caption, the branch's image-free prior: the instance's captions cut to its longest."""
        n_tok = _token_count(self.tokens.cpu(), pad)
        prior = torch.empty(sum(len(inst.captions) for inst in self.instances), dtype=torch.float32)
        by_cut: dict[int, list[int]] = {}
        for pos in self.caption_pos:
            cut = int(n_tok[self.caption_row[list(pos)]].max())
            by_cut.setdefault(max(cut, 2), []).extend(pos)
        for cut, flat in by_cut.items():
            rows = self.caption_row[flat]
            with self.ctx.autocast():
                p = self.lm.caption_prior(self.tokens[rows.to(self.tokens.device), :cut], self.batch)
            prior[torch.tensor(flat)] = p.float().cpu()
        return prior

    def update(self, index: torch.Tensor, context: torch.Tensor) -> None:
        index = index.cpu()
        starts, counts = self.pair_start[index], self.pair_count[index]
        if int(counts.sum()) == 0:
            self.seen[index] = True
            return
        pair_ids = torch.cat([torch.arange(int(s), int(s) + int(k)) for s, k in zip(starts, counts, strict=True)])
        row_in_batch = torch.repeat_interleave(torch.arange(len(index)), counts)
        rows = self.caption_row[self.pair_caption[pair_ids]]
        dev = context.device
        with self.ctx.autocast():
            scores = self.lm.caption_log_likelihood(context[row_in_batch.to(dev)], self.tokens[rows.to(dev)], self.batch)
        self.pair_score[pair_ids] = scores.float().cpu()
        self.seen[index] = True

    def result(self, log_samples: bool = False) -> TaskResult:
        if not bool(self.seen.all()):
            raise RuntimeError(f"task {self.spec.name}: {int((~self.seen).sum())} images were never encoded")
        per_caption = None
        if self.prior is not None:
            coef = float(self.spec.options.get("normalize_coef", 1.0))
            per_caption = coef * self.prior
        matrices = [torch.empty(len(inst.images), len(inst.captions)) for inst in self.instances]
        for (n, i, c), s, cap in zip(self.pair_slot, self.pair_score.tolist(), self.pair_caption.tolist(), strict=True):
            matrices[n][i, c] = s - (float(per_caption[cap]) if per_caption is not None else 0.0)
        n = len(self.instances)
        text_ok = torch.zeros(n, dtype=torch.bool)
        image_ok = torch.zeros(n, dtype=torch.bool)
        for g in shape_groups(self.instances, self.caption_pos):
            t, i = tie_correct(torch.stack([matrices[k] for k in g.instances.tolist()]))
            text_ok[g.instances], image_ok[g.instances] = t, i
        samples = selection_samples(self.instances, self.source.ids, matrices, text_ok, image_ok) if log_samples else None
        return TaskResult(metrics=selection_metrics(text_ok, image_ok), n_samples=n, samples=samples,
                          extra={"n_images": len(self.source), "captions_truncated": self.truncated})
