"""Linear probes and few-shot probes on frozen image features, as clip_benchmark 1.6.2 computes them
(`clip_benchmark/metrics/linear_probe.py`), at grid speed. See docs/linear_probe.md.

The procedure (clip_benchmark's): L2-normalised `encode_image` features; a `Linear(d, classes)`
initialised as `torch.nn.Linear` is after `torch.manual_seed(seed)`, trained with AdamW, mean
cross-entropy, lr `lr` on a cosine schedule without warmup over epochs x steps, minibatches in the
order a shuffling `DataLoader` draws from the same seed. `fewshot_k` keeps the first k images of each
class in `torch.randperm(n)` drawn from `seed`. With a validation set (`val_split`, or `val_proportion`:
a seeded `random_split` of the train indices) the weight decay is searched over
`logspace(-6, 2, 97)`: the 7 coarse points, then the peak refined at spans 8, 4, 2, 1 on validation
top-1 (first best wins, as the reference's `max_acc < acc1`); the final probe is refit on train + val
(full data) or is the search's own probe for the chosen decay (few-shot: the reference retrains the
same deterministic fit). Without a validation set the weight decay is 0.

Where it is faster, with the same numbers: train features come through the engine's one image path
(decode-once cache) once per checkpoint and train split for every probe variant (full, 10-, 25-shot)
and stay on the device; the weight-decay candidates are trained together as one batched linear layer
([n_wd, d, classes], per-candidate decoupled weight decay, the same AdamW arithmetic per candidate as
`torch.optim.AdamW`), and the gradients are the closed form of mean cross-entropy, so a training run
is a handful of kernels per step for all candidates at once. Which candidates share a run (all 97,
the coarse 7 then every point the refinement can reach, or each search step's) is picked by size;
each candidate's fit is deterministic, so the choice changes time, never the chosen decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from evalkit.data.sources import DataError, ImageSource
from evalkit.errors import UserError
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext, TaskResult, TaskRunner, encode_images, register_protocol
from evalkit.tasks.protocols.zeroshot_classification import mean_per_class_recall
from evalkit.tasks.spec import TaskError, TaskSpec

# The reference's weight-decay grid and its coarse points (found by float equality, as it finds them).
WD_GRID: list[float] = np.logspace(-6, 2, num=97).tolist()
COARSE: list[int] = [i for i, v in enumerate(WD_GRID) if v in np.logspace(-6, 2, num=7).tolist()]
SPANS = (8, 4, 2, 1)
REACH = sum(SPANS)  # how far from the coarse peak the refinement can go
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which the reference uses
# Per-step costs in "weight elements" (d x classes) of work: (per run, per candidate). Measured on the
# CPU (one thread: ~0.2 ms per step of a run, ~20 us per candidate, ~7 ns per element); the CUDA
# figure is an estimate of launch overhead against memory bandwidth, not yet measured on a GPU. Only
# decides how candidates are grouped into runs (time, never results).
OVERHEAD_ELEMS = {"cuda": (4_000_000, 0), "cpu": (30_000, 2_000)}
SMALL_STEP = 1 << 20  # candidates x d x classes below which a CPU fit runs on one thread (see `_threads`)
EVAL_CHUNK = 1 << 24  # candidates x rows x classes logits per evaluation chunk (64 MB of floats)


class ProbeDiverged(UserError, FloatingPointError):
    """The probe's training produced NaN/inf (a diverging fit or non-finite features): that unit fails,
    in one line naming the task (the checkpoint's numbers, not a bug in evalkit)."""


@dataclass
class LinearProbeOptions:
    """Task-file keys of a linear_probe task beyond the common ones (all in the task hash)."""

    train_split: str = "train"
    val_split: str | None = None  # a split of the data used for the weight-decay search ...
    val_proportion: float | None = None  # ... or this share of the train split (seeded), not both
    fewshot_k: int = -1  # images per class; -1: every image
    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0


# ------------------------------------------------------------------------------------------------
# Data selection (the reference's rules, on index lists)
# ------------------------------------------------------------------------------------------------


def split_train_val(n: int, proportion: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) positions: `random_split(range(n), [1 - p, p])` with a generator seeded by `seed`
    (the reference applies the same split to the image dataset; its CLI draws from the global RNG)."""
    gen = torch.Generator().manual_seed(int(seed))
    train, val = torch.utils.data.random_split(range(n), [1 - proportion, proportion], generator=gen)
    return list(train.indices), list(val.indices)


def fewshot_select(targets: Sequence[int], k: int, seed: int) -> list[int]:
    """Positions kept for training, in the order used: `randperm(n)` from `seed`, each class's first k
    (all of them, permuted, for k = -1)."""
    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(int(seed))).tolist()
    if k < 0:
        return perm
    counts: dict[int, int] = {}
    keep = []
    for p in perm:
        c = int(targets[p])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            keep.append(p)
    return keep


def class_counts(targets: Sequence[int]) -> dict[int, int]:
    values, counts = np.unique(np.asarray(targets, dtype=np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


# ------------------------------------------------------------------------------------------------
# Training: the candidates of one run as one batched linear layer
# ------------------------------------------------------------------------------------------------


def init_linear(d: int, n_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.nn.Linear(d, n_classes)`'s initial (weight [C, d], bias [C]), drawn from `gen` as the
    module draws them from the global generator."""
    w = torch.empty(n_classes, d)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    bound = 1 / math.sqrt(d) if d > 0 else 0
    b = torch.empty(n_classes)
    torch.nn.init.uniform_(b, -bound, bound, generator=gen)
    return w, b


def epoch_orders(n: int, epochs: int, gen: torch.Generator) -> torch.Tensor:
    """[epochs, n] sample orders of a `DataLoader(shuffle=True)` iterated once per epoch: each iterator
    draws its base seed, then its RandomSampler draws the seed of a fresh generator for `randperm`."""
    orders = []
    for _ in range(epochs):
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the iterator's worker base seed
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())
        orders.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(orders)


def cosine_lrs(lr: float, total: int) -> list[float]:
    """The reference's `cosine_lr` without warmup: lr at each of `total` steps."""
    return [float(0.5 * (1 + np.cos(np.pi * t / total)) * lr) for t in range(total)]


@contextmanager
def _threads(device: torch.device, work: int) -> Iterator[None]:
    """One intra-op thread for a small CPU fit: its kernels are microseconds long, and splitting them
    over threads costs more than it gains (measured 30x slower with 2 threads on a busy 2-core box)."""
    if device.type != "cpu" or work >= SMALL_STEP or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_probes(x: torch.Tensor, y: torch.Tensor, weight_decays: Sequence[float], n_classes: int, *,
                 lr: float, epochs: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One probe per weight decay, trained together (see `_train_probes`), on one thread when small."""
    with _threads(x.device, len(weight_decays) * x.shape[1] * n_classes):
        return _train_probes(x, y, weight_decays, n_classes, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)


@torch.no_grad()
def _train_probes(x: torch.Tensor, y: torch.Tensor, weight_decays: Sequence[float], n_classes: int, *,
                 lr: float, epochs: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One probe per weight decay, trained together: weights [m, d, C] and biases [m, C] on x's device.

    Every candidate starts from the same seeded init and sees the same minibatches (the reference
    reseeds per fit, so its fits differ only in the decay); per step: logits of all candidates in one
    batched matmul, the closed-form gradient of mean cross-entropy ((softmax - onehot) / B), then
    AdamW's update as `torch.optim.AdamW` computes it (decay `1 - lr wd` first, then the moments,
    bias corrections and step), with each candidate's decay factor on the device for every step.
    Weight and bias are one parameter [m, d + 1, C] over features with a ones column (the reference's
    AdamW decays both alike), so a step is two matmuls, a softmax and one AdamW update; each epoch's
    samples are gathered once in their order, so minibatches are views.
    """
    device = x.device
    n, d = x.shape
    m = len(weight_decays)
    gen = torch.Generator().manual_seed(int(seed))
    w0, b0 = init_linear(d, n_classes, gen)
    orders = epoch_orders(n, epochs, gen).to(device)
    steps = math.ceil(n / batch_size)
    lrs = cosine_lrs(lr, epochs * steps)
    # 1 - lr * wd in float64, then float32: the value torch's `param.mul_(1 - lr * wd)` multiplies by
    wd = torch.tensor(list(weight_decays), dtype=torch.float64)
    decay = (1 - torch.tensor(lrs, dtype=torch.float64)[:, None] * wd[None, :]).float().to(device)
    decays = decay.view(-1, m, 1, 1).unbind(0)
    param = torch.cat([w0.T, b0[None, :]]).to(device).expand(m, d + 1, n_classes).clone()
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    features = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=device)], dim=1)
    onehot = torch.nn.functional.one_hot(y.to(device), n_classes).to(x.dtype)
    beta1, beta2 = BETAS
    t = 0
    for epoch in range(epochs):
        xe, oe = features[orders[epoch]], onehot[orders[epoch]]
        for start in range(0, n, batch_size):
            xb, ob = xe[start:start + batch_size], oe[start:start + batch_size]
            grad_logits = torch.softmax(torch.matmul(xb, param), dim=-1).sub_(ob).div_(xb.shape[0])  # [m, B, C]
            grad = torch.matmul(xb.T, grad_logits)
            step = t + 1
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            step_size = lrs[t] / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            param.mul_(decays[t])
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(EPS)
            param.addcdiv_(exp_avg, denom, value=-step_size)
            t += 1
    return param[:, :d], param[:, d]


@torch.no_grad()
def top1_hits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """Per candidate, how many rows of x its probe ranks first on their class (`topk(1)`, as the
    reference's accuracy ranks), computed in chunks of rows."""
    m, _, c = weight.shape
    hits = torch.zeros(m, dtype=torch.long, device=x.device)
    rows = max(1, EVAL_CHUNK // max(1, m * c))
    y = y.to(x.device)
    for start in range(0, x.shape[0], rows):
        xb = x[start:start + rows]
        logits = torch.baddbmm(bias.unsqueeze(1), xb.expand(m, -1, -1), weight)
        hits += (logits.topk(1, dim=-1)[1].squeeze(-1) == y[start:start + rows]).sum(dim=1)
    return hits.tolist()


def search_plan(d: int, n_classes: int, device_type: str) -> str:
    """How to group the search's candidates into runs, by estimated cost per step (overhead per run
    plus work per candidate): `all` (the 97 in one run), `reach` (the 7 coarse points, then the up
    to 30 points the refinement can reach from their peak) or `steps` (each search step's new ones)."""
    o, k = OVERHEAD_ELEMS.get(device_type, OVERHEAD_ELEMS["cpu"])
    e = d * n_classes + k
    cost = {"all": o + len(WD_GRID) * e, "reach": 2 * o + (len(COARSE) + 2 * REACH) * e,
            "steps": (1 + len(SPANS)) * o + (len(COARSE) + 2 * len(SPANS)) * e}
    return min(cost, key=cost.__getitem__)


@dataclass
class SearchResult:
    best: int  # index into WD_GRID
    val_hits: dict[int, int]  # candidate index -> validation top-1 hits (-1: diverged)
    n_val: int
    runs: list[list[int]] = field(default_factory=list)  # the candidates of each batched run
    probes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def search_weight_decay(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, n_classes: int,
                        *, lr: float, epochs: int, batch_size: int, seed: int, plan: str | None = None) -> SearchResult:
    """The reference's search (7 coarse points, refinement at spans 8, 4, 2, 1, first best on validation
    top-1 wins, starting from index 0 at 0 hits) over fits computed in batched runs. A candidate whose
    fit diverged (non-finite weights) scores -1 and is never chosen."""
    plan = plan or search_plan(x.shape[1], n_classes, x.device.type)
    res = SearchResult(best=0, val_hits={}, n_val=len(y_val))

    def fit(idxs: Sequence[int]) -> None:
        new = [i for i in dict.fromkeys(idxs) if i not in res.val_hits]
        if not new:
            return
        w, b = train_probes(x, y, [WD_GRID[i] for i in new], n_classes, lr=lr, epochs=epochs, batch_size=batch_size,
                            seed=seed)
        finite = (torch.isfinite(w).flatten(1).all(1) & torch.isfinite(b).all(1)).tolist()
        hits = top1_hits(w, b, x_val, y_val)
        for j, i in enumerate(new):
            res.val_hits[i] = hits[j] if finite[j] else -1
            res.probes[i] = (w[j], b[j])
        res.runs.append(new)

    def peak(idxs: Sequence[int]) -> int:
        fit(idxs)
        best, best_hits = 0, 0
        for i in idxs:
            if best_hits < res.val_hits[i]:
                best, best_hits = i, res.val_hits[i]
        return best

    if plan == "all":
        fit(range(len(WD_GRID)))
    p = peak(COARSE)
    if plan == "reach":
        fit(range(max(p - REACH, 0), min(p + REACH, len(WD_GRID) - 1) + 1))
    for span in SPANS:
        p = peak([max(p - span, 0), p, min(p + span, len(WD_GRID) - 1)])
    if all(h < 0 for h in res.val_hits.values()):
        raise ProbeDiverged(f"every weight-decay candidate diverged (NaN/inf weights; lr {lr})")
    res.best = p
    return res


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def probe_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """lp_acc1, lp_acc5 (NaN unless the test labels reach 5, the reference's rule) and balanced accuracy."""
    n = len(target)
    k = 5 if int(target.max()) >= 5 else 1
    hits = logits.topk(k, 1, True, True)[1] == target.view(-1, 1)
    acc1 = float(hits[:, :1].sum().item()) / n
    acc5 = float(hits[:, :5].sum().item()) / n if k == 5 else float("nan")
    pred = logits.argmax(dim=1).numpy()
    return {"lp_acc1": acc1, "lp_acc5": acc5, "lp_mean_per_class_recall": mean_per_class_recall(pred, target.numpy())}


# ------------------------------------------------------------------------------------------------
# Features: one pass per checkpoint and split, shared by every probe of it
# ------------------------------------------------------------------------------------------------


def split_features(lm: LoadedModel, source: ImageSource, ctx: RunContext) -> torch.Tensor:
    """[N, d] float32 normalised image features of `source` on ctx.device, computed once per loaded
    checkpoint (kept on the LoadedModel, so 10-shot, 25-shot and full probes of a train split share
    one pass, and they go with the checkpoint)."""
    cache = lm.__dict__.setdefault("_probe_features", {})
    key = (source.fingerprint, len(source))
    if key not in cache:
        feats: torch.Tensor | None = None
        for index, out in encode_images(lm, source, {"image_features"}, ctx):
            f = out["image_features"]
            if feats is None:
                feats = torch.empty(len(source), f.shape[1], dtype=torch.float32, device=f.device)
            feats[int(index[0]):int(index[-1]) + 1] = f
        if feats is None:
            raise DataError(f"{source.name}: no images to train the probe on")
        cache[key] = feats
    return cache[key]


# (root, split) -> source, as the latest planning opened it (`open_source`, once per run, re-reads the
# folder so the hash sees edited files); every checkpoint's `prepare` then reuses it (ImageNet's train
# split is 1.28M files to list and stat)
_OPENED: dict[tuple[str, str], ImageSource] = {}


def _has_split(root: Path, split: str) -> bool:
    from evalkit.data.formats.hf import is_hf_folder

    if is_hf_folder(root):
        return True  # the reader names a missing split itself
    return (root / split).is_dir()


def open_split(root: Path | str, split: str, spec: TaskSpec, key: str, refresh: bool = False) -> ImageSource:
    """A train or validation split of the task's data, in whichever format the folder is; a folder
    without it is a TaskError naming the task file, the folder and the option."""
    from evalkit.data.open import open_classification

    name = str(root)
    if not refresh and (name, split) in _OPENED:
        return _OPENED[(name, split)]
    where = f"task {spec.name} ({spec.source or 'no task file'})"
    if not name.startswith("hf:") and not _has_split(Path(root), split):
        raise TaskError(f"{where}: the linear probe trains on split '{split}' ({key}), but {root} has no "
                        f"'{split}' folder (clip_benchmark's wds layout: {Path(root) / split}/nshards.txt; an image "
                        f"folder: {Path(root) / split}/<class>/*.jpg). Point --data-root at data with that split "
                        f"or set {key} in the task file.")
    try:
        source = open_classification(root, split=split, wds_split=split)
    except (KeyError, DataError) as e:
        raise TaskError(f"{where}: cannot open split '{split}' ({key}) of {root}: {e}") from None
    _OPENED[(name, split)] = source
    return source


def _class_name(source: ImageSource, c: int) -> str:
    names = source.classnames or source.meta.get("wnids")
    return f"'{names[c]}' (class {c})" if names and 0 <= c < len(names) else f"class {c}"


def _int_targets(source: ImageSource, what: str) -> np.ndarray:
    labels = np.asarray(list(source.targets))
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise DataError(f"{source.name}: the {what} split needs one class id (>= 0) per image for a linear probe.")
    return labels.astype(np.int64)


@dataclass
class ProbeData:
    """What one probe trains and validates on, as positions in the train (and val) sources."""

    train: ImageSource
    train_pos: list[int]  # positions in `train`, in the order the reference's dataset holds them
    val: ImageSource | None
    val_pos: list[int]
    n_classes: int
    train_labels: np.ndarray  # class id per image of `train`
    val_labels: np.ndarray | None  # ... of `val`


# resolved task hash -> its ProbeData: computed when planning validates the task, reused by every
# checkpoint (ImageNet's few-shot draw walks 1.28M labels)
_PROBE_DATA: dict[str, ProbeData] = {}


def probe_data(spec: TaskSpec, source: ImageSource) -> ProbeData:
    """Open the splits and apply val_proportion and fewshot_k; every refusal (a class below k, test
    classes the train split lacks) raises here, before any checkpoint is loaded."""
    if spec.is_resolved and spec.hash in _PROBE_DATA:
        return _PROBE_DATA[spec.hash]
    o = spec.options
    root = source.meta["probe_root"]
    where = f"task {spec.name} ({spec.source or 'no task file'})"
    train = open_split(root, str(o["train_split"]), spec, "train_split")
    labels = _int_targets(train, str(o["train_split"]))
    pos = list(range(len(train)))
    val, val_pos = None, []
    if o.get("val_split"):
        val = open_split(root, str(o["val_split"]), spec, "val_split")
        val_pos = list(range(len(val)))
    elif o.get("val_proportion") is not None:
        pos, val_pos = split_train_val(len(train), float(o["val_proportion"]), int(o["seed"]))
        if not pos or not val_pos:
            raise TaskError(f"{where}: val_proportion {o['val_proportion']} of {len(train)} train images leaves "
                            f"{len(pos)} to train and {len(val_pos)} to validate; choose a proportion that leaves both.")
        val = train
    k = int(o["fewshot_k"])
    counts = class_counts(labels[pos])
    if k > 0:
        c, have = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if have < k:
            after = " after val_proportion" if o.get("val_proportion") is not None else ""
            raise TaskError(f"{where}: fewshot_k {k}, but {_class_name(train, c)} has only {have} images in split "
                            f"'{o['train_split']}'{after} of {train.name}; lower fewshot_k to at most {have}.")
    n_classes = int(labels.max()) + 1
    test_labels = _int_targets(source, spec.split)
    if len(test_labels) and int(test_labels.max()) >= n_classes:
        raise DataError(f"{source.name}: test class ids go up to {int(test_labels.max())}, but the train split "
                        f"'{o['train_split']}' ({train.name}) only has ids up to {n_classes - 1}: not the same classes.")
    if val is not None and val is not train:
        vl = _int_targets(val, str(o["val_split"]))
        if len(vl) and int(vl.max()) >= n_classes:
            raise DataError(f"{val.name}: validation class ids go up to {int(vl.max())}, beyond the train split's "
                            f"{n_classes - 1}: not the same classes.")
    for other, what in ((source, spec.split), (val, o.get("val_split"))):
        if other is not None and other is not train and train.meta.get("wnids") and other.meta.get("wnids") \
                and list(train.meta["wnids"]) != list(other.meta["wnids"]):
            raise DataError(f"{other.name}: its class folders differ from the train split's ({train.name}), so class "
                            f"ids would not match; split '{what}' and '{o['train_split']}' need the same classes.")
    train_pos = [pos[i] for i in fewshot_select(labels[pos], k, int(o["seed"]))]
    val_labels = None if val is None else labels if val is train else _int_targets(val, str(o["val_split"]))
    data = ProbeData(train, train_pos, val, val_pos, n_classes, labels, val_labels)
    if spec.is_resolved:
        _PROBE_DATA[spec.hash] = data
    return data


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------


@register_protocol("linear_probe")
class LinearProbe(TaskRunner):
    """A linear probe trained per checkpoint in `prepare`, scored on the task's split as it streams by."""

    needs = "image_features"
    Options = LinearProbeOptions
    default_metrics: ClassVar[list[str]] = ["lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "weight_decay"]
    default_main_metric = "lp_acc1"
    eval_type = "probe"

    @classmethod
    def check_options(cls, spec: TaskSpec) -> None:
        o, where = spec.options, f"{spec.source or 'task ' + spec.name}"
        if o.get("val_split") and o.get("val_proportion") is not None:
            raise TaskError(f"{where}: val_split and val_proportion are exclusive (a validation split, or a share "
                            "of the train split); keep one.")
        p = o.get("val_proportion")
        if p is not None and not 0 < float(p) < 1:
            raise TaskError(f"{where}: val_proportion must lie strictly between 0 and 1 (the share of the train "
                            f"split held out to choose the weight decay), not {p}.")
        k = o.get("fewshot_k")
        if not isinstance(k, int) or (k < 1 and k != -1):
            raise TaskError(f"{where}: fewshot_k must be a positive number of images per class, or -1 for all, not {k!r}.")
        for key, low in (("epochs", 1), ("batch_size", 1)):
            if not isinstance(o.get(key), int) or o[key] < low:
                raise TaskError(f"{where}: {key} must be an integer >= {low}, not {o.get(key)!r}.")
        if not float(o.get("lr", 0)) > 0:
            raise TaskError(f"{where}: lr must be positive, not {o.get('lr')!r}.")
        for key in ("train_split", "val_split"):
            if o.get(key) and o[key] == spec.split:
                raise TaskError(f"{where}: {key} '{o[key]}' is the split the probe is scored on (split); "
                                "a probe is never scored on the images it was fitted to.")

    @classmethod
    def open_source(cls, root: Path | str, spec: TaskSpec) -> ImageSource:
        from evalkit.data.open import open_classification

        source = open_classification(root, split=spec.split)
        source.meta["probe_root"] = str(root)
        o = spec.options
        train = open_split(root, str(o["train_split"]), spec, "train_split", refresh=True)
        data: dict[str, Any] = {"train_fingerprint": train.fingerprint, "train_images": len(train)}
        if o.get("val_split"):
            val = open_split(root, str(o["val_split"]), spec, "val_split", refresh=True)
            data.update(val_fingerprint=val.fingerprint, val_images=len(val))
        source.meta["task_data"] = data  # the train (and val) images are part of what the number depends on
        return source

    @classmethod
    def validate(cls, spec: TaskSpec, source: ImageSource) -> None:
        probe_data(spec, source)

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        o = self.spec.options
        data = probe_data(self.spec, self.source)
        feats = split_features(lm, data.train, ctx)
        labels = torch.as_tensor(data.train_labels, device=feats.device)
        pos = torch.as_tensor(data.train_pos, device=feats.device)
        x, y = feats[pos], labels[pos]
        where = f"task {self.spec.name}"
        if not torch.isfinite(x).all():
            raise ProbeDiverged(f"{where}: the checkpoint's image features of split '{o['train_split']}' hold NaN/inf")
        kw = dict(lr=float(o["lr"]), epochs=int(o["epochs"]), batch_size=int(o["batch_size"]), seed=int(o["seed"]))
        self.extra: dict[str, Any] = {"n_train": len(pos), "fewshot_k": int(o["fewshot_k"])}
        if data.val is None:
            wd, (w, b) = 0.0, train_probes(x, y, [0.0], data.n_classes, **kw)
            w, b = w[0], b[0]
        else:
            vfeats = split_features(lm, data.val, ctx)
            vlabels = torch.as_tensor(data.val_labels, device=feats.device)
            vpos = torch.as_tensor(data.val_pos, device=feats.device)
            xv, yv = vfeats[vpos], vlabels[vpos]
            if not torch.isfinite(xv).all():
                raise ProbeDiverged(f"{where}: the checkpoint's validation image features hold NaN/inf")
            try:
                found = search_weight_decay(x, y, xv, yv, data.n_classes, **kw)
            except ProbeDiverged as e:
                raise ProbeDiverged(f"{where}: {e}") from None
            wd = WD_GRID[found.best]
            self.extra.update(n_val=len(vpos), search_runs=found.runs,
                              val_acc1={WD_GRID[i]: h / len(vpos) for i, h in sorted(found.val_hits.items())})
            if int(o["fewshot_k"]) < 0:  # full data: refit on train + val with the chosen decay
                w, b = train_probes(torch.cat([x, xv]), torch.cat([y, yv]), [wd], data.n_classes, **kw)
                w, b = w[0], b[0]
            else:  # few-shot: the reference refits on the few-shot set alone, which is the search's own fit
                w, b = found.probes[found.best]
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise ProbeDiverged(f"{where}: the probe diverged (NaN/inf weights after training with weight_decay "
                                f"{wd:g}, lr {o['lr']}); a lower lr or another checkpoint may train")
        self.weight_decay = wd
        self.extra["weight_decay"] = wd
        self.weight, self.bias = w, b
        self.logits = torch.empty(len(self.source), data.n_classes, dtype=torch.float32, device=ctx.device)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        self.logits[index.to(self.logits.device, non_blocking=True)] = torch.addmm(self.bias, features.float(),
                                                                                   self.weight)

    def result(self, log_samples: bool = False) -> TaskResult:
        logits = self.logits.cpu()
        target = torch.as_tensor(_int_targets(self.source, self.spec.split))
        metrics = {**probe_metrics(logits, target), "weight_decay": self.weight_decay}
        samples = None
        if log_samples:
            import pandas as pd

            k = min(5, logits.shape[1])
            scores, idx = logits.topk(k, 1, True, True)
            samples = pd.DataFrame({"sample": self.source.ids, "target": target.numpy(),
                                    "top_indices": idx.numpy().tolist(), "top_scores": scores.numpy().tolist()})
        return TaskResult(metrics=metrics, n_samples=len(target), samples=samples, extra=self.extra)
