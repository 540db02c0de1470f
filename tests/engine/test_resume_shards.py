"""A run killed mid-run (SIGKILL after the k-th unit) and run again gives exactly the uninterrupted table; four
concurrent shard processes on one results folder give the full table with no duplicates."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from _embedded import DATA
from _util import REPO, TINY_S, save_training_checkpoint, tiny_clip

from evalkit.results.store import UnitStore, collect

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
    assert len(table) == 4 * 2 * 3 and (table.status == "ok").all() and not table.duplicated(KEY).any()
    assert set(table.samples_seen) == {1000.0, 2000.0}
    return table


def _run(cmd, env=ENV):
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def _ok_units(out) -> int:
    return len(UnitStore(out).done())


def _run_and_kill_after(grid, out, cache, n_ok: int, timeout: float = 120.0) -> int:
    """Start the real CLI; SIGKILL its whole process group right after the `n_ok`-th finished unit file
    appears (so the kill lands mid-run, while the next unit is being computed); return its pid."""
    proc = subprocess.Popen(_cmd(grid, out, cache), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while _ok_units(out) < n_ok:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before unit {n_ok}: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no unit {n_ok} after {timeout} s")
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished on its own: the kill was not mid-run"
    return proc.pid


def _kill_and_resume(grid, reference, tmp_path, kill_after: list[int]):
    """Kill runs after the k-th unit of each (cumulative counts), rerun, and compare with `reference`."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    total = len(reference.groupby(["model", "task"]))
    killed = set()
    for k in kill_after:
        killed.add(_run_and_kill_after(grid, out, cache, k))
        done = _ok_units(out)
        assert k <= done < total, f"killed after unit {k}: {done} of {total} units done"
    r = subprocess.run(_cmd(grid, out, cache), env=ENV, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    # the rerun resumed: it skipped exactly the units on disk and ran only the rest
    assert f"units: {total - done} ok, 0 failed, {done} already done" in r.stdout, r.stdout
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)
    # no temp is left: none by the finished rerun, and any of a killed writer removed by the rerun
    assert not list(out.glob("**/.tmp-*")), f"temps left by {killed}: {list(out.glob('**/.tmp-*'))}"


@pytest.mark.slow  # > 20 s here; `make test-slow` runs it (and .ci/run)
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(grid, reference, tmp_path):
    """A real mid-run kill (while the 4th of 8 units is computed), then a rerun gives the same table."""
    _kill_and_resume(grid, reference, tmp_path, [3])


@pytest.mark.slow
def test_sigkill_after_every_unit(grid, reference, tmp_path):
    """Killed after each unit in turn, resumed runs included."""
    _kill_and_resume(grid, reference, tmp_path, list(range(1, len(reference.groupby(["model", "task"])))))


@pytest.mark.slow  # the real SLURM tests (make test-slurm) run 3 shards and srun ranks
def test_four_concurrent_shards_give_the_full_table(grid, reference, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cmd(grid, out, tmp_path / "cache", "--shard", f"{i}/4"), env=ENV, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(4)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)


@pytest.mark.slow  # test_slurm.py's srun --ntasks=3 inside sbatch covers it on a real cluster
def test_slurm_ranks_pick_the_same_shards(grid, reference, tmp_path):
    out = tmp_path / "out"
    for rank in range(2):
        env = {**ENV, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2"}
        _run(_cmd(grid, out, tmp_path / "cache"), env)
    pd.testing.assert_frame_equal(_table(out), reference)


@pytest.mark.slow  # ~30 s of CLI runs; test_engine_units and the parity tests fix the numbers at batch 64
def test_results_do_not_depend_on_batch_size(grid, reference, tmp_path):
    _run(_cmd(grid, tmp_path / "o", tmp_path / "c", "--batch-size", "7", "--no-cache"))
    other = _table(tmp_path / "o")
    pd.testing.assert_frame_equal(other.drop(columns="value"), reference.drop(columns="value"))
    assert (other.value - reference.value).abs().max() <= 1e-6


@pytest.mark.slow  # test_slurm.py submits the array to a real cluster
def test_submit_runs_shards_as_an_array_with_submitits_local_executor(grid, reference, tmp_path):
    from evalkit.cluster.submit import submit
    from evalkit.grids.runs import specs_from_run_dir
    from evalkit.tasks.loader import get_task

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
