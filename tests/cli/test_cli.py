"""The CLI is a thin, fast shell: help without torch, listings, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from _util import REPO


def _evalkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_help_does_not_import_torch():
    code = ("import sys; from evalkit.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'numpy', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_and_tasks_listings():
    models = _evalkit("models")
    assert models.returncode == 0
    for name in ("openMaMMUT-L-14", "openCLIP-L-14-DataComp", "tinyclip-S", "grid micro"):
        assert name in models.stdout
    assert "hf-hub:laion/openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K" in models.stdout
    tasks = _evalkit("tasks")
    assert tasks.returncode == 0 and "imagenet1k" in tasks.stdout and "zeroshot_classification" in tasks.stdout


def test_user_errors_are_one_line(tmp_path):
    r = _evalkit("run", "--model", "ViT-B-23", "--tasks", "imagenet1k")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("evalkit: error: Unknown model 'ViT-B-23'") and "ViT-B-32" in r.stderr
    r = _evalkit("run", "--model", "hf-hub:laion/openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K", "--tasks", "imagenet1k",
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not in the local Hugging Face cache" in r.stderr and "huggingface-cli download" in r.stderr
