"""The embedded world: byte-pinned data readable by the real readers, and a trained micro grid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from evalkit.embedded import world
from evalkit.embedded.grid import GRID, get_run, model_config_path
from evalkit.embedded.paths import data_root

DATA = data_root()


def _to_tensor():
    import torchvision.transforms as T

    return T.ToTensor()


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    committed = world.file_hashes(DATA)
    recorded = json.loads((DATA / "GENERATOR.json").read_text())
    world.write_world(tmp_path)
    fresh = world.file_hashes(tmp_path)
    assert sorted(fresh) == sorted(committed)
    # Annotations, captions, class lists and shard counts never depend on the image encoders.
    encoded = (".jpg", ".jpeg", ".png", ".webp", ".tar")
    plain = [k for k in committed if not k.lower().endswith(encoded)]
    assert plain and {k: fresh[k] for k in plain} == {k: committed[k] for k in plain}
    # Encoded images (and the tars holding them) are pinned only for the recorded libjpeg/zlib/Pillow.
    if world.generator_info() == recorded:
        assert fresh == committed


def test_render_is_pure() -> None:
    a, b = world.render("train", 7), world.render("train", 7)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.mask, b.mask) and a.captions == b.captions


def test_imagenet_folder_classes_in_sorted_dir_order() -> None:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(DATA / "imagenet_folder" / "val"))
    names = (DATA / "imagenet_folder" / "classnames.txt").read_text().splitlines()
    assert names == list(world.CLASSNAMES) and len(ds.classes) == len(names)
    assert len(ds) == world.N_TEST and np.bincount(ds.targets).tolist() == [world.N_TEST // 10] * 10
    assert all(p.endswith(".JPEG") for p, _ in ds.samples)


def test_wds_classification_via_clip_benchmark() -> None:
    from clip_benchmark.datasets.builder import build_dataset

    ds = build_dataset("wds/shapes", root=str(DATA / "wds_shapes"), split="test", transform=_to_tensor())
    assert ds.classes == list(world.CLASSNAMES) and ds.templates == list(world.TEMPLATES)
    items = list(ds)
    assert len(items) == world.N_TEST
    assert [int(y) for _, y in items[:12]] == [i % 10 for i in range(12)]


def test_wds_retrieval_via_clip_benchmark() -> None:
    from clip_benchmark.datasets.builder import build_dataset

    ds = build_dataset("wds/shapes_captions", root=str(DATA / "wds_shapes_captions"), split="test",
                       transform=_to_tensor(), task="zeroshot_retrieval")
    items = list(ds)
    assert len(items) == world.N_TEST and all(len(caps) == 5 for _, caps in items)
    assert tuple(items[0][1]) == world.render("test", 0).captions


def test_coco_and_flickr_via_clip_benchmark_and_pycocotools() -> None:
    from clip_benchmark.datasets.builder import build_dataset
    from pycocotools.coco import COCO

    coco = COCO(str(DATA / "mscoco" / "coco_test_karpathy.json"))
    assert len(coco.getImgIds()) == world.N_TEST and len(coco.getAnnIds()) == 5 * world.N_TEST
    kw = dict(split="test", transform=_to_tensor(), task="zeroshot_retrieval")
    ds_coco = build_dataset("mscoco_captions", root=str(DATA / "mscoco"), **kw)
    ds_flickr = build_dataset("flickr30k", root=str(DATA / "flickr30k"), **kw)
    assert len(ds_coco) == len(ds_flickr) == world.N_TEST
    for i in (0, 5, world.N_TEST - 1):
        (img_c, caps_c), (img_f, caps_f) = ds_coco[i], ds_flickr[i]
        assert caps_c == caps_f == list(world.render("test", i).captions)
        assert (img_c == img_f).all()


def test_ade_layout_masks() -> None:
    base = DATA / "ADEChallengeData2016"
    names = (base / "classnames.txt").read_text().splitlines()
    assert names == list(world.SEG_NAMES)
    for split, n in (("training", world.N_ADE_TRAIN), ("validation", world.N_ADE_VAL)):
        imgs = sorted((base / "images" / split).glob("*.jpg"))
        anns = sorted((base / "annotations" / split).glob("*.png"))
        assert len(imgs) == len(anns) == n
        seen = np.zeros(len(names) + 1, dtype=bool)
        for ip, ap in zip(imgs, anns, strict=True):
            assert ip.stem == ap.stem
            img, ann = Image.open(ip), Image.open(ap)
            assert ann.mode == "L" and img.size == ann.size
            arr = np.asarray(ann)
            assert arr.max() <= len(names)
            seen[np.unique(arr)] = True
        assert seen.all(), f"{split}: every label incl. 0=ignore occurs"
    header = (base / "objectInfo150.csv").read_text().splitlines()[0]
    assert header == "Idx,Ratio,Train,Val,Name"


# --------------------------------------------------------------------------------------- trained grid


def test_grid_shape_and_params(embedded_world: Path) -> None:
    models = {s.model for s in GRID}
    budgets = {s.samples_per_epoch for s in GRID}
    assert len(models) >= 2 and len(budgets) >= 2 and sum(s.epochs for s in GRID) >= 8
    for spec in GRID:
        assert all(p.is_file() for p in spec.checkpoints(embedded_world))
        params = (spec.run_dir(embedded_world) / "params.txt").read_text().splitlines()
        keys = [ln.split(":", 1)[0] for ln in params]
        assert keys == sorted(keys)
        assert f"model: {spec.model}" in params and "lr_scheduler: cosine" in params
        assert f"train_num_samples: {spec.samples_per_epoch}" in params and "pretrained: " in params


def test_checkpoint_loads_with_open_clip(embedded_world: Path) -> None:
    import open_clip
    import torch

    spec = get_run("tinyclip-S_s2k")
    ckpt = torch.load(spec.checkpoint(1, embedded_world), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["name"] == spec.name and "optimizer" in ckpt
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    open_clip.add_model_config(model_config_path(spec.model))
    model = open_clip.create_model(spec.model, pretrained=None)
    missing = model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()})
    assert not missing.missing_keys and not missing.unexpected_keys
    assert open_clip.get_tokenizer(spec.model).context_length == 32


def test_model_configs_are_open_clip_format() -> None:
    for model in {s.model for s in GRID}:
        cfg = json.loads(model_config_path(model).read_text())
        assert re.fullmatch(r"(tinyclip|mammut_tiny)-[A-Z]+", model)
        assert cfg["text_cfg"]["vocab_size"] == 49408 and cfg["vision_cfg"]["image_size"] == 32


def test_largest_budget_far_above_chance(embedded_world: Path) -> None:
    from evalkit.embedded.zeroshot import load_checkpoint_model, zeroshot_accuracy

    best = {}
    for spec in GRID:  # the contrastive runs (cap's are checked generatively: tests/embedded/test_world_selection.py)
        if spec.family != "cap" and spec.samples_per_epoch == max(s.samples_per_epoch for s in GRID):
            best[spec.name] = zeroshot_accuracy(load_checkpoint_model(spec, spec.epochs, embedded_world), spec.model)
    chance = 1 / len(world.CLASSNAMES)
    assert max(best.values()) > 0.8 and min(best.values()) > 3 * chance, best
