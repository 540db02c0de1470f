"""bench/bench_generative.py on the smallest case: both paths give the same scores, and evalkit's
decoder work per prompt is below the branch's (FLOPs: deterministic, unlike times)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_generative.py"


@pytest.mark.slow
def test_tiny_mammut_equal_scores_fewer_flops():
    spec = importlib.util.spec_from_file_location("bench_generative_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    r = mod.bench("mammut_tiny-S", torch.device("cpu"), n_images=2, n_classes=2, batch=2, autocast=False, full_cut=True)
    assert r["prompts"] == 160 and r["branch_cut"] == 22
    assert r["max_abs_diff"] <= 1e-6 * r["score_scale"] + 1e-4
    assert r["gflops_per_prompt_evalkit"] < 0.5 * r["gflops_per_prompt_branch"]
