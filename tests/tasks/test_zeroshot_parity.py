"""Zero-shot classification equals clip_benchmark's on the same model, data and preprocessing
(fp32, amp=False): identical per-sample predictions and metrics to 1e-6, folder and wds formats."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
from _embedded import DATA, trained_checkpoint
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.metrics import zeroshot_classification as cb
from torchvision.datasets import ImageFolder

import evalkit
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.spec import ModelSpec
from evalkit.tasks.loader import get_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    open_clip.add_model_config(str(cfg))
    bare = tmp_path_factory.mktemp("bare") / "weights.pt"
    torch.save(read_state_dict(ckpt), bare)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.stem, pretrained=str(bare))
    return ckpt, cfg, model.eval(), preprocess, open_clip.get_tokenizer(cfg.stem)


def _clip_benchmark(model, preprocess, tokenizer, dataset, classnames, templates):
    loader = torch.utils.data.DataLoader(dataset, batch_size=37, num_workers=0)
    metrics = cb.evaluate(model, loader, tokenizer, classnames, templates, "cpu", amp=False)
    classifier = cb.zero_shot_classifier(model, tokenizer, classnames, templates, "cpu", amp=False)
    logits, target = cb.run_classification(model, classifier, loader, "cpu", amp=False)
    return metrics, logits.argmax(1).numpy(), target.numpy()


def _evalkit(ckpt, cfg, task, data_root, tmp_path, batch_size=64):
    table = evalkit.evaluate(
        ModelSpec(model=str(cfg), pretrained=str(ckpt)), [task], data_root=data_root, out=tmp_path / "out",
        device="cpu", precision="fp32", batch_size=batch_size, log_samples=True, cache_dir=tmp_path / "cache",
    )
    import pandas as pd

    assert (table.status == "ok").all(), table.error.tolist()
    samples = pd.read_parquet(next((tmp_path / "out" / "samples").glob("*.parquet")))
    top1 = np.array([row[0] for row in samples.top_indices])
    return dict(zip(table.metric, table.value)), top1, samples.target.to_numpy()


def _compare(ours, theirs, trained: bool = True):
    (m1, p1, t1), (m2, p2, t2) = ours, theirs
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(p1, p2)
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert math.isclose(m1[k], m2[k], abs_tol=1e-6), (k, m1[k], m2[k])
    if trained:
        assert m1["acc1"] > 0.5  # trained: far above the 10% of chance


def test_folder_layout_matches_clip_benchmark(trained, tmp_path):
    ckpt, cfg, model, preprocess, tok = trained
    spec = get_task("shapes")
    classnames = [line.strip() for line in (DATA / "imagenet_folder" / "classnames.txt").read_text().splitlines()]
    ds = ImageFolder(str(DATA / "imagenet_folder" / "val"), transform=preprocess)
    theirs = _clip_benchmark(model, preprocess, tok, ds, classnames, spec.templates)
    ours = _evalkit(ckpt, cfg, "shapes", str(DATA / "imagenet_folder"), tmp_path)
    _compare(ours, theirs)


def test_wds_layout_matches_clip_benchmark(trained, tmp_path):
    ckpt, cfg, model, preprocess, tok = trained
    root = DATA / "wds_shapes"
    ds = build_dataset("wds/wds_shapes", root=str(root), transform=preprocess, split="test")
    theirs = _clip_benchmark(model, preprocess, tok, ds, ds.classes, ds.templates)
    ours = _evalkit(ckpt, cfg, "wds/wds_shapes", str(DATA / "{dataset}"), tmp_path, batch_size=19)
    _compare(ours, theirs)


def test_imagenet1k_task_uses_the_openai_lists():
    spec = get_task("imagenet1k")
    r = spec.resolved()
    assert len(r.classnames) == 1000 and len(r.templates) == 80
    assert r.classnames[:2] == ["tench", "goldfish"] and r.templates[0] == "a bad photo of a {c}."
    assert spec.metrics == ["acc1", "acc5", "mean_per_class_recall"] and spec.main_metric == "acc1"


TINY_TOWERS = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
               "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TINY_PAPER_KINDS = {
    # the paper's SigLIP runs: CLIP towers, a logit bias, CLIP's tokenizer (the name says SigLIP)
    "tiny-S-SigLIP": {**TINY_TOWERS, "init_logit_bias": -10},
    # the paper's CoCa runs: attentional pooler, CLS-embedded text, a multimodal decoder (the fork's shape)
    "coca_tiny-S": {
        "embed_dim": 32, "custom_text": True,
        "vision_cfg": {**TINY_TOWERS["vision_cfg"], "attentional_pool": True, "attn_pooler_heads": 2,
                       "output_tokens": True},
        "text_cfg": {**TINY_TOWERS["text_cfg"], "context_length": 31, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 31, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2},
    },
}


@pytest.mark.parametrize("name", sorted(TINY_PAPER_KINDS))
def test_siglip_and_coca_checkpoints_match_clip_benchmark(name, tmp_path):
    """A random-init tiny SigLIP / CoCa training checkpoint: evalkit's per-sample predictions and
    metrics equal clip_benchmark's on the model open_clip builds from the same config, with CLIP's
    tokenizer (the one the fork trained them with)."""
    import json

    from _util import save_training_checkpoint, tiny_clip

    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(TINY_PAPER_KINDS[name]))
    model = tiny_clip(cfg, seed=3)
    assert (model.logit_bias is not None) == name.endswith("SigLIP")
    assert type(model).__name__ == ("CoCa" if name.startswith("coca") else "CLIP")
    ckpt = save_training_checkpoint(model, tmp_path / "run" / "checkpoints" / "epoch_1.pt", 1)
    ctx = TINY_PAPER_KINDS[name]["text_cfg"]["context_length"]
    preprocess = open_clip.create_model_and_transforms(name, pretrained=None)[2]
    spec = get_task("shapes")
    classnames = [line.strip() for line in (DATA / "imagenet_folder" / "classnames.txt").read_text().splitlines()]
    ds = ImageFolder(str(DATA / "imagenet_folder" / "val"), transform=preprocess)
    theirs = _clip_benchmark(model, preprocess, lambda t: open_clip.tokenize(t, context_length=ctx), ds, classnames,
                             spec.templates)
    _compare(_evalkit(ckpt, cfg, "shapes", str(DATA / "imagenet_folder"), tmp_path), theirs, trained=False)
