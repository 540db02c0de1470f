"""Zero-shot segmentation against an oracle: a stub model whose right answer is known by construction.

The stub's text tower gives each class an orthonormal embedding; its dense readout gives each patch the
embedding of the class whose colour the patch shows, except that it confuses one colour for another
class on purpose. Images and ADE20K-layout label PNGs are painted as stripes whose class, position
relative to the center crop and ignored band are chosen so that the expected per-class IoU, mIoU and
pixel accuracy can be counted by hand (below). The engine runs the real path: ADE20K reader, label
maps (reduce_zero_label, NEAREST resize + center crop), decode cache, `run_dataset`, the
segmentation runner (normalise, cosine, bilinear upsampling, argmax) and the metric.

The mutants at the end break one step each (label offset, crop geometry, upsampling, argmax axis,
patch order) and check that the oracle notices, so the check is known to have teeth.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import evalkit.data.formats.segmentation as segdata
import evalkit.tasks.protocols.segmentation as segtask
from evalkit import engine
from evalkit.data.preprocess import PreprocessCfg
from evalkit.models.family import LoadedModel
from evalkit.models.spec import ModelSpec
from evalkit.tasks.spec import TaskSpec

# Geometry: images are 96 x 64 (landscape) or 64 x 96 (portrait), the model's crop is S = 32 with
# patch 8 (a 4 x 4 patch grid). open_clip's eval transform resizes the shortest side 64 -> 32 (the
# image becomes 48 x 32) and center-crops 32: 8 resized = 16 original pixels go on each side. Six
# 16-pixel stripes across the long side therefore land as: stripes 0 and 5 outside the crop, stripes
# 1..4 exactly on patch columns (rows) 0..3, 8 crop pixels each (NEAREST maps original 2x+1 -> x).
S, PATCH, STRIPE = 32, 8, 16
GRID = (S // PATCH, S // PATCH)
CLASSES = ["red", "green", "blue", "yellow", "magenta", "cyan"]
PALETTE = np.array([[230, 20, 20], [20, 200, 20], [20, 20, 230], [230, 230, 20], [230, 20, 230], [20, 230, 230]])
TEMPLATES = ["a photo of {c}.", "{c} stuff", "an image of {c}"]
# The model's one mistake: the colour of class 3 (yellow) reads as class 4 (magenta).
CONFUSION = {3: 4}

# (name, orientation, class of each of the 6 stripes along the long side, ignored band).
# Classes 0 and 5 appear only outside the crop: a correct crop never scores them.
IMAGES = [
    ("a_landscape", "vertical", [0, 1, 2, 3, 1, 5]),  # 96 wide: stripes are columns; top 16 rows label 0
    ("b_portrait", "horizontal", [5, 2, 4, 4, 3, 0]),  # 96 high: stripes are rows; left 16 columns label 0
]

# Counted by hand, in the 32 x 32 crop. Each stripe covers 8 x 32 = 256 crop pixels; the ignored band
# (16 original = 8 crop pixels across the stripes) leaves 8 x 24 = 192 labelled pixels per stripe.
#   a_landscape, crop columns 0-7 / 8-15 / 16-23 / 24-31: classes 1, 2, 3, 1 (rows 0-7 ignored)
#   b_portrait,  crop rows    0-7 / 8-15 / 16-23 / 24-31: classes 2, 4, 4, 3 (columns 0-7 ignored)
#   ground truth (labelled pixels): class 1: 2 x 192 = 384, class 2: 384, class 3: 384, class 4: 384
#   predicted: class 1: 384, class 2: 384, class 3: 0 (read as 4), class 4: 384 + 384 = 768
#   IoU: class 1 = 384/384 = 1, class 2 = 1, class 3 = 0/384 = 0, class 4 = 384/768 = 1/2,
#        classes 0 and 5: in neither prediction nor ground truth of the crop -> no IoU, left out
#   mIoU = (1 + 1 + 0 + 1/2) / 4 = 0.625; pixel accuracy = 3 x 384 / (4 x 384) = 0.75
# Every stripe boundary falls on a patch boundary and bilinear upsampling (align_corners=False, 4 -> 32)
# gives a pixel at least weight 9/16 on its own patch column (row), so no boundary pixel changes class.
EXPECTED_IOU = [math.nan, 1.0, 1.0, 0.0, 0.5, math.nan]
EXPECTED = {"miou": 0.625, "pixel_acc": 0.75}


def paint(root: Path) -> Path:
    """The two images and their label PNGs (value = class + 1, 0 = ignored) in the ADE20K layout."""
    base = root / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (base / sub).mkdir(parents=True)
    for name, orient, stripes in IMAGES:
        idx = np.repeat(np.array(stripes), STRIPE)  # class along the long side (96 px)
        cls = np.tile(idx, (64, 1)) if orient == "vertical" else np.tile(idx[:, None], (1, 64))
        label = (cls + 1).astype(np.uint8)
        if orient == "vertical":
            label[:STRIPE, :] = 0  # top band: image keeps its colours, labels say "other"
        else:
            label[:, :STRIPE] = 0  # left band
        Image.fromarray(PALETTE[cls].astype(np.uint8)).save(base / "images" / "validation" / f"{name}.png")
        Image.fromarray(label).save(base / "annotations" / "validation" / f"{name}.png")
    return base


class OracleTokenizer:
    """Each known prompt -> [class + 1, template + 1, 0, ...] (77 tokens)."""

    context_length = 77

    def __init__(self) -> None:
        self.ids = {t.format(c=c): (k, j) for k, c in enumerate(CLASSES) for j, t in enumerate(TEMPLATES)}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            k, j = self.ids[text]
            out[i, 0], out[i, 1] = k + 1, j + 1
        return out


@dataclasses.dataclass
class OracleModel(LoadedModel):
    """Text: prompt (class k, template j) -> E[k] + 0.3 T[j], all rows of E and T orthonormal, so the
    zero-shot weights of class k are proportional to E[k] + 0.3 mean(T) and cosine(E[k], weights of
    class m) is nonzero only for m = k. Dense: each patch -> 2 E[class its mean colour shows]."""

    basis: torch.Tensor = None  # [C + T, D] orthonormal rows
    confusion: dict = dataclasses.field(default_factory=lambda: dict(CONFUSION))

    def encode_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        e, t = self.basis[: len(CLASSES)], self.basis[len(CLASSES):]
        return e[tokens[:, 0] - 1] + 0.3 * t[tokens[:, 1] - 1]

    def image_dense_features(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.preprocess
        mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        rgb = (images.float() * std + mean) * 255  # un-normalise: the pixels the engine decoded
        b = rgb.shape[0]
        patches = torch.nn.functional.avg_pool2d(rgb, PATCH).flatten(2).transpose(1, 2)  # [B, N, 3], row-major
        dist = torch.cdist(patches, torch.tensor(PALETTE, dtype=torch.float32).expand(b, -1, -1))
        seen = dist.argmin(-1)  # [B, N]: the colour each patch shows
        for src, dst in self.confusion.items():
            seen = torch.where(seen == src, torch.full_like(seen, dst), seen)
        return 2.0 * self.basis[seen]

    def image_patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the zero-shot protocol must read the dense readout, not raw patch tokens")


def oracle_model(confusion: dict[int, int] = CONFUSION) -> OracleModel:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(32, len(CLASSES) + len(TEMPLATES), generator=gen, dtype=torch.float64))
    return OracleModel(model=SimpleNamespace(visual=SimpleNamespace(grid_size=GRID)), family="oracle", arch="oracle",
                       preprocess=PreprocessCfg(size=S), tokenizer=OracleTokenizer(), context_length=77,
                       text_pooling="mean", basis=q.T.float().contiguous(), confusion=dict(confusion))


def oracle_task() -> TaskSpec:
    return TaskSpec(name="oracle_seg", type="segmentation", dataset="oracle_seg", split="validation",
                    classnames=list(CLASSES), templates=list(TEMPLATES), metrics=["miou", "pixel_acc"],
                    main_metric="miou", options={"num_classes": len(CLASSES), "protocol": "zero-shot",
                                                 "geometry": "center_crop", "zero_shot": {"dense": "maskclip"}})


def run_oracle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int = 2,
               confusion: dict[int, int] = CONFUSION) -> tuple[dict, list[float]]:
    """Through the engine end to end (model loading replaced by the oracle): metrics and per-class IoU."""
    segdata._LABEL_CACHE.clear()  # label maps are kept per process; a mutant must not reuse correct ones
    root = paint(tmp_path / "data")
    lm = oracle_model(confusion)
    monkeypatch.setattr(engine.loop, "load_model", lambda spec, **kw: lm)
    opts = engine.RunOptions(data_root=str(root), out=tmp_path / "out", device="cpu", precision="fp32",
                             batch_size=batch_size, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    captured = {}
    real_result = segtask.Segmentation.result

    def result(self, log_samples=False):
        res = real_result(self, log_samples)
        captured["iou"] = res.extra["per_class_iou"]
        return res

    monkeypatch.setattr(segtask.Segmentation, "result", result)
    counts = engine.run([ModelSpec(model="oracle", name="oracle")], [oracle_task()], opts)
    from evalkit.results.store import collect

    table = collect(opts.out)
    if counts["ok"] != 1:
        return {"error": table.error.iloc[0]}, []
    return dict(zip(table.metric, table.value)), captured["iou"]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_zero_shot_segmentation_scores_the_oracle_exactly(tmp_path, monkeypatch, batch_size):
    metrics, iou = run_oracle(tmp_path, monkeypatch, batch_size)
    assert metrics == EXPECTED, metrics
    np.testing.assert_array_equal(np.array(iou), np.array(EXPECTED_IOU))  # NaN where expected, exact elsewhere


def test_without_the_confusion_the_oracle_is_perfect(tmp_path, monkeypatch):
    """The same world read without the model's mistake: every scored class IoU 1, off-crop classes absent."""
    metrics, iou = run_oracle(tmp_path, monkeypatch, confusion={})
    assert metrics == {"miou": 1.0, "pixel_acc": 1.0}, metrics
    np.testing.assert_array_equal(np.array(iou), np.array([math.nan, 1, 1, 1, 1, math.nan]))


# ------------------------------------------------------------------------------------------------
# Mutants: each breaks one step of the protocol; the oracle must not score them as EXPECTED.
# ------------------------------------------------------------------------------------------------


def _no_zero_label_offset(monkeypatch):
    def reduce(raw):  # PNG value L taken as class L (0 still ignored): labels off by one
        out = raw.astype(np.int16)
        out[out == 0] = segdata.IGNORE_LABEL
        out[out >= len(CLASSES)] = segdata.IGNORE_LABEL
        return out.astype(np.uint8)

    monkeypatch.setattr(segdata, "reduce_zero_label", reduce)


def _labels_squashed(monkeypatch):  # labels resized to S x S without the center crop
    real = segdata.label_transform
    monkeypatch.setattr(segdata, "label_transform", lambda cfg: real(dataclasses.replace(cfg, resize_mode="squash")))


def _both_squashed(monkeypatch):  # images and labels alike, consistently, without the center crop
    import evalkit.data.cache as pixel_cache  # the one image path (tasks.base.encode_images) reads it there

    real_pix, real_lab = pixel_cache.decoded_images, segdata.label_transform
    monkeypatch.setattr(pixel_cache, "decoded_images",
                        lambda source, cfg, *a, **k: real_pix(source, dataclasses.replace(cfg, resize_mode="squash"), *a, **k))
    monkeypatch.setattr(segdata, "label_transform", lambda cfg: real_lab(dataclasses.replace(cfg, resize_mode="squash")))


def _labels_one_pixel_off(monkeypatch):
    real = segdata.label_transform

    def shifted(cfg):
        tf = real(cfg)
        return lambda img: torch.roll(tf(img), 1, dims=-1)

    monkeypatch.setattr(segdata, "label_transform", shifted)


def _upsample(monkeypatch, **kw):
    def up(logits, grid, size):
        b, n, c = logits.shape
        maps = logits.transpose(1, 2).reshape(b, c, grid[0], grid[1])
        return torch.nn.functional.interpolate(maps, size=(size, size), **kw)

    monkeypatch.setattr(segtask, "upsampled_logits", up)


def _argmax_over_height(monkeypatch):  # the runner's argmax(dim=1) lands on a spatial axis (a failed unit here)
    real = segtask.upsampled_logits
    monkeypatch.setattr(segtask, "upsampled_logits", lambda *a: real(*a).permute(0, 2, 1, 3))


def _patches_column_major(monkeypatch):
    def up(logits, grid, size):
        b, n, c = logits.shape
        maps = logits.transpose(1, 2).reshape(b, c, grid[1], grid[0]).transpose(2, 3)
        return torch.nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)

    monkeypatch.setattr(segtask, "upsampled_logits", up)


MUTANTS = {
    "label offset (reduce_zero_label) missing": _no_zero_label_offset,
    "labels without the center crop": _labels_squashed,
    "images and labels both without the center crop": _both_squashed,
    "labels one pixel off": _labels_one_pixel_off,
    "upsampling with align_corners=True": lambda mp: _upsample(mp, mode="bilinear", align_corners=True),
    "argmax over a spatial axis": _argmax_over_height,
    "patch grid read column-major": _patches_column_major,
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_oracle_catches_a_broken_step(tmp_path, monkeypatch, mutant):
    MUTANTS[mutant](monkeypatch)
    metrics, _ = run_oracle(tmp_path, monkeypatch)
    assert metrics != EXPECTED, f"the oracle did not notice: {mutant}"
