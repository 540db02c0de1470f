"""Caption-selection sets of the embedded world, in the layouts users have: SugarCrepe as clip_benchmark
reads it (`sugar_crepe/val2017/<file>.jpg` + `sugar_crepe/<subset>.json`) and Winoground's original
release (`winoground/examples.jsonl` + `winoground/images/ex_<id>_img_<k>.png`).

Made from the world's own test images and captions, so every model of the micro grid can run the
`sugar_crepe/<subset>`, `winoground` tasks and their generative twins on them: a positive is one of the
image's own captions, a negative another image's caption of about the same length (SugarCrepe's
negatives and Winoground's pairs are as long as their positives, so a decoder's score is not a length
contest). The tests build smaller sets with the same rules (tests/_caption_sets.py).

No torch here, as in world.py: the bytes are pinned by the determinism test.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS

N_SUGAR_CREPE = 40  # items per subset in the embedded world
N_WINOGROUND = 20  # examples (40 images) in the embedded world


@dataclass(frozen=True)
class CaptionedImage:
    """One image of the source set: its COCO-style id, JPEG bytes, captions and class (a negative caption
    always comes from another class: two images of one class can share a caption word for word)."""

    image_id: int
    jpeg: bytes
    captions: Sequence[str]
    label: int


def like(caption: str, others: Sequence[str]) -> str:
    """The one of `others` closest in word count to `caption` (first on ties)."""
    others = list(others)
    return min(others, key=lambda o: (abs(len(o.split()) - len(caption.split())), others.index(o)))


def sugar_crepe_files(items: Sequence[CaptionedImage], n: int,
                      subsets: Sequence[str] = SUGAR_CREPE_SUBSETS) -> dict[str, bytes]:
    """{relative path: bytes} of a SugarCrepe folder: n items per subset, keys not contiguous, every 4th
    item reusing the previous one's image (as SugarCrepe's items share COCO images)."""
    files: dict[str, bytes] = {}
    for s, subset in enumerate(subsets):
        ann = {}
        for k in range(n):
            j = (3 * s + k) % len(items) if k % 4 else (3 * s + k - 1) % len(items)
            item = items[j]
            d = 7 + s
            while items[(j + d) % len(items)].label == item.label:
                d += 1
            other = items[(j + d) % len(items)].captions
            name = f"{item.image_id:012d}.jpg"
            files[f"val2017/{name}"] = item.jpeg
            caption = item.captions[k % len(item.captions)]
            ann[str(5 * k + s)] = {"filename": name, "caption": caption, "negative_caption": like(caption, other)}
        files[f"{subset}.json"] = json.dumps(ann, indent=1).encode()
    return files


def winoground_rows(items: Sequence[CaptionedImage], n: int) -> list[dict]:
    """n Winoground-shaped examples: two consecutive images of different classes (item indices in
    `image_0`/`image_1`), each with one of its own captions, the second as long as the first."""
    rows = []
    for i in range(n):
        a, b = items[2 * i], items[2 * i + 1]
        if a.label == b.label:
            raise ValueError(f"winoground_rows: items {2 * i} and {2 * i + 1} are of one class; interleave the classes")
        c0 = a.captions[i % len(a.captions)]
        rows.append({"id": i, "image_0": 2 * i, "image_1": 2 * i + 1, "caption_0": c0, "caption_1": like(c0, b.captions),
                     "tag": "Object", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"})
    return rows


def png_of(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def winoground_release_files(items: Sequence[CaptionedImage], n: int) -> dict[str, bytes]:
    """{relative path: bytes} of Winoground's release layout (`examples.jsonl`, `images/*.png`)."""
    files: dict[str, bytes] = {}
    lines = []
    for row in winoground_rows(items, n):
        ex = dict(row)
        for k in (0, 1):
            name = f"ex_{row['id']}_img_{k}"
            files[f"images/{name}.png"] = png_of(items[row[f"image_{k}"]].jpeg)
            ex[f"image_{k}"] = name
        lines.append(json.dumps(ex))
    files["examples.jsonl"] = ("\n".join(lines) + "\n").encode()
    return files


def write_files(base: Path, files: dict[str, bytes], write: Callable[[Path, bytes], None]) -> Path:
    for rel, data in files.items():
        write(base / rel, data)
    return base
