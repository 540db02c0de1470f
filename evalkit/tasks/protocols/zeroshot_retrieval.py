"""Zero-shot image-text retrieval, computed as clip_benchmark computes it.

Scores are `text_features @ image_features.T` (both normalised). Image retrieval: each caption queries
the images; a hit at k if its image is among `torch.topk(scores_row, k)`. Text retrieval: each image
queries all captions; a hit at k if any of its captions is among the top k. Every k is its own topk
call on the full row, as in clip_benchmark, so exact ties are resolved exactly as torch.topk resolves
them there. `mean_recall@1` is DataComp's main retrieval metric: the mean of both recall@1.

Memory: the [texts x images] matrix is never held whole. Rows are scored in blocks of at most
`similarity_block_mb` MiB (task option, default 64), so peak extra memory is about two blocks plus their
topk indices, whatever the dataset size (5k x 25k for COCO would be 500 MB in float32).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from evalkit.data.sources import DataError, ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import ImageFeatureStore, RunContext, TaskResult, TaskRunner, register_protocol
from evalkit.tasks.spec import TaskError, TaskSpec
from evalkit.tasks.text import encode_texts

RECALL_K = (1, 5, 10)
# clip_benchmark's local layouts of its retrieval datasets: a folder in the other layout is other data
LOCAL_LAYOUT = {"mscoco_captions": "coco", "flickr30k": "flickr", "flickr8k": "flickr"}
LAYOUT_FILES = {"coco": "coco_{split}_karpathy.json + val2014/", "flickr": "{dataset}_{split}_karpathy.txt + its images"}
DEFAULT_BLOCK_MB = 64
_METRIC = re.compile(r"^(image|text)_retrieval_recall@(\d+)$")


def recall_ks(metrics: list[str]) -> list[int]:
    """The k's to compute: 1, 5, 10 plus any other `..._recall@k` a task lists."""
    ks = set(RECALL_K)
    for m in metrics:
        match = _METRIC.match(m)
        if match:
            ks.add(int(match.group(2)))
    return sorted(ks)


def _rows_per_block(n_cols: int, block_mb: float) -> int:
    return max(1, int(block_mb * 2**20) // (4 * max(1, n_cols)))


def _topk_hits(scores: torch.Tensor, is_positive, ks: list[int]) -> dict[int, torch.Tensor]:
    """{k: [rows] bool}: a positive among `scores.topk(k, 1)` (one call per k, like clip_benchmark)."""
    out = {}
    for k in ks:
        if k <= scores.shape[1]:
            out[k] = is_positive(scores.topk(k, dim=1)[1]).any(dim=1)
    return out


@torch.no_grad()
def retrieval_hits(text_features: torch.Tensor, image_features: torch.Tensor, text_image: torch.Tensor,
                   ks: list[int], block_mb: float = DEFAULT_BLOCK_MB) -> dict[str, dict]:
    """Per-query hits at each k and ranks, for both directions, scored block by block.

    `text_image[j]` is the image of caption j; an image's captions must be contiguous (they are: the
    flattened caption lists). Ranks are 0-based counts of candidates scoring strictly higher than the
    (best) positive, so with exact ties a rank can be lower than topk's placement; metrics use topk.
    """
    device = image_features.device
    n_texts, n_images = text_features.shape[0], image_features.shape[0]
    text_image = text_image.to(device)
    img_hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks if k <= n_images}
    txt_hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks if k <= n_texts}
    text_rank, image_rank = [], []

    rows = _rows_per_block(n_images, block_mb)
    for start in range(0, n_texts, rows):
        scores = text_features[start : start + rows] @ image_features.T  # [B texts, images]
        target = text_image[start : start + rows].view(-1, 1)
        for k, hit in _topk_hits(scores, lambda idx, t=target: idx == t, ks).items():
            img_hits[k].append(hit.cpu())
        text_rank.append((scores > scores.gather(1, target)).sum(dim=1).cpu())
        del scores

    counts = torch.bincount(text_image, minlength=n_images)
    offsets = torch.cumsum(counts, 0) - counts
    own = offsets.view(-1, 1) + torch.arange(int(counts.max()), device=device).view(1, -1)
    own = torch.minimum(own, (offsets + counts - 1).view(-1, 1))  # pad with the image's last caption
    rows = _rows_per_block(n_texts, block_mb)
    for start in range(0, n_images, rows):
        # [B images, texts]: the same product orientation as clip_benchmark's `scores.T`
        scores = (text_features @ image_features[start : start + rows].T).T
        ids = torch.arange(start, start + scores.shape[0], device=device).view(-1, 1)
        for k, hit in _topk_hits(scores, lambda idx, i=ids: text_image[idx] == i, ks).items():
            txt_hits[k].append(hit.cpu())
        best = scores.gather(1, own[start : start + rows]).max(dim=1, keepdim=True).values
        image_rank.append((scores > best).sum(dim=1).cpu())
        del scores

    return {
        "image": {"hits": {k: torch.cat(v) for k, v in img_hits.items()}, "rank": torch.cat(text_rank)},
        "text": {"hits": {k: torch.cat(v) for k, v in txt_hits.items()}, "rank": torch.cat(image_rank)},
    }


def retrieval_metrics(hits: dict[str, dict], ks: list[int]) -> dict[str, float]:
    """Recall@k per direction (NaN where k exceeds the number of candidates) and `mean_recall@1`."""
    metrics = {}
    for direction in ("image", "text"):
        for k in ks:
            h = hits[direction]["hits"].get(k)
            metrics[f"{direction}_retrieval_recall@{k}"] = float(h.float().mean().item()) if h is not None else math.nan
    metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics


@dataclass
class RetrievalOptions:
    """Task-file keys of a retrieval task beyond the common ones."""

    annotation_file: str | None = None  # the captions file, when not the layout's default name
    similarity_block_mb: float | None = None  # memory per similarity block (default 64 MiB); numbers unchanged


@register_protocol("zeroshot_retrieval")
class ZeroShotRetrieval(TaskRunner):
    Options = RetrievalOptions
    """Captions are encoded once per checkpoint in `text_batch_size` batches; image features are kept
    (on the engine's device) until `result`, which scores the pairs in blocks."""

    needs = "image_features"
    default_metrics = [*(f"image_retrieval_recall@{k}" for k in RECALL_K),
                       *(f"text_retrieval_recall@{k}" for k in RECALL_K), "mean_recall@1"]
    default_main_metric = "mean_recall@1"

    def __init__(self, spec: TaskSpec, source: ImageSource) -> None:
        super().__init__(spec, source)
        self.ks = recall_ks(list(spec.metrics))
        self.block_mb = float(spec.options.get("similarity_block_mb") or DEFAULT_BLOCK_MB)

    @classmethod
    def open_source(cls, root, spec: TaskSpec) -> ImageSource:
        from evalkit.data.formats.captions import open_retrieval

        return open_retrieval(root, split=spec.split, annotation=spec.options.get("annotation_file"))

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        """clip_benchmark's datasets in their local layout: the folder's layout (and Flickr annotation file) must
        be the task dataset's, or e.g. `mscoco_captions` would score a Flickr folder."""
        want, fmt = LOCAL_LAYOUT.get(spec.dataset), source.meta.get("format")
        if want is None or fmt not in LAYOUT_FILES:
            return
        ann = Path(str(source.meta.get("annotation", "")))
        expected = LAYOUT_FILES[want].format(split=spec.split, dataset=spec.dataset)
        fix = f"Point --data-root at the {spec.dataset} folder ({expected})."
        if fmt != want:
            raise DataError(f"{source.name}: a {fmt.upper() if fmt == 'coco' else fmt.capitalize()} folder ({ann.name}), "
                            f"but task {spec.name} ({spec.source}) is {spec.dataset}. {fix}")
        if (want == "flickr" and not spec.options.get("annotation_file")
                and ann.name.split("_", 1)[0] in LOCAL_LAYOUT and not ann.name.startswith(f"{spec.dataset}_")):
            raise DataError(f"{source.name}: its annotation file is {ann.name}, but task {spec.name} ({spec.source}) "
                            f"is {spec.dataset}. {fix}")

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        captions = list(self.source.targets)
        if not captions or not all(isinstance(c, list) and c for c in captions):
            raise TaskError(f"task {self.spec.name}: {self.source.name} is not a retrieval source "
                            "(every image needs a non-empty list of captions)")
        self.texts = [t for caps in captions for t in caps]
        self.text_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
        self.text_features = encode_texts(lm, self.texts, ctx)
        self.images = ImageFeatureStore(len(self.source))

    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        self.images.add(index, features)

    def result(self, log_samples: bool = False) -> TaskResult:
        image_features = self.images.all(self.spec.name)
        hits = retrieval_hits(self.text_features.to(image_features.device), image_features,
                              self.text_image, self.ks, self.block_mb)
        metrics = retrieval_metrics(hits, self.ks)
        samples = self._samples(hits) if log_samples else None
        return TaskResult(metrics=metrics, n_samples=len(self.source), samples=samples,
                          extra={"n_texts": len(self.texts)})

    def _samples(self, hits: dict[str, dict]):
        """One row per caption query (its image's rank) and per image query (its best caption's rank)."""
        import pandas as pd

        ids = list(self.source.ids)
        text_image = self.text_image.tolist()
        frames = []
        for direction, queries, images in (("image", self.texts, [ids[i] for i in text_image]), ("text", ids, ids)):
            cols = {"direction": f"{direction}_retrieval", "query": queries, "image": images,
                    "rank": hits[direction]["rank"].numpy()}
            cols.update({f"hit@{k}": h.numpy() for k, h in hits[direction]["hits"].items()})
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)
