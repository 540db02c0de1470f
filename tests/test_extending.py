"""A new on-disk format and a new grid layout are each one module plus its registration: a module
written here (as a user's package would ship it) is imported, registers itself, and evalkit's own entry
points (open_classification, open_retrieval and the retrieval protocol, model_specs) use it with nothing
else changed."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from PIL import Image

from evalkit.data.formats import FORMATS, formats_of
from evalkit.data.formats.captions import open_retrieval
from evalkit.data.open import open_classification
from evalkit.data.sources import DataError
from evalkit.grids.selection import model_specs
from evalkit.grids.source import LAYOUTS

FORMAT_MODULE = '''
from pathlib import Path
from PIL import Image
from evalkit.data.formats import Format, register_format
from evalkit.data.sources import ImageSource

def detect(root, split, wds_split):
    return (root / "labels.tsv").is_file()

def read(root, split, wds_split):
    rows = [line.split("\\t") for line in (root / "labels.tsv").read_text().splitlines()]
    classes = sorted({c for _, c in rows})
    return ImageSource(name=f"tsv:{root}", ids=[f for f, _ in rows],
                       opener=lambda i: Image.open(root / rows[i][0]).convert("RGB"),
                       targets=[classes.index(c) for _, c in rows], fingerprint="tsv", classnames=classes)

register_format(Format("tsv", "classification", detect, read, "a labels.tsv (FILE<TAB>CLASS) folder", priority=40))
'''

RETRIEVAL_MODULE = '''
from PIL import Image
from evalkit.data.formats import Format, register_format
from evalkit.data.sources import ImageSource

def detect(root, split, wds_split):
    return (root / f"{split}_captions.tsv").is_file()

def read(root, split, wds_split):
    rows = [line.split("\t") for line in (root / f"{split}_captions.tsv").read_text().splitlines()]
    files = list(dict.fromkeys(f for f, _ in rows))
    return ImageSource(name=f"tsv:{root}", ids=files, opener=lambda i: Image.open(root / files[i]).convert("RGB"),
                       targets=[[c for f2, c in rows if f2 == f] for f in files], fingerprint="tsv-captions",
                       meta={"format": "tsv-captions"})

register_format(Format("tsv-captions", "retrieval", detect, read, "a <split>_captions.tsv (FILE<TAB>CAPTION) folder",
                       priority=50))
'''

LAYOUT_MODULE = '''
from evalkit.grids.source import Layout, register_layout
from evalkit.models.spec import ModelSpec

def specs(value, model=None, family=None, where=None, epochs=None):
    run, _, n = value.partition("#")
    return [ModelSpec(model=model or "ViT-B-32", pretrained=f"{run}/epoch_{k}.pt", epoch=k, run=run)
            for k in range(1, int(n) + 1)]

register_layout(Layout("hash-run", "grid", lambda value: "#" in value, specs, priority=50))
'''


def _import(tmp_path, monkeypatch, name: str, source: str):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def test_a_new_format_is_one_module(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    for i, colour in enumerate(("red", "blue", "red")):
        Image.new("RGB", (8, 8), colour).save(root / f"{i}.png")
    (root / "labels.tsv").write_text("0.png\tred\n1.png\tblue\n2.png\tred\n")
    with FORMATS.preserved():
        _import(tmp_path, monkeypatch, "user_tsv_format", FORMAT_MODULE)
        source = open_classification(root)
        assert (source.ids, list(source.targets), source.classnames) == (["0.png", "1.png", "2.png"], [1, 0, 1],
                                                                         ["blue", "red"])
        assert source.opener(1).getpixel((0, 0)) == (0, 0, 255)
    assert "tsv" not in FORMATS
    # without it the same folder is no known layout, and the error lists the registered ones
    try:
        open_classification(root)
    except Exception as e:
        assert "unrecognised layout" in str(e) and "ImageNet val layout" in str(e) and "labels.tsv" not in str(e)
    else:
        raise AssertionError("an unknown layout must be an error")


def test_a_new_retrieval_format_is_one_module(tmp_path, monkeypatch):
    from evalkit.tasks.base import open_task
    from evalkit.tasks.spec import TaskSpec

    root = tmp_path / "data"
    root.mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(root / name)
    (root / "test_captions.tsv").write_text("a.png\ta red square\nb.png\ta blue square\na.png\tsomething red\n")
    assert [f.name for f in formats_of("retrieval")] == ["coco-captions", "flickr-captions", "wds-retrieval",
                                                         "hf-retrieval"]  # the built-ins, in the order asked
    with FORMATS.preserved():
        _import(tmp_path, monkeypatch, "user_tsv_captions", RETRIEVAL_MODULE)
        source = open_retrieval(root, "test")
        assert (source.ids, list(source.targets)) == (["a.png", "b.png"],
                                                      [["a red square", "something red"], ["a blue square"]])
        assert source.opener(1).getpixel((0, 0)) == (0, 0, 255)
        # the retrieval protocol opens it through the same registry: the task resolves against its data
        spec, opened = open_task(TaskSpec(name="tsv_captions", type="zeroshot_retrieval", dataset="tsv"), root)
        assert opened.ids == source.ids and spec.data == {"fingerprint": "tsv-captions", "n_images": 2}
        with pytest.raises(DataError, match="unrecognised layout for split 'val'.*_captions.tsv"):
            open_retrieval(root, "val")  # ... and its layout is listed among the others when none fits
    assert "tsv-captions" not in FORMATS
    with pytest.raises(DataError, match="unrecognised layout for split 'test'") as e:
        open_retrieval(root, "test")
    assert "coco_<split>_karpathy.json" in str(e.value) and "_captions.tsv" not in str(e.value)


def test_a_new_grid_layout_is_one_module(tmp_path, monkeypatch):
    with LAYOUTS.preserved():
        _import(tmp_path, monkeypatch, "user_hash_layout", LAYOUT_MODULE)
        specs = model_specs(grid="runs/a#3")
        assert [(s.pretrained, s.epoch, s.run) for s in specs] == [
            ("runs/a/epoch_1.pt", 1, "runs/a"), ("runs/a/epoch_2.pt", 2, "runs/a"), ("runs/a/epoch_3.pt", 3, "runs/a")]
    assert "hash-run" not in LAYOUTS
