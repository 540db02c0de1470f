"""The README's CI recipe, run verbatim: a baseline from a tiny checkpoint through `--limit`, then the check
(`evalkit run --limit`, the Markdown summary, `evalkit compare --tol`) passes, and fails once the baseline
is moved beyond the tolerance."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _embedded import DATA
from _util import REPO, TINY_S, save_training_checkpoint, tiny_clip


def _blocks() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    found = dict(re.findall(r"<!-- ci-recipe: (\w+) -->\n```bash\n(.*?)```", text, re.S))
    assert set(found) == {"baseline", "check"}, "README lost its ci-recipe blocks"
    return found


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # > 20 s here; `make test-slow` runs it (and .ci/run)
def test_readme_ci_recipe_verbatim(tmp_path: Path) -> None:
    blocks = _blocks()
    repo = tmp_path / "user_repo"
    repo.mkdir()
    ckpt = save_training_checkpoint(tiny_clip(TINY_S, seed=1), repo / "tiny.pt")
    # `evalkit` on PATH is this interpreter's evalkit (the checkout under test), as an installed script would be
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "evalkit"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m evalkit.cli \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(sys.path), "EVALKIT_CACHE": str(tmp_path / "cache"),
           "EVAL_ARCH": str(TINY_S), "EVAL_CHECKPOINT": str(ckpt), "EVAL_TASKS": "shapes",
           "EVAL_DATA_ROOT": str(DATA / "imagenet_folder")}

    r = _bash(blocks["baseline"], repo, env)
    assert r.returncode == 0, r.stdout + r.stderr
    base = pd.read_csv(repo / "ci" / "baseline.csv")
    assert (base["limit"] == 64).all() and (base["n_samples"] == 64).all() and (base.status == "ok").all()

    r = _bash(blocks["check"], repo, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all matched values within 0.0001" in r.stdout
    summary = (repo / "smoke" / "summary.md").read_text()
    acc1 = float(base.loc[base.metric == "acc1", "value"].iloc[0])
    assert f"{acc1:.4f}" in summary and "smoke test: first 64 samples" in summary

    moved = base.copy()
    moved.loc[moved.metric == "acc1", "value"] += 0.01
    moved.to_csv(repo / "ci" / "baseline.csv", index=False)
    r = _bash(blocks["check"], repo, env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 values beyond 0.0001" in r.stdout
