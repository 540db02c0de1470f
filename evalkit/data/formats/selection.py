"""Caption-selection data (SugarCrepe, Winoground): instances of I images and C captions, where image i
belongs with caption i for i < min(I, C).

The images go through the engine's one image path like any other dataset: the `ImageSource`'s items
are the distinct images of all instances, in order of first appearance (instance by instance, image by
image), and its `targets` are the instances (`SelectionInstance`), each holding the indices of its
images in that list and its captions. An image two instances share is decoded and encoded once.

Layouts (detected from the folder; `subset` picks a SugarCrepe file):

- **SugarCrepe** as clip_benchmark reads it: `<root>/val2017/<filename>` (COCO val2017) and
  `<root>/<subset>.json` = `{"<idx>": {"filename", "caption", "negative_caption"}, ...}`; one image and
  the captions `[caption, negative_caption]` per item, items in the file's key order (clip_benchmark
  keeps `list(ann.keys())`; keys need not be contiguous).
- **Winoground, original release**: `<root>/examples.jsonl` (one JSON object per line with `image_0`,
  `image_1` (file names without extension, `.png` appended as the release's loader does), `caption_0`,
  `caption_1`, `id`) and the images in `<root>/images/`; also `<root>/data/examples.jsonl` +
  `<root>/data/images/` (a clone of the hub repository with `data/images.zip` extracted).
- **Winoground, Hugging Face `datasets`** (`facebook/winoground`): a `save_to_disk` folder or parquet
  files with columns `image_0`, `image_1`, `caption_0`, `caption_1`.

Both Winoground layouts take any number of `image_K` / `caption_K` fields (K = 0, 1, ...), so other
datasets of the same shape read the same way. A missing field, a caption that is not a string, a
missing image file or an empty file is a `DataError` naming the file and the item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.data.formats.folder import PathOpener
from evalkit.data.formats.hf import is_hf_folder
from evalkit.data.sources import DataError, ImageSource, fingerprint_files, open_bytes

SUGAR_CREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGAR_CREPE_FIELDS = ("filename", "caption", "negative_caption")
WINOGROUND_IMAGE_EXT = ".png"  # the release's loading script appends it to `image_K`
SELECTION_LAYOUTS = (
    "SugarCrepe (<root>/val2017/ + <root>/<subset>.json, with the task option subset:), Winoground's release "
    "(<root>/examples.jsonl + <root>/images/), or a Hugging Face datasets folder (save_to_disk or parquet) "
    "with columns image_0, image_1, ..., caption_0, caption_1, ..."
)
_FIELD = re.compile(r"^(image|caption)_(\d+)$")


@dataclass(frozen=True)
class SelectionInstance:
    """One instance: `images[i]` indexes the source's images; image i belongs with caption i."""

    key: str  # the instance's id in its file (SugarCrepe's "<idx>", Winoground's `id`, else the row)
    images: tuple[int, ...]
    captions: tuple[str, ...]


class _Images:
    """Distinct images in order of first appearance, each instance's images as indices into them."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.items: list[Any] = []

    def add(self, item: Any) -> int:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)
        return self.index[item]


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}).") from None


def _selection_source(name: str, ids: list[str], opener: Any, instances: list[SelectionInstance], fingerprint: str,
                      fmt: str, annotation: str) -> ImageSource:
    return ImageSource(name=name, ids=ids, opener=opener, targets=instances, fingerprint=fingerprint,
                       meta={"format": fmt, "annotation": annotation, "dataset_type": "caption_selection",
                             "task_data": {"n_instances": len(instances)}})


# -- SugarCrepe ---------------------------------------------------------------------------------------

def sugar_crepe_files(root: Path) -> list[str]:
    """The subsets whose JSON files `root` holds (the 7 known ones first, then any other *.json)."""
    found = {p.stem for p in root.glob("*.json") if p.is_file()} if root.is_dir() else set()
    return [s for s in SUGAR_CREPE_SUBSETS if s in found] + sorted(found - set(SUGAR_CREPE_SUBSETS))


def read_sugar_crepe(root: Path, subset: str) -> ImageSource:
    """clip_benchmark's SugarCrepe layout: one image, captions `[caption, negative_caption]` per item."""
    path = root / f"{subset}.json"
    image_dir = root / "val2017"
    if not path.is_file():
        have = sugar_crepe_files(root)
        listed = f"it holds {', '.join(f'{s}.json' for s in have)}" if have else "it holds no <subset>.json"
        raise DataError(f"{path}: not found ({listed}). The SugarCrepe layout is <root>/val2017/ + <root>/<subset>.json "
                        f"for the subsets {', '.join(SUGAR_CREPE_SUBSETS)} (github.com/RAIVNLab/sugar-crepe data/).")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder missing (SugarCrepe's {path.name} names COCO val2017 images, "
                        "which clip_benchmark's layout keeps in <root>/val2017/).")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object {{\"<idx>\": {{\"filename\", \"caption\", \"negative_caption\"}}}}, "
                        f"not a {type(data).__name__}.")
    if not data:
        raise DataError(f"{path}: no items.")
    images = _Images()
    instances = []
    for key, item in data.items():
        if not isinstance(item, dict) or any(f not in item for f in SUGAR_CREPE_FIELDS):
            missing = [f for f in SUGAR_CREPE_FIELDS if not isinstance(item, dict) or f not in item]
            raise DataError(f"{path}: item {key!r} lacks {', '.join(missing)} (each item needs "
                            f"{', '.join(SUGAR_CREPE_FIELDS)}).")
        for f in SUGAR_CREPE_FIELDS:
            if not isinstance(item[f], str):
                raise DataError(f"{path}: item {key!r}: '{f}' must be a string, not {type(item[f]).__name__}.")
        file = image_dir / item["filename"]
        if file not in images.index and not file.is_file():
            raise DataError(f"{path}: item {key!r} names {item['filename']}, which is not in {image_dir}.")
        instances.append(SelectionInstance(str(key), (images.add(file),), (item["caption"], item["negative_caption"])))
    files: list[Path] = images.items
    return _selection_source(str(path), [str(f) for f in files], PathOpener(files), instances,
                             fingerprint_files([path, *files], extra=f"sugar_crepe:{subset}"), "sugar_crepe", str(path))


# -- Winoground and same-shaped data ------------------------------------------------------------------

def _fields(names: Sequence[str]) -> tuple[int, int]:
    """(I, C): how many consecutive `image_K` and `caption_K` fields (from K = 0) `names` holds."""
    have = set(names)
    n_img = next(k for k in range(len(have) + 1) if f"image_{k}" not in have)
    n_cap = next(k for k in range(len(have) + 1) if f"caption_{k}" not in have)
    return n_img, n_cap


def winoground_annotation(root: Path) -> Path | None:
    for base in (root, root / "data"):
        if (base / "examples.jsonl").is_file():
            return base / "examples.jsonl"
    return None


def _image_file(image_dir: Path, name: str) -> Path:
    """The release names images without extension (`ex_0_img_0`); its loader appends `.png`."""
    file = image_dir / name
    return file if file.suffix and file.is_file() else image_dir / f"{name}{WINOGROUND_IMAGE_EXT}"


def read_winoground_jsonl(root: Path, annotation: Path | None = None) -> ImageSource:
    """Winoground's release: `examples.jsonl` + `images/<image_K>.png`, instances in line order."""
    path = annotation or winoground_annotation(root)
    if path is None:
        raise DataError(f"{root}: no examples.jsonl (nor data/examples.jsonl).")
    image_dir = path.parent / "images"
    if not image_dir.is_dir():
        zipped = " (extract images.zip there)" if (path.parent / "images.zip").is_file() else ""
        raise DataError(f"{image_dir}: image folder missing{zipped}; Winoground's release keeps the images of "
                        f"{path.name} in images/ beside it.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e}).") from None
    images = _Images()
    instances = []
    shape: tuple[int, int] | None = None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
        if not isinstance(ex, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with image_0, image_1, caption_0, caption_1.")
        n_img, n_cap = _fields(list(ex))
        if n_img == 0 or n_cap == 0:
            missing = [f for f in ("image_0", "caption_0") if f not in ex]
            raise DataError(f"{path}:{lineno}: item lacks {', '.join(missing)} (each line needs image_0, image_1, "
                            "caption_0, caption_1, ...).")
        if shape is not None and (n_img, n_cap) != shape:
            raise DataError(f"{path}:{lineno}: {n_img} images and {n_cap} captions, but the lines before have "
                            f"{shape[0]} and {shape[1]} (image_0..image_{shape[0] - 1}, caption_0..caption_{shape[1] - 1}).")
        shape = (n_img, n_cap)
        key = str(ex.get("id", lineno - 1))
        for f in [*(f"image_{k}" for k in range(n_img)), *(f"caption_{k}" for k in range(n_cap))]:
            if not isinstance(ex[f], str):
                raise DataError(f"{path}:{lineno}: item {key!r}: '{f}' must be a string, not {type(ex[f]).__name__}.")
        idx = []
        for k in range(n_img):
            file = _image_file(image_dir, ex[f"image_{k}"])
            if file not in images.index and not file.is_file():
                raise DataError(f"{path}:{lineno}: item {key!r} names image {ex[f'image_{k}']!r}, which is not in "
                                f"{image_dir} (looked for {file.name}).")
            idx.append(images.add(file))
        instances.append(SelectionInstance(key, tuple(idx), tuple(ex[f"caption_{k}"] for k in range(n_cap))))
    if not instances:
        raise DataError(f"{path}: no items.")
    files: list[Path] = images.items
    return _selection_source(str(path), [str(f) for f in files], PathOpener(files), instances,
                             fingerprint_files([path, *files], extra="winoground"), "winoground", str(path))


class CellOpener:
    """Image `i` = column `columns[i]` of row `rows[i]`; each column is read from a one-column view of the
    dataset, so opening `image_0` never decodes `image_1` too. Picklable for decode workers (a
    `datasets.Dataset` pickles by reference to its memory-mapped files)."""

    def __init__(self, ds: Any, columns: list[str], cells: list[tuple[int, int]]) -> None:
        self.ds, self.columns, self.cells = ds, columns, cells
        self.views: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"ds": self.ds, "columns": self.columns, "cells": self.cells, "views": {}}

    def __call__(self, i: int):
        row, col = self.cells[i]
        if col not in self.views:
            self.views[col] = self.ds.select_columns([self.columns[col]])
        value = self.views[col][row][self.columns[col]]
        if isinstance(value, dict) and value.get("bytes") is not None:  # parquet without datasets' features
            return open_bytes(value["bytes"])
        if isinstance(value, (bytes, bytearray)):
            return open_bytes(bytes(value))
        if value is None or not hasattr(value, "load"):
            raise DataError(f"row {row}: '{self.columns[col]}' holds no image ({type(value).__name__}).")
        return value


def _hf_fingerprint(root: str, split: str, ds: Any) -> str:
    """A local folder is identified by its files (names, sizes, times), as every other reader's data."""
    path = Path(root)
    if not root.startswith("hf:") and path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".arrow", ".parquet", ".json"))
        if files:
            return fingerprint_files(files, extra=f"hf-selection:{split}")
    return str(getattr(ds, "_fingerprint", None) or f"{root}:{split}:{len(ds)}")[:16]


def read_hf_selection(root: str, split: str = "test") -> ImageSource:
    """A Hugging Face `datasets` copy (save_to_disk folder, parquet files, or `hf:NAME`) with columns
    `image_0..`, `caption_0..` (facebook/winoground's), instances in row order."""
    from evalkit.data.formats.hf import _load

    try:
        ds = _load(root, split)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{root}: cannot load split '{split}' ({type(e).__name__}: {e}).") from None
    cols = list(ds.column_names)
    n_img, n_cap = _fields(cols)
    if n_img == 0 or n_cap == 0:
        raise DataError(f"{root} [{split}]: columns {sorted(cols)}; caption selection needs image_0, image_1, ... and "
                        "caption_0, caption_1, ... (facebook/winoground's columns).")
    if len(ds) == 0:
        raise DataError(f"{root} [{split}]: no rows.")
    caption_cols = [list(ds[f"caption_{k}"]) for k in range(n_cap)]
    keys = list(ds["id"]) if "id" in cols else list(range(len(ds)))
    instances = []
    cells: list[tuple[int, int]] = []
    for row in range(len(ds)):
        caps = []
        for k, column in enumerate(caption_cols):
            cap = column[row]
            if not isinstance(cap, str):
                raise DataError(f"{root} [{split}]: row {row} (id {keys[row]!r}): 'caption_{k}' must be a string, "
                                f"not {type(cap).__name__}.")
            caps.append(cap)
        first = len(cells)
        cells += [(row, k) for k in range(n_img)]
        instances.append(SelectionInstance(str(keys[row]), tuple(range(first, first + n_img)), tuple(caps)))
    ids = [f"{root}[{split}]#{row}/image_{k}" for row, k in cells]
    opener = CellOpener(ds, [f"image_{k}" for k in range(n_img)], cells)
    return _selection_source(f"{root}[{split}] (caption selection)", ids, opener, instances,
                             _hf_fingerprint(root, split, ds), "hf", root)


def open_selection(root: Path | str, split: str = "test", subset: str | None = None) -> ImageSource:
    """A caption-selection set from `root`, layout detected from the folder (`subset`: a SugarCrepe file)."""
    if isinstance(root, str) and root.startswith("hf:"):
        return read_hf_selection(root, split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {SELECTION_LAYOUTS}.")
    if subset is not None:
        return read_sugar_crepe(root, subset)
    if winoground_annotation(root) is not None:
        return read_winoground_jsonl(root)
    if is_hf_folder(root):
        return read_hf_selection(str(root), split)
    if (root / "val2017").is_dir() or sugar_crepe_files(root):
        raise DataError(f"{root}: a SugarCrepe folder, but the task names no subset: set `subset:` to one of "
                        f"{', '.join(sugar_crepe_files(root) or SUGAR_CREPE_SUBSETS)}.")
    raise DataError(f"{root}: unrecognised layout. Expected {SELECTION_LAYOUTS}.")
