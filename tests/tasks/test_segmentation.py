"""Segmentation units: mIoU as torchmetrics / mmsegmentation compute it, label geometry, bad input named,
task files validated, and the dense (MaskCLIP) projection against an independent reference."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from _embedded import DATA
from _util import TINY_S, tiny_clip
from PIL import Image

from evalkit.data.formats.segmentation import (
    IGNORE_LABEL,
    label_transform,
    load_label_maps,
    open_segmentation,
)
from evalkit.data.preprocess import PreprocessCfg, pixel_transform
from evalkit.data.sources import DataError, ImageSource
from evalkit.tasks.loader import get_task
from evalkit.tasks.protocols.seg_metrics import SegmentationMeter
from evalkit.tasks.spec import TaskError

ADE = DATA / "ADEChallengeData2016"


def _torchmetrics_miou(preds: list[torch.Tensor], targets: list[torch.Tensor], c: int) -> tuple[float, torch.Tensor]:
    """torchmetrics' per-class Jaccard over the whole split, classes absent from both left out."""
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=IGNORE_LABEL)
    present = torch.zeros(c, dtype=torch.bool)
    for p, t in zip(preds, targets):
        metric.update(p, t)
        keep = t != IGNORE_LABEL
        present |= torch.bincount(p[keep], minlength=c).bool() | torch.bincount(t[keep].long(), minlength=c).bool()
    per_class = metric.compute()
    return float(per_class[present].mean()), per_class


def test_miou_matches_torchmetrics_on_random_label_maps():
    gen = torch.Generator().manual_seed(0)
    c = 12
    meter = SegmentationMeter(c)
    preds, targets = [], []
    for _ in range(5):  # several "images" of different sizes, accumulated over the split
        h, w = torch.randint(8, 40, (2,), generator=gen).tolist()
        t = torch.randint(0, c - 2, (h, w), generator=gen)  # classes 10, 11 never in the ground truth
        t[torch.rand(h, w, generator=gen) < 0.2] = IGNORE_LABEL
        p = torch.randint(0, c - 1, (h, w), generator=gen)  # class 11 never predicted: absent from both
        meter.update(p, t)
        preds.append(p)
        targets.append(t)
    theirs, per_class = _torchmetrics_miou(preds, targets, c)
    ours = meter.compute()
    assert math.isclose(ours["miou"], theirs, rel_tol=1e-6)
    iou = meter.per_class_iou()
    assert math.isnan(iou[11]) and not math.isnan(iou[10])  # predicted-only class counts (IoU 0)
    np.testing.assert_allclose(iou[:11].numpy(), per_class[:11].numpy(), rtol=1e-6)
    cat_t, cat_p = torch.cat([t.flatten() for t in targets]), torch.cat([p.flatten() for p in preds])
    keep = cat_t != IGNORE_LABEL
    assert math.isclose(ours["pixel_acc"], float((cat_p[keep] == cat_t[keep]).float().mean()), rel_tol=1e-6)


def test_miou_hand_computed_three_classes_with_an_absent_class():
    target = torch.tensor([[0, 0, 1], [1, IGNORE_LABEL, 1]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 0]])  # the ignored pixel's prediction (0) counts for nothing
    meter = SegmentationMeter(3)
    meter.update(pred, target)
    # class 0: I=1, pred=2, gt=2 -> 1/3; class 1: I=2, pred=3, gt=3 -> 2/4; class 2 absent from both: left out
    assert torch.allclose(meter.per_class_iou()[:2], torch.tensor([1 / 3, 1 / 2], dtype=torch.float64))
    assert math.isnan(meter.per_class_iou()[2])
    m = meter.compute()
    assert math.isclose(m["miou"], 5 / 12) and math.isclose(m["pixel_acc"], 3 / 5)
    theirs, per_class = _torchmetrics_miou([pred], [target], 3)
    assert math.isclose(theirs, 5 / 12, rel_tol=1e-6)
    assert float(per_class[2]) == 0.0  # torchmetrics' plain mean would count it as 0: 5/18, not the field's 5/12


def test_miou_accumulates_over_the_split_not_per_image():
    meter = SegmentationMeter(2)
    meter.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # per image: IoU0 3/4, IoU1 0
    meter.update(torch.tensor([1]), torch.tensor([1]))  # per image: IoU1 = 1
    assert math.isclose(meter.compute()["miou"], (3 / 4 + 1 / 2) / 2)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_label_geometry_is_the_image_geometry(mode):
    """A label map carrying pixel coordinates lands where the image pixels land (same crop, NEAREST)."""
    cfg = PreprocessCfg(size=32, resize_mode=mode)
    h, w = 80, 64
    yy, xx = np.mgrid[0:h, 0:w]
    code = (yy // 16 * 4 + xx // 16).astype(np.uint8) + 1  # 20 blocks of 16x16 pixels
    lab = label_transform(cfg)(Image.fromarray(code))[0].numpy().astype(int)
    img = pixel_transform(cfg)(Image.fromarray(np.stack([code * 10] * 3, -1)))[0].numpy().astype(int)
    assert lab.shape == (32, 32)
    # away from block edges (labels constant over a 5x5 window) the image pixel shows the same block
    pad = np.pad(lab, 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (5, 5))
    interior = (windows.min(axis=(-1, -2)) == windows.max(axis=(-1, -2))) & (lab > 0)
    assert interior.sum() > 100
    assert (np.abs(img[interior] - 10 * lab[interior]) <= 2).all()
    shifted = np.roll(lab, 4, axis=0)  # a geometry off by a few pixels would not pass
    assert not (np.abs(img[interior] - 10 * shifted[interior]) <= 2).all()
    if mode == "longest":
        assert (lab == 0).any()  # padding is label 0: ignored


def test_embedded_ade_layout_reads_and_reduces_zero_label():
    src = open_segmentation(ADE, "validation")
    assert len(src) == 200 and src.meta["format"] == "ade20k" and len(src.classnames) == 9
    assert open_segmentation(ADE.parent, "val").ids == src.ids  # parent folder and split alias work too
    labels = load_label_maps(src, PreprocessCfg(size=32), 9, indices=[0, 1])
    raw = np.asarray(Image.open(src.targets[0]))
    assert labels.dtype == np.uint8 and labels.shape == (2, 32, 32)
    assert set(np.unique(labels)) <= set(range(9)) | {IGNORE_LABEL}
    assert (raw == 0).any() and (labels == IGNORE_LABEL).any()  # 0 -> ignore; L -> L-1
    assert int(raw.max()) - 1 == int(labels[0][labels[0] != IGNORE_LABEL].max())


@pytest.fixture
def small_ade(tmp_path):
    """A copy of 6 embedded validation images + annotations, to break."""
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (root / sub).mkdir(parents=True)
    for p in sorted((ADE / "images" / "validation").iterdir())[:6]:
        shutil.copy(p, root / "images" / "validation" / p.name)
        shutil.copy(ADE / "annotations" / "validation" / f"{p.stem}.png", root / "annotations" / "validation")
    return root


def test_missing_annotation_is_named(small_ade):
    victim = sorted((small_ade / "annotations" / "validation").iterdir())[2]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        open_segmentation(small_ade, "validation")


def test_mask_of_another_size_is_named(small_ade):
    victim = sorted((small_ade / "annotations" / "validation").iterdir())[3]
    Image.open(victim).resize((50, 40), Image.NEAREST).save(victim)
    src = open_segmentation(small_ade, "validation")
    with pytest.raises(DataError, match=rf"{victim.name}.*50x40.*64x64"):
        load_label_maps(src, PreprocessCfg(size=32), 9)


def test_labels_out_of_range_are_named(small_ade):
    victim = sorted((small_ade / "annotations" / "validation").iterdir())[1]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = 10  # 9 classes: 0..9 allowed
    Image.fromarray(arr).save(victim)
    src = open_segmentation(small_ade, "validation")
    with pytest.raises(DataError, match=rf"{victim.name}.*0\.\.10 outside 0\.\.9"):
        load_label_maps(src, PreprocessCfg(size=32), 9)
    load_label_maps(src, PreprocessCfg(size=32), 150)  # fine for ADE20K's 150 classes


def test_bad_annotation_fails_the_unit_with_the_file_named(small_ade, tmp_path):
    import evalkit
    from evalkit.models.spec import ModelSpec

    victim = sorted((small_ade / "annotations" / "validation").iterdir())[0]
    Image.open(victim).resize((32, 32), Image.NEAREST).save(victim)
    ckpt = tmp_path / "rand.pt"
    torch.save(tiny_clip(TINY_S, seed=1).state_dict(), ckpt)
    # zero-shot: this copy has no training split, which the linear probe needs before it starts
    table = evalkit.evaluate(ModelSpec(model=str(TINY_S), pretrained=str(ckpt)), ["shapes_ade20k@zero-shot"],
                             data_root=str(small_ade), out=tmp_path / "out", device="cpu", cache_dir=None)
    assert (table.status == "failed").all() and victim.name in table.error.iloc[0]


def test_linear_probe_without_training_split_fails_before_any_work(small_ade, tmp_path):
    """The probe's training images are part of the task's identity, so they are opened (and found
    missing) when the task is resolved, naming the folder."""
    import evalkit
    from evalkit.models.spec import ModelSpec

    ckpt = tmp_path / "rand.pt"
    torch.save(tiny_clip(TINY_S, seed=1).state_dict(), ckpt)
    table = evalkit.evaluate(ModelSpec(model=str(TINY_S), pretrained=str(ckpt)), ["shapes_ade20k"], data_root=str(small_ade),
                             out=tmp_path / "out", device="cpu", cache_dir=None)
    assert (table.status == "failed").all()
    assert "no split folder training" in table.error.iloc[0] and str(small_ade) in table.error.iloc[0]


def test_task_files_declare_protocols_and_classes():
    ade = get_task("ade20k")
    assert ade.options["num_classes"] == 150 and len(ade.classnames) == 150 and len(set(ade.classnames)) == 150
    assert ade.classnames[:3] == ["wall", "building", "sky"] and ade.classnames[-1] == "flag"
    assert ade.options["protocol"] == "linear" and ade.metrics == ["miou", "pixel_acc"]
    shapes = get_task("shapes_ade20k")
    names = [line for line in (ADE / "classnames.txt").read_text().splitlines() if line]
    assert shapes.classnames == names and shapes.options["num_classes"] == 9
    assert shapes.options["default_root"] == "embedded:ADEChallengeData2016"
    zs = dataclasses.replace(ade, options={**ade.options, "protocol": "zero-shot"})
    assert zs.hash != ade.hash  # the protocol is part of the task hash


def test_protocol_settings_must_all_be_declared():
    from evalkit.tasks.protocols.segmentation import protocol_options

    spec = get_task("shapes_ade20k")
    assert protocol_options(spec)[0] == "linear"
    lin = dict(spec.options["linear"])
    lin.pop("steps")
    with pytest.raises(TaskError, match="missing.*steps"):
        protocol_options(dataclasses.replace(spec, options={**spec.options, "linear": lin}))
    with pytest.raises(TaskError, match="unknown.*stepz"):
        protocol_options(dataclasses.replace(spec, options={**spec.options, "linear": {**spec.options["linear"], "stepz": 1}}))
    with pytest.raises(TaskError, match="protocol must be"):
        protocol_options(dataclasses.replace(spec, options={**spec.options, "protocol": "finetune"}))
    with pytest.raises(TaskError, match="dense"):
        protocol_options(dataclasses.replace(spec, options={**spec.options, "protocol": "zero-shot",
                                                            "zero_shot": {"dense": "sclip"}}))


def test_wrong_data_for_the_task_is_caught():
    from evalkit.tasks.protocols.segmentation import Segmentation

    with pytest.raises(DataError, match="9 classes.*num_classes 150"):
        Segmentation.open_source(ADE, get_task("ade20k"))


def _loaded(model: torch.nn.Module, family: str):
    from evalkit.models.family import LoadedModel

    return LoadedModel(model=model.eval(), family=family, arch="tiny", preprocess=PreprocessCfg(size=32),
                       tokenizer=None, context_length=77, text_pooling="eot")


def test_maskclip_equals_last_block_with_self_only_attention():
    """Reference: open_clip's own last block run with a diagonal attention mask (each token sees itself)."""
    model = tiny_clip(TINY_S, seed=3)
    lm = _loaded(model, "clip")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = lm.image_dense_features(images)
        v = model.visual
        x = v._embeds(images)  # conv, class token, positions, ln_pre
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        n = x.shape[1]
        diag = torch.full((n, n), float("-inf"))
        diag.fill_diagonal_(0.0)
        x = v.transformer.resblocks[-1](x, attn_mask=diag)
        ref = v.ln_post(x[:, 1:]) @ v.proj
        plain = v.ln_post(lm.image_patch_tokens(images)) @ v.proj  # the same tokens without MaskCLIP
    assert ours.shape == (3, 16, model.visual.proj.shape[1])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the self-only attention changes the features
    assert not v.transformer.resblocks[-1]._forward_pre_hooks  # the hook lives for one call only


def test_mammut_dense_is_ln_post_then_proj():
    import json

    import evalkit.models.families.mammut as mammut

    cfg = json.loads((TINY_S.parent / "mammut_tiny-S.json").read_text())
    torch.manual_seed(0)
    lm = _loaded(mammut.MaMMUT(cfg), "mammut")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = lm.image_dense_features(images)
        v = lm.model.visual
        ref = v.ln_post(v.tokens(images)[:, 1:]) @ v.proj
        # the pooled embedding is ln_post of the mean over all tokens: the dense path is its per-token version
        pooled = v.ln_post(v.tokens(images).mean(1)) @ v.proj
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(pooled, lm.model.encode_image(images, normalize=False))


def test_linear_head_training_is_deterministic_and_learns():
    """Seeded pixels, batches and zero init: the same head twice; and it separates separable tokens."""
    from evalkit.tasks.protocols.segmentation import fit_linear_head, upsampled_logits

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (20, 1, 1), generator=gen).repeat(1, 16, 16).to(torch.uint8)  # one class per image
    tokens = torch.randn(20, 4, 8, generator=gen) * 0.1
    tokens[:, :, :3] += torch.nn.functional.one_hot(labels[:, 0, 0].long(), 3).float()[:, None, :]
    settings = {"pixels_per_image": 64, "seed": 0, "steps": 60, "batch_size": 256, "lr": 0.1, "weight_decay": 0.0}
    a = fit_linear_head(tokens, labels, 3, (2, 2), settings, torch.device("cpu"))
    b = fit_linear_head(tokens, labels, 3, (2, 2), settings, torch.device("cpu"))
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.linear.bias, b.linear.bias)
    with torch.no_grad():
        pred = upsampled_logits(a(tokens), (2, 2), 16).argmax(1)
    assert torch.equal(pred, labels.long())


@pytest.mark.parametrize(("size", "grid"), [(32, (4, 4)), (224, (14, 14)), (224, (16, 16)), (30, (3, 5))])
def test_bilinear_taps_equal_upsampled_logits(size, grid):
    """Training interpolates tokens at sampled pixels with the exact weights of inference's F.interpolate."""
    from evalkit.tasks.protocols.segmentation import bilinear_taps, upsampled_logits

    logits = torch.randn(2, grid[0] * grid[1], 5, generator=torch.Generator().manual_seed(1))
    if grid[0] != grid[1]:  # upsampled_logits is square-only; compare with F.interpolate directly
        maps = logits.transpose(1, 2).reshape(2, 5, *grid)
        up = torch.nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    else:
        up = upsampled_logits(logits, grid, size)
    pos = torch.arange(size * size)
    idx, w = bilinear_taps(pos, size, grid)
    ours = (logits[:, idx] * w[None, :, :, None]).sum(2)  # [2, S*S, 5]
    torch.testing.assert_close(ours, up.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_protocol_chosen_on_the_command_line():
    from evalkit.tasks.protocols.segmentation import Segmentation

    base, zs = get_task("ade20k"), get_task("ade20k@zero-shot")
    assert (base.options["protocol"], zs.options["protocol"], zs.name) == ("linear", "zero-shot", "ade20k@zero-shot")
    assert zs.hash != base.hash and zs.dataset == base.dataset and zs.classnames == base.classnames
    source = object.__new__(ImageSource)
    assert Segmentation(zs, source).needs == "dense_features" and Segmentation(base, source).needs == "patch_tokens"
    with pytest.raises(TaskError, match="protocol must be one of .*'zero-shot'.* not 'zeroshot'"):
        Segmentation(get_task("ade20k@zeroshot"), source)
    with pytest.raises(TaskError, match="shapes .*declares no `protocol:`"):
        get_task("shapes@zero-shot")
