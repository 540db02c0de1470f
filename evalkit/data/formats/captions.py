"""Image-caption retrieval data: clip_benchmark's local COCO and Flickr layouts, plus wds and HF folders.

Images and captions come out in exactly the order clip_benchmark produces them, so recalls can be
compared sample for sample:

- COCO (`mscoco_captions`): `<root>/coco_<split>_karpathy.json` (COCO-captions format, read with
  pycocotools) and images under `<root>/val2014/` (`<root>/train2014/` for split `train`), joined
  with each image's `file_name`. Images in sorted-id order; an image's captions in annotation order
  (torchvision's `CocoCaptions`).
- Flickr (`flickr30k`, `flickr8k`): `<root>/flickr30k_<split>_karpathy.txt`, a header line then
  `IMAGE.jpg,CAPTION` lines, images directly in `<root>/`. Images in order of first appearance
  (clip_benchmark's `Flickr`); each line is stripped, the caption is everything after `.jpg,`.
- clip_benchmark wds folders with `dataset_type.txt` = `retrieval` (one caption per line in `.txt`).
- Hugging Face `datasets` folders with a `captions`/`caption`/`sentences`/`text` column.

Rules: every caption is kept as written, empty ones included (tokenized as clip_benchmark tokenizes
them: start and end token only). An image without any caption, an annotation naming an image that is
not there, and a malformed annotation file raise `DataError` naming the file and the line or entry,
because clip_benchmark would silently count such an image as a miss (0/0 recall) or crash later.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.data.formats import Format, register_format
from evalkit.data.formats.folder import PathOpener
from evalkit.data.formats.hf import is_hf_folder, read_hf
from evalkit.data.formats.wds import dataset_type, is_wds, read_wds
from evalkit.data.open import layouts, read_detected
from evalkit.data.sources import DataError, ImageSource, fingerprint_files

FLICKR_NAMES = ("flickr30k", "flickr8k")


def coco_image_dir(root: Path, split: str) -> Path:
    """Where clip_benchmark looks for COCO images of `split` (the Karpathy val/test images are in val2014)."""
    return root / ("train2014" if split == "train" else "val2014")


def _where(kind: str, i: int, entry: Any) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: expected COCO-captions JSON, an object with lists 'images' and 'annotations'.")
    return data


def _check_coco(path: Path, data: dict[str, Any], image_dir: Path) -> None:
    """Entry-level validation, so that problems are named before pycocotools (or a decode) trips on them."""
    image_ids: dict[Any, int] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: {_where('images', i, img)} needs an 'id' and a string 'file_name'.")
        if not isinstance(img["id"], (int, str)) or isinstance(img["id"], bool):
            raise DataError(f"{path}: {_where('images', i, img)}: 'id' must be an integer or a string.")
        if img["id"] in image_ids:
            raise DataError(f"{path}: {_where('images', i, img)} repeats the id of images[{image_ids[img['id']]}].")
        image_ids[img["id"]] = i
    if len({type(k) for k in image_ids}) > 1:
        raise DataError(f"{path}: image ids mix integers and strings, so their order is undefined.")
    ann_ids: set[Any] = set()
    n_caps = dict.fromkeys(image_ids, 0)
    for i, ann in enumerate(data["annotations"]):
        where = _where("annotations", i, ann)
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: {where} needs 'id', 'image_id' and 'caption'.")
        if not isinstance(ann["caption"], str):
            raise DataError(f"{path}: {where}: 'caption' must be a string, not {type(ann['caption']).__name__}.")
        if ann["id"] in ann_ids:
            raise DataError(f"{path}: {where} repeats an annotation id (pycocotools would keep only one of them).")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in n_caps:
            raise DataError(f"{path}: {where} names image_id {ann['image_id']!r}, which is not among the 'images'.")
        n_caps[ann["image_id"]] += 1
    for img_id, n in n_caps.items():
        i = image_ids[img_id]
        img = data["images"][i]
        if n == 0:
            raise DataError(f"{path}: {_where('images', i, img)} ({img['file_name']}) has no caption. "
                            "Remove the image or add its captions.")
        if not (image_dir / img["file_name"]).is_file():
            raise DataError(f"{path}: {_where('images', i, img)} names {img['file_name']}, "
                            f"which is not in {image_dir}.")


def read_coco_captions(root: Path, split: str = "test", annotation: Path | None = None) -> ImageSource:
    """clip_benchmark's `mscoco_captions` layout, ordered as torchvision's `CocoCaptions` orders it."""
    from pycocotools.coco import COCO

    path = annotation or root / f"coco_{split}_karpathy.json"
    image_dir = coco_image_dir(root, split)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder missing (clip_benchmark's COCO layout keeps the "
                        f"{split} images of {path.name} there).")
    data = _load_json(path)
    _check_coco(path, data, image_dir)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    image_ids = sorted(coco.imgs)
    files = [image_dir / coco.imgs[i]["file_name"] for i in image_ids]
    captions = [[a["caption"] for a in coco.loadAnns(coco.getAnnIds(i))] for i in image_ids]
    return ImageSource(
        name=str(root), ids=[str(f) for f in files], opener=PathOpener(files), targets=captions,
        fingerprint=fingerprint_files([path, *files], extra=f"coco:{split}"),
        meta={"format": "coco", "annotation": str(path), "dataset_type": "retrieval"},
    )


def _flickr_annotation(root: Path, split: str) -> Path | None:
    for name in FLICKR_NAMES:
        if (root / f"{name}_{split}_karpathy.txt").is_file():
            return root / f"{name}_{split}_karpathy.txt"
    found = sorted(root.glob(f"*_{split}_karpathy.txt"))
    return found[0] if found else None


def read_flickr_captions(root: Path, split: str = "test", annotation: Path | None = None) -> ImageSource:
    """clip_benchmark's `flickr30k`/`flickr8k` layout, ordered as its `Flickr` dataset orders it."""
    path = annotation or _flickr_annotation(root, split)
    if path is None or not path.is_file():
        raise DataError(f"{root}: no {FLICKR_NAMES[0]}_{split}_karpathy.txt (clip_benchmark's Flickr layout).")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e}).") from None
    if not lines:
        raise DataError(f"{path}: empty; expected a header line then IMAGE.jpg,CAPTION lines.")
    if ".jpg," in lines[0]:
        raise DataError(f"{path}:1: the first line is a header ('image,caption') that is skipped, but this one "
                        f"is a caption ({lines[0][:60]!r}). Add the header line.")
    data: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(".jpg,")  # as clip_benchmark splits: captions may contain commas
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'IMAGE.jpg,CAPTION' with '.jpg,' exactly once: {line[:80]!r}.")
        img = parts[0] + ".jpg"
        data.setdefault(img, []).append(parts[1])
        first_line.setdefault(img, lineno)
    if not data:
        raise DataError(f"{path}: no caption lines after the header.")
    names = list(data)
    files = [root / n for n in names]
    for name, f in zip(names, files, strict=True):
        if not f.is_file():
            raise DataError(f"{path}:{first_line[name]}: image {name} is not in {root}.")
    return ImageSource(
        name=str(root), ids=[str(f) for f in files], opener=PathOpener(files),
        targets=[data[n] for n in names], fingerprint=fingerprint_files([path, *files], extra=f"flickr:{split}"),
        meta={"format": "flickr", "annotation": str(path), "dataset_type": "retrieval"},
    )


def check_captions(source: ImageSource) -> ImageSource:
    """Every image has at least one caption, and captions are strings (wds and HF sources)."""
    targets: Sequence[Any] = source.targets
    for i, caps in enumerate(targets):
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataError(f"{source.ids[i]}: captions must be a list of strings, not {caps!r:.80}.")
        if not caps:
            raise DataError(f"{source.ids[i]}: image has no caption. Remove the sample or add its captions.")
    return source


def open_retrieval(root: Path | str, split: str = "test", wds_split: str = "test",
                   annotation: str | Path | None = None) -> ImageSource:
    """A retrieval split from `root`: with `annotation`, that COCO JSON or Flickr txt; else the first
    registered retrieval format (by priority) that recognises the folder."""
    if isinstance(root, str) and root.startswith("hf:"):
        return check_captions(read_hf(root, split, kind="retrieval"))
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {layouts('retrieval')}.")
    if annotation is not None:
        ann = Path(annotation)
        ann = ann if ann.is_absolute() else root / ann
        if not ann.is_file():
            raise DataError(f"{ann}: annotation file not found.")
        if ann.suffix == ".json":
            return read_coco_captions(root, split, ann)
        return read_flickr_captions(root, split, ann)
    source = read_detected("retrieval", root, split, wds_split)
    if source is not None:
        return source
    missing = _missing_annotation(root, split)
    if missing:
        raise DataError(missing)
    raise DataError(f"{root}: unrecognised layout for split '{split}'. Expected {layouts('retrieval')}.")


def _read_wds_retrieval(root: Path, split: str, wds_split: str) -> ImageSource:
    s = split if is_wds(root, split) else wds_split
    kind = dataset_type(root)
    if kind != "retrieval":
        said = (f"{root / 'dataset_type.txt'}: says '{kind}'" if (root / "dataset_type.txt").is_file()
                else f"{root}: no dataset_type.txt, so a '{kind}' webdataset (clip_benchmark's default)")
        raise DataError(f"{said}, but this task needs a retrieval folder: dataset_type.txt = retrieval and "
                        "<key>.txt captions (one per line) next to each image.")
    return check_captions(read_wds(root, s))


def _missing_annotation(root: Path, split: str) -> str | None:
    """A message for a COCO or Flickr image folder whose annotation file for `split` is not there."""
    others = sorted(p.name for p in root.glob("*_karpathy.*") if p.is_file())
    found = f" (annotation files here: {', '.join(others)}; is --data-root or the task's split wrong?)" if others else ""
    image_dir = coco_image_dir(root, split)
    if image_dir.is_dir():
        return (f"{root}: has {image_dir.name}/ but no coco_{split}_karpathy.json{found}. clip_benchmark's COCO layout "
                f"needs both: <root>/coco_{split}_karpathy.json (COCO-captions JSON: 'images' with file_name, "
                f"'annotations' with captions) and the images in <root>/{image_dir.name}/.")
    n_jpg = sum(1 for p in root.iterdir() if p.suffix.lower() == ".jpg" and p.is_file())
    if n_jpg:
        return (f"{root}: {n_jpg} .jpg images but no {FLICKR_NAMES[0]}_{split}_karpathy.txt (or "
                f"{FLICKR_NAMES[1]}_{split}_karpathy.txt){found}. clip_benchmark's Flickr layout needs it next to "
                "the images: a header line, then IMAGE.jpg,CAPTION lines.")
    return None


# The retrieval layouts, asked in this order (the local layouts first: their annotation file is explicit).
register_format(Format("coco-captions", "retrieval", lambda root, split, _: (root / f"coco_{split}_karpathy.json").is_file(),
                       lambda root, split, _: read_coco_captions(root, split),
                       "clip_benchmark's COCO layout (<root>/coco_<split>_karpathy.json + <root>/val2014/)", priority=40))
register_format(Format("flickr-captions", "retrieval", lambda root, split, _: _flickr_annotation(root, split) is not None,
                       lambda root, split, _: read_flickr_captions(root, split),
                       "clip_benchmark's Flickr layout (<root>/flickr30k_<split>_karpathy.txt + the images in <root>/)",
                       priority=30))
register_format(Format("wds-retrieval", "retrieval",
                       lambda root, split, wds_split: is_wds(root, split) or is_wds(root, wds_split), _read_wds_retrieval,
                       "a clip_benchmark webdataset folder (<root>/test/nshards.txt, <root>/test/0.tar, "
                       "dataset_type.txt = retrieval)", priority=20))
register_format(Format("hf-retrieval", "retrieval", lambda root, split, _: is_hf_folder(root),
                       lambda root, split, _: check_captions(read_hf(str(root), split, kind="retrieval")),
                       "a Hugging Face datasets folder with a captions column", priority=10))
