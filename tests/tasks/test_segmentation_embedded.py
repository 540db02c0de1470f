"""Segmentation probes end to end on the embedded world: the trained tiny CLIP's linear probe is far
above a random-weight model of the same architecture; the Hugging Face format gives the ADE layout's
numbers; the zero-shot protocol runs on both families' readouts."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from _embedded import DATA, trained_checkpoint
from _util import TINY_S, tiny_clip

import evalkit
from evalkit.engine import RunOptions, run
from evalkit.models.spec import ModelSpec
from evalkit.results.store import collect
from evalkit.tasks.loader import get_task

ADE = DATA / "ADEChallengeData2016"


def _metrics(table, task: str) -> dict[str, float]:
    rows = table[table.task == task]
    assert (rows.status == "ok").all(), rows.error.tolist()
    return dict(zip(rows.metric, rows.value))


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("random") / "random.pt"
    torch.save(tiny_clip(TINY_S, seed=0).state_dict(), path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The linear probe's train images go through the decode cache: keep it inside the test."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_trained_linear_probe_far_above_random_weights(random_ckpt, tmp_path, cache):
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    t0 = time.time()
    trained = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), ["shapes_ade20k"], out=tmp_path / "a",
                               device="cpu", precision="fp32", cache_dir=cache)
    t_trained = time.time() - t0
    rand = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(random_ckpt)), ["shapes_ade20k"],
                            out=tmp_path / "b", device="cpu", precision="fp32", cache_dir=cache)
    a, b = _metrics(trained, "shapes_ade20k"), _metrics(rand, "shapes_ade20k")
    print(f"\nshapes_ade20k linear probe: trained miou={a['miou']:.4f} pixel_acc={a['pixel_acc']:.4f} "
          f"({t_trained:.1f} s); random miou={b['miou']:.4f} pixel_acc={b['pixel_acc']:.4f}")
    assert a["miou"] > b["miou"] + 0.03 and a["miou"] > 1.2 * b["miou"]


@pytest.mark.slow
def test_hf_datasets_format_matches_ade_layout(random_ckpt, tmp_path, cache):
    """A save_to_disk DatasetDict (splits train/validation, columns image/annotation) gives identical numbers
    to the ADE layout holding the same images (60 train, 40 validation)."""
    import datasets
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    splits = {}
    for ours, theirs, n in (("training", "train", 60), ("validation", "validation", 40)):
        imgs = sorted((ADE / "images" / ours).iterdir())[:n]
        for sub, files in (("images", imgs), ("annotations", [ADE / "annotations" / ours / f"{p.stem}.png" for p in imgs])):
            (tmp_path / "ade" / sub / ours).mkdir(parents=True)
            for f in files:
                shutil.copy(f, tmp_path / "ade" / sub / ours / f.name)
        rows = {"image": [Image.open(p).convert("RGB") for p in imgs],
                "annotation": [Image.open(ADE / "annotations" / ours / f"{p.stem}.png") for p in imgs]}
        splits[theirs] = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hf_ade"))
    # JPEG pixels are stored losslessly (PNG) by datasets.Image, so the decoded inputs are identical
    spec = ModelSpec(model=str(TINY_S), pretrained=str(random_ckpt))
    kw = dict(device="cpu", precision="fp32", cache_dir=cache)
    hf = evalkit.evaluate(spec, ["shapes_ade20k"], data_root=str(tmp_path / "hf_ade"), out=tmp_path / "hf", **kw)
    ade = evalkit.evaluate(spec, ["shapes_ade20k"], data_root=str(tmp_path / "ade"), out=tmp_path / "o_ade", **kw)
    assert _metrics(hf, "shapes_ade20k") == pytest.approx(_metrics(ade, "shapes_ade20k"), abs=1e-9)


def test_zero_shot_protocol_runs_and_is_recorded(tmp_path, cache):
    """Zero-shot (MaskCLIP) end to end on the trained tiny CLIP, with per-class tables logged."""
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    lin, zs = get_task("shapes_ade20k"), get_task("shapes_ade20k@zero-shot")
    assert zs.options["protocol"] == "zero-shot" and lin.options["protocol"] == "linear" and zs.hash != lin.hash
    spec = ModelSpec(model=str(cfg), pretrained=str(ckpt))
    counts = run([spec], [zs], RunOptions(out=tmp_path / "o", device="cpu", precision="fp32", cache_dir=cache,
                                          log_samples=True))
    assert counts["ok"] == 1
    m = _metrics(collect(tmp_path / "o"), "shapes_ade20k@zero-shot")
    # both protocols in one image pass (two readouts of one forward each) give the same zero-shot numbers
    counts = run([spec], [lin, zs], RunOptions(out=tmp_path / "both", device="cpu", precision="fp32", cache_dir=cache))
    assert counts["ok"] == 2
    assert _metrics(collect(tmp_path / "both"), "shapes_ade20k@zero-shot") == pytest.approx(m, abs=1e-9)
    assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["pixel_acc"] <= 1.0
    import pandas as pd

    (samples,) = list((tmp_path / "o" / "samples").glob("*.parquet"))
    per_class = pd.read_parquet(samples)
    assert list(per_class["class"]) == lin.classnames
    assert per_class.iou.mean(skipna=True) == pytest.approx(m["miou"])
