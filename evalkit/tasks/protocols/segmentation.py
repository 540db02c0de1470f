"""Semantic segmentation probes (ADE20K-style), cheap enough for every checkpoint of a grid.

One task type, `segmentation`, with two declared protocols chosen by the task file's `protocol:` key;
each protocol's settings are top-level keys of the task file (so they are in `TaskSpec.options`
and in the task hash) and every one of them must be declared there, so no code default can change
a number without changing the hash. See docs/segmentation.md.

- `zero-shot` (training-free, MaskCLIP): dense patch features mapped into the joint space by the
  family's dense projection, cosine against the class text embeddings (templates averaged).
- `linear` (frozen encoder): a linear head on standardised final-block patch tokens, trained on a
  fixed seeded subset of the train split inside `prepare`, evaluated on the whole eval split.

Both evaluate at the geometry of the preprocessed image: label maps are resized/cropped with
NEAREST exactly as the image pixels are (`label_transform`), patch logits are upsampled
bilinearly to that crop, then argmax. mIoU / pixel accuracy: `seg_metrics.SegmentationMeter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.data.formats.segmentation import IGNORE_LABEL, load_label_maps, open_segmentation
from evalkit.data.sources import DataError, ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.protocols.seg_metrics import SegmentationMeter
from evalkit.tasks.spec import TaskError, TaskSpec

PROTOCOL_KEYS: dict[str, tuple[str, ...]] = {
    "zero-shot": ("dense",),
    "linear": ("layer", "train_split", "train_subset", "pixels_per_image", "seed", "steps", "batch_size",
               "optimizer", "lr", "weight_decay"),
}
# Settings with one implemented value: declared in the task file so the hash says what was computed.
FIXED = {"dense": "maskclip", "layer": "last", "optimizer": "adamw", "geometry": "center_crop"}
UPSAMPLE_CHUNK = 16  # images per logits upsampling call: bounds memory at C x S x S floats per image
EXTRACT_BATCH = 64  # train images per forward pass in the linear probe (does not change numbers)


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------


def protocol_options(spec: TaskSpec) -> tuple[str, dict[str, Any]]:
    """(protocol, its settings), every setting declared in the task file."""
    opts = spec.options
    proto = opts.get("protocol")
    if proto not in PROTOCOL_KEYS:
        raise TaskError(f"task {spec.name} ({spec.source}): protocol must be one of {sorted(PROTOCOL_KEYS)}, "
                        f"not {proto!r}")
    block = opts.get(proto.replace("-", "_"), {}) or {}
    if not isinstance(block, dict):
        raise TaskError(f"task {spec.name} ({spec.source}): '{proto.replace('-', '_')}' must be a mapping")
    want = set(PROTOCOL_KEYS[proto])
    missing, unknown = sorted(want - set(block)), sorted(set(block) - want)
    if missing or unknown:
        raise TaskError(f"task {spec.name} ({spec.source}): protocol {proto} settings "
                        + (f"missing {missing} " if missing else "") + (f"unknown {unknown}" if unknown else "")
                        + f" (declare exactly {sorted(want)})")
    for key, value in [*block.items(), ("geometry", opts.get("geometry"))]:
        if key in FIXED and str(value).lower() != FIXED[key]:
            raise TaskError(f"task {spec.name} ({spec.source}): {key}: {value!r} is not implemented "
                            f"(only {FIXED[key]!r})")
    return proto, dict(block)


def num_classes_of(spec: TaskSpec) -> int:
    n = spec.options.get("num_classes")
    if not isinstance(n, int) or n < 1:
        raise TaskError(f"task {spec.name} ({spec.source}): declare num_classes (a positive integer)")
    if isinstance(spec.classnames, list) and len(spec.classnames) != n:
        raise TaskError(f"task {spec.name} ({spec.source}): {len(spec.classnames)} classnames for num_classes {n}")
    return n


def subset_source(source: ImageSource, indices: list[int], tag: str) -> ImageSource:
    """A view of `source` on `indices` (its own fingerprint, so the decode cache keeps it apart)."""
    import hashlib

    fp = hashlib.sha1(f"{source.fingerprint}|{tag}|{indices}".encode()).hexdigest()[:16]
    meta = dict(source.meta)
    meta["open_mask"] = lambda i: source.meta["open_mask"](indices[i])
    meta["image_size"] = lambda i: source.meta["image_size"](indices[i])
    return ImageSource(
        name=f"{source.name}{{{tag}}}", ids=[source.ids[i] for i in indices], opener=lambda i: source.opener(indices[i]),
        targets=[source.targets[i] for i in indices], fingerprint=fp, classnames=source.classnames, meta=meta,
    )


def seeded_subset(n: int, size: int | str, seed: int) -> list[int]:
    """Sorted indices of a fixed subset: `size` of `n` drawn by numpy's PCG64 with `seed` ("all": every one)."""
    if size == "all" or (isinstance(size, int) and size >= n):
        return list(range(n))
    if not isinstance(size, int) or size < 1:
        raise TaskError(f"train_subset must be a positive integer or 'all', not {size!r}")
    return sorted(np.random.default_rng(seed).choice(n, size=size, replace=False).tolist())


def patch_grid(lm: LoadedModel, n_tokens: int) -> tuple[int, int]:
    grid = getattr(lm.model.visual, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == n_tokens:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} patch tokens do not form a square grid")
    return side, side


def upsampled_logits(logits: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """[B, N, C] patch logits -> [B, C, S, S], bilinear (align_corners=False) from the patch grid."""
    b, n, c = logits.shape
    maps = logits.transpose(1, 2).reshape(b, c, grid[0], grid[1])
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class SegmentationOptions:
    """Task-file keys of a segmentation task beyond the common ones (each protocol's block must
    declare exactly its settings, see PROTOCOL_KEYS)."""

    num_classes: int
    protocol: str = "linear"  # linear | zero-shot
    geometry: str = "center_crop"
    linear: dict | None = None
    zero_shot: dict | None = None


@register_protocol("segmentation")
class Segmentation(TaskRunner):
    Options = SegmentationOptions

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        protocol_options(spec)
        num_classes_of(spec)

    """Either protocol; the shared part is geometry, upsampling and the metric."""

    default_metrics: ClassVar[list[str]] = ["miou", "pixel_acc"]
    default_main_metric = "miou"

    @classmethod
    def eval_type_of(cls, spec: TaskSpec, metric: str) -> str:
        return "similarity" if spec.options.get("protocol") == "zero-shot" else "probe"

    def __init__(self, spec: TaskSpec, source: ImageSource) -> None:
        super().__init__(spec, source)
        self.protocol, self.settings = protocol_options(spec)
        self.num_classes = num_classes_of(spec)
        # zero-shot reads patches already in the joint space (the family's dense projection); the
        # linear probe reads raw final-block patch tokens
        self.needs = "dense_features" if self.protocol == "zero-shot" else "patch_tokens"

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        source = open_segmentation(root, split=spec.split)
        n = num_classes_of(spec)
        if source.classnames is not None and len(source.classnames) != n:
            raise DataError(f"{source.name}: the data lists {len(source.classnames)} classes (objectInfo150.csv) "
                            f"but task {spec.name} has num_classes {n}: wrong data root for this task?")
        source.classnames = None  # the task file's classnames are the prompts; the data's only checked above
        protocol, settings = protocol_options(spec)
        if protocol == "linear":  # the probe's training images are part of what the number depends on
            train = open_segmentation(root, split=str(settings["train_split"]))
            source.meta["task_data"] = {"train_fingerprint": train.fingerprint, "train_images": len(train)}
        return source

    # --------------------------------------------------------------------------------- per checkpoint

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        self.lm, self.ctx = lm, ctx
        self.size = lm.preprocess.size
        self.labels = load_label_maps(self.source, lm.preprocess, self.num_classes)
        self.meter = SegmentationMeter(self.num_classes)
        if self.protocol == "zero-shot":
            self._prepare_zero_shot(lm, ctx)
        else:
            self._prepare_linear(lm, ctx)

    def _prepare_zero_shot(self, lm: LoadedModel, ctx: RunContext) -> None:
        from evalkit.tasks.protocols.zeroshot_classification import build_classifier

        if not self.spec.classnames or not self.spec.templates:
            raise TaskError(f"task {self.spec.name}: zero-shot segmentation needs classnames and templates")
        self.classifier = build_classifier(lm, list(self.spec.classnames), list(self.spec.templates), ctx)
        # one blank image through the dense path: a tower without one fails this unit here, not the
        # image pass it would share with other tasks
        blank = torch.zeros(1, 3, lm.preprocess.size, lm.preprocess.size, device=ctx.device)
        with torch.no_grad(), ctx.autocast():
            lm.image_dense_features(blank)

    def _prepare_linear(self, lm: LoadedModel, ctx: RunContext) -> None:
        s = self.settings
        root = self.source.meta.get("root")
        full = open_segmentation(root, split=str(s["train_split"]))
        idx = seeded_subset(len(full), s["train_subset"], int(s["seed"]))
        train = subset_source(full, idx, f"subset{len(idx)}-seed{s['seed']}")
        labels = torch.from_numpy(np.ascontiguousarray(load_label_maps(train, lm.preprocess, self.num_classes)))
        tokens = extract_patch_tokens(lm, train, ctx)
        self.head = fit_linear_head(tokens, labels, self.num_classes, patch_grid(lm, tokens.shape[1]), s, ctx.device)

    # --------------------------------------------------------------------------------- per batch

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        if self.protocol == "zero-shot":
            logits = F.normalize(features.float(), dim=-1) @ self.classifier
        else:
            logits = self.head(features.float())
        grid = patch_grid(self.lm, logits.shape[1])
        target = torch.from_numpy(np.ascontiguousarray(self.labels[index.numpy()]))
        for start in range(0, logits.shape[0], UPSAMPLE_CHUNK):
            sl = slice(start, start + UPSAMPLE_CHUNK)
            pred = upsampled_logits(logits[sl].float(), grid, self.size).argmax(dim=1)
            self.meter.update(pred, target[sl].to(pred.device))

    def result(self, log_samples: bool = False) -> TaskResult:
        metrics = self.meter.compute()
        iou = self.meter.per_class_iou()
        samples = None
        if log_samples:
            import pandas as pd

            cm = self.meter.confusion
            names = list(self.spec.classnames) if self.spec.classnames else [str(i) for i in range(self.num_classes)]
            samples = pd.DataFrame({
                "class": names, "iou": iou.numpy(), "intersection": cm.diag().numpy(),
                "union": (cm.sum(0) + cm.sum(1) - cm.diag()).numpy(), "gt_pixels": cm.sum(1).numpy(),
            })
        return TaskResult(metrics=metrics, n_samples=len(self.source), samples=samples,
                          extra={"per_class_iou": iou.tolist(), "protocol": self.protocol})


# ------------------------------------------------------------------------------------------------
# Linear probe
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_patch_tokens(lm: LoadedModel, source: ImageSource, ctx: RunContext) -> torch.Tensor:
    """Final-block patch tokens [M, N, D] (float32, on ctx.device) of every image of `source`, through
    the engine's own image path (decode-once cache, read-ahead, normalisation on the device)."""
    from evalkit.tasks.base import encode_images

    return torch.cat([out["patch_tokens"] for _, out in encode_images(lm, source, {"patch_tokens"}, ctx, EXTRACT_BATCH)])


class LinearHead(torch.nn.Module):
    """Standardisation (train-set token mean/std, fixed) + one linear layer: tokens [..., D] -> [..., C]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = torch.nn.Linear(mean.shape[-1], num_classes)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear((tokens - self.mean) / self.std)


def _axis_taps(size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output coordinate: (low index, high index, high weight) of PyTorch's bilinear resize
    (`align_corners=False`, no antialias) from `n` to `size` samples."""
    src = ((torch.arange(size, dtype=torch.float64) + 0.5) * (n / size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    return lo, hi, (src - lo).float()


def bilinear_taps(pos: torch.Tensor, size: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For flat pixel indices `pos` of an S x S crop: the 4 patch indices [P, 4] and weights [P, 4] with
    which `upsampled_logits` (F.interpolate, bilinear) mixes the patch grid at those pixels."""
    y0, y1, wy = _axis_taps(size, grid[0])
    x0, x1, wx = _axis_taps(size, grid[1])
    py, px = pos // size, pos % size
    a, b, c, d = y0[py], y1[py], x0[px], x1[px]
    fy, fx = wy[py], wx[px]
    idx = torch.stack([a * grid[1] + c, a * grid[1] + d, b * grid[1] + c, b * grid[1] + d], dim=1)
    w = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=1)
    return idx, w


def pixel_samples(labels: torch.Tensor, per_image: int | str, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index [P], flat pixel index [P], class [P]) of the labelled crop pixels used for training:
    `per_image` per image drawn uniformly without replacement (seeded), or every one with "all"."""
    imgs, poss, ys = [], [], []
    for i in range(labels.shape[0]):
        lab = labels[i].reshape(-1)
        where = (lab != IGNORE_LABEL).nonzero().squeeze(1)
        if per_image != "all" and where.numel() > int(per_image):
            where = where[torch.randperm(where.numel(), generator=gen)[: int(per_image)]].sort().values
        imgs.append(torch.full_like(where, i))
        poss.append(where)
        ys.append(lab[where].long())
    return torch.cat(imgs), torch.cat(poss), torch.cat(ys)


def fit_linear_head(tokens: torch.Tensor, labels: torch.Tensor, num_classes: int, grid: tuple[int, int],
                    settings: dict[str, Any], device: torch.device) -> LinearHead:
    """Train the head: AdamW + cosine decay on pixel cross-entropy at crop resolution (label 0 ignored).

    A fixed seeded sample of labelled pixels per image; each step draws `batch_size` of them and
    bilinearly interpolates their tokens from the 4 nearest patches (gathers, never a full-resolution
    feature map: ViT-L at 224 px would be 51M floats per image). Deterministic for a seed: zero
    init; pixels and minibatches drawn by a seeded CPU generator.
    """
    gen = torch.Generator().manual_seed(int(settings["seed"]))
    flat = tokens.reshape(-1, tokens.shape[-1])
    head = LinearHead(flat.mean(0), flat.std(0).clamp(min=1e-6), num_classes).to(device)
    img, pos, y = pixel_samples(labels.cpu(), settings["pixels_per_image"], gen)
    if not y.numel():
        raise DataError("linear probe: the training subset has no labelled pixels")
    taps, weights = bilinear_taps(pos, labels.shape[-1], grid)
    img, taps, weights, y, tokens = img.to(device), taps.to(device), weights.to(device), y.to(device), tokens.to(device)
    steps, bs = int(settings["steps"]), int(settings["batch_size"])
    opt = torch.optim.AdamW(head.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    with torch.enable_grad():
        for _ in range(steps):
            sel = torch.randint(y.numel(), (min(bs, y.numel()),), generator=gen).to(device)
            # the bilinearly upsampled token at each pixel (weights sum to 1, so head(upsampled token) is
            # exactly the upsampled patch logits that inference scores)
            x = (tokens[img[sel, None], taps[sel]] * weights[sel, :, None]).sum(1)
            loss = F.cross_entropy(head(x), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()
