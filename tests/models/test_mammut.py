"""evalkit's MaMMUT against the oracles made with LAION's open_clip_mammut fork.

Manifests pin the state-dict layout of the released sizes; micro-A pins the numerics (encode_image,
encode_text, captioning logits) of a trained-looking tiny model, its preprocessing and its tokens.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from _util import fixture_path

from evalkit.errors import UsageError
from evalkit.models.checkpoint import CheckpointError, _torch_load, load_into, read_state_dict
from evalkit.models.families.mammut import MaMMUT, MaMMUTFamily
from evalkit.models.family import FAMILIES, family_for

MANIFESTS = fixture_path("mammut-fork", "manifests")
MICRO = fixture_path("mammut-fork", "micro-A")
CONFIG_DIR = Path(__file__).parents[2] / "evalkit" / "models" / "model_configs"
ATOL = 1e-5

MAMMUT_MANIFESTS = ["mammut_ViT-S-32", "mammut_ViT-B-32", "mammut_ViT-B-16", "mammut_ViT-L-14"]


def _micro_cfg() -> dict:
    return json.loads((MICRO / "config.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return read_state_dict(MICRO / "expected.pt")


@pytest.fixture(scope="module")
def inputs() -> dict:
    return _torch_load(MICRO / "inputs.pt")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return _torch_load(MICRO / "tokens.pt")  # type: ignore[return-value]


# ---------------------------------------------------------------- layout against the fork's manifests


@pytest.mark.parametrize("name", MAMMUT_MANIFESTS)
def test_state_dict_matches_manifest(name: str) -> None:
    man = json.loads((MANIFESTS / f"{name}.json").read_text())
    with torch.device("meta"):
        model = MaMMUT(man["config"])
    sd = model.state_dict()
    want = man["state_dict"]
    assert set(sd) == set(want), (sorted(set(sd) - set(want))[:5], sorted(set(want) - set(sd))[:5])
    for key, (shape, dtype) in want.items():
        assert list(sd[key].shape) == shape, key
        assert str(sd[key].dtype).removeprefix("torch.") == dtype, key
    assert len(sd) == man["n_state_dict_tensors"]
    assert sum(p.numel() for p in model.parameters()) == man["n_params"]
    assert sum(v.numel() for v in sd.values()) == man["n_state_dict_elements"]
    # The packaged config of this size is the fork's.
    assert json.loads((CONFIG_DIR / f"{name}.json").read_text()) == man["config"]


def test_l14_breakdown_and_quirks() -> None:
    """The spec's L-14 parameter breakdown and the quirks that make a port go wrong."""
    cfg = json.loads((CONFIG_DIR / "mammut_ViT-L-14.json").read_text())
    with torch.device("meta"):
        model = MaMMUT(cfg)

    def count(prefix: str) -> int:
        return sum(p.numel() for k, p in model.named_parameters() if k.startswith(prefix))

    assert count("visual.") == 303_966_208
    assert count("text.resblocks.") == 85_054_464
    assert count("text.cross_attn.") == 42_536_448
    assert model.text.token_embedding.weight.shape == (49408, 768)
    assert model.text.text_projection.shape == (768, 49408)
    assert len(model.text.cross_attn) == 6 and model.text.cross_step == 2
    # 6 layers, ratio 3: cross-attention after layers 0 and 3 only.
    small = dict(cfg, text_cfg=dict(cfg["text_cfg"], layers=6, cross_attn_ratio=3, has_mlp=False))
    with torch.device("meta"):
        tiny_b = MaMMUT(small)
    assert len(tiny_b.text.cross_attn) == 2 and tiny_b.text.cross_step == 3
    assert [blk.mlp is None for blk in tiny_b.text.resblocks] == [True, False, False, True, False, False]


def test_token_embedding_ignores_config_vocab() -> None:
    cfg = _micro_cfg()
    cfg["text_cfg"] = dict(cfg["text_cfg"], vocab_size=1000)
    with torch.device("meta"):
        model = MaMMUT(cfg)
    assert model.text.token_embedding.weight.shape == (49408, 8)
    assert model.text.text_projection.shape == (8, 1000)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("mammut_*.json")))
def test_packaged_configs_build(name: str) -> None:
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    assert MaMMUTFamily.matches(name, cfg)
    with torch.device("meta"):
        model = MaMMUT(cfg)
    assert model.visual.proj.shape[1] == cfg["text_cfg"]["width"] == cfg["embed_dim"]


def test_packaged_config_set() -> None:
    names = {p.stem for p in CONFIG_DIR.glob("mammut_ViT-*.json")}
    assert names == {f"mammut_ViT-{s}-{p}" for s in "SMBLH" for p in (32, 16, 14)}
    h14 = json.loads((CONFIG_DIR / "mammut_ViT-H-14.json").read_text())
    assert h14["vision_cfg"]["head_width"] == 80 and h14["text_cfg"]["layers"] == 24


# ---------------------------------------------------------------- micro-A numerics


def _micro_from(source: str) -> MaMMUT:
    if source == "epoch_3.pt":
        cfg = _micro_cfg()
        state = read_state_dict(MICRO / "epoch_3.pt")
    else:
        cfg = json.loads((MICRO / "open_clip_config.json").read_text())["model_cfg"]
        state = read_state_dict(MICRO / "open_clip_model.safetensors")
    model = MaMMUTFamily.build("mammut_micro-A", cfg)
    load_into(model, MaMMUTFamily.prepare_state_dict(model, state), source)
    return model.eval()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("source", ["epoch_3.pt", "open_clip_model.safetensors"])
def test_micro_a_matches_fork(source: str, expected: dict, inputs: dict, tokens: torch.Tensor) -> None:
    model = _micro_from(source)
    images = inputs["images"]
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
        got = {
            "image_features": img,
            "text_features": txt,
            "image_features_unnormalized": model.encode_image(images, normalize=False),
            "text_features_unnormalized": model.encode_text(tokens, normalize=False),
            "text_hidden_ln_final": model.text(tokens),
            "image_tokens_pre_ln_post": model.image_tokens(images),
            "image_features_nonsquare": model.encode_image(expected["preprocessed_nonsquare"]),
            "logit_scale": model.logit_scale,
            "logit_scale_exp": model.logit_scale.exp(),
            "similarity": txt @ img.T,
            "logits_per_text": model.logit_scale.exp() * txt @ img.T,
        }
        out = model(images, tokens[:4], is_training=False)
        assert out["text_features"] is None
        got["caption_logits_selected"] = out["logits"][..., expected["caption_vocab_idx"]]
        got["caption_logsumexp"] = out["logits"].logsumexp(dim=-1)
        train_out = model(images, tokens[:4])
        got["forward_image_features"] = train_out["image_features"]
        got["forward_text_features"] = train_out["text_features"]
    errors = {k: _max_err(v, expected[k]) for k, v in got.items()}
    bad = {k: e for k, e in errors.items() if not e <= ATOL}
    assert not bad, bad
    assert torch.equal(inputs["images"], expected["preprocessed"])
    # Training forward: logits for text[:, :-1] against shifted labels.
    assert train_out["logits"].shape == (4, 76, 49408)
    assert torch.equal(train_out["labels"], tokens[:4, 1:])
    # Patch tokens for probes: no CLS, pre-ln_post.
    with torch.no_grad():
        patches = MaMMUTFamily.image_patch_tokens(model, images)
    assert patches.shape == (4, 16, 64)
    assert _max_err(patches, expected["image_tokens_pre_ln_post"][:, 1:]) <= ATOL


def test_micro_a_catches_wrong_pooling(expected: dict, tokens: torch.Tensor) -> None:
    """The tolerance separates right from wrong: the fork's EOT-free mean vs a non-pad mean."""
    model = _micro_from("epoch_3.pt")
    with torch.no_grad():
        hidden = model.text(tokens)
    keep = (tokens != 0).unsqueeze(-1).float()
    nonpad_mean = torch.nn.functional.normalize((hidden * keep).sum(1) / keep.sum(1), dim=-1)
    assert _max_err(nonpad_mean, expected["text_features"]) > 1e-3


def test_eval_transform_bitwise(expected: dict) -> None:
    from open_clip.transform import image_transform
    from PIL import Image

    fam = MaMMUTFamily
    assert fam.text_pooling == "mean"
    pp = json.loads((MICRO / "open_clip_config.json").read_text())["preprocess_cfg"]
    tf = image_transform(64, is_train=False, mean=tuple(pp["mean"]), std=tuple(pp["std"]))
    batch = torch.stack([tf(Image.open(MICRO / f"img{i}.png")) for i in range(4)])
    assert torch.equal(batch, expected["preprocessed"])
    nonsquare = tf(Image.open(MICRO / "img_nonsquare.png")).unsqueeze(0)
    assert torch.equal(nonsquare, expected["preprocessed_nonsquare"])


def test_tokenizer_reproduces_tokens(tokens: torch.Tensor) -> None:
    captions = json.loads((MICRO / "captions.json").read_text())
    tok = MaMMUTFamily.tokenizer("mammut_micro-A", _micro_cfg())
    got = tok(captions)
    assert got.dtype == torch.int64 and torch.equal(got, tokens)
    assert got[4, :3].tolist() == [49406, 49407, 0]
    assert got[5, 76].item() == 49407


# ---------------------------------------------------------------- family rules and bad inputs


def test_family_rules() -> None:
    cfg = _micro_cfg()
    assert MaMMUTFamily.matches("mammut_micro-A", cfg)
    assert MaMMUTFamily.matches("hf-hub:laion/openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K", cfg)
    assert not MaMMUTFamily.matches("coca_mammut_x", cfg)  # "coca" wins, as in the fork
    assert not MaMMUTFamily.matches("mammut_micro-A", {k: v for k, v in cfg.items() if k != "custom_text"})
    assert not MaMMUTFamily.matches("micro-A", cfg)
    assert family_for("mammut_micro-A", cfg) is MaMMUTFamily
    keys = set(read_state_dict(MICRO / "open_clip_model.safetensors"))
    assert MaMMUTFamily.matches_state_dict(keys)
    assert not MaMMUTFamily.matches_state_dict({k for k in keys if not k.startswith("text.cross_attn.")})
    assert FAMILIES["mammut"] is MaMMUTFamily


def _tiny_clip() -> torch.nn.Module:
    import open_clip

    return open_clip.CLIP(
        embed_dim=8,
        vision_cfg={"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1},
    )


def _assert_names_keys(err: CheckpointError, model: torch.nn.Module, state: dict, source: str) -> None:
    """The message names the source, then real missing and unexpected keys with their true counts."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    assert missing and unexpected
    msg = str(err)
    assert msg.startswith(source)
    m = re.search(r"Missing keys: \[(.*?)\]\. Unexpected keys: \[(.*?)\]\.", msg)
    assert m is not None, msg
    for listed, true in ((m.group(1), missing), (m.group(2), unexpected)):
        names = [n for n in listed.split(", ") if not n.startswith("...")]
        assert names and all(n in true for n in names), (names, true[:8])
        assert f"({len(true)} in all)" in listed or len(true) == len(names)


def test_clip_state_into_mammut_fails() -> None:
    model = MaMMUTFamily.build("mammut_micro-A", _micro_cfg())
    state = _tiny_clip().state_dict()
    with pytest.raises(CheckpointError) as err:
        load_into(model, state, "tiny-clip.pt")
    _assert_names_keys(err.value, model, state, "tiny-clip.pt")
    assert "Missing keys: [map_viz2txt_kv" in str(err.value)
    assert "Unexpected keys: [positional_embedding, text_projection" in str(err.value)


def test_mammut_state_into_clip_fails() -> None:
    model = _tiny_clip()
    state = read_state_dict(MICRO / "open_clip_model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_into(model, state, "micro-A.safetensors")
    _assert_names_keys(err.value, model, state, "micro-A.safetensors")
    assert "Unexpected keys: [map_viz2txt_kv" in str(err.value)


def test_prepare_state_dict_scalar_and_grid() -> None:
    state = read_state_dict(MICRO / "open_clip_model.safetensors")
    state["logit_scale"] = state["logit_scale"].reshape(1)
    cfg = _micro_cfg()
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=96)  # grid 4x4 -> 6x6
    model = MaMMUT(cfg)
    fixed = MaMMUTFamily.prepare_state_dict(model, state)
    assert fixed["logit_scale"].shape == ()
    assert fixed["visual.positional_embedding"].shape == (37, 64)
    assert torch.equal(fixed["visual.positional_embedding"][0], state["visual.positional_embedding"][0])
    load_into(model, fixed, "resized")
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 96, 96)).shape == (1, 8)
    bad = dict(state, **{"visual.positional_embedding": torch.zeros(17, 32)})
    with pytest.raises(CheckpointError, match="visual.positional_embedding"):
        MaMMUTFamily.prepare_state_dict(MaMMUT(_micro_cfg()), bad)


def test_bad_configs_refused() -> None:
    cfg = _micro_cfg()
    with pytest.raises(UsageError, match="embed_dim"):
        MaMMUT(dict(cfg, embed_dim=16))
    with pytest.raises(NotImplementedError, match="does_full_decoding"):
        MaMMUT(dict(cfg, text_cfg=dict(cfg["text_cfg"], does_full_decoding=False)))


# ---------------------------------------------------------------- training


def test_tiny_trains_with_coca_loss() -> None:
    """The packaged tiny config trains with contrastive + captioning loss on a fixed batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids contention on a busy machine
    try:
        _train_tiny()
    finally:
        torch.set_num_threads(threads)


def _train_tiny() -> None:
    import open_clip

    torch.manual_seed(0)
    cfg = json.loads((CONFIG_DIR / "mammut_tiny-S.json").read_text())
    model = MaMMUT(cfg).train()
    images = torch.randn(8, 3, 32, 32)
    # 8 positions instead of 77 keep the 49408-way captioning logits cheap; the tower takes any length.
    text = torch.zeros(8, 8, dtype=torch.long)
    text[:, 0], text[:, 1], text[:, 2], text[:, 3] = 49406, torch.arange(8) + 320, 269, 49407
    loss_fn = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(images, text)
        clip_loss, cap_loss = loss_fn(**out)
        loss = clip_loss + cap_loss
        opt.zero_grad()
        loss.backward()
        if len(losses) == 1:  # the LM head starts at zero (as in the fork): step 2 reaches everything
            no_grad = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert no_grad == [], no_grad
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [0, 5, 4, 1]])
def test_coca_losses_equal_coca_loss(rows: list[int], inputs: dict, tokens: torch.Tensor) -> None:
    """The cheap training loss (trimmed pads, LM head on non-pad labels) equals CoCaLoss on forward,
    values and gradients, with and without a caption that fills all 77 positions."""
    import open_clip

    model = _micro_from("open_clip_model.safetensors").train()
    text = tokens[rows]
    ref_clip, ref_cap = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(**model(inputs["images"], text))
    (ref_clip + ref_cap).backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    clip, cap = model.coca_losses(inputs["images"], text, caption_loss_weight=2.0, clip_loss_weight=1.0)
    (clip + cap).backward()
    assert abs(clip.item() - ref_clip.item()) < 1e-5 and abs(cap.item() - ref_cap.item()) < 1e-5
    assert cap.item() > 1.0  # a real captioning loss, not an empty selection
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[k], atol=1e-5, rtol=1e-4), k


def test_embedded_training_hook() -> None:
    """train.py's mammut family builds the packaged tiny config and trains it with the CoCa loss."""
    import evalkit.embedded.train as train
    from evalkit.embedded.grid import GRID

    TRAIN_FAMILIES, load_model_config = train.FAMILIES, train.load_model_config

    runs = [r for r in GRID if r.family == "mammut"]
    assert runs and all(MaMMUTFamily.matches(r.model, load_model_config(r.model)) for r in runs)
    fam = TRAIN_FAMILIES["mammut"]
    torch.manual_seed(0)
    model = fam.build(load_model_config(runs[0].model))
    assert isinstance(model, MaMMUT)
    text = torch.zeros(4, 32, dtype=torch.long)
    text[:, :4] = torch.tensor([49406, 320, 1929, 49407])
    images = torch.randn(4, 3, 32, 32)
    loss = fam.loss(model, images, text)
    # Fresh model: zero LM head, so captioning is uniform over the batch's 5 token ids (sampled softmax).
    assert loss.item() > 2 * torch.log(torch.tensor(5.0)).item()
    # with the whole vocabulary as the sample, the sampled softmax is exactly the full CoCa caption loss
    full = model.coca_losses(images, text)
    sampled = model.coca_losses(images, text, vocab=torch.arange(49408))
    assert torch.allclose(full[1], sampled[1], atol=1e-6) and torch.equal(full[0], sampled[0])
    assert abs(full[1].item() - 2 * torch.log(torch.tensor(49408.0)).item()) < 1e-4
    loss.backward()
    assert model.logit_scale.grad is not None and model.visual.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- end to end through the factory


def _check_loaded(lm, expected: dict, inputs: dict, tokens: torch.Tensor) -> None:
    assert lm.family == "mammut" and lm.text_pooling == "mean"
    assert lm.context_length == 77 and lm.preprocess.size == 64
    assert torch.equal(lm.tokenizer(json.loads((MICRO / "captions.json").read_text())), tokens)
    with torch.no_grad():
        assert _max_err(lm.encode_image(inputs["images"]), expected["image_features"]) <= ATOL
        assert _max_err(lm.encode_text(tokens), expected["text_features"]) <= ATOL
        patches = lm.image_patch_tokens(inputs["images"])
    assert _max_err(patches, expected["image_tokens_pre_ln_post"][:, 1:]) <= ATOL


@pytest.mark.parametrize("config", ["mammut_micro-A.json", "config.json"])
def test_factory_epoch_checkpoint(config: str, expected: dict, inputs: dict, tokens: torch.Tensor) -> None:
    """`config.json` has no "mammut" in its name: the family then comes from the checkpoint's keys."""
    from evalkit.models.factory import load_model

    lm = load_model(str(MICRO / config), pretrained=str(MICRO / "epoch_3.pt"))
    _check_loaded(lm, expected, inputs, tokens)


def test_factory_local_dir(tmp_path: Path, expected: dict, inputs: dict, tokens: torch.Tensor) -> None:
    from evalkit.models.factory import load_model

    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(MICRO / f, tmp_path / f)
    lm = load_model(f"local-dir:{tmp_path}")
    _check_loaded(lm, expected, inputs, tokens)
    assert tuple(lm.preprocess.mean) == (0.48145466, 0.4578275, 0.40821073)


def test_factory_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: dict, inputs: dict, tokens: torch.Tensor
) -> None:
    from huggingface_hub import constants

    from evalkit.models.factory import load_model

    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--laion--openMaMMUT-micro-A"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(MICRO / f, snap / f)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lm = load_model("hf-hub:laion/openMaMMUT-micro-A")
    _check_loaded(lm, expected, inputs, tokens)
    assert Path(lm.source) == snap / "open_clip_model.safetensors"
