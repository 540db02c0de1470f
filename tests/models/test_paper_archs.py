"""Every architecture of the paper (arXiv:2506.04598: CLIP, MaMMUT, and the CoCa and SigLIP ones of
its figure 9) resolves to a config, and the config builds the model the paper profiled: parameter counts (total, image tower, text side) equal
model_profile.csv at its precision (0.01 M), FLOPs as the paper counted them.

open_clip 3.3.0 ships ViT-S/M at patch 32/16, ViT-B at 32/16 and ViT-L/H at 16/14; evalkit's
model_configs/ adds the rest of the paper's grid, derived the way open_clip derives its families:
ViT-S/M/B-14 are their -16 siblings at patch 14, ViT-L/H-32 their -14 siblings at patch 32, and
ViT-B-16-text-plus is ViT-B-16's image tower with ViT-L-14's text tower and embedding width.

Parameters are counted on the meta device (no allocation, no init), so even ViT-H stays cheap; only
the smallest added architecture is built for real through `load_model` and profiled.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from _util import fixture_path

from evalkit.grids import paper as pg
from evalkit.models import factory  # noqa: F401  (registers the clip and mammut families)
from evalkit.models.configs import CONFIG_DIR, get_arch_config
from evalkit.models.family import family_for

PROFILE = pd.read_csv(fixture_path("scaling-laws", "model_profile.csv")).set_index("model")
SEGMENTATION = pd.read_parquet(fixture_path("scaling-laws", "segmentation_results.parquet"), columns=["name", "model"])

# The paper's architectures: those its segmentation runs name, and those it profiled (CLIP, MaMMUT,
# and the CoCa and SigLIP runs of its figure 9).
SEGMENTATION_ARCHS = sorted(SEGMENTATION["model"].unique())
PROFILED_ARCHS = sorted(PROFILE.index)
PAPER_ARCHS = sorted(set(SEGMENTATION_ARCHS) | set(PROFILED_ARCHS))

# evalkit's own configs for what open_clip does not ship: name -> (open_clip sibling, what changes)
ADDED = {
    "ViT-S-14": ("ViT-S-16", {"patch_size": 14}),
    "ViT-M-14": ("ViT-M-16", {"patch_size": 14}),
    "ViT-B-14": ("ViT-B-16", {"patch_size": 14}),
    "ViT-L-32": ("ViT-L-14", {"patch_size": 32}),
    "ViT-H-32": ("ViT-H-14", {"patch_size": 32}),
    "ViT-B-16-text-plus": ("ViT-B-16", {}),
}

PROFILE_PRECISION = 0.005 + 1e-9  # model_profile.csv rounds millions of parameters to two decimals


def _meta_model(arch: str) -> torch.nn.Module:
    """The architecture as evalkit builds it, on the meta device (shapes only)."""
    cfg = get_arch_config(arch)
    family = family_for(arch, cfg)
    with torch.device("meta"):
        if family.name == "clip":  # open_clip moves the model to `device`: keep it on meta
            import open_clip

            from evalkit.models.families.clip import _registered_name

            return open_clip.create_model(_registered_name(arch, cfg), pretrained=None, device="meta")
        return family.build(arch, cfg)


def _mparams(model: torch.nn.Module) -> tuple[float, float, float]:
    """(total, image tower, text side) in millions, split as the paper splits them: open_clip's CLIP
    counts everything not `visual` as text; MaMMUT counts its `text` tower only (its image-to-text
    key/value map and logit scale are in the total alone)."""
    total = sum(p.numel() for p in model.parameters())
    image = sum(p.numel() for p in model.visual.parameters())
    text_tower = getattr(model, "text", None)
    text = sum(p.numel() for p in text_tower.parameters()) if text_tower is not None else total - image
    return total / 1e6, image / 1e6, text / 1e6


def test_run_names_name_the_table_architecture():
    """The architecture evalkit derives from each run name is the table's `model` column."""
    pairs = SEGMENTATION.drop_duplicates()
    derived = {name: pg.parse_run_name(name).arch for name in pairs["name"]}
    assert {(n, m) for n, m in zip(pairs["name"], pairs["model"]) if derived[n] != m} == set()
    assert set(derived.values()) == set(SEGMENTATION_ARCHS)


def test_the_grid_covers_every_profiled_namespace_at_every_size_and_patch():
    assert len(SEGMENTATION_ARCHS) == 22 and len(PAPER_ARCHS) == 56
    assert PROFILE.namespace.value_counts().to_dict() == {"clip": 20, "mammut": 15, "coca": 15, "siglip": 6}
    for arch in ADDED:
        assert arch in PAPER_ARCHS


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_paper_arch_resolves_and_matches_the_profile_parameters(arch):
    get_arch_config(arch)  # raises ModelNotFound when neither evalkit nor open_clip has it
    total, image, text = _mparams(_meta_model(arch))
    row = PROFILE.loc[arch]
    assert abs(total - row.mparams) <= PROFILE_PRECISION, (arch, total, row.mparams)
    assert abs(image - row.image_mparams) <= PROFILE_PRECISION, (arch, image, row.image_mparams)
    assert abs(text - row.text_mparams) <= PROFILE_PRECISION, (arch, text, row.text_mparams)


@pytest.mark.parametrize("arch", sorted(ADDED))
def test_added_config_is_its_open_clip_sibling_rederived(arch):
    import open_clip

    path = CONFIG_DIR / f"{arch}.json"
    assert path.is_file() and get_arch_config(arch) == json.loads(path.read_text())
    sibling, vision_change = ADDED[arch]
    expected = open_clip.get_model_config(sibling)
    expected["vision_cfg"].update(vision_change)
    if arch == "ViT-B-16-text-plus":  # ViT-L-14's text tower and joint embedding width
        large = open_clip.get_model_config("ViT-L-14")
        expected["text_cfg"], expected["embed_dim"] = large["text_cfg"], large["embed_dim"]
    assert get_arch_config(arch) == expected
    shipped = open_clip.get_model_config(arch)  # should open_clip ship it one day, it must agree
    assert shipped is None or shipped == expected


@pytest.mark.parametrize("arch", sorted(ADDED))
def test_added_config_closed_form_gflops_near_the_profile(arch):
    """The config-only estimate (counts attention scores, which the paper's profile does not)."""
    from evalkit.models.flops import estimate_gflops

    est = estimate_gflops(get_arch_config(arch))
    assert est is not None and abs(est / PROFILE.loc[arch, "gflops"] - 1) < 0.10, (arch, est)


def test_smallest_added_arch_builds_and_profiles_as_the_paper():
    """ViT-S-14 built for real through evalkit's loader: its parameters, and the FLOPs profiler's
    count equal to model_profile.csv's gflops at its precision."""
    from evalkit.models.factory import load_model
    from evalkit.models.flops import count_gflops
    from evalkit.models.spec import ModelSpec

    lm = load_model(ModelSpec(model="ViT-S-14"))
    row = PROFILE.loc["ViT-S-14"]
    total, image, _ = _mparams(lm.model)
    assert lm.family == "clip" and lm.preprocess.size == 224 and lm.context_length == 77
    assert abs(total - row.mparams) <= PROFILE_PRECISION and abs(image - row.image_mparams) <= PROFILE_PRECISION
    assert round(count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family), 2) == row.gflops


@pytest.mark.parametrize("arch", sorted(PROFILE.index[PROFILE.namespace == "siglip"]))
def test_siglip_config_is_the_clip_architecture_with_a_logit_bias(arch):
    """The paper's SigLIP runs (the fork's `*-SigLIP` configs) are its CLIP architecture trained with
    the sigmoid loss: the same towers plus `init_logit_bias`, and CLIP's tokenizer."""
    from evalkit.models.families.clip import CLIPFamily

    clip = get_arch_config(PROFILE.loc[arch, "model_simple"])
    assert get_arch_config(arch) == {**clip, "init_logit_bias": -10}
    import open_clip

    tokens = CLIPFamily.tokenizer(arch, get_arch_config(arch))(["a photo of a dog."])
    # CLIP's BPE (not SigLIP's sentencepiece): <start_of_text>=49406, a photo of a dog . , <end_of_text>=49407
    assert tokens.shape == (1, 77) and tokens[0, 0] == 49406 and tokens[0, 7] == 49407 and not tokens[0, 8:].any()
    assert torch.equal(tokens, open_clip.tokenize(["a photo of a dog."]))


@pytest.mark.parametrize("arch", ["ViT-S-32-SigLIP", "coca_ViT-S-32"])
def test_smallest_siglip_and_coca_build_and_profile_as_the_paper(arch):
    """Built for real (open_clip, random init): FLOPs equal model_profile.csv's gflops, CoCa's text
    tower counted twice as the paper's profile counts it; a SigLIP checkpoint's logit_bias loads."""
    from evalkit.models.factory import load_model
    from evalkit.models.flops import count_gflops
    from evalkit.models.spec import ModelSpec

    lm = load_model(ModelSpec(model=arch))
    assert lm.family == "clip" and lm.context_length == (76 if arch.startswith("coca") else 77)
    assert round(count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family), 2) == PROFILE.loc[arch, "gflops"]
    if arch.endswith("SigLIP"):
        assert lm.model.logit_bias is not None and float(lm.model.logit_bias) == -10.0
