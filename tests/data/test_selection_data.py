"""Caption-selection readers (evalkit/data/formats/selection.py) on tiny sets in the real layouts: the
instances and pixels clip_benchmark's own SugarCrepe and WinoGround datasets yield, the three Winoground
layouts alike, and one-line errors naming the file and the item for bad input."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
from _caption_sets import make_sugar_crepe, make_winoground_hf, make_winoground_release, winoground_dataset
from clip_benchmark.datasets.sugar_crepe import SugarCrepe

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS, open_selection
from evalkit.data.sources import DataError


def _pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def test_sugar_crepe_items_equal_clip_benchmarks_reader(tmp_path):
    root = make_sugar_crepe(tmp_path / "sc", n=12)
    for subset in ("add_att", "swap_obj"):
        src = open_selection(root, subset=subset)
        oracle = SugarCrepe(root=str(root / "val2017"), ann_file=str(root / f"{subset}.json"))
        assert len(src.targets) == len(oracle) == 12
        assert [inst.key for inst in src.targets] == oracle.idx_strings  # file order, keys not contiguous
        for inst, k in zip(src.targets, range(len(oracle)), strict=True):
            img, caps = oracle[k]
            assert list(inst.captions) == caps and len(inst.images) == 1
            np.testing.assert_array_equal(_pixels(src.open(inst.images[0])), _pixels(img))
        # an image two items name is one image of the source (decoded and encoded once)
        files = [json.loads((root / f"{subset}.json").read_text())[inst.key]["filename"] for inst in src.targets]
        assert len(src) == len(set(files)) < len(files)
        assert [src.ids[inst.images[0]].rsplit("/", 1)[1] for inst in src.targets] == files
        assert src.meta["format"] == "sugar_crepe" and src.name == str(root / f"{subset}.json")


def test_winoground_layouts_give_the_same_instances_and_pixels(tmp_path, monkeypatch):
    release = open_selection(make_winoground_release(tmp_path / "rel", n=6))
    cloned = open_selection(make_winoground_release(tmp_path / "clone", n=6, data_dir=True))  # data/examples.jsonl
    disk = open_selection(make_winoground_hf(tmp_path / "disk", n=6))
    parquet = open_selection(make_winoground_hf(tmp_path / "pq", n=6, kind="parquet"))
    assert [s.meta["format"] for s in (release, cloned, disk, parquet)] == ["winoground", "winoground", "hf", "hf"]
    for src in (cloned, disk, parquet):
        assert src.targets == release.targets and len(src) == len(release) == 12
        for i in range(len(src)):
            np.testing.assert_array_equal(_pixels(src.open(i)), _pixels(release.open(i)))
    assert [inst.images for inst in release.targets] == [(2 * i, 2 * i + 1) for i in range(6)]

    # clip_benchmark's WinoGround reads the hub dataset; given the same rows it yields the same instances
    from clip_benchmark.datasets import winoground

    monkeypatch.setattr(datasets, "load_dataset", lambda name, cache_dir=None: {"test": winoground_dataset(6)})
    oracle = winoground.WinoGround(root=str(tmp_path))
    for inst, k in zip(disk.targets, range(len(oracle)), strict=True):
        imgs, caps = oracle[k]
        assert list(inst.captions) == caps
        for img, i in zip(imgs, inst.images, strict=True):
            np.testing.assert_array_equal(_pixels(disk.open(i)), _pixels(img))


def test_fingerprint_follows_the_files_not_the_mount(tmp_path):
    root = make_sugar_crepe(tmp_path / "a", n=5, subsets=("add_att", "add_obj"))
    fp = open_selection(root, subset="add_att").fingerprint
    shutil.copytree(root, tmp_path / "b", copy_function=shutil.copy2)  # a node-local copy keeps the identity
    assert open_selection(tmp_path / "b", subset="add_att").fingerprint == fp
    assert open_selection(root, subset="add_obj").fingerprint != fp
    ann = json.loads((root / "add_att.json").read_text())
    first = next(iter(ann))
    ann[first]["negative_caption"] += " changed"
    (root / "add_att.json").write_text(json.dumps(ann, indent=2))
    assert open_selection(root, subset="add_att").fingerprint != fp


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_bad_sugar_crepe_is_one_line_naming_the_file_and_item(tmp_path):
    root = make_sugar_crepe(tmp_path / "sc", n=4)
    ann = root / "add_att.json"
    key = next(iter(json.loads(ann.read_text())))

    _edit_json(ann, lambda d: d[key].pop("negative_caption"))
    with pytest.raises(DataError, match=rf"add_att.json: item '{key}' lacks negative_caption"):
        open_selection(root, subset="add_att")

    _edit_json(root / "add_obj.json", lambda d: d[next(iter(d))].update(filename="000000999999.jpg"))
    with pytest.raises(DataError, match=r"add_obj.json: item '.*' names 000000999999.jpg, which is not in .*val2017"):
        open_selection(root, subset="add_obj")

    _edit_json(root / "swap_att.json", lambda d: d[next(iter(d))].update(caption=["a", "list"]))
    with pytest.raises(DataError, match=r"swap_att.json: item .*'caption' must be a string, not list"):
        open_selection(root, subset="swap_att")

    (root / "swap_obj.json").write_text("{}")
    with pytest.raises(DataError, match=r"swap_obj.json: no items"):
        open_selection(root, subset="swap_obj")
    (root / "replace_rel.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"replace_rel.json: expected an object"):
        open_selection(root, subset="replace_rel")
    (root / "replace_obj.json").write_text('{"0": {"filename": ')
    with pytest.raises(DataError, match=r"replace_obj.json:1:\d+: not valid JSON"):
        open_selection(root, subset="replace_obj")

    with pytest.raises(DataError, match=r"add_attr.json: not found \(it holds add_att.json, add_obj.json, "):
        open_selection(root, subset="add_attr")
    with pytest.raises(DataError, match=r"a SugarCrepe folder, but the task names no subset"):
        open_selection(root)
    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match=r"val2017: image folder missing"):
        open_selection(root, subset="replace_att")
    with pytest.raises(DataError, match=r"nowhere: data root does not exist"):
        open_selection(tmp_path / "nowhere", subset="add_att")
    assert set(SUGAR_CREPE_SUBSETS) == {"add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att",
                                        "swap_obj"}


def test_bad_winoground_is_one_line_naming_the_file_and_item(tmp_path):
    root = make_winoground_release(tmp_path / "w", n=3)
    path = root / "examples.jsonl"
    lines = path.read_text().splitlines()

    ex = json.loads(lines[1])
    ex.pop("caption_1")
    path.write_text("\n".join([lines[0], json.dumps(ex), lines[2]]))
    with pytest.raises(DataError, match=r"examples.jsonl:2: 2 images and 1 captions, but the lines before have 2 and 2"):
        open_selection(root)
    ex = json.loads(lines[0])
    ex.pop("caption_0")
    ex.pop("caption_1")
    path.write_text(json.dumps(ex))
    with pytest.raises(DataError, match=r"examples.jsonl:1: item lacks caption_0"):
        open_selection(root)
    path.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(DataError, match=r"examples.jsonl:2: not valid JSON"):
        open_selection(root)
    path.write_text("\n".join(lines))
    (root / "images" / "ex_2_img_1.png").unlink()
    with pytest.raises(DataError, match=r"examples.jsonl:3: item '2' names image 'ex_2_img_1', which is not in .*images "
                                        r"\(looked for ex_2_img_1.png\)"):
        open_selection(root)
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"examples.jsonl: no items"):
        open_selection(root)
    shutil.rmtree(root / "images")
    (root / "images.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"images: image folder missing \(extract images.zip there\)"):
        open_selection(root)

    hf = tmp_path / "hf"
    datasets.DatasetDict({"test": winoground_dataset(2).remove_columns(["caption_0", "caption_1"])}).save_to_disk(str(hf))
    with pytest.raises(DataError, match=r"hf \[test\]: columns .*caption selection needs image_0, image_1, ... and "
                                        r"caption_0"):
        open_selection(hf)
    with pytest.raises(DataError, match=r"cannot load split 'validation'"):
        open_selection(hf, split="validation")
    with pytest.raises(DataError, match=r"unrecognised layout"):
        open_selection(tmp_path)
