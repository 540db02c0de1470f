"""Caption selection (SugarCrepe, Winoground) with the contrastive head, as clip_benchmark 1.6.2's
`image_caption_selection.evaluate` computes it.

Each instance has I images and C captions, image i belonging with caption i for i < n = min(I, C).
Scores are cosine similarities `image_features @ text_features.T` ([I, C] per instance). An instance is
*text*-correct when, for each of the first n images, the highest-scoring caption (`argmax` over the row,
the first one on exact ties) is its own; *image*-correct when, for each of the first n captions, the
highest-scoring image (`argmax` over the column) is its own; correct (group) when both. Metrics are the
means over instances: `text_acc`, `image_acc`, `acc` (Winoground's text, image and group scores; with one
image per instance, as SugarCrepe has, `image_acc` is 1 and `acc` = `text_acc`).

Every image is encoded once through the engine's image path (an image shared by instances once), every
distinct caption once per checkpoint; the score matrices are built at the end, per instance shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS, SelectionInstance
from evalkit.data.sources import DataError, ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import ImageFeatureStore, RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.spec import TaskError, TaskSpec
from evalkit.tasks.text import encode_texts

SELECTION_METRICS = ["image_acc", "text_acc", "acc"]
# the layouts a built-in dataset name may come in: another folder is other data, never a score
DATASET_FORMATS = {"sugar_crepe": ("sugar_crepe",), "winoground": ("winoground", "hf")}
_SUBSET = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SelectionOptions:
    """Task-file keys of a caption-selection task beyond the common ones."""

    subset: str | None = None  # SugarCrepe: which <root>/<subset>.json (add_att, ..., swap_obj)


@dataclass(frozen=True)
class ShapeGroup:
    """The instances of one shape (I images, C captions) as index tensors, so their scores are one batch."""

    instances: torch.Tensor  # [N] positions in the task's instance list
    images: torch.Tensor  # [N, I] indices into the source's images
    captions: torch.Tensor  # [N, C] indices into the flattened caption list


def flat_captions(instances: Sequence[SelectionInstance]) -> tuple[list[str], list[tuple[int, ...]]]:
    """Every caption of every instance, in order, and each instance's positions in that list."""
    texts: list[str] = []
    where = []
    for inst in instances:
        where.append(tuple(range(len(texts), len(texts) + len(inst.captions))))
        texts += inst.captions
    return texts, where


def shape_groups(instances: Sequence[SelectionInstance], caption_pos: Sequence[tuple[int, ...]]) -> list[ShapeGroup]:
    """Instances grouped by (I, C), in order of first appearance (Winoground and SugarCrepe: one group)."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for n, inst in enumerate(instances):
        by_shape.setdefault((len(inst.images), len(inst.captions)), []).append(n)
    return [ShapeGroup(torch.tensor(ns, dtype=torch.long),
                       torch.tensor([instances[n].images for n in ns], dtype=torch.long),
                       torch.tensor([caption_pos[n] for n in ns], dtype=torch.long))
            for ns in by_shape.values()]


def argmax_correct(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_correct, image_correct) [N] of score matrices [N, I, C], clip_benchmark's rule: the argmax
    of each of the first n rows (columns) must be its own caption (image); exact ties go to the first."""
    n = min(scores.shape[1], scores.shape[2])
    gt = torch.arange(n, device=scores.device)
    text_ok = (scores.argmax(dim=2)[:, :n] == gt).all(dim=1)
    image_ok = (scores.argmax(dim=1)[:, :n] == gt).all(dim=1)
    return text_ok, image_ok


def selection_metrics(text_ok: torch.Tensor, image_ok: torch.Tensor) -> dict[str, float]:
    return {"image_acc": float(image_ok.float().mean()), "text_acc": float(text_ok.float().mean()),
            "acc": float((text_ok & image_ok).float().mean())}


def selection_samples(instances: Sequence[SelectionInstance], ids: Sequence[str], scores: list[torch.Tensor],
                      text_ok: torch.Tensor, image_ok: torch.Tensor):
    """One row per instance: its key, images, captions, scores (row-major [I, C]) and verdicts."""
    import pandas as pd

    return pd.DataFrame({
        "instance": [inst.key for inst in instances],
        "images": [[ids[i] for i in inst.images] for inst in instances],
        "captions": [list(inst.captions) for inst in instances],
        "scores": [s.flatten().tolist() for s in scores],
        "text_correct": text_ok.numpy(), "image_correct": image_ok.numpy(), "correct": (text_ok & image_ok).numpy(),
    })


def check_selection_options(cls: type[TaskRunner], spec: TaskSpec) -> None:
    subset = spec.options.get("subset")
    if subset is not None and not _SUBSET.match(subset):
        raise TaskError(f"{spec.source}: subset {subset!r} must be a file stem such as {SUGAR_CREPE_SUBSETS[0]} "
                        "(letters, digits, _ . -).")
    if spec.dataset == "sugar_crepe" and subset is None:
        raise TaskError(f"{spec.source}: a sugar_crepe task needs `subset:` (one of {', '.join(SUGAR_CREPE_SUBSETS)}).")
    if spec.dataset == "winoground" and subset is not None:
        raise TaskError(f"{spec.source}: `subset:` picks a SugarCrepe file; a winoground task has none.")


def truncated_captions(captions: list[str], context_length: int = 77) -> int:
    """Captions longer than CLIP's tokenizer context (cut as the tokenizer cuts them, EOT last). Only a
    caption of more than `context_length - 2` characters can be: a BPE token covers at least one."""
    long = sorted({c for c in captions if len(c) > context_length - 2})
    if not long:
        return 0
    import open_clip

    toks = open_clip.SimpleTokenizer(context_length=context_length)(long)
    return int((toks[:, -1] != 0).sum())


def open_selection_source(root: Path | str, spec: TaskSpec) -> ImageSource:
    """The task's instances; how many distinct captions CLIP's tokenizer cuts joins the resolved task."""
    from evalkit.data.formats.selection import open_selection

    source = open_selection(root, split=spec.split, subset=spec.options.get("subset"))
    cut = truncated_captions([c for inst in source.targets for c in inst.captions])
    source.meta["task_data"] = {**source.meta.get("task_data", {}), "captions_truncated_at_77": cut}
    return source


def validate_selection(spec: TaskSpec, source: ImageSource) -> None:
    """The folder must be a caption-selection set in a layout of the task's dataset (`sugar_crepe` reads
    SugarCrepe's, `winoground` Winoground's), so `--data-root '/data/{dataset}'` cannot score other data."""
    if source.meta.get("dataset_type") != "caption_selection":
        raise DataError(f"{source.name}: not a caption-selection source (task {spec.name}, {spec.source}).")
    want, fmt = DATASET_FORMATS.get(spec.dataset), source.meta.get("format")
    if want is not None and fmt not in want:
        raise DataError(f"{source.name}: a {fmt} folder, but task {spec.name} ({spec.source}) is {spec.dataset}; "
                        f"point --data-root at the {spec.dataset} folder.")


@register_protocol("image_caption_selection")
class ImageCaptionSelection(TaskRunner):
    """Image features are kept (on the engine's device) until `result`; captions are encoded once."""

    Options = SelectionOptions
    needs = "image_features"
    default_metrics = list(SELECTION_METRICS)
    default_main_metric = "acc"

    check_options = classmethod(check_selection_options)

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        return open_selection_source(root, spec)

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        validate_selection(spec, source)

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        self.instances: list[SelectionInstance] = list(self.source.targets)
        texts, self.caption_pos = flat_captions(self.instances)
        self.text_features = encode_texts(lm, texts, ctx)
        self.images = ImageFeatureStore(len(self.source))

    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        self.images.add(index, features)

    def result(self, log_samples: bool = False) -> TaskResult:
        img = self.images.all(self.spec.name)
        txt = self.text_features.to(img.device)
        n = len(self.instances)
        text_ok = torch.zeros(n, dtype=torch.bool)
        image_ok = torch.zeros(n, dtype=torch.bool)
        scores: list[torch.Tensor] = [torch.empty(0)] * n
        for g in shape_groups(self.instances, self.caption_pos):
            s = torch.bmm(img[g.images.to(img.device)], txt[g.captions.to(img.device)].transpose(1, 2))  # [N, I, C]
            t, i = argmax_correct(s)
            text_ok[g.instances], image_ok[g.instances] = t.cpu(), i.cpu()
            if log_samples:
                for row, k in enumerate(g.instances.tolist()):
                    scores[k] = s[row].cpu()
        samples = selection_samples(self.instances, self.source.ids, scores, text_ok, image_ok) if log_samples else None
        return TaskResult(metrics=selection_metrics(text_ok, image_ok), n_samples=n, samples=samples,
                          extra={"n_images": len(self.source), "n_captions": len(self.text_features)})
