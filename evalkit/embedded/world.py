"""A deterministic synthetic benchmark: coloured shapes on textured backgrounds.

Real weights and datasets cannot be downloaded in CI, so evalkit ships a tiny world written in the
*real* on-disk formats (ImageNet folder, clip_benchmark webdataset, COCO/Flickr Karpathy captions,
ADE20K). The evaluation code then runs unchanged against it. Everything derives from seeded numpy
generators keyed by (split, index), so any image can be re-rendered alone (training streams them) and
the written files are byte-identical on rerun with the same numpy/Pillow/zlib.

No torch import here: data generation must stay cheap and importable without the model stack.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from evalkit.atomic import atomic_write_bytes

WORLD_VERSION = 1
SS = 4  # supersampling factor for anti-aliased shape coverage

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "lime": (165, 230, 40),
    "green": (25, 135, 50),
    "cyan": (30, 200, 215),
    "blue": (40, 70, 225),
    "purple": (135, 45, 185),
    "pink": (245, 110, 195),
    "brown": (125, 70, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS: tuple[str, ...] = ("stripes", "checkerboard", "dots", "noise")
BG_ADJ = {"stripes": "striped", "checkerboard": "checkered", "dots": "dotted", "noise": "grainy"}
BG_NOUN = {"stripes": "stripes", "checkerboard": "a checkerboard", "dots": "polka dots", "noise": "grainy noise"}

# One class per colour (a tiny CPU-trained CLIP learns colour words within seconds; shape binding
# needs far more compute than CI has). Each shape kind appears in two classes, so shape words still
# occur in class names and captions and drive the segmentation labels.
CLASSES: tuple[tuple[str, str], ...] = tuple(
    (colour, ("circle", "square", "triangle", "star", "cross")[i % 5]) for i, colour in enumerate(COLOURS)
)
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in CLASSES)
WNIDS: tuple[str, ...] = tuple(f"n{90000000 + i:08d}" for i in range(len(CLASSES)))

# Segmentation labels: 0 = ignore (anti-aliased object boundaries), then shapes, then backgrounds.
SEG_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "striped pattern", "checkerboard pattern", "polka dots", "grainy noise",
)
SEG_SHAPE_BASE = 1
SEG_BG_BASE = 1 + len(SHAPES)

TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "a {c} on a textured background.",
    "an image of a {c}.",
    "a drawing of a {c}.",
    "a small {c}.",
    "a large {c}.",
)

POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)
POS_PHRASE = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
NUMBER_WORDS = ("no", "one", "two", "three")
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on a {bg_adj} background.",
    "a photo of a {colour} {shape} {pos}.",
    "{Pos}, a {size} {colour} {shape} sits on {bg_noun}.",
    "there is a {colour} {shape} {pos} against a {bg_adj} pattern.",
    "{Bg_noun} behind a {size} {shape} that is {colour}.",
    "a {size} {shape}, coloured {colour}, {pos}.",
    "an image of a {colour} {shape} with {n} tiny distractor shapes.",
    "{colour} {shape}, {size}, {pos_word}, {bg_adj} background",
    "a drawing of a {size} {colour} {shape} {pos} on a {bg_adj} texture.",
    "the {colour} {shape} is {size} and placed {pos}.",
)

# Root seeds per split; every image gets its own generator seeded by (root, index).
SPLIT_SEEDS = {"train": 1001, "test": 2002, "ade_train": 3003, "lp_train": 4004}
N_TEST = 400
N_LP_TRAIN = 200  # the linear probes' train split (wds_shapes/train): 20 per class, unseen by the grid
N_ADE_TRAIN = 300
N_ADE_VAL = 200  # first N test images, so segmentation and classification share pixels
N_SHARDS = 2
JPEG_QUALITY = 75
DATA_DIRS = (
    "imagenet_folder", "wds_shapes", "wds_shapes_captions", "mscoco", "flickr30k", "ADEChallengeData2016",
)


@dataclass(frozen=True)
class Sample:
    """One rendered image with everything every format needs."""

    split: str
    index: int
    image: Image.Image  # RGB
    mask: np.ndarray  # uint8 HxW segmentation labels (0 = ignore)
    label: int  # class index into CLASSNAMES
    captions: tuple[str, ...]  # 5 captions
    colour: str
    shape: str
    background: str
    position: str
    size: str


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices (already scaled to the supersampled canvas) of polygonal shapes."""
    if kind == "square":
        angles, radii = np.arange(4) * np.pi / 2 + np.pi / 4, np.full(4, r * 1.05)
    elif kind == "triangle":
        angles, radii = np.arange(3) * 2 * np.pi / 3 - np.pi / 2, np.full(3, r * 1.2)
    elif kind == "star":
        angles = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r * 1.2, r * 0.5)
    elif kind == "cross":
        a, b = r * 1.05, r * 0.38
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                         (-a, b), (-a, -b), (-b, -b)], dtype=np.float64)
        angles, radii = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
    else:
        raise ValueError(kind)
    angles = angles + rot
    return [(float(SS * (cx + rr * np.cos(t))), float(SS * (cy + rr * np.sin(t)))) for t, rr in zip(angles, radii, strict=True)]


def _coverage(kind: str, w: int, h: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Fraction of each pixel covered by the shape, via a 4x supersampled PIL raster (deterministic)."""
    canvas = Image.new("L", (w * SS, h * SS), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([SS * (cx - r), SS * (cy - r), SS * (cx + r), SS * (cy + r)], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rot), fill=255)
    arr = np.asarray(canvas, dtype=np.float32).reshape(h, SS, w, SS).mean(axis=(1, 3))
    return arr / 255.0


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour, so backgrounds never look like a class colour."""
    grey = rng.uniform(60, 200)
    tint = rng.uniform(-18, 18, size=3)
    return np.clip(grey + tint, 0, 255)


def _background(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Two muted colours mixed by a texture-specific pattern; float32 HxWx3."""
    a, b = _muted(rng), _muted(rng)
    if abs(float(a.mean() - b.mean())) < 35:
        b = np.clip(a + (45 if a.mean() < 128 else -45), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":
        period, theta = rng.uniform(5, 10), rng.uniform(0, np.pi)
        t = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6.3))
        m = 0.5 + 0.5 * np.tanh(3 * t)
    elif kind == "checkerboard":
        cell = rng.integers(5, 10)
        ox, oy = rng.integers(0, cell, size=2)
        m = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(np.float32)
    elif kind == "dots":
        step = float(rng.integers(7, 11))
        rad = rng.uniform(1.6, 2.8)
        ox, oy = rng.uniform(0, step, size=2)
        dx = (xx + ox) % step - step / 2
        dy = (yy + oy) % step - step / 2
        m = np.clip(rad + 0.5 - np.hypot(dx, dy), 0, 1)
    elif kind == "noise":
        coarse = rng.random((6, 6)).astype(np.float32)
        up = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        m = np.asarray(up, dtype=np.float32) / 255.0
        m = np.clip(m + rng.normal(0, 0.25, size=(h, w)).astype(np.float32), 0, 1)
    else:
        raise ValueError(kind)
    return (a[None, None] * (1 - m[..., None]) + b[None, None] * m[..., None]).astype(np.float32)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly 64x64; one in five is non-square (80x64 or 64x80) with the scene in the central square."""
    u = rng.random()
    if u < 0.1:
        return 80, 64
    if u < 0.2:
        return 64, 80
    return 64, 64


def class_for(split: str, index: int, rng: np.random.Generator) -> int:
    """Test and probe-train labels are balanced (index mod K); training labels are drawn at random."""
    if split in ("test", "lp_train"):
        return index % len(CLASSES)
    return int(rng.integers(len(CLASSES)))


def render(split: str, index: int) -> Sample:
    """Render one sample. Pure function of (split, index)."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index, WORLD_VERSION])
    label = class_for(split, index, rng)
    colour, shape = CLASSES[label]
    w, h = _image_size(rng)
    ox, oy = (w - 64) / 2, (h - 64) / 2  # offset of the central 64x64 scene
    bg_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(bg_kind, w, h, rng)
    mask = np.full((h, w), SEG_BG_BASE + BACKGROUNDS.index(bg_kind), dtype=np.uint8)
    ignore = np.zeros((h, w), dtype=bool)

    pos_i = int(rng.integers(len(POSITIONS)))
    size = "large" if rng.random() < 0.5 else "small"
    r = rng.uniform(13, 16) if size == "large" else rng.uniform(8, 10.5)
    cells = (18.0, 32.0, 46.0)
    cx = ox + cells[pos_i % 3] + rng.uniform(-3, 3)
    cy = oy + cells[pos_i // 3] + rng.uniform(-3, 3)

    # Small neutral distractors away from the main object, drawn underneath it.
    n_distract = int(rng.integers(0, 3))
    placed = 0
    for _ in range(20):
        if placed == n_distract:
            break
        dx, dy = ox + rng.uniform(6, 58), oy + rng.uniform(6, 58)
        dr = rng.uniform(3, 4.5)
        dkind = SHAPES[int(rng.integers(len(SHAPES)))]
        drot = rng.uniform(0, 2 * np.pi)
        dcol = np.array([rng.choice([20.0, 245.0])] * 3) + rng.uniform(-10, 10)
        if np.hypot(dx - cx, dy - cy) < r + dr + 4:
            continue
        cov = _coverage(dkind, w, h, dx, dy, dr, drot)
        img = img * (1 - cov[..., None]) + dcol[None, None] * cov[..., None]
        mask[cov >= 0.5] = SEG_SHAPE_BASE + SHAPES.index(dkind)
        ignore |= (cov > 0.15) & (cov < 0.85)
        placed += 1

    rot = rng.uniform(0, 2 * np.pi) if shape != "circle" else 0.0
    cov = _coverage(shape, w, h, cx, cy, r, rot)
    col = np.clip(np.array(COLOURS[colour], dtype=np.float32) + rng.uniform(-12, 12, size=3), 0, 255)
    shade = 1 - 0.15 * np.clip((np.mgrid[0:h, 0:w][0] - (cy - r)) / (2 * r), 0, 1)  # soft vertical shading
    img = img * (1 - cov[..., None]) + (col[None, None] * shade[..., None]) * cov[..., None]
    mask[cov >= 0.5] = SEG_SHAPE_BASE + SHAPES.index(shape)
    ignore |= (cov > 0.15) & (cov < 0.85)
    mask[ignore] = 0

    img = img + rng.normal(0, 2, size=img.shape)
    pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    position = POSITIONS[pos_i]
    captions = _captions(rng, colour, shape, bg_kind, position, size, placed)
    return Sample(split, index, pil, mask, label, captions, colour, shape, bg_kind, position, size)


def _captions(rng: np.random.Generator, colour: str, shape: str, bg: str, position: str, size: str,
              n_distract: int) -> tuple[str, ...]:
    """Five different phrasings; sizes get synonyms so wording varies beyond template choice."""
    size_word = {"large": ("large", "big"), "small": ("small", "little")}[size][int(rng.integers(2))]
    pos = POS_PHRASE[position]
    fields = dict(size=size_word, colour=colour, shape=shape, bg_adj=BG_ADJ[bg], bg_noun=BG_NOUN[bg],
                  Bg_noun=BG_NOUN[bg][0].upper() + BG_NOUN[bg][1:], pos=pos, Pos=pos[0].upper() + pos[1:],
                  pos_word=position, n=NUMBER_WORDS[n_distract])
    order = rng.permutation(len(CAPTION_TEMPLATES))[:5]
    return tuple(CAPTION_TEMPLATES[i].format(**fields) for i in order)


def iter_split(split: str, n: int, start: int = 0) -> Iterator[Sample]:
    for i in range(start, start + n):
        yield render(split, i)


# ----------------------------------------------------------------------------------------- encoding


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    """Atomic write: a crashed generator never leaves a truncated file that looks valid."""
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A reproducible tar: fixed mtime/owner/mode, members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _lines(items: list[str] | tuple[str, ...]) -> str:
    return "".join(f"{x}\n" for x in items)


# ------------------------------------------------------------------------------------------- formats


def write_imagenet_folder(root: Path, test: list[Sample], jpegs: list[bytes], train: list[Sample] = (),
                          train_jpegs: list[bytes] = ()) -> None:
    """`val/<wnid>/<name>.JPEG` (torchvision ImageFolder order = sorted wnids = class index), and the
    linear probes' `train/<wnid>/<wnid>_<n>.JPEG` as ImageNet's train folder names them."""
    base = root / "imagenet_folder"
    for s, jpg in zip(test, jpegs, strict=True):
        _write(base / "val" / WNIDS[s.label] / f"ILSVRC2012_val_{s.index + 1:08d}.JPEG", jpg)
    for s, jpg in zip(train, train_jpegs, strict=True):
        _write(base / "train" / WNIDS[s.label] / f"{WNIDS[s.label]}_{s.index + 1}.JPEG", jpg)
    _write(base / "classnames.txt", _lines(CLASSNAMES))
    _write(base / "wnids.txt", _lines(WNIDS))
    _write(base / "LOC_synset_mapping.txt", _lines([f"{w} {c}" for w, c in zip(WNIDS, CLASSNAMES, strict=True)]))


def _shards(n: int) -> list[range]:
    per = -(-n // N_SHARDS)
    return [range(i, min(n, i + per)) for i in range(0, n, per)]


def write_wds(root: Path, test: list[Sample], jpegs: list[bytes], train: list[Sample] = (),
              train_jpegs: list[bytes] = ()) -> None:
    """clip_benchmark `wds/<name>` layouts for classification (.cls) and retrieval (.txt); the
    classification folder also has the `train` split linear probes fit on (keys `tNNNNNN`)."""
    cls_dir, cap_dir = root / "wds_shapes", root / "wds_shapes_captions"
    shards = _shards(len(test))
    for k, idx in enumerate(shards):
        cls_members, cap_members = [], []
        for i in idx:
            key = f"s{test[i].index:06d}"
            cls_members += [(f"{key}.jpg", jpegs[i]), (f"{key}.cls", str(test[i].label).encode())]
            cap_members += [(f"{key}.jpg", jpegs[i]), (f"{key}.txt", "\n".join(test[i].captions).encode())]
        _write(cls_dir / "test" / f"{k}.tar", _tar(cls_members))
        _write(cap_dir / "test" / f"{k}.tar", _tar(cap_members))
    for d, kind in ((cls_dir, "classification"), (cap_dir, "retrieval")):
        _write(d / "test" / "nshards.txt", f"{len(shards)}\n")
        _write(d / "dataset_type.txt", f"{kind}\n")
    _write(cls_dir / "classnames.txt", _lines(CLASSNAMES))
    _write(cls_dir / "zeroshot_classification_templates.txt", _lines(TEMPLATES))
    if not train:
        return
    train_shards = _shards(len(train))
    for k, idx in enumerate(train_shards):
        members = []
        for i in idx:
            key = f"t{train[i].index:06d}"
            members += [(f"{key}.jpg", train_jpegs[i]), (f"{key}.cls", str(train[i].label).encode())]
        _write(cls_dir / "train" / f"{k}.tar", _tar(members))
    _write(cls_dir / "train" / "nshards.txt", f"{len(train_shards)}\n")


def write_coco(root: Path, test: list[Sample], jpegs: list[bytes]) -> None:
    """`mscoco/val2014/*.jpg` + `coco_test_karpathy.json` as clip_benchmark's mscoco_captions reads it."""
    base = root / "mscoco"
    images, anns = [], []
    for s, jpg in zip(test, jpegs, strict=True):
        image_id = s.index + 1
        name = f"COCO_val2014_{image_id:012d}.jpg"
        _write(base / "val2014" / name, jpg)
        images.append({"id": image_id, "file_name": name, "width": s.image.width, "height": s.image.height})
        for j, cap in enumerate(s.captions):
            anns.append({"id": image_id * 10 + j, "image_id": image_id, "caption": cap})
    doc = {"info": {"description": "evalkit embedded shapes world (Karpathy-style test split)",
                    "version": str(WORLD_VERSION)},
           "licenses": [], "type": "captions", "images": images, "annotations": anns}
    _write(base / "coco_test_karpathy.json", json.dumps(doc, indent=None, separators=(",", ":")) + "\n")


def write_flickr(root: Path, test: list[Sample], jpegs: list[bytes]) -> None:
    """Flat image folder + `flickr30k_test_karpathy.txt` (header, then `<img>.jpg,<caption>` lines)."""
    base = root / "flickr30k"
    rows = ["image,caption"]
    for s, jpg in zip(test, jpegs, strict=True):
        name = f"{1000000 + s.index}.jpg"
        _write(base / name, jpg)
        rows += [f"{name},{c}" for c in s.captions]
    _write(base / "flickr30k_test_karpathy.txt", _lines(rows))


def write_ade(root: Path, test: list[Sample], jpegs: list[bytes]) -> None:
    """ADEChallengeData2016 layout; label PNGs are uint8 with 0 = ignore, like the real benchmark."""
    base = root / "ADEChallengeData2016"
    counts = {"training": np.zeros(len(SEG_NAMES) + 1), "validation": np.zeros(len(SEG_NAMES) + 1)}
    for i in range(N_ADE_TRAIN):
        s = render("ade_train", i)
        _write(base / "images" / "training" / f"ADE_train_{i + 1:08d}.jpg", encode_jpeg(s.image))
        _write(base / "annotations" / "training" / f"ADE_train_{i + 1:08d}.png", encode_png(s.mask))
        counts["training"] += np.bincount(s.mask.ravel(), minlength=len(SEG_NAMES) + 1)
    for s, jpg in list(zip(test, jpegs, strict=True))[:N_ADE_VAL]:
        _write(base / "images" / "validation" / f"ADE_val_{s.index + 1:08d}.jpg", jpg)
        _write(base / "annotations" / "validation" / f"ADE_val_{s.index + 1:08d}.png", encode_png(s.mask))
        counts["validation"] += np.bincount(s.mask.ravel(), minlength=len(SEG_NAMES) + 1)
    _write(base / "classnames.txt", _lines(SEG_NAMES))
    tot = counts["training"][1:] + counts["validation"][1:]
    rows = ["Idx,Ratio,Train,Val,Name"]
    for k, name in enumerate(SEG_NAMES):
        ratio = tot[k] / max(tot.sum(), 1)
        rows.append(f"{k + 1},{ratio:.6f},{int(counts['training'][k + 1])},{int(counts['validation'][k + 1])},"
                    f"\"{name}\"")
    _write(base / "objectInfo150.csv", _lines(rows))


def write_caption_selection(root: Path, test: list[Sample], jpegs: list[bytes]) -> None:
    """`sugar_crepe/` (clip_benchmark's SugarCrepe layout) and `winoground/` (the release layout), made from
    the test images and captions as the COCO folder holds them (image id = index + 1)."""
    from evalkit.embedded import selection_sets as sel

    items = [sel.CaptionedImage(s.index + 1, jpg, s.captions, s.label) for s, jpg in zip(test, jpegs, strict=True)]
    sel.write_files(root / "sugar_crepe", sel.sugar_crepe_files(items, sel.N_SUGAR_CREPE), _write)
    sel.write_files(root / "winoground", sel.winoground_release_files(items, sel.N_WINOGROUND), _write)


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` keyed by posix relative path (used by the determinism test)."""
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def write_manifest(root: Path) -> None:
    """Record the library versions the exact bytes depend on (no per-file list: 2,000 lines of churn)."""
    _write(root / "GENERATOR.json", json.dumps(generator_info(), indent=1, sort_keys=True) + "\n")


def generator_info() -> dict[str, str | int]:
    """Versions that determine the exact bytes (JPEG/PNG encoders, RNG streams)."""
    import PIL
    from PIL import features

    return {"world_version": WORLD_VERSION, "splits": {"test": N_TEST, "ade_train": N_ADE_TRAIN, "lp_train": N_LP_TRAIN},
            "numpy": np.__version__, "pillow": PIL.__version__,
            "libjpeg": str(features.version("jpg")),
            "libjpeg_turbo": str(features.version("libjpeg_turbo")), "zlib": zlib.ZLIB_VERSION}


def write_world(root: Path) -> None:
    """Write every format of the held-out test world (plus the small ADE and probe train splits) under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    test = list(iter_split("test", N_TEST))
    jpegs = [encode_jpeg(s.image) for s in test]
    train = list(iter_split("lp_train", N_LP_TRAIN))  # the linear probes' train split, in both layouts
    train_jpegs = [encode_jpeg(s.image) for s in train]
    write_imagenet_folder(root, test, jpegs, train, train_jpegs)
    write_wds(root, test, jpegs, train, train_jpegs)
    write_coco(root, test, jpegs)
    write_flickr(root, test, jpegs)
    write_ade(root, test, jpegs)
    write_caption_selection(root, test, jpegs)
    write_manifest(root)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    args = ap.parse_args(argv)
    write_world(args.out)
    print(f"wrote embedded world to {args.out}")


if __name__ == "__main__":
    main()
