"""Checkpoint loading in every real format gives exactly what open_clip's own loading gives; bad files
are refused with messages that name the file and the problem."""

from __future__ import annotations

import os
import pickle

import open_clip
import pytest
import torch
from _util import TINY_M, TINY_S, save_local_dir, save_training_checkpoint, tiny_clip

from evalkit.models.checkpoint import CheckpointError, read_state_dict
from evalkit.models.configs import ModelNotFound
from evalkit.models.factory import load_model
from evalkit.models.spec import ModelSpec

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _features(model, tokenizer):
    with torch.no_grad():
        img = model.encode_image(IMAGES, normalize=True)
        txt = model.encode_text(tokenizer(["a red circle", "a blue square", ""]), normalize=True)
    return img, txt


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A trained-looking tiny CLIP and its features as open_clip computes them."""
    model = tiny_clip(TINY_S, seed=3)
    for p in model.parameters():  # move off init so a wrong load cannot pass by accident
        p.data.add_(0.05 * torch.randn_like(p))
    tok = open_clip.get_tokenizer("tinyclip-S")
    return model, _features(model, tok)


def _check(lm, ref_feats):
    img, txt = _features(lm.model, lm.tokenizer)
    assert torch.equal(img, ref_feats[0])
    assert torch.equal(txt, ref_feats[1])


def test_training_checkpoint_with_module_prefix_and_optimizer(reference, tmp_path):
    model, feats = reference
    path = save_training_checkpoint(model, tmp_path / "run" / "checkpoints" / "epoch_3.pt")
    # open_clip's own loader, with the state dict bare (it cannot read the full training file safely)
    lm = load_model(ModelSpec(model=str(TINY_S), pretrained=str(path)))
    assert lm.family == "clip" and lm.text_pooling == "eot" and lm.preprocess.size == 32
    oc = open_clip.create_model("tinyclip-S", pretrained=None)
    open_clip.load_checkpoint(oc, str(_bare(model, tmp_path)))
    oc.eval()
    _check(lm, _features(oc, open_clip.get_tokenizer("tinyclip-S")))
    _check(lm, feats)


def _bare(model, tmp_path):
    p = tmp_path / "bare.pt"
    torch.save(model.state_dict(), p)
    return p


def test_open_clip_refuses_the_training_file_but_evalkit_reads_it(reference, tmp_path):
    model, _ = reference
    path = save_training_checkpoint(model, tmp_path / "epoch_1.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        open_clip.load_checkpoint(open_clip.create_model("tinyclip-S"), str(path))
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict()) and not any(k.startswith("module.") for k in state)


def test_bare_state_dict_and_safetensors_and_local_dir(reference, tmp_path):
    model, feats = reference
    _check(load_model(ModelSpec(model="tinyclip-S", pretrained=str(_bare(model, tmp_path)))), feats)
    folder = save_local_dir(model, TINY_S, tmp_path / "hub")
    _check(load_model(ModelSpec(model="tinyclip-S", pretrained=str(folder / "open_clip_model.safetensors"))), feats)
    lm = load_model(ModelSpec(model=f"local-dir:{folder}"))
    oc = open_clip.create_model(f"local-dir:{folder}").eval()
    _check(lm, _features(oc, open_clip.get_tokenizer(f"local-dir:{folder}")))
    _check(lm, feats)


def test_hf_cache_layout_offline(reference, tmp_path, monkeypatch):
    """`hf-hub:ORG/REPO` resolves from the local Hugging Face cache with HF_HUB_OFFLINE=1."""
    model, feats = reference
    snap = tmp_path / "hub" / "models--laion--tiny-clip" / "snapshots" / ("a" * 40)
    save_local_dir(model, TINY_S, snap)
    (tmp_path / "hub" / "models--laion--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--laion--tiny-clip" / "refs" / "main").write_text("a" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    _check(load_model("hf-hub:laion/tiny-clip"), feats)


def test_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused to unpickle"):
            read_state_dict(p)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file(reference, tmp_path):
    model, _ = reference
    path = save_training_checkpoint(model, tmp_path / "epoch_2.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"epoch_2\.pt.*truncated or corrupt"):
        read_state_dict(path)


def test_checkpoint_of_another_architecture_names_keys(tmp_path):
    import json

    deeper = json.loads(TINY_S.read_text())
    deeper["vision_cfg"]["layers"] = 3
    (tmp_path / "tinyclip-S3.json").write_text(json.dumps(deeper))
    other = tiny_clip(tmp_path / "tinyclip-S3.json")
    path = save_training_checkpoint(other, tmp_path / "epoch_1.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(ModelSpec(model="tinyclip-S", pretrained=str(path)))
    msg = str(e.value)
    assert "epoch_1.pt" in msg and "Unexpected keys" in msg and "visual.transformer.resblocks.2" in msg
    wider = save_training_checkpoint(tiny_clip(TINY_M), tmp_path / "epoch_2.pt")
    with pytest.raises(CheckpointError, match=r"epoch_2\.pt: shape mismatch .*visual\.conv1\.weight"):
        load_model(ModelSpec(model="tinyclip-S", pretrained=str(wider)))


def test_unknown_model_lists_close_names():
    from evalkit.grids.zoo import resolve_model_arg

    with pytest.raises(ModelNotFound, match="Close names: .*ViT-B-32"):
        resolve_model_arg("ViT-B-23")
    with pytest.raises(ModelNotFound, match="Close names: .*tinyclip-S"):
        resolve_model_arg("tinyclip-Z")


def test_reuse_loads_the_next_checkpoint_in_place(tmp_path):
    """The engine's module reuse gives exactly a fresh load of each checkpoint."""
    a = save_training_checkpoint(tiny_clip(TINY_S, seed=11), tmp_path / "a" / "epoch_1.pt")
    b = save_training_checkpoint(tiny_clip(TINY_S, seed=12), tmp_path / "b" / "epoch_1.pt")
    built: dict = {}
    first = load_model(ModelSpec(model="tinyclip-S", pretrained=str(a)), reuse=built)
    second = load_model(ModelSpec(model="tinyclip-S", pretrained=str(b)), reuse=built)
    assert second.model is first.model and len(built) == 1
    fresh = load_model(ModelSpec(model="tinyclip-S", pretrained=str(b)))
    for (k, v), (k2, v2) in zip(second.model.state_dict().items(), fresh.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not torch.equal(read_state_dict(a)["visual.conv1.weight"], fresh.model.visual.conv1.weight)
