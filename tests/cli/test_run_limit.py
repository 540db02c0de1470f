"""`evalkit run --limit N` evaluates the first N samples of each task (rows say so, the hash differs) and every
`evalkit run` ends with the compact checkpoint x task table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _util import TINY_S, save_training_checkpoint, tiny_clip

from evalkit.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_training_checkpoint(tiny_clip(TINY_S, seed=3), tmp_path_factory.mktemp("ck") / "run" / "epoch_1.pt")


def _run(ckpt: Path, out: Path, cache: Path, *extra: str) -> int:
    return main(["run", "--model", str(TINY_S), "--pretrained", str(ckpt), "--out", str(out), "--device", "cpu",
                 "--cache-dir", str(cache), *extra])


def test_limit_runs_the_first_samples_and_rows_say_so(ckpt: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    # the oracle: a whole-split run's per-sample predictions, of which the first 40 are what --limit 40 sees
    assert _run(ckpt, tmp_path / "full", cache, "--tasks", "shapes", "--log-samples") == 0
    capsys.readouterr()
    full = pd.read_parquet(tmp_path / "full" / "results.parquet")
    (samples,) = (tmp_path / "full" / "samples").glob("*.parquet")
    s = pd.read_parquet(samples).head(40)
    top = np.stack(s["top_indices"].to_numpy())
    want_acc1 = float((top[:, 0] == s["target"].to_numpy()).mean())
    want_acc5 = float((top == s["target"].to_numpy()[:, None]).any(axis=1).mean())

    assert _run(ckpt, tmp_path / "lim", cache, "--tasks", "shapes,shapes_coco", "--limit", "40") == 0
    out = capsys.readouterr().out
    lim = pd.read_parquet(tmp_path / "lim" / "results.parquet")
    assert (lim["limit"] == 40).all() and (lim["n_samples"] == 40).all() and (lim.status == "ok").all()
    by = lim.set_index(["task", "metric"])["value"]
    assert by[("shapes", "acc1")] == pytest.approx(want_acc1, abs=1e-9)
    assert by[("shapes", "acc5")] == pytest.approx(want_acc5, abs=1e-9)
    assert lim[lim.task == "shapes"].task_hash.iloc[0] != full.task_hash.iloc[0]
    assert full["limit"].isna().all()

    # the end-of-run table: this checkpoint's main metrics, the smoke-test note, units counted
    row = next(ln for ln in out.splitlines() if ln.startswith("| epoch_1") or ln.startswith(f"| {TINY_S}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{by[('shapes', 'acc1')]:.4f}" and cells[2] == f"{by[('shapes_coco', 'mean_recall@1')]:.4f}"
    assert "| checkpoint" in out and "shapes acc1" in out and "shapes_coco mean_recall@1" in out
    assert "smoke test: first 40 samples of each task (--limit)" in out and "all 2 units ok" in out

    # the same limit again resumes; another limit is another task
    assert _run(ckpt, tmp_path / "lim", cache, "--tasks", "shapes,shapes_coco", "--limit", "40") == 0
    assert "0 ok, 0 failed, 2 already done" in capsys.readouterr().out
    assert _run(ckpt, tmp_path / "lim", cache, "--tasks", "shapes", "--limit", "20") == 0
    assert "1 ok, 0 failed, 0 already done" in capsys.readouterr().out


def test_end_table_counts_failures(ckpt: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["run", "--model", str(TINY_S), "--pretrained", str(bad), "--tasks", "shapes", "--limit", "8",
               "--out", str(tmp_path / "o"), "--device", "cpu", "--cache-dir", str(tmp_path / "c")])
    assert rc == 1
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| ") and "FAILED" in ln)
    assert row.split("|")[2].strip() == "FAILED"
    assert "1 of 1 units failed:" in out and str(bad) in out


def test_limit_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--model", "x", "--tasks", "shapes", "--limit", "0"])
    assert "--limit: 0: need at least 1" in capsys.readouterr().err
