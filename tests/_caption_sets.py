"""Tiny caption-selection sets in their real on-disk layouts, made from the embedded world's COCO images
and captions by the world's own rules (evalkit/embedded/selection_sets.py), smaller than the world's
and in more layouts: SugarCrepe (val2017/ JPEGs + <subset>.json), Winoground's release (examples.jsonl +
PNGs in images/) and Winoground as Hugging Face `datasets` writes it (save_to_disk folder, parquet file).

Each image keeps its own captions, so a trained tiny CLIP scores well above chance but not perfectly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from _embedded import DATA
from PIL import Image

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS
from evalkit.embedded.selection_sets import (
    CaptionedImage,
    sugar_crepe_files,
    winoground_release_files,
    write_files,
)
from evalkit.embedded.selection_sets import winoground_rows as sel_winoground_rows

COCO = DATA / "mscoco"


def coco_items() -> list[CaptionedImage]:
    """The embedded COCO test images with their captions and classes (the ImageNet folder's class of the
    same image: `ILSVRC2012_val_<id>.JPEG`), in id order."""
    data = json.loads((COCO / "coco_test_karpathy.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in data["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    wnids = sorted(p.name for p in (DATA / "imagenet_folder" / "val").iterdir())
    label = {int(f.stem.rsplit("_", 1)[1]): wnids.index(f.parent.name)
             for f in (DATA / "imagenet_folder" / "val").glob("*/ILSVRC2012_val_*.JPEG")}
    return [CaptionedImage(img["id"], (COCO / "val2014" / img["file_name"]).read_bytes(), caps[img["id"]], label[img["id"]])
            for img in sorted(data["images"], key=lambda x: x["id"])]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_sugar_crepe(root: Path, n: int = 12, subsets: tuple[str, ...] = SUGAR_CREPE_SUBSETS) -> Path:
    """`root/val2017/*.jpg` + `root/<subset>.json` per subset, n items each (the embedded world's rules)."""
    return write_files(root, sugar_crepe_files(coco_items(), n, subsets), _write)


def winoground_rows(n: int = 10) -> list[dict]:
    """n Winoground-shaped examples, `image_0`/`image_1` as PIL images."""
    items = coco_items()
    return [{**r, "image_0": _image(items[r["image_0"]].jpeg), "image_1": _image(items[r["image_1"]].jpeg)}
            for r in sel_winoground_rows(items, n)]


def _image(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def make_winoground_release(root: Path, n: int = 10, data_dir: bool = False) -> Path:
    """The release layout: `examples.jsonl` + `images/ex_<id>_img_<k>.png` (or both under `data/`)."""
    write_files(root / "data" if data_dir else root, winoground_release_files(coco_items(), n), _write)
    return root


def winoground_dataset(n: int = 10):
    """facebook/winoground's columns and features as a `datasets.Dataset`."""
    import datasets

    rows = winoground_rows(n)
    features = datasets.Features({
        "id": datasets.Value("int32"), "image_0": datasets.Image(), "image_1": datasets.Image(),
        "caption_0": datasets.Value("string"), "caption_1": datasets.Value("string"), "tag": datasets.Value("string"),
        "secondary_tag": datasets.Value("string"), "num_main_preds": datasets.Value("int32"),
        "collapsed_tag": datasets.Value("string")})
    cols = {k: [r[k] for r in rows] for k in features}
    return datasets.Dataset.from_dict(cols, features=features)


def make_winoground_hf(root: Path, n: int = 10, kind: str = "save_to_disk") -> Path:
    """`save_to_disk` of a DatasetDict with split `test`, or the hub's `data/test-00000-of-00001.parquet`."""
    import datasets

    ds = winoground_dataset(n)
    if kind == "save_to_disk":
        datasets.DatasetDict({"test": ds}).save_to_disk(str(root))
    else:
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root
