"""Model families are plug-ins: one module registers a family (docs/adding-a-model-family.md, done here
exactly as written), every hook has a default, a duplicate name warns; one parser for model sources;
zoo entries carry `preprocess:`."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from _util import REPO, TINY_S, save_local_dir, tiny_clip

from evalkit.models.configs import ModelNotFound
from evalkit.models.factory import load_model
from evalkit.models.family import (
    FAMILIES,
    FAMILY_MODULES,
    LoadedModel,
    ModelFamily,
    families,
    family_for,
    register_family,
    unregister_family,
)
from evalkit.models.source import parse_source
from evalkit.models.spec import ModelSpec
from evalkit.registry import RegistrationWarning

DOC = REPO / "docs" / "adding-a-model-family.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def _entry_points(toml: str) -> dict[str, str]:
    """`name = "value"` lines under `[project.entry-points."evalkit.families"]` of the doc's TOML."""
    section = toml.split('[project.entry-points."evalkit.families"]', 1)[1]
    return dict(re.findall(r'^\s*([\w.-]+)\s*=\s*"([^"]+)"', section, re.M))


def _install_doc_family(root: Path) -> tuple[Path, Path]:
    """What `pip install` of the doc's package leaves: the module on sys.path and a dist-info whose
    entry_points.txt has the doc's `evalkit.families` entry point. Returns (site dir, config JSON)."""
    (module_src,) = _blocks("python")[:1]
    (config_src,) = _blocks("json")
    (toml_src,) = _blocks("toml")
    eps = _entry_points(toml_src)
    assert eps == {"toy": "evalkit_toyfam"}
    site = root / "site"
    site.mkdir(parents=True)
    (site / "evalkit_toyfam.py").write_text(module_src)
    dist = site / "evalkit_toyfam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evalkit-toyfam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[evalkit.families]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    work = root / "work"
    work.mkdir()
    config = work / "toy-S.json"
    config.write_text(config_src)
    return site, config


@pytest.fixture
def registry_snapshot():
    """Restore the family registry after a test that registers families."""
    with FAMILIES.preserved():
        yield


def test_doc_family_installed_as_a_package_is_found_and_runs(tmp_path):
    """The doc's module, installed with the doc's entry point, in a fresh process: found on the first
    family lookup (nobody imports it), claims the doc's config, and `evalkit run` (as the doc shows)
    evaluates it on the embedded `shapes` task."""
    site, config = _install_doc_family(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "EVALKIT_CONFIG": str(tmp_path / "no-config.yaml")}
    env.pop("EVALKIT_DATA_ROOT", None)
    code = (
        "import json, sys, torch\n"
        "from evalkit.models.factory import load_model\n"
        "assert 'evalkit_toyfam' not in sys.modules\n"
        "lm = load_model('toy-S.json')\n"
        "x = lm.encode_image(torch.zeros(2, 3, 32, 32)); t = lm.encode_prompts(lm.tokenizer(['a circle', 'a square']))\n"
        "print(json.dumps({'family': lm.family, 'pooling': lm.text_pooling, 'pp': lm.preprocess.__dict__,\n"
        "                  'img': list(x.shape), 'txt': list(t.shape), 'ctx': lm.context_length,\n"
        "                  'module': type(lm.model).__module__}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=config.parent, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["family"] == "toy" and out["pooling"] == "mean" and out["module"] == "evalkit_toyfam"
    assert out["pp"] == {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                         "resize_mode": "squash"}
    assert out["img"] == [2, 32] and out["txt"] == [2, 32] and out["ctx"] == 16

    (cmd,) = [line for b in _blocks("sh") for line in b.splitlines() if line.startswith("evalkit run")]
    args = cmd.split()[1:] + ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", *args], cwd=config.parent, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 ok, 0 failed" in r.stdout + r.stderr
    rows = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(rows["family"]) == {"toy"} and set(rows["task"]) == {"shapes"} and (rows["status"] == "ok").all()


def test_family_from_a_module_is_used_by_load_model(tmp_path, registry_snapshot):
    """The doc's module imported in this process: `load_model` builds its model for the config it claims,
    loads a weights file into it, and every LoadedModel readout goes through the family's hooks."""
    site, config = _install_doc_family(tmp_path)
    sys.path.insert(0, str(site))
    try:
        toy = importlib.import_module("evalkit_toyfam")
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("evalkit_toyfam", None)
    assert families()["toy"] is toy.ToyFamily and FAMILIES["toy"] is toy.ToyFamily
    cfg = json.loads(config.read_text())
    assert family_for("toy-S", cfg) is toy.ToyFamily
    assert family_for("tinyclip-S", json.loads(TINY_S.read_text())).name == "clip"  # claims only its own

    torch.manual_seed(0)
    ref = toy.ToyTwoTower(cfg).eval()
    weights = tmp_path / "toy.pt"
    torch.save({"state_dict": ref.state_dict()}, weights)
    lm = load_model(ModelSpec(model=str(config), pretrained=str(weights)))
    assert isinstance(lm.model, toy.ToyTwoTower) and lm.family == "toy" and lm.text_pooling == "mean"
    assert lm.preprocess.resize_mode == "squash" and lm.preprocess.size == 32
    images = torch.randn(2, 3, 32, 32)
    tokens = lm.tokenizer(["a red circle", "a blue square"])
    with torch.no_grad():
        torch.testing.assert_close(lm.encode_image(images), ref.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(lm.encode_prompts(tokens), ref.encode_text(tokens), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="toy"):
        lm.image_dense_features(images)

    # asked for by name, the family is used whatever `matches` says
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in cfg.items() if k != "toy_family"}))
    assert load_model(ModelSpec(model=str(plain), family="toy")).family == "toy"
    with pytest.raises(ModelNotFound, match="unknown model family 'nope'.*clip.*mammut.*toy"):
        load_model(ModelSpec(model=str(plain), family="nope"))


def test_every_hook_has_a_default(registry_snapshot):
    """A family that only builds works everywhere a LoadedModel is used; no hook is probed with hasattr."""

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def encode_image(self, x, normalize=True):
            return torch.nn.functional.normalize(self.lin(x.flatten(1)[:, :4]), dim=-1)

        def encode_text(self, t, normalize=True):
            return torch.nn.functional.normalize(self.lin(t[:, :4].float()), dim=-1)

    @register_family
    class BareFamily(ModelFamily):
        name = "bare-test"

        @classmethod
        def build(cls, model_name, model_cfg):
            return Bare()

    for hook in ("matches", "matches_state_dict", "prepare_state_dict", "preprocess", "tokenizer",
                 "text_pooling_for", "encode_image", "encode_text", "encode_text_prefix",
                 "image_patch_tokens", "image_dense_features", "profile_forward"):
        assert hook in vars(ModelFamily), hook
        assert hook not in vars(BareFamily)
    assert not BareFamily.matches("x", {}) and not BareFamily.matches_state_dict({"a"})
    assert BareFamily.preprocess("x", {}) == {} and BareFamily.text_pooling_for(Bare()) == "eot"
    lm = LoadedModel(model=Bare(), family="bare-test", arch="bare", preprocess=None, tokenizer=None,
                     context_length=77, text_pooling="eot")
    t = torch.ones(2, 8, dtype=torch.long)
    torch.testing.assert_close(lm.encode_prompts(t), lm.encode_text(t))
    with pytest.raises(NotImplementedError, match="bare-test"):
        lm.image_patch_tokens(torch.zeros(1, 3, 4, 4))
    with pytest.raises(NotImplementedError, match="build"):
        ModelFamily.build("x", {})
    for path in (REPO / "evalkit" / "models" / "factory.py", REPO / "evalkit" / "models" / "family.py"):
        assert not re.search(r"hasattr\((fam|family|cls)\b", path.read_text()), path


def test_duplicate_registration_warns_and_the_later_wins(registry_snapshot):
    class First(ModelFamily):
        name = "dup-test"

    class Second(ModelFamily):
        name = "dup-test"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_family(First)
        register_family(First)  # the same class again: nothing to say
    with pytest.warns(RegistrationWarning, match="model family 'dup-test' registered twice.*Second replaces.*First"):
        register_family(Second)
    assert families()["dup-test"] is Second
    assert unregister_family("dup-test") is Second and "dup-test" not in families()
    with pytest.raises(ValueError, match="no `name`"):
        register_family(type("Nameless", (ModelFamily,), {}))
    with pytest.raises(TypeError, match="register_family: <class 'dict'> is not a ModelFamily subclass"):
        register_family(dict)  # type: ignore[arg-type]


def test_builtin_families_come_from_the_one_module_list():
    """No import of factory (or anything) registers them: the first `families()` call loads the list."""
    assert FAMILY_MODULES == ("evalkit.models.families.clip", "evalkit.models.families.mammut")
    code = ("import sys\nfrom evalkit.models.family import families, FAMILIES\n"
            "assert not FAMILIES._items and 'evalkit.models.families.clip' not in sys.modules\n"
            "print(sorted((n, f.__module__) for n, f in families().items()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("[('cap', 'evalkit.models.families.mammut'), ('clip', 'evalkit.models.families.clip'), "
                                "('mammut', 'evalkit.models.families.mammut')]")
    factory_src = (REPO / "evalkit" / "models" / "factory.py").read_text()
    assert "models.clip" not in factory_src and "models.mammut" not in factory_src and "import clip" not in factory_src


@pytest.mark.parametrize("text,kind,value", [
    ("hf-hub:laion/CLIP-ViT-L-14", "hf-hub", "laion/CLIP-ViT-L-14"),
    ("hf-hub-file:laion/grid@abc:run/epoch_3.pt", "hf-hub-file", "laion/grid@abc:run/epoch_3.pt"),
    ("local-dir:~/models/x", "local-dir", "~/models/x"),
    ("configs/tinyclip-S.json", "config", "configs/tinyclip-S.json"),
    ("tinyclip-S.json", "config", "tinyclip-S.json"),
    ("logs/run/checkpoints/epoch_3.pt", "file", "logs/run/checkpoints/epoch_3.pt"),
    ("epoch_3.safetensors", "file", "epoch_3.safetensors"),
    ("ViT-B-32", "name", "ViT-B-32"),
    ("laion2b_s34b_b79k", "name", "laion2b_s34b_b79k"),
    ("openMaMMUT-L-14", "name", "openMaMMUT-L-14"),
])
def test_parse_source(text, kind, value):
    src = parse_source(text)
    assert (src.kind, src.value, src.raw) == (kind, value, text)
    assert src.includes_weights == (kind in ("hf-hub", "local-dir"))


def test_parse_source_sees_existing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").write_bytes(b"")
    assert parse_source("weights").kind == "file" and parse_source("other").kind == "name"
    assert parse_source("local-dir:~/x").path == Path("~/x").expanduser()


def test_sources_are_told_apart_in_both_positions(tmp_path):
    """A hub checkpoint file is not a model and a hub repo is not a weights file: each said in one line."""
    from evalkit.models.checkpoint import CheckpointError

    with pytest.raises(ModelNotFound, match="checkpoint file, not a model"):
        load_model(ModelSpec(model="hf-hub-file:org/repo:run/epoch_1.pt"))
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_model(ModelSpec(model=str(TINY_S), pretrained="hf-hub:org/repo"))
    assert ModelSpec(model="local-dir:/x").checkpoint == "local-dir:/x"
    assert ModelSpec(model="tinyclip-S", pretrained="/x/epoch_1.pt").checkpoint == "/x/epoch_1.pt"


def _zoo(tmp_path: Path, monkeypatch, text: str) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    monkeypatch.setenv("EVALKIT_ZOO", str(path))


def test_zoo_preprocess_reaches_the_loaded_model(tmp_path, monkeypatch):
    """A zoo entry's `preprocess:` overrides the checkpoint's (SigLIP-style mean/std, squash, size),
    over a local-dir's own preprocess_cfg too; the keys it leaves out keep the config's values."""
    from evalkit.grids import zoo
    folder = save_local_dir(tiny_clip(TINY_S), TINY_S, tmp_path / "tiny")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"] = {"mean": [0.1, 0.2, 0.3], "std": [0.9, 0.9, 0.9], "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    _zoo(tmp_path, monkeypatch, f"""
models:
  siglip-style:
    model: {TINY_S}
    weights: local-dir:{folder}
    preprocess: {{mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], resize_mode: squash, size: 48}}
  plain:
    weights: local-dir:{folder}
""")
    spec = zoo.resolve_model_arg("siglip-style")
    assert spec.model == f"local-dir:{folder}" and spec.preprocess == {
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash", "size": 48}
    pp = load_model(spec).preprocess
    assert (pp.size, pp.mean, pp.std, pp.interpolation, pp.resize_mode) == (
        48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", "squash")
    pp = load_model(zoo.resolve_model_arg("plain")).preprocess
    assert (pp.size, pp.mean, pp.std, pp.interpolation, pp.resize_mode) == (
        32, (0.1, 0.2, 0.3), (0.9, 0.9, 0.9), "bilinear", "shortest")


def test_zoo_grid_preprocess_reaches_every_checkpoint(tmp_path, monkeypatch):
    from _embedded import ensure_grid

    from evalkit.grids import zoo
    ensure_grid()
    _zoo(tmp_path, monkeypatch, """
grids:
  squashed:
    glob: ${EVALKIT_EMBEDDED_HOME}/runs/tinyclip-S_s2k/checkpoints/epoch_*.pt
    preprocess: {resize_mode: squash}
""")
    specs = zoo.grid_specs("squashed")
    assert len(specs) == 4 and all(s.preprocess == {"resize_mode": "squash"} for s in specs)
    assert load_model(specs[-1]).preprocess.resize_mode == "squash"


@pytest.mark.parametrize("pre,match", [
    ("{mean: [0.5, 0.5]}", "preprocess mean must be 3 numbers"),
    ("{crop: center}", "unknown preprocess key 'crop' \\(allowed: size, mean, std, interpolation, resize_mode\\)"),
    ("{resize_mode: stretch}", "resize_mode must be one of shortest, longest, squash"),
    ("{size: [224, 256]}", "size must be a positive integer"),
    ("[0.5]", "preprocess must be a mapping"),
])
def test_bad_zoo_preprocess_is_refused_naming_the_entry(tmp_path, monkeypatch, pre, match):
    from evalkit.grids import zoo
    _zoo(tmp_path, monkeypatch, f"models:\n  bad:\n    model: {TINY_S}\n    preprocess: {pre}\n")
    with pytest.raises(ModelNotFound, match=f"zoo.yaml: models: bad: .*{match}"):
        zoo.resolve_model_arg("bad")
