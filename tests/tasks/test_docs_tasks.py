"""docs/tasks.md, done exactly as written: its YAML files become task files, its protocol module is
installed through the entry point it shows, and each is run."""

from __future__ import annotations

import contextlib
import re
import shutil
import sys

import pytest
import torch
from _embedded import DATA, trained_checkpoint
from _util import REPO

from evalkit.engine import RunOptions, run
from evalkit.models.spec import ModelSpec
from evalkit.results.store import collect
from evalkit.tasks.loader import get_task

DOC = REPO / "docs" / "tasks.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def doc_world(tmp_path, monkeypatch):
    """The doc's task files in a folder named by EVALKIT_TASKS; data for its datasets."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for text in blocks("yaml"):
        name = re.search(r"^name: (\S+)", text, flags=re.M).group(1)
        if "type: class_similarity" not in text:  # that one needs the doc's protocol installed first
            (tasks / f"{name}.yaml").write_text(text)
    monkeypatch.setenv("EVALKIT_TASKS", str(tasks))
    data = tmp_path / "data"
    for folder in ("pets", "wds_cifar10"):
        shutil.copytree(DATA / "wds_shapes", data / folder)
    shutil.copytree(DATA / "imagenet_folder", data / "shapes")
    return tmp_path


@pytest.fixture(scope="module")
def ckpt():
    path, config = trained_checkpoint("tinyclip-S_s2k")
    return ModelSpec(model=str(config), pretrained=str(path), name="tinyclip-S")


def _run(ckpt, names, tmp_path):
    out = tmp_path / "out"
    run([ckpt], [get_task(n) for n in names],
        RunOptions(out=out, data_root=str(tmp_path / "data" / "{dataset}"), device="cpu", cache_dir=tmp_path / "cache"))
    return collect(out)


def test_doc_shows_each_kind():
    assert len(blocks("yaml")) == 4 and len(blocks("python")) == 1 and len(blocks("toml")) == 1


def test_dataset_variant_and_suite_as_documented(doc_world, ckpt):
    table = _run(ckpt, ["pets", "pets_plain", "my_suite"], doc_world)
    v = table.set_index(["task", "metric"]).value
    assert sorted(table[table.task == "pets"].metric) == ["acc1", "mean_per_class_recall"]  # as selected
    assert sorted(table[table.task == "pets_plain"].metric) == ["acc1", "mean_per_class_recall"]  # included
    hashes = table.groupby("task").task_hash.first()
    assert hashes["pets"] != hashes["pets_plain"]  # other prompts: another task
    assert get_task("pets_plain").templates == ["a photo of a {c}."] and get_task("pets_plain").dataset == "pets"
    avg = (v["pets", "mean_per_class_recall"] + v["wds/wds_cifar10", "acc1"]) / 2
    assert v["my_suite", "average"] == pytest.approx(avg)


def test_protocol_module_as_documented(doc_world, ckpt, monkeypatch, request):
    from evalkit.tasks import base

    pkg = doc_world / "site"
    pkg.mkdir()
    (pkg / "class_similarity.py").write_text(blocks("python")[0])
    # what installing the package with the doc's pyproject entry point puts on sys.path
    import tomllib

    [(group, eps)] = tomllib.loads(blocks("toml")[0])["project"]["entry-points"].items()
    dist = pkg / "class_similarity-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: class-similarity\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    monkeypatch.syspath_prepend(str(pkg))
    stack = contextlib.ExitStack()
    stack.enter_context(base.PROTOCOLS.preserved())
    request.addfinalizer(stack.close)
    base.PROTOCOLS.unregister("class_similarity")
    base.PROTOCOLS.rescan()  # installed after evalkit first read its entry points
    monkeypatch.delitem(sys.modules, "class_similarity", raising=False)

    [text] = [t for t in blocks("yaml") if "type: class_similarity" in t]
    (doc_world / "tasks" / "shapes_similarity.yaml").write_text(text)
    table = _run(ckpt, ["shapes_similarity"], doc_world)
    assert list(table.metric) == ["mean_true_class_similarity"] and (table.status == "ok").all()

    # by hand: open_clip's own preprocessing and towers, each image against its class's prompt
    import open_clip

    from evalkit.data.open import open_classification
    from evalkit.models.factory import load_model

    lm = load_model(ckpt)
    src = open_classification(DATA / "imagenet_folder", split="val")
    prompts = [f"a {c}." for c in src.classnames]
    cfg = lm.preprocess
    pre = open_clip.image_transform(cfg.size, is_train=False, mean=cfg.mean, std=cfg.std)
    with torch.no_grad():
        text = lm.encode_text(lm.tokenizer(prompts))
        images = torch.stack([pre(src.open(i).convert("RGB")) for i in range(len(src))])
        feats = lm.encode_image(images)
    want = (feats * text[torch.as_tensor(src.targets)]).sum(-1).mean().item()
    assert table.value.iloc[0] == pytest.approx(want, abs=1e-5)
