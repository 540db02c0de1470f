"""The wrong folder never scores: data that cannot be the task's is a `DataError` naming the folder, both
counts and what to point --data-root at (issue 11, item 3). Wrong folders are built from the embedded
world, which holds every real format."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from _embedded import DATA
from _util import REPO, TINY_S, tiny_clip

from evalkit.data.formats.captions import open_retrieval
from evalkit.data.formats.segmentation import open_segmentation
from evalkit.data.sources import DataError
from evalkit.tasks.base import open_task
from evalkit.tasks.loader import get_task

JPG = next((DATA / "flickr30k").glob("*.jpg"))
ADE = DATA / "ADEChallengeData2016"


def _open(task, root):
    spec = get_task(task) if isinstance(task, str) else task
    return open_task(spec, root)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _wds(root: Path, members: list[list[tuple[str, bytes]]], kind: str | None) -> Path:
    """A one-shard wds folder; `members` per sample as (extension, bytes)."""
    (root / "test").mkdir(parents=True)
    if kind is not None:
        (root / "dataset_type.txt").write_text(kind + "\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        for i, parts in enumerate(members):
            for ext, data in parts:
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


# ------------------------------------------------------------------------------------- classification


def test_imagenet1k_on_a_coco_folder_names_both_counts():
    with pytest.raises(DataError) as e:
        _open("imagenet1k", DATA / "mscoco")
    msg = str(e.value)
    assert msg.startswith(f"{DATA / 'mscoco'}: 1 class folder (val2014) holding 400 images")
    assert "imagenet1k" in msg and "has 1000 classes" in msg and "point --data-root at the ImageNet-1k val folder" in msg


def test_class_folders_must_match_the_class_count():
    with pytest.raises(DataError, match=r"imagenet_folder/val: 10 class folders .*400 images.*has 1000 classes"):
        _open("imagenet1k", DATA / "imagenet_folder")
    five = dataclasses.replace(get_task("shapes"), classnames=["a", "b", "c", "d", "e"])
    with pytest.raises(DataError, match=r"10 class folders .* task shapes .* has 5 classes.*the shapes data"):
        _open(five, DATA / "imagenet_folder")


def test_matching_folders_still_open():
    spec, src = _open("shapes", DATA / "imagenet_folder")
    assert len(spec.classnames) == 10 and len(src) == 400
    spec, src = _open("wds/wds_shapes", DATA / "wds_shapes")
    assert len(spec.classnames) == 10 and max(src.targets) == 9


def _imagenet_dirs(root: Path, names: list[str]) -> Path:
    base = root / "val"
    for name in names:
        (base / name).mkdir(parents=True)
    shutil.copy(JPG, base / names[0] / "ILSVRC2012_val_00000001.JPEG")
    return root


def test_imagenet1k_folders_must_be_its_1000_wnids(tmp_path):
    from evalkit.tasks.protocols.zeroshot_classification import imagenet1k_wnids

    wnids = imagenet1k_wnids()
    assert wnids is not None and len(wnids) == 1000 and wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    spec, src = _open("imagenet1k", _imagenet_dirs(tmp_path / "good", wnids))
    assert len(spec.classnames) == 1000 and src.meta["wnids"] == wnids
    swapped = [*wnids[:500], "n99999999", *wnids[501:]]
    with pytest.raises(DataError, match=rf"1 of 1000 class folders are not ImageNet-1k wnids \(n99999999; missing: {wnids[500]}\)"):
        _open("imagenet1k", _imagenet_dirs(tmp_path / "swapped", swapped))
    # numbered folders sort as 0, 1, 10, 100, ...: their order is not the class order
    with pytest.raises(DataError, match=r"1000 of 1000 class folders are not ImageNet-1k wnids \(0, 1, 10, 100, 101"):
        _open("imagenet1k", _imagenet_dirs(tmp_path / "numbered", [str(i) for i in range(1000)]))
    # another task with ImageNet-1k's class list (open_clip's names) is held to the same folders
    sketch = dataclasses.replace(get_task("imagenet1k"), name="imagenet_sketch", dataset="imagenet_sketch")
    with pytest.raises(DataError, match="not ImageNet-1k wnids"):
        _open(sketch, tmp_path / "numbered")


def test_wds_class_ids_beyond_the_class_list(tmp_path):
    root = _copy(DATA / "wds_shapes", tmp_path / "wds_five")
    names = (root / "classnames.txt").read_text().splitlines()
    (root / "classnames.txt").write_text("".join(f"{n}\n" for n in names[:5]))
    with pytest.raises(DataError) as e:
        _open("wds/wds_five", root)
    assert str(e.value).startswith(f"{root}: class ids go up to 9 (10 classes; 200 of 400 images above 4)")
    assert "task wds/wds_five (wds) has 5 classes" in str(e.value)


def test_wds_class_names_of_another_dataset():
    with pytest.raises(DataError, match=r"wds_shapes: 10 class names in classnames.txt, but task imagenet1k .*has 1000 classes"):
        _open("imagenet1k", DATA / "wds_shapes")


def test_retrieval_wds_folder_is_not_classification_data():
    with pytest.raises(DataError, match=r"wds_shapes_captions/dataset_type.txt: says 'retrieval', but this task needs a "
                                        r"classification folder"):
        _open("imagenet1k", DATA / "wds_shapes_captions")


def test_hf_class_ids_beyond_the_class_list_or_unlabelled(tmp_path):
    import datasets
    from PIL import Image

    img = Image.open(JPG).convert("RGB")
    three = dataclasses.replace(get_task("shapes"), classnames=["a", "b", "c"])
    for name, labels, pattern in (
        ("over", [0, 1, 2, 3, 3], r"class ids go up to 3 \(4 classes; 2 of 5 images above 2\), but task shapes .*has 3 classes"),
        ("unlabelled", [-1] * 5, r"5 of 5 images have a negative class id -1 \(unlabelled.*has 3 classes, ids 0..2"),
    ):
        ds = datasets.Dataset.from_dict({"image": [img] * 5, "label": labels},
                                        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
        datasets.DatasetDict({"val": ds}).save_to_disk(str(tmp_path / name))
        with pytest.raises(DataError, match=pattern):
            _open(three, tmp_path / name)
    ok = datasets.Dataset.from_dict({"image": [img] * 3, "label": [0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}))
    datasets.DatasetDict({"val": ok}).save_to_disk(str(tmp_path / "ok"))
    assert len(_open(three, tmp_path / "ok")[1]) == 3
    with pytest.raises(DataError, match=r"3 class names in the label column's ClassLabel names, but task imagenet1k .*1000"):
        _open("imagenet1k", tmp_path / "ok")


# ------------------------------------------------------------------------------------------ retrieval


def test_coco_folder_without_its_annotation_file(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    shutil.copy(JPG, root / "val2014" / "COCO_val2014_000000000001.jpg")
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}: has val2014/ but no coco_test_karpathy.json\. clip_benchmark's COCO layout"):
        open_retrieval(root, "test")
    shutil.copy(DATA / "mscoco" / "coco_test_karpathy.json", root / "coco_val_karpathy.json")
    with pytest.raises(DataError, match=r"no coco_test_karpathy.json \(annotation files here: coco_val_karpathy.json;"):
        _open("mscoco_captions", root)


def test_flickr_folder_without_its_annotation_file(tmp_path):
    root = tmp_path / "flickr"
    root.mkdir()
    for i in range(3):
        shutil.copy(JPG, root / f"{1000000 + i}.jpg")
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}: 3 .jpg images but no flickr30k_test_karpathy.txt .*Flickr layout"):
        _open("flickr30k", root)


def test_wds_retrieval_folder_without_captions(tmp_path):
    jpg = JPG.read_bytes()
    root = _wds(tmp_path / "cls_as_ret", [[("jpg", jpg), ("cls", b"3")]], kind="retrieval")
    with pytest.raises(DataError, match=r"0.tar: sample 's0000' has no .txt captions \(it has s0000.jpg, s0000.cls\)\. "
                                        r".*dataset_type.txt says 'retrieval'.*has a .cls instead"):
        open_retrieval(root, "test")
    root = _wds(tmp_path / "no_type", [[("jpg", jpg), ("cls", b"3")]], kind=None)
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}: no dataset_type.txt, so a 'classification' webdataset .*needs a "
                                        r"retrieval folder"):
        open_retrieval(root, "test")
    root = _wds(tmp_path / "no_image", [[("txt", b"a caption")]], kind="retrieval")
    with pytest.raises(DataError, match=r"sample 's0000' has no image \(.webp, .png, .jpg, .jpeg\)"):
        open_retrieval(root, "test")


def test_retrieval_folder_of_another_dataset(tmp_path):
    with pytest.raises(DataError, match=r"flickr30k: a Flickr folder \(flickr30k_test_karpathy.txt\), but task "
                                        r"mscoco_captions .* Point --data-root at the mscoco_captions folder"):
        _open("mscoco_captions", DATA / "flickr30k")
    with pytest.raises(DataError, match=r"mscoco: a COCO folder \(coco_test_karpathy.json\), but task flickr30k"):
        _open("flickr30k", DATA / "mscoco")
    root = tmp_path / "flickr8k"
    root.mkdir()
    shutil.copy(JPG, root / JPG.name)
    (root / "flickr8k_test_karpathy.txt").write_text(f"image,caption\n{JPG.name},a caption\n")
    with pytest.raises(DataError, match=r"its annotation file is flickr8k_test_karpathy.txt, but task flickr30k"):
        _open("flickr30k", root)
    assert len(_open(dataclasses.replace(get_task("flickr30k"), name="flickr8k", dataset="flickr8k"), root)[1]) == 1
    assert len(_open("shapes_coco", DATA / "mscoco")[1]) == 400  # the embedded tasks read their own layouts


# ---------------------------------------------------------------------------------------- segmentation


def _ade(tmp_path: Path, n: int = 6, annotations: bool = True) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    if annotations:
        (root / "annotations" / "validation").mkdir(parents=True)
    for p in sorted((ADE / "images" / "validation").iterdir())[:n]:
        shutil.copy(p, root / "images" / "validation" / p.name)
        if annotations:
            shutil.copy(ADE / "annotations" / "validation" / f"{p.stem}.png", root / "annotations" / "validation")
    return root


def test_ade_without_annotations_folder(tmp_path):
    root = _ade(tmp_path, annotations=False)
    for given in (root, root.parent):
        with pytest.raises(DataError, match=rf"{re.escape(str(root))}: has images/ but no annotations/ folder\. Expected the "
                                            r"ADEChallengeData2016 layout"):
            open_segmentation(given, "validation")


def test_ade_without_validation_annotations(tmp_path):
    root = _ade(tmp_path, annotations=False)
    (root / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'annotations' / 'validation'))}: folder missing, so the 6 images in "
                                        rf"{re.escape(str(root / 'images' / 'validation'))} have no label PNGs"):
        _open("shapes_ade20k", root)


def test_ade_images_lacking_their_annotation(tmp_path):
    root = _ade(tmp_path)
    victims = sorted((root / "annotations" / "validation").iterdir())[1:3]
    for v in victims:
        v.unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(victims[0]))}: missing annotation for image .*; 2 of 6 images in .* lack "
                                        r"their label PNG in .*ADEChallengeData2016 layout"):
        open_segmentation(root, "validation")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_classification_task_on_a_retrieval_folder_fails_the_unit(tmp_path):
    import pandas as pd
    import torch

    ckpt = tmp_path / "rand.pt"
    torch.save(tiny_clip(TINY_S, seed=1).state_dict(), ckpt)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", str(TINY_S), "--pretrained", str(ckpt),
                        "--tasks", "imagenet1k", "--data-root", str(DATA / "mscoco"), "--out", str(out),
                        "--device", "cpu", "--no-cache"],
                       capture_output=True, text=True, cwd=REPO,
                       env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                            "EVALKIT_CONFIG": str(tmp_path / "none.yaml"), "HOME": str(tmp_path)})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "units: 0 ok, 1 failed" in r.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert list(table.status.unique()) == ["failed"] and list(table.task.unique()) == ["imagenet1k"]
    err = table.error.iloc[0]
    assert "DataError" in err and "1 class folder (val2014) holding 400 images" in err and "has 1000 classes" in err
