"""The contract between the engine and a task protocol.

The engine owns images and models; a protocol builds its text side once per checkpoint, consumes
image features batch by batch, and returns metrics. New protocols register with `@register_protocol`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from evalkit.data.sources import ImageSource
from evalkit.errors import UsageError
from evalkit.models.family import LoadedModel
from evalkit.registry import Registry
from evalkit.tasks.spec import TaskError, TaskSpec

# The built-in protocols, read in this one place; other packages add theirs through the entry-point
# group `evalkit.protocols` (a module that calls `register_protocol`, or a TaskRunner subclass).
PROTOCOL_MODULES = ("evalkit.tasks.protocols.zeroshot_classification", "evalkit.tasks.protocols.zeroshot_retrieval",
                    "evalkit.tasks.protocols.segmentation", "evalkit.tasks.protocols.generative_zeroshot_classification",
                    "evalkit.tasks.protocols.image_caption_selection",
                    "evalkit.tasks.protocols.generative_image_caption_selection", "evalkit.tasks.protocols.linear_probe",
                    "evalkit.tasks.protocols.losses")


def _check_protocol(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, TaskRunner)):
        raise TypeError(f"protocol '{name}': {cls!r} is not a TaskRunner subclass")


PROTOCOLS: Registry[type[TaskRunner]] = Registry("protocol", PROTOCOL_MODULES, "evalkit.protocols", _check_protocol)


def protocols() -> Registry[type[TaskRunner]]:
    """Every registered protocol (built-ins and entry points imported on first use)."""
    return PROTOCOLS


# What the engine can compute from a batch of images, by name: a protocol's `needs` names one, and
# the engine computes each needed readout once per batch through this table (a new readout is one
# `READOUTS[name] = fn` in the protocol's module; engine.py never changes).
READOUTS: dict[str, Callable[[LoadedModel, torch.Tensor], torch.Tensor]] = {
    "image_features": lambda lm, images: lm.encode_image(images),
    "patch_tokens": lambda lm, images: lm.image_patch_tokens(images),
    "dense_features": lambda lm, images: lm.image_dense_features(images),
    # the captioning decoder's image context [B, N, D] (MaMMUT, CoCa, cap): generative protocols
    # score their token sequences against it with `lm.caption_scores` / `lm.caption_log_likelihood`
    "caption_context": lambda lm, images: lm.caption_context(images),
}

# Both heads' image readouts in one tensor (the engine hands a runner one readout): row 0 the contrastive
# image features, rows 1.. the decoder context, each zero-padded to the wider width; `unpack_both`.
BOTH = "caption_context+image_features"


def _pack_both(lm: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    ctx, feats = lm.caption_context(images), lm.encode_image(images)
    width = max(ctx.shape[-1], feats.shape[-1])
    out = ctx.new_zeros(ctx.shape[0], 1 + ctx.shape[1], width)
    out[:, 0, : feats.shape[-1]] = feats
    out[:, 1:, : ctx.shape[-1]] = ctx
    return out


def unpack_both(packed: torch.Tensor, feature_width: int, context_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features [B, E], decoder context [B, N, D]) of a `BOTH` readout."""
    return packed[:, 0, :feature_width], packed[:, 1:, :context_width]


def context_width(lm: LoadedModel) -> int:
    """The width D of the model's decoder context (what its cross-attention's `ln_1_kv` normalises)."""
    cross = next(blk for kind, blk in lm.require_captioner().layers if kind == "cross")
    return int(cross.ln_1_kv.normalized_shape[0])


READOUTS[BOTH] = _pack_both


def _to_device(batch: torch.Tensor, device: torch.device, copy_stream: torch.cuda.Stream | None) -> torch.Tensor:
    """The next pinned uint8 batch on the device, copied on a side stream: the copy overlaps the
    previous batch's forward, and the compute stream waits on an event, never the host."""
    if copy_stream is None:
        return batch.to(device)
    compute = torch.cuda.current_stream(device)
    with torch.cuda.stream(copy_stream):
        images = batch.to(device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(copy_stream)
    compute.wait_event(done)
    images.record_stream(compute)  # allocated on the copy stream, used on the compute stream
    return images


@torch.no_grad()
def encode_images(lm: LoadedModel, source: ImageSource, needs: set[str] | list[str], ctx: RunContext,
                  batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The one image-encoding path, for the engine and for protocols that read images themselves
    (probe training): decode-once cached uint8 pixels -> read-ahead (pinned) batches -> the device
    (side stream) -> normalise -> each needed readout once per batch. Yields (indices, readouts)."""
    from evalkit.data.cache import decoded_images, host_batches
    from evalkit.data.preprocess import normalize

    pixels = decoded_images(source, lm.preprocess, ctx.cache_dir, num_workers=ctx.num_workers,
                            progress=ctx.progress, before_decode=ctx.before_decode)
    cuda = ctx.device.type == "cuda"
    copy_stream = torch.cuda.Stream(ctx.device) if cuda else None
    for start, stop, batch in host_batches(pixels, batch_size or ctx.batch_size, pin=cuda):
        images = normalize(_to_device(batch, ctx.device, copy_stream), lm.preprocess)
        index = torch.arange(start, stop)  # pinned on CUDA, so runners' copies to the device stay async
        if cuda:
            index = index.pin_memory()
        with ctx.autocast():
            outputs = {name: READOUTS[name](lm, images).float() for name in needs}
        yield index, outputs  # consumers (runners' updates) run outside autocast, in fp32


class ImageFeatureStore:
    """Every image's features [N, D], fp32 on the device, filled batch by batch: for protocols that score
    all images against all texts once every image is in (retrieval, caption selection)."""

    def __init__(self, n_images: int) -> None:
        self.features: torch.Tensor | None = None
        self.seen = torch.zeros(n_images, dtype=torch.bool)

    def add(self, index: torch.Tensor, features: torch.Tensor) -> None:
        if self.features is None:
            self.features = torch.empty(len(self.seen), features.shape[1], dtype=torch.float32, device=features.device)
        self.features[index.to(features.device, non_blocking=True)] = features.float()
        self.seen[index] = True

    def all(self, task: str) -> torch.Tensor:
        """The full [N, D] matrix; an image never encoded is evalkit's bug, never a score."""
        if self.features is None or not bool(self.seen.all()):
            raise RuntimeError(f"task {task}: {int((~self.seen).sum())} images were never encoded")
        return self.features


@dataclass
class NoOptions:
    """A protocol with no options of its own."""


@dataclass
class RunContext:
    """How to compute: device, autocast, batch sizes."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    text_batch_size: int = 1024
    cache_dir: Path | None = None  # decode-once cache for images a protocol reads itself (probe training)
    num_workers: int | None = None
    before_decode: Callable[[], None] | None = None  # the engine's: let its threads finish before decoding
    batch_size: int = 64  # images per forward
    progress: bool = False  # decode progress on the terminal


@dataclass
class TaskResult:
    metrics: dict[str, float]
    n_samples: int
    samples: Any = None  # optional per-sample pandas DataFrame
    extra: dict[str, Any] = field(default_factory=dict)


class TaskRunner:
    """One task on one checkpoint. `needs` says which image readout the engine must compute."""

    needs: str = "image_features"  # or "patch_tokens", "dense_features"; a runner may set it per instance

    default_metrics: ClassVar[list[str]] = []  # every metric it computes; a task file's `metrics:` picks some
    default_main_metric: ClassVar[str] = ""
    # How a score is read from the model, as the reference tables' `eval_type` column says it:
    # "similarity" (image-text embeddings), "log_likelihood" (the captioning decoder), "probe" (a
    # classifier fit on frozen features, which the reference tables do not hold).
    eval_type: ClassVar[str] = "similarity"
    # The task-file keys it takes beyond the common ones, with types and defaults: the registry refuses
    # unknown keys and wrong types and fills in the defaults, so they are part of the task hash.
    Options: ClassVar[type] = NoOptions

    @classmethod
    def heads(cls, spec: TaskSpec) -> frozenset[str]:
        """Which heads of a model the task reads: "contrastive" (image/text embeddings in one space)
        and/or "captioner" (the decoder). The plan leaves out units whose model lacks one (a `cap`
        checkpoint has no contrastive head); default: the contrastive head."""
        return frozenset({"contrastive"})

    @classmethod
    def eval_type_of(cls, spec: TaskSpec, metric: str) -> str:
        """The `eval_type` of one metric's rows (a protocol mixing kinds, as `losses` or `segmentation`,
        says per metric or per option)."""
        return cls.eval_type

    @classmethod
    def cost_per_image(cls, spec: TaskSpec) -> float:
        """A unit's compute per image, in forwards of the model (what shards balance): 1 for a
        protocol that reads each image's readout once."""
        return 1.0

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        """Refuse option values the protocol cannot run (a `TaskError` naming the file)."""

    def __init__(self, spec: TaskSpec, source: ImageSource) -> None:
        self.spec, self.source = spec, source

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        """The task's images and targets from `root` (format detected from the layout)."""
        from evalkit.data.open import open_classification

        return open_classification(root, split=spec.split)

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        """Raise `DataError` when `source` cannot be `spec`'s data (the resolved spec: concrete class list)."""

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        raise NotImplementedError

    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self, log_samples: bool = False) -> TaskResult:
        raise NotImplementedError


def eval_type(spec: TaskSpec, metric: str) -> str | None:
    """The `eval_type` column of a result row: its protocol's, None for a type evalkit has no protocol for."""
    proto = protocols().get(spec.type)
    return proto.eval_type_of(spec, metric) if proto is not None else None


def open_task(spec: TaskSpec, root: Path | str) -> tuple[TaskSpec, ImageSource]:
    """Open a task's data and resolve its spec; `wds_auto` tasks take their protocol from the folder."""
    from dataclasses import replace

    if spec.type == "wds_auto":
        from evalkit.data.formats.wds import dataset_type

        kind = dataset_type(Path(root))
        spec = replace(spec, type=f"zeroshot_{kind}")
        if spec.type not in protocols():
            raise TaskError(f"{root}: dataset_type.txt says '{kind}', which evalkit has no protocol for")
        proto = protocols()[spec.type]
        spec = replace(spec, metrics=list(proto.default_metrics), main_metric=proto.default_main_metric)
        if kind == "retrieval":
            spec = replace(spec, classnames=None, templates=None)
    if spec.type not in protocols():
        raise TaskError(f"task {spec.name} ({spec.source}): unknown type '{spec.type}' (known: {', '.join(sorted(protocols()))})")
    source = protocols()[spec.type].open_source(root, spec)
    if spec.limit is not None:
        source = first_samples(source, spec.limit)
    if spec.classnames == "imagenet_subset":  # ImageNet-A/-R: the folder's classes named as in ImageNet-1k
        from evalkit.tasks.protocols.zeroshot_classification import imagenet_subset_names

        spec = replace(spec, classnames=imagenet_subset_names(source, spec))
    # the data's identity joins the hash: other files (or edited ones) are another task, never a resume
    data = {"fingerprint": source.fingerprint, "n_images": len(source), **source.meta.get("task_data", {})}
    spec = spec.resolved(source.classnames, source.templates, data)
    protocols()[spec.type].validate(spec, source)  # a wrong folder is an error, never a score
    return spec, source


def first_samples(source: ImageSource, n: int) -> ImageSource:
    """The first `n` images of a split (`--limit N`), in the reader's order, as a source of its own:
    another name and fingerprint, so the decode-once cache never mixes it with the whole split.
    Index i is the same image in both, so per-index helpers in `meta` (segmentation masks) still hold."""
    import hashlib
    from dataclasses import replace

    if n < 1:
        raise UsageError(f"--limit {n}: need at least 1 sample per task")
    if n >= len(source):  # the whole split: the same images (and cache entry)
        return source
    fp = hashlib.sha1(f"{source.fingerprint}|first {n}".encode()).hexdigest()[:16]
    return replace(source, name=f"{source.name}[:{n}]", ids=list(source.ids[:n]),
                   targets=[source.targets[i] for i in range(n)], fingerprint=fp, meta=dict(source.meta))


def register_protocol(name: str) -> Callable[[type[TaskRunner]], type[TaskRunner]]:
    """Class decorator: `cls` runs tasks of `type: name`."""
    return PROTOCOLS.register(name)
