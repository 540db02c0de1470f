"""Semantic-segmentation metrics as the field computes them (mmsegmentation's `IoUMetric`).

Intersections and unions are accumulated over the whole split through one confusion matrix (a
dataset-level mIoU, not a mean of per-image IoUs); ignored pixels count for neither prediction nor
ground truth; a class absent from both the predictions and the ground truth of the split has no
IoU and is left out of the mean (NaN), instead of counting as 0 or 1.
"""

from __future__ import annotations

import math

import torch

from evalkit.data.formats.segmentation import IGNORE_LABEL as IGNORE


class SegmentationMeter:
    """Accumulates a [C, C] confusion matrix (rows = ground truth, columns = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`, `target`: integer maps of the same shape (any device); `target` may hold `ignore_index`."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        c = self.num_classes
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long().to(target.device)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        if target.numel() and (int(target.max()) >= c or int(target.min()) < 0):
            raise ValueError(f"target labels outside 0..{c - 1} (and {self.ignore_index} = ignore)")
        counts = torch.bincount(target * c + pred.clamp(0, c - 1), minlength=c * c)
        self.confusion += counts.view(c, c).cpu()

    def per_class_iou(self) -> torch.Tensor:
        """[C] float64 IoU; NaN where the class is in neither prediction nor ground truth."""
        cm = self.confusion.double()
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))

    def compute(self) -> dict[str, float]:
        """`miou` (NaN-mean over classes present somewhere) and `pixel_acc` (correct / labelled pixels)."""
        iou = self.per_class_iou()
        valid = ~torch.isnan(iou)
        total = int(self.confusion.sum())
        return {
            "miou": float(iou[valid].mean()) if bool(valid.any()) else math.nan,
            "pixel_acc": float(self.confusion.diag().sum()) / total if total else math.nan,
        }
