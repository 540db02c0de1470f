"""Semantic-segmentation data: the ADEChallengeData2016 layout and Hugging Face `datasets` folders.

A segmentation source is an `ImageSource` whose targets name each image's annotation (the PNG path
in the ADE20K layout), with two helpers in `meta`: `open_mask(i)` (the label map as a PIL image)
and `image_size(i)` (the image's (w, h), read from its header only). Label maps are decoded
lazily and validated where they are read (`load_label_maps`), so a bad file is named, not skipped.

Label convention (ADE20K, mmsegmentation's `reduce_zero_label=True`): PNG value 0 = "other"
(ignored), value L in 1..C = class L-1.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evalkit.data.formats import Format, register_format
from evalkit.data.formats.folder import PathOpener
from evalkit.data.formats.hf import is_hf_folder
from evalkit.data.open import layouts, read_detected
from evalkit.data.preprocess import PreprocessCfg, pixel_transform
from evalkit.data.sources import DataError, ImageSource, fingerprint_files
from evalkit.errors import UsageError

IGNORE_LABEL = 255  # reduced label maps are uint8: 0..C-1 = classes, 255 = ignore
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SPLIT_ALIASES = {
    "training": ("training", "train"), "train": ("training", "train"),
    "validation": ("validation", "val"), "val": ("validation", "val"),
}
ANNOTATION_COLUMNS = ("annotation", "segmentation", "semantic_map", "label", "mask", "seg", "gt")
HF_IMAGE_COLUMNS = ("image", "img", "jpg", "pixel_values")
ADE_LAYOUT = "the ADEChallengeData2016 layout (images/{training,validation}/*.jpg, annotations/{training,validation}/*.png)"


def _aliases(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def ade_base(root: Path) -> Path | None:
    """The folder holding `images/` and `annotations/`: `root` itself or `root/ADEChallengeData2016`."""
    for base in (root, root / "ADEChallengeData2016"):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            return base
    return None


def object_info_names(base: Path) -> list[str] | None:
    """Names from `objectInfo150.csv` (column Name, in Idx order), if the folder has one."""
    path = base / "objectInfo150.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        rows.sort(key=lambda r: int(r["Idx"]))
        return [r["Name"].strip() for r in rows]
    except (KeyError, ValueError):
        raise DataError(f"{path}: expected columns Idx and Name (the ADE20K objectInfo150.csv format).") from None


def read_ade20k(root: Path, split: str = "validation") -> ImageSource:
    """Every image of `images/<split>/` with its `annotations/<split>/<stem>.png`; a missing one is named."""
    base = ade_base(root)
    if base is None:
        raise DataError(f"{root}: no images/ and annotations/ folders. Expected {ADE_LAYOUT}.")
    sub = next((s for s in _aliases(split) if (base / "images" / s).is_dir()), None)
    if sub is None:
        raise DataError(f"{base / 'images'}: no split folder {' or '.join(_aliases(split))}. Expected {ADE_LAYOUT}.")
    image_dir, ann_dir = base / "images" / sub, base / "annotations" / sub
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTS)}).")
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir}: folder missing, so the {len(images)} images in {image_dir} have no label PNGs. "
                        f"Expected {ADE_LAYOUT}.")
    masks = [ann_dir / f"{p.stem}.png" for p in images]
    missing = [(m, p) for m, p in zip(masks, images) if not m.is_file()]
    if missing:
        m, p = missing[0]
        raise DataError(f"{m}: missing annotation for image {p}; {len(missing)} of {len(images)} images in {image_dir} "
                        f"lack their label PNG in {ann_dir}. Every image needs one: {ADE_LAYOUT}.")
    return ImageSource(
        name=str(base / "images" / sub),
        ids=[str(p) for p in images],
        opener=PathOpener(images),
        targets=[str(m) for m in masks],
        fingerprint=fingerprint_files(images + masks, extra="ade20k"),
        classnames=object_info_names(base),
        meta={"format": "ade20k", "root": str(root), "split": sub,
              "open_mask": lambda i: Image.open(masks[i]), "image_size": lambda i: Image.open(images[i]).size},
    )


def read_hf_segmentation(root: str, split: str = "validation") -> ImageSource:
    """A `datasets` folder (save_to_disk or parquet) with an image column and an annotation column."""
    from evalkit.data.formats.hf import ColumnOpener, _load

    ds, errors = None, []
    for s in _aliases(split):
        try:
            ds = _load(root, s)
            split = s
            break
        except (DataError, KeyError, ValueError, FileNotFoundError) as e:
            errors.append(f"{s}: {e}")
    if ds is None:
        raise DataError(f"{root}: no split {' or '.join(_aliases(split))} ({'; '.join(errors)}).")
    cols = set(ds.column_names)
    img_col = next((c for c in HF_IMAGE_COLUMNS if c in cols), None)
    ann_col = next((c for c in ANNOTATION_COLUMNS if c in cols), None)
    if img_col is None or ann_col is None:
        raise DataError(f"{root} [{split}]: columns {sorted(cols)}; need an image column {HF_IMAGE_COLUMNS} "
                        f"and an annotation column {ANNOTATION_COLUMNS}.")
    images_only, masks_only = ds.select_columns([img_col]), ds.select_columns([ann_col])
    name = f"{root}[{split}]"

    def open_mask(i: int) -> Image.Image:
        m = masks_only[i][ann_col]
        if m is None:
            raise DataError(f"{name}#{i}: missing annotation (column '{ann_col}' is empty).")
        return m if isinstance(m, Image.Image) else Image.fromarray(np.asarray(m))

    fp = getattr(ds, "_fingerprint", None) or hashlib.sha1(f"{root}:{split}:{len(ds)}".encode()).hexdigest()
    return ImageSource(
        name=name,
        ids=[f"{name}#{i}" for i in range(len(ds))],
        opener=ColumnOpener(images_only, img_col),
        targets=[f"{name}#{i}:{ann_col}" for i in range(len(ds))],
        fingerprint=str(fp)[:16],
        meta={"format": "hf", "root": root, "split": split, "open_mask": open_mask,
              "image_size": lambda i: images_only[i][img_col].size},
    )


def open_segmentation(root: Path | str, split: str = "validation") -> ImageSource:
    """A segmentation split from `root`: the first registered segmentation format (by priority) that
    recognises the folder."""
    if isinstance(root, str) and root.startswith("hf:"):
        return read_hf_segmentation(root, split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {layouts('segmentation')}.")
    source = read_detected("segmentation", root, split)
    if source is not None:
        return source
    for base in (root, root / "ADEChallengeData2016"):
        have = [d for d in ("images", "annotations") if (base / d).is_dir()]
        if len(have) == 1:
            lacking = "annotations" if have == ["images"] else "images"
            raise DataError(f"{base}: has {have[0]}/ but no {lacking}/ folder. Expected {ADE_LAYOUT}: every "
                            "images/<split>/X.jpg needs its label map annotations/<split>/X.png.")
    raise DataError(f"{root}: unrecognised layout. Expected {layouts('segmentation')}.")


register_format(Format("ade20k", "segmentation", lambda root, split, _: ade_base(root) is not None,
                       lambda root, split, _: read_ade20k(root, split), ADE_LAYOUT, priority=20))
register_format(Format("hf-segmentation", "segmentation", lambda root, split, _: is_hf_folder(root),
                       lambda root, split, _: read_hf_segmentation(str(root), split),
                       "a Hugging Face datasets folder (save_to_disk or parquet) with image and annotation columns",
                       priority=10))


# ------------------------------------------------------------------------------------------ label maps


def label_transform(cfg: PreprocessCfg) -> Callable[[Image.Image], torch.Tensor]:
    """Label map -> uint8 [1, S, S] with exactly the geometry of the image pixels (`pixel_transform`).

    The eval transform's resize/crop/pad steps are reused with NEAREST interpolation, so every label
    lands on the pixel its image pixel lands on; padding (resize_mode `longest`) is 0, i.e. ignored.
    """
    import copy

    from torchvision.transforms import Compose, InterpolationMode

    steps = []
    for t in pixel_transform(cfg).transforms:
        kind = type(t).__name__
        if kind in ("MaybeConvertMode", "function"):
            continue
        if kind not in ("Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad", "PILToTensor"):
            raise NotImplementedError(f"label geometry for open_clip eval step {kind} is not implemented")
        t = copy.copy(t)
        if hasattr(t, "interpolation"):
            t.interpolation = InterpolationMode.NEAREST
        if hasattr(t, "fill"):
            t.fill = 0
        steps.append(t)
    return Compose(steps)


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """ADE20K convention: PNG value L (1..C) is class L-1; 0 ("other") becomes `IGNORE_LABEL`."""
    out = raw.astype(np.int16) - 1
    out[out < 0] = IGNORE_LABEL
    return out.astype(np.uint8)


def _load_one(source: ImageSource, i: int, num_classes: int, tf: Callable[[Image.Image], torch.Tensor]) -> np.ndarray:
    """Reduced label map of image `i` in crop geometry, validated (size, channels, label range)."""
    where = source.targets[i]
    try:
        mask = source.meta["open_mask"](i)
        mask.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: cannot read annotation ({type(e).__name__}: {e}).") from None
    size = source.meta["image_size"](i)
    if mask.size != tuple(size):
        raise DataError(f"{where}: annotation is {mask.size[0]}x{mask.size[1]} but its image {source.ids[i]} is "
                        f"{size[0]}x{size[1]}; label maps must match their image pixel for pixel.")
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"{where}: annotation has shape {arr.shape} (mode {mask.mode}); expected a single-channel "
                        "label PNG (0 = ignore, 1..C = classes).")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > num_classes:
        raise DataError(f"{where}: label values {lo}..{hi} outside 0..{num_classes} "
                        f"(0 = ignore, 1..{num_classes} = the task's {num_classes} classes).")
    return reduce_zero_label(tf(Image.fromarray(arr.astype(np.uint8)))[0].numpy())


_LABEL_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_LABEL_CACHE_ENTRIES = 4  # val + train of one task at one geometry, twice over; ~100 MB each for ADE20K


def load_label_maps(source: ImageSource, cfg: PreprocessCfg, num_classes: int,
                    indices: list[int] | None = None) -> np.ndarray:
    """uint8 [n, S, S] classes (255 = ignore) of `indices` (default: all), in the images' crop geometry.

    Kept in memory across checkpoints of one process (keyed by the files' fingerprint and the pixel
    geometry), so a grid decodes each annotation once per geometry, like the image cache does.
    """
    if num_classes > 254:
        raise UsageError(f"{num_classes} classes do not fit uint8 label maps (at most 254)")
    idx = list(range(len(source))) if indices is None else list(indices)
    key = hashlib.sha1(f"{source.fingerprint}|{len(source)}|{cfg.pixel_key}|{num_classes}|{idx}".encode()).hexdigest()
    if key in _LABEL_CACHE:
        _LABEL_CACHE.move_to_end(key)
        return _LABEL_CACHE[key]
    tf = label_transform(cfg)
    out = np.empty((len(idx), cfg.size, cfg.size), dtype=np.uint8)
    # threads overlap PNG decoding (PIL releases the GIL); `datasets` rows are read from one thread
    workers = 1 if source.meta.get("format") == "hf" else min(8, os.cpu_count() or 1)

    def work(j: int) -> None:
        out[j] = _load_one(source, idx[j], num_classes, tf)

    if workers > 1 and len(idx) > 16:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(idx))))  # re-raises the first DataError
    else:
        for j in range(len(idx)):
            work(j)
    _LABEL_CACHE[key] = out
    while len(_LABEL_CACHE) > _LABEL_CACHE_ENTRIES:
        _LABEL_CACHE.popitem(last=False)
    return out
