"""Zero-shot classification, computed as clip_benchmark computes it.

Classifier: per class, the mean of the normalised features of its templates, renormalised; logits
`100 * image_features @ classifier`. All prompts are encoded in large batches (not one class per
forward). Metrics: acc1, acc5 (NaN under 5 classes), mean_per_class_recall (balanced accuracy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.text import encode_texts


def build_classifier(lm: LoadedModel, classnames: list[str], templates: list[str], ctx: RunContext) -> torch.Tensor:
    """[D, C] zero-shot weights."""
    texts = [t.format(c=c) for c in classnames for t in templates]
    feats = encode_texts(lm, texts, ctx).view(len(classnames), len(templates), -1)
    weights = F.normalize(feats, dim=-1).mean(dim=1)
    weights = weights / weights.norm(dim=-1, keepdim=True)
    return weights.T.contiguous()


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


@register_protocol("zeroshot_classification")
class ZeroShotClassification(TaskRunner):
    needs = "image_features"
    default_metrics = ["acc1", "acc5", "mean_per_class_recall"]
    default_main_metric = "acc1"

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        if not self.spec.classnames or not self.spec.templates:
            raise ValueError(f"task {self.spec.name}: classnames and templates are required")
        n_targets = int(max(self.source.targets)) + 1
        if n_targets > len(self.spec.classnames):
            raise ValueError(
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
