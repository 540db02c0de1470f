"""The `losses` protocol against open_clip's own losses computed here: `CoCaLoss` (its caption term and
its CLIP term) on the fork oracle's micro-A MaMMUT, `ClipLoss` per batch, `SigLipLoss` on a tiny SigLIP;
NaN for the head a model lacks; end to end on the embedded world."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _util import fixture_path

from evalkit.data.preprocess import PreprocessCfg
from evalkit.data.sources import ImageSource
from evalkit.engine.device import autocast_for
from evalkit.models.factory import load_model
from evalkit.models.family import LoadedModel
from evalkit.tasks.base import READOUTS, RunContext, protocols
from evalkit.tasks.spec import TaskSpec

MICRO = fixture_path("mammut-fork", "micro-A")


def _run(lm: LoadedModel, images: torch.Tensor, captions: list[str], batch_size: int, step: int = 3):
    spec = TaskSpec(name="l", type="losses", dataset="x", metrics=["contrastive_loss", "caption_loss", "cosine_distance"],
                    main_metric="contrastive_loss", options={"batch_size": batch_size, "annotation_file": None})
    source = ImageSource(name="pairs", ids=[str(i) for i in range(len(captions))], opener=lambda i: None,
                         targets=[[c, "another caption"] for c in captions], fingerprint="x")
    runner = protocols()["losses"](spec, source)
    ctx = RunContext(device=torch.device("cpu"), autocast=autocast_for(torch.device("cpu"), "fp32"))
    runner.prepare(lm, ctx)
    for s in range(0, len(captions), step):  # the engine's image path: the runner's readout per batch
        with torch.no_grad():
            runner.update(torch.arange(s, min(s + step, len(captions))), READOUTS[runner.needs](lm, images[s:s + step]))
    return runner.result().metrics


@pytest.fixture(scope="module")
def micro():
    lm = load_model(str(MICRO / "mammut_micro-A.json"), pretrained=str(MICRO / "epoch_3.pt"))
    inputs = torch.load(MICRO / "inputs.pt", weights_only=True)
    return lm, inputs["images"], list(inputs["captions"][:4])


def test_mammut_losses_equal_open_clips(micro) -> None:
    import open_clip

    lm, images, captions = micro
    tokens = lm.tokenizer(captions)
    with torch.no_grad():
        out = lm.model(images, tokens)  # the training forward: what CoCaLoss reads
        clip, caption = open_clip.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0)(**out)
        cos = 1 - (out["image_features"] * out["text_features"]).sum(-1)
    got = _run(lm, images, captions, batch_size=4)
    assert got["caption_loss"] == pytest.approx(float(caption), rel=1e-5)  # token-weighted over the whole set
    assert got["contrastive_loss"] == pytest.approx(float(clip), rel=1e-5)
    assert got["cosine_distance"] == pytest.approx(float(cos.mean()), rel=1e-5)
    # batches of 2: ClipLoss per consecutive batch, averaged over pairs; the caption loss does not move
    halves = []
    with torch.no_grad():
        for s in (0, 2):
            o = lm.model(images[s:s + 2], tokens[s:s + 2])
            halves.append(float(open_clip.ClipLoss()(o["image_features"], o["text_features"], o["logit_scale"])))
    two = _run(lm, images, captions, batch_size=2)
    assert two["contrastive_loss"] == pytest.approx(sum(halves) / 2, rel=1e-5)
    assert two["contrastive_loss"] != pytest.approx(got["contrastive_loss"], rel=1e-3)  # batch-size dependent
    assert two["caption_loss"] == pytest.approx(got["caption_loss"], rel=1e-6)


def test_siglip_uses_its_sigmoid_loss_and_has_no_caption_loss() -> None:
    import open_clip
    from open_clip.loss import SigLipLoss

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=8, vision_cfg={"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1},
                           init_logit_bias=-10.0).eval()
    lm = LoadedModel(model=model, family="clip", arch="tiny-siglip", preprocess=PreprocessCfg(size=32),
                     tokenizer=open_clip.SimpleTokenizer(), context_length=77, text_pooling="eot")
    images = torch.randn(5, 3, 32, 32)
    captions = ["a dog", "a cat", "two red circles", "a blue square", "x"]
    with torch.no_grad():
        img, txt = model.encode_image(images, normalize=True), model.encode_text(lm.tokenizer(captions), normalize=True)
        want = SigLipLoss()(img, txt, model.logit_scale.exp(), model.logit_bias)
    got = _run(lm, images, captions, batch_size=5, step=2)
    assert got["contrastive_loss"] == pytest.approx(float(want), rel=1e-5)
    assert math.isnan(got["caption_loss"])
    assert got["cosine_distance"] == pytest.approx(float((1 - (img * txt).sum(-1)).mean()), rel=1e-5)


def test_cap_has_only_the_caption_loss(micro) -> None:
    lm, images, captions = micro
    cap = LoadedModel(model=lm.model, family="cap", arch=lm.arch, preprocess=lm.preprocess, tokenizer=lm.tokenizer,
                      context_length=77, text_pooling="mean")
    got = _run(cap, images, captions, batch_size=4)
    assert math.isnan(got["contrastive_loss"]) and math.isnan(got["cosine_distance"])
    with torch.no_grad():
        out = lm.model(images, lm.tokenizer(captions))
        logits, labels = out["logits"], out["labels"]
        want = F.cross_entropy(logits.permute(0, 2, 1), labels, ignore_index=0)
    assert got["caption_loss"] == pytest.approx(float(want), rel=1e-5)


def test_embedded_end_to_end(tmp_path) -> None:
    from _embedded import trained_checkpoint

    import evalkit
    from evalkit.models.spec import ModelSpec

    ckpt, cfg = trained_checkpoint("mammut-tiny-S_s4k")
    table = evalkit.evaluate([ModelSpec(model=str(cfg), pretrained=str(ckpt), name="m")], ["shapes_losses"],
                             out=tmp_path / "out", device="cpu", cache_dir=tmp_path / "cache")
    vals = table.set_index("metric").value
    assert set(table.status) == {"ok"} and set(vals.index) == {"contrastive_loss", "caption_loss", "cosine_distance"}
    # trained: below chance (log 400 for 400 pairs in one batch; log 49408 per token)
    assert 0 < vals["contrastive_loss"] < math.log(400) and 0 < vals["caption_loss"] < math.log(49408)
    assert 0 < vals["cosine_distance"] < 1
