"""Zero-shot classification, computed as clip_benchmark computes it.

Classifier: per class, the mean of the normalised features of its templates, renormalised; logits
`100 * image_features @ classifier`. All prompts are encoded in large batches (not one class per
forward). Metrics: acc1, acc5 (NaN under 5 classes), mean_per_class_recall (balanced accuracy).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.data.sources import DataError, ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.spec import TaskError, TaskSpec
from evalkit.tasks.text import encode_texts

WNID = re.compile(r"^n\d{8}$")
IMAGENET1K_LAYOUT = ("point --data-root at the ImageNet-1k val folder (<root>/val/<wnid>/*.JPEG, the 1000 wnid "
                     "folders), clip_benchmark's wds_imagenet1k folder, or a Hugging Face imagenet-1k folder")


def build_classifier(lm: LoadedModel, classnames: list[str], templates: list[str], ctx: RunContext) -> torch.Tensor:
    """[D, C] zero-shot weights, built once per checkpoint for each (classnames, templates): ImageNet-1k,
    -V2 and -Sketch share one classifier (80,000 prompts) instead of encoding it three times."""
    cache = lm.__dict__.setdefault("_classifiers", {})
    key = (tuple(classnames), tuple(templates))
    if key not in cache:
        texts = [t.format(c=c) for c in classnames for t in templates]
        feats = encode_texts(lm, texts, ctx).view(len(classnames), len(templates), -1)
        weights = F.normalize(feats, dim=-1).mean(dim=1)
        weights = weights / weights.norm(dim=-1, keepdim=True)
        cache[key] = weights.T.contiguous()
    return cache[key]


def topk_hits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] hits of the top-k predictions, ranked as clip_benchmark ranks them (one topk call)."""
    pred = logits.topk(k, 1, True, True)[1]
    return pred == target.view(-1, 1)


def mean_per_class_recall(pred: np.ndarray, target: np.ndarray) -> float:
    """Balanced accuracy as scikit-learn computes it: mean recall over classes present in `target`."""
    recalls = [float((pred[target == c] == c).mean()) for c in np.unique(target)]
    return float(np.mean(recalls))


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    n, n_classes = logits.shape
    hits = topk_hits(logits, target, min(5, n_classes)).float()
    acc1 = float(hits[:, :1].sum().item()) / n
    acc5 = float(hits[:, :5].sum().item()) / n if n_classes >= 5 else float("nan")
    pred = logits.argmax(dim=1).numpy()
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(pred, target.numpy())}


def imagenet1k_wnids() -> list[str] | None:
    """The 1000 ImageNet-1k wnids in sorted order (= class index), from timm's package data.

    timm is a dependency of open_clip, so the list is always installed with evalkit; the file is read
    without importing timm. None if it cannot be found (then only the wnid pattern is checked).
    """
    import importlib.util

    spec = importlib.util.find_spec("timm")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "_info" / "imagenet_synsets.txt"
        if path.is_file():
            wnids = path.read_text().split()
            if len(wnids) == 1000 and wnids == sorted(wnids):
                return wnids
    return None


def imagenet_subset_names(source: ImageSource, spec: TaskSpec) -> list[str]:
    """Class names of an ImageNet-1k subset (ImageNet-A/-R): the data's own list (a wds folder's
    classnames.txt), else ImageNet-1k's names of the folder layout's wnids, in the folders' order."""
    if source.classnames:
        return list(source.classnames)
    from evalkit.tasks.spec import open_clip_list

    wnids, known = list(source.meta.get("wnids") or []), imagenet1k_wnids()
    if not wnids or known is None:
        raise DataError(f"{source.name}: task {spec.name} ({spec.source}) names its classes from the folder's "
                        "ImageNet wnids, but the data has neither a classnames.txt nor wnid class folders.")
    index = {w: i for i, w in enumerate(known)}
    bad = [w for w in wnids if w not in index]
    if bad:
        raise DataError(f"{source.name}: {len(bad)} class folders are not ImageNet-1k wnids ({_few(bad)}), so "
                        f"task {spec.name} cannot name them. Point --data-root at the {spec.dataset} data.")
    names = open_clip_list("IMAGENET_CLASSNAMES")
    return [names[index[w]] for w in wnids]


def is_imagenet1k(spec: TaskSpec) -> bool:
    """The task's class list is ImageNet-1k's: its dataset is `imagenet1k`, or its classnames are open_clip's
    IMAGENET_CLASSNAMES (so `imagenet1k` variants with other names but the same labels are checked too)."""
    if spec.dataset == "imagenet1k":
        return True
    if not isinstance(spec.classnames, list) or len(spec.classnames) != 1000:
        return False
    from evalkit.tasks.spec import open_clip_list

    return spec.classnames == open_clip_list("IMAGENET_CLASSNAMES")


def _few(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def check_classification_data(spec: TaskSpec, source: ImageSource) -> None:
    """Refuse data whose classes are not the task's: a wrong folder would otherwise score (acc1 = 0, status ok).

    Image folders: as many class folders as the task has classes, and for ImageNet-1k exactly its 1000
    wnids (the class index is the sorted-wnid order). Every format: a class-name list shipped with the
    data (classnames.txt, a ClassLabel feature) has the task's length, and class ids lie in 0..C-1.
    """
    names = spec.classnames
    if not isinstance(names, list) or not names:
        return  # `prepare` names the missing list
    n = len(names)
    imagenet = is_imagenet1k(spec)
    task = f"task {spec.name} ({spec.source or 'no task file'}) has {n} classes"
    where = (IMAGENET1K_LAYOUT if imagenet else
             f"point --data-root at the {spec.dataset} data, one class folder (or class id) per class of the task")
    hint = f"This is not the task's data: {where}."
    fmt = source.meta.get("format")
    if fmt == "image_folder":
        dirs = list(source.meta.get("wnids") or [])
        if len(dirs) != n:
            raise DataError(f"{source.name}: {len(dirs)} class folder{'s' * (len(dirs) != 1)} ({_few(dirs)}) "
                            f"holding {len(source)} images, but {task}. {hint}")
        if imagenet:
            want = imagenet1k_wnids()
            bad = [d for d in dirs if not WNID.match(d)] if want is None else sorted(set(dirs) - set(want))
            if bad:
                lacking = f"; missing: {_few(sorted(set(want) - set(dirs)))}" if want is not None else ""
                raise DataError(f"{source.name}: {len(bad)} of {len(dirs)} class folders are not ImageNet-1k wnids "
                                f"({_few(bad)}{lacking}), and its class index is the sorted order of its 1000 "
                                f"wnids, so these folders cannot be mapped to the classes of task {spec.name}. {hint}")
        return
    origin = {"wds": "classnames.txt", "hf": "the label column's ClassLabel names"}.get(str(fmt), "the data")
    if source.classnames and len(source.classnames) != n:
        raise DataError(f"{source.name}: {len(source.classnames)} class names in {origin}, but {task}. {hint}")
    labels = np.asarray(list(source.targets))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{source.name}: targets are not integer class ids (e.g. {list(source.targets)[:1]!r:.60}), "
                        f"but {task} and needs one class id per image. {hint}")
    if len(labels) and int(labels.max()) >= n:
        hi, over = int(labels.max()), int((labels >= n).sum())
        raise DataError(f"{source.name}: class ids go up to {hi} ({hi + 1} classes; {over} of {len(labels)} images "
                        f"above {n - 1}), but {task}. {hint}")
    if len(labels) and int(labels.min()) < 0:
        neg = int((labels < 0).sum())
        raise DataError(f"{source.name}: {neg} of {len(labels)} images have a negative class id {int(labels.min())} "
                        f"(unlabelled, as in a test split without labels), but {task}, ids 0..{n - 1}. {hint}")


@register_protocol("zeroshot_classification")
class ZeroShotClassification(TaskRunner):
    needs = "image_features"
    default_metrics = ["acc1", "acc5", "mean_per_class_recall"]
    default_main_metric = "acc1"

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        check_classification_data(spec, source)

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        if not self.spec.classnames or not self.spec.templates:
            raise TaskError(f"task {self.spec.name}: classnames and templates are required")
        n_targets = int(max(self.source.targets)) + 1
        if n_targets > len(self.spec.classnames):
            raise TaskError(
                f"task {self.spec.name}: data in {self.source.name} has class ids up to {n_targets - 1} "
                f"but the task has {len(self.spec.classnames)} classnames"
            )
        self.classifier = build_classifier(lm, list(self.spec.classnames), list(self.spec.templates), ctx)
        # on the device until `result`: a per-batch copy to the host would stall the GPU every batch
        self.logits = torch.empty(len(self.source), len(self.spec.classnames), dtype=torch.float32, device=ctx.device)

    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        self.logits[index.to(self.logits.device, non_blocking=True)] = 100.0 * features.float() @ self.classifier

    def result(self, log_samples: bool = False) -> TaskResult:
        self.logits = self.logits.cpu()
        target = torch.as_tensor(np.asarray(self.source.targets), dtype=torch.long)
        metrics = classification_metrics(self.logits, target)
        samples = None
        if log_samples:
            import pandas as pd

            k = min(5, self.logits.shape[1])
            scores, idx = self.logits.topk(k, 1, True, True)
            samples = pd.DataFrame({
                "sample": self.source.ids, "target": target.numpy(),
                "top_indices": idx.numpy().tolist(), "top_scores": scores.numpy().tolist(),
            })
        return TaskResult(metrics=metrics, n_samples=len(target), samples=samples)
