"""FLOPs per sample equal the paper's own profile (model_profile.csv, open_clip's torch profiler)."""

from __future__ import annotations

import pandas as pd
import pytest
from _util import fixture_path

from evalkit.models.factory import load_model
from evalkit.models.flops import count_gflops, gflops_per_sample

PROFILE = pd.read_csv(fixture_path("scaling-laws", "model_profile.csv")).set_index("model")


@pytest.mark.parametrize("arch", ["ViT-S-32", "ViT-M-32", "ViT-B-32", "mammut_ViT-S-32", "mammut_ViT-B-32"])
def test_clip_gflops_match_model_profile(arch):
    lm = load_model(arch)
    assert round(count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family), 2) == PROFILE.loc[arch, "gflops"]


def test_gflops_are_cached_per_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_FLOPS_CACHE", str(tmp_path / "flops.json"))
    lm = load_model("ViT-S-32")
    first = gflops_per_sample(lm)
    assert (tmp_path / "flops.json").is_file() and round(first, 2) == PROFILE.loc["ViT-S-32", "gflops"]
    lm.model = None  # a cached value needs no forward pass
    assert gflops_per_sample(lm) == first


def test_a_count_made_the_old_way_is_not_reused(tmp_path, monkeypatch):
    """The cache key carries the counting method's version: after a change in what is counted, the
    architecture is profiled again instead of served the old number."""
    import json

    from evalkit.models import flops

    cache = tmp_path / "flops.json"
    monkeypatch.setenv("EVALKIT_FLOPS_CACHE", str(cache))
    lm = load_model("ViT-S-32")
    cache.write_text(json.dumps({flops.arch_key(lm): {"arch": "ViT-S-32", "gflops": 1.0}}))
    assert gflops_per_sample(lm) == 1.0  # this version's entry is used as it stands
    monkeypatch.setattr(flops, "COUNT_VERSION", flops.COUNT_VERSION + 1)
    assert round(gflops_per_sample(lm), 2) == PROFILE.loc["ViT-S-32", "gflops"]


def test_closed_form_estimate_is_within_ten_percent_of_the_profile():
    """The config-only count that weighs shards, against the paper's profiled gflops."""
    from evalkit.models.configs import get_arch_config
    from evalkit.models.flops import estimate_gflops

    clip = PROFILE[PROFILE.namespace == "clip"]
    checked = 0
    for arch, row in clip[~clip.index.duplicated()].iterrows():
        try:
            cfg = get_arch_config(arch)
        except LookupError:
            continue
        est = estimate_gflops(cfg)
        assert est is not None and abs(est / row.gflops - 1) < 0.10, (arch, est, row.gflops)
        checked += 1
    assert checked >= 12  # ViT-S/M/B/L/H at patch 32/16/14


def test_mammut_closed_form_is_within_ten_percent_of_profile_and_profiler():
    """MaMMUT's closed form (image tower, bidirectional text pass, captioning pass with cross-attention,
    LM heads) against the paper's profile for every mammut architecture, and against evalkit's own
    profiler count, so shards balance MaMMUT grids."""
    from evalkit.models.configs import get_arch_config
    from evalkit.models.flops import estimate_gflops

    mammut = PROFILE[PROFILE.namespace == "mammut"]
    assert len(mammut) == 15
    for arch, row in mammut.iterrows():
        est = estimate_gflops(get_arch_config(arch))
        assert est is not None and abs(est / row.gflops - 1) < 0.10, (arch, est, row.gflops)
    for arch in ("mammut_ViT-S-32", "mammut_ViT-B-32"):
        lm = load_model(arch)
        counted = count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family)
        assert abs(estimate_gflops(get_arch_config(arch)) / counted - 1) < 0.10, arch
    assert estimate_gflops(get_arch_config("coca_ViT-B-32")) is None  # CoCa's multimodal decoder: profiler only
