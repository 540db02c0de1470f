"""A run killed at any moment (SIGKILL) and run again gives exactly the uninterrupted table; four
concurrent shard processes on one results folder give the full table with no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from _embedded import DATA
from _util import REPO, TINY_S, save_training_checkpoint, tiny_clip

from evalkit.results import collect

KEY = ["model", "task", "metric"]
COMPARE = KEY + ["value", "n_samples", "status", "samples_seen", "epoch"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    for run, seed in (("runA", 0), ("runB", 10)):
        (root / run / "checkpoints").mkdir(parents=True)
        (root / run / "params.txt").write_text(f"model: tinyclip-S\ntrain_num_samples: 1000\nname: {run}\nlr_scheduler: cosine\n")
        for epoch in (1, 2):
            save_training_checkpoint(tiny_clip(TINY_S, seed=seed + epoch), root / run / "checkpoints" / f"epoch_{epoch}.pt", epoch)
    return root


def _cmd(grid, out, cache, *extra):
    return [sys.executable, "-m", "evalkit.cli", "run", "--run-dir", str(grid), "--tasks", "shapes,wds/wds_shapes",
            "--data-root", str(DATA / "{dataset}"), "--out", str(out), "--device", "cpu", "--cache-dir", str(cache),
            "--batch-size", "50", *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "EVALKIT_DATA_ROOT_SHAPES": str(DATA / "imagenet_folder")}


def _table(out):
    return collect(out)[COMPARE].sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    _run(_cmd(grid, out, out / "cache"))
    table = _table(out)
    assert len(table) == 4 * 2 * 3 and (table.status == "ok").all()
    assert set(table.samples_seen) == {1000.0, 2000.0}
    return table


def _run(cmd, env=ENV):
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def _kill_and_resume(grid, reference, tmp_path, delays):
    out, cache = tmp_path / "out", tmp_path / "cache"
    for delay in delays:
        proc = subprocess.Popen(_cmd(grid, out, cache), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _run(_cmd(grid, out, cache))
    pd.testing.assert_frame_equal(_table(out), reference)
    assert not list(out.glob("units/.tmp-*")) and not list(out.glob(".tmp-*"))


def test_sigkill_then_rerun_equals_uninterrupted(grid, reference, tmp_path):
    _kill_and_resume(grid, reference, tmp_path, (3.0, 8.0))


@pytest.mark.slow
def test_sigkill_at_many_points(grid, reference, tmp_path):
    _kill_and_resume(grid, reference, tmp_path, (1.0, 2.5, 4.0, 6.0, 9.0, 12.0))


def test_four_concurrent_shards_give_the_full_table(grid, reference, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cmd(grid, out, tmp_path / "cache", "--shard", f"{i}/4"), env=ENV, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(4)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)


def test_slurm_ranks_pick_the_same_shards(grid, reference, tmp_path):
    out = tmp_path / "out"
    for rank in range(2):
        env = {**ENV, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2"}
        _run(_cmd(grid, out, tmp_path / "cache"), env)
    pd.testing.assert_frame_equal(_table(out), reference)


def test_results_do_not_depend_on_batch_size(grid, reference, tmp_path):
    _run(_cmd(grid, tmp_path / "o", tmp_path / "c", "--batch-size", "7", "--no-cache"))
    other = _table(tmp_path / "o")
    pd.testing.assert_frame_equal(other.drop(columns="value"), reference.drop(columns="value"))
    assert (other.value - reference.value).abs().max() <= 1e-6


def test_submit_runs_shards_as_an_array_with_submitits_local_executor(grid, reference, tmp_path):
    from evalkit.models.runs import specs_from_run_dir
    from evalkit.submit import submit
    from evalkit.tasks.registry import get_task

    opts = {"data_root": str(DATA / "{dataset}"), "out": str(tmp_path / "out"), "device": "cpu",
            "cache_dir": str(tmp_path / "cache"), "batch_size": 50}
    tasks = [get_task("shapes"), get_task("wds/wds_shapes")]
    os.environ["EVALKIT_DATA_ROOT_SHAPES"] = ENV["EVALKIT_DATA_ROOT_SHAPES"]
    try:
        jobs = submit(specs_from_run_dir(grid), tasks, opts, shards=2, folder=tmp_path / "slurm", cluster="local", wait=True)
    finally:
        del os.environ["EVALKIT_DATA_ROOT_SHAPES"]
    assert len(jobs) == 2 and sum(j.result()["ok"] for j in jobs) == 8
    pd.testing.assert_frame_equal(_table(tmp_path / "out"), reference)
