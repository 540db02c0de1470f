"""Tiny caption-selection sets in their real on-disk layouts, made from the embedded world's COCO images
and captions: SugarCrepe (val2017/ JPEGs + <subset>.json), Winoground's release (examples.jsonl + PNGs
in images/) and Winoground as Hugging Face `datasets` writes it (save_to_disk folder, parquet file).

Each image keeps its own captions, so a trained tiny CLIP scores well above chance but not perfectly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _embedded import DATA
from PIL import Image

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS

COCO = DATA / "mscoco"


def coco_items() -> list[tuple[Path, list[str]]]:
    """(image file, its captions) for the embedded COCO test images, in id order."""
    data = json.loads((COCO / "coco_test_karpathy.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in data["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    return [(COCO / "val2014" / img["file_name"], caps[img["id"]]) for img in sorted(data["images"], key=lambda x: x["id"])]


def like(caption: str, others: list[str]) -> str:
    """The one of `others` closest in word count to `caption`: SugarCrepe's negatives and Winoground's
    pairs are as long as their positives, so a decoder's score is not just a length contest."""
    return min(others, key=lambda o: (abs(len(o.split()) - len(caption.split())), others.index(o)))


def make_sugar_crepe(root: Path, n: int = 12, subsets: tuple[str, ...] = SUGAR_CREPE_SUBSETS) -> Path:
    """`root/val2017/*.jpg` + `root/<subset>.json` per subset: n items each, keys not contiguous, some
    items sharing an image (as SugarCrepe's do), the negative caption another image's caption."""
    items = coco_items()
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    for s, subset in enumerate(subsets):
        ann = {}
        for k in range(n):
            j = (3 * s + k) % len(items) if k % 4 else (3 * s + k - 1) % len(items)  # every 4th reuses an image
            img, caps = items[j]
            other = items[(j + 7 + s) % len(items)][1]
            name = f"{int(img.stem.rsplit('_', 1)[1]):012d}.jpg"
            if not (root / "val2017" / name).is_file():
                shutil.copyfile(img, root / "val2017" / name)
            caption = caps[k % len(caps)]
            ann[str(5 * k + s)] = {"filename": name, "caption": caption, "negative_caption": like(caption, other)}
        (root / f"{subset}.json").write_text(json.dumps(ann, indent=1))
    return root


def winoground_rows(n: int = 10) -> list[dict]:
    """n Winoground-shaped examples: two images, each with one of its own captions, of similar lengths."""
    items = coco_items()
    rows = []
    for i in range(n):
        (a, ca), (b, cb) = items[2 * i], items[2 * i + 1]
        rows.append({"id": i, "image_0": a, "image_1": b, "caption_0": ca[i % len(ca)], "caption_1": like(ca[i % len(ca)], cb),
                     "tag": "Object", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"})
    return rows


def make_winoground_release(root: Path, n: int = 10, data_dir: bool = False) -> Path:
    """The release layout: `examples.jsonl` + `images/ex_<id>_img_<k>.png` (or both under `data/`)."""
    base = root / "data" if data_dir else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in winoground_rows(n):
        ex = dict(row)
        for k in (0, 1):
            name = f"ex_{row['id']}_img_{k}"
            Image.open(row[f"image_{k}"]).convert("RGB").save(base / "images" / f"{name}.png")
            ex[f"image_{k}"] = name
        lines.append(json.dumps(ex))
    (base / "examples.jsonl").write_text("\n".join(lines) + "\n")
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
    for k in ("image_0", "image_1"):
        cols[k] = [Image.open(p).convert("RGB") for p in cols[k]]
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
