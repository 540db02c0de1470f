"""evalkit on a real SLURM cluster: `make test-slurm` starts a one-node cluster on localhost
(.ci/slurm_cluster.sh: Debian's slurmctld/slurmd/munge, no accounting database) and runs these.

(1) `evalkit submit --shards 3 --wait` equals a local run; (2) a shard cancelled mid-run, then the
same submission again, completes the table without computing a unit twice; (3) `srun --ntasks=3
evalkit run` inside an sbatch script shards by SLURM_PROCID/SLURM_NTASKS; (4) the collect step
(afterany on the array) writes the full table even when the shard that ends last was killed; and a
partition/account the cluster refuses is one error line with nothing left submitted.

Without a cluster these fail (never skip): run them through `make test-slurm`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from _util import REPO, TINY_S, save_training_checkpoint, tiny_clip

pytestmark = pytest.mark.slurm

KEY = ["model", "task", "metric"]
COMPARE = KEY + ["value", "n_samples", "status", "samples_seen", "epoch"]
TASKS = "shapes,shapes_coco"  # classification + retrieval (the embedded data)
RUNS, EPOCHS, SHARDS = ("runA", "runB", "runC"), (1, 2, 3), 3
N_UNITS = len(RUNS) * len(EPOCHS) * 2  # 9 checkpoints x 2 tasks, 6 units per shard
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _slurm(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


@pytest.fixture(scope="module")
def cluster() -> str:
    """The cluster's node, up; a missing cluster fails the test (start one with `make test-slurm`)."""
    missing = [c for c in ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo") if shutil.which(c) is None]
    if missing:
        pytest.fail(f"no SLURM client here ({', '.join(missing)} not on PATH): run `make test-slurm`, which "
                    "installs and starts a one-node cluster")
    r = subprocess.run(["sinfo", "--noheader", "--format=%n %t"], capture_output=True, text=True, timeout=30)
    states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
    if r.returncode != 0 or not any(s in ("idle", "mix", "alloc") for s in states.values()):
        pytest.fail(f"no SLURM cluster answers (SLURM_CONF={os.environ.get('SLURM_CONF', '(unset)')}; sinfo: "
                    f"{(r.stderr or r.stdout).strip() or states}): run `make test-slurm`")
    return next(iter(states))


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    for i, run in enumerate(RUNS):
        (root / run / "checkpoints").mkdir(parents=True)
        (root / run / "params.txt").write_text(f"model: tinyclip-S\ntrain_num_samples: 1000\nname: {run}\n"
                                               "lr_scheduler: cosine\n")
        for epoch in EPOCHS:
            save_training_checkpoint(tiny_clip(TINY_S, seed=10 * i + epoch), root / run / "checkpoints" /
                                     f"epoch_{epoch}.pt", epoch)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _args(grid: Path, out: Path, cache: Path) -> list[str]:
    return ["--run-dir", str(grid), "--tasks", TASKS, "--out", str(out), "--device", "cpu",
            "--cache-dir", str(cache)]


def _submit_cmd(grid: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evalkit.cli", "submit", "--shards", str(SHARDS), *_args(grid, out, cache), *extra]


def _table(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "results.parquet")
    return table[COMPARE].sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(grid, cache, tmp_path_factory) -> pd.DataFrame:
    """A local, unsharded run of the grid (it also fills the decode cache the cluster runs share)."""
    out = tmp_path_factory.mktemp("local")
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", *_args(grid, out, cache)], env=ENV, cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    table = _table(out)
    assert (table.status == "ok").all() and not table.duplicated(KEY).any()
    assert table.groupby(["model", "task"]).ngroups == N_UNITS
    return table


@pytest.fixture(scope="module")
def shard_units(grid) -> list[dict[str, tuple[str, str]]]:
    """Per shard: unit id -> (checkpoint name, task), as the engine assigns them."""
    from evalkit.engine import assign_shards, checkpoint_cost, plan, resolve_tasks
    from evalkit.grids.runs import specs_from_run_dir
    from evalkit.tasks.loader import get_task

    tasks = [td.spec for td in resolve_tasks([get_task(t) for t in TASKS.split(",")], None)]
    shards = assign_shards(plan(specs_from_run_dir(grid), tasks, "fp32"), SHARDS, checkpoint_cost)
    assert all(len(s) == N_UNITS // SHARDS for s in shards)
    return [{u.uid: (u.spec.name, u.task.name) for u in s} for s in shards]


def _units(out: Path) -> dict[str, dict]:
    """unit id -> (status, written_at, finished_at of its rows) of every unit file."""
    found = {}
    for f in (out / "units").glob("*.json"):
        payload = json.loads(f.read_text())
        found[f.stem] = {"status": payload["status"], "written_at": payload["written_at"],
                         "finished_at": sorted({r["finished_at"] for r in payload["rows"]})}
    return found


def _wait_for(what: str, predicate, timeout: float = 240, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _job_state(job_id: str) -> str:
    out = _slurm("squeue", "--noheader", "--array", "--states=all", "--format=%i %T", check=False)
    return dict(line.split() for line in out.splitlines() if line.strip()).get(job_id, "")


def _submitted_ids(stdout: str) -> tuple[str, str]:
    m = re.search(r"submitted \d+ array tasks \(job (\d+)\) and a collect step after them \(job (\d+)\)", stdout)
    assert m, stdout
    return m.group(1), m.group(2)


def _all_jobs() -> set[str]:
    return set(_slurm("squeue", "--noheader", "--array", "--states=all", "--format=%i").split())


def test_submit_three_shards_equals_a_local_run(cluster, grid, cache, reference, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_submit_cmd(grid, out, cache, "--wait"), env=ENV, cwd=REPO, capture_output=True, text=True,
                       timeout=480)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    array, collect_job = _submitted_ids(r.stdout)
    assert f"units: {N_UNITS} ok, 0 failed, 0 already done" in r.stdout, r.stdout
    for i in range(SHARDS):
        assert _job_state(f"{array}_{i}") == "COMPLETED"
    assert _job_state(collect_job) == "COMPLETED"
    # one unit file per unit, one row per (checkpoint, task, metric), the local run's numbers
    assert len(_units(out)) == N_UNITS
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)
    # no accounting on this cluster: said once, none of submitit's per-poll sacct warnings
    assert r.stderr.count("sacct is unusable on this cluster") == 1, r.stderr[-3000:]
    assert "Bypassing sacct" not in r.stderr and "accounting storage is disabled" in r.stderr


def test_cancelled_shard_then_the_same_submission_completes(cluster, grid, cache, reference, shard_units,
                                                             tmp_path):
    out, victim = tmp_path / "out", 1
    first = subprocess.Popen(_submit_cmd(grid, out, cache, "--wait"), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline()
        if "submitted" not in line:
            first.wait(timeout=120)
            pytest.fail(f"evalkit submit: {line}{first.stdout.read()}{first.stderr.read()[-3000:]}")
        array, _ = _submitted_ids(line)
        mine = shard_units[victim]
        _wait_for(f"the first unit of shard {victim}", lambda: set(_units(out)) & set(mine))
        _slurm("scontrol", "suspend", f"{array}_{victim}")  # killed where it stands (see below)
        _slurm("scancel", f"{array}_{victim}")
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    # --wait ends when every shard has ended, the cancelled one included, and says which did not finish
    assert first.returncode == 1, stdout + stderr[-3000:]
    assert f"shard {victim} (job {array}_{victim}) did not finish: CANCELLED" in stdout, stdout
    assert _job_state(f"{array}_{victim}") == "CANCELLED"
    before = _units(out)
    assert all(u["status"] == "ok" for u in before.values())
    done_by_victim = set(before) & set(mine)
    assert 1 <= len(done_by_victim) < len(mine), "the cancel did not land mid-run"
    for i, units in enumerate(shard_units):
        if i != victim:
            assert set(units) <= set(before), f"shard {i} did not finish"

    second = subprocess.run(_submit_cmd(grid, out, cache, "--wait"), env=ENV, cwd=REPO, capture_output=True,
                            text=True, timeout=480)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    # the resubmission computed exactly the missing units
    assert f"units: {N_UNITS - len(before)} ok, 0 failed, {len(before)} already done" in second.stdout, second.stdout
    after = _units(out)
    assert len(after) == N_UNITS
    for uid, unit in before.items():  # no unit computed twice: finished ones untouched
        assert after[uid] == unit, f"unit {uid} {mine.get(uid)} was written again"
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)


def test_srun_ranks_inside_sbatch_shard_by_slurm_procid(cluster, grid, cache, reference, shard_units, tmp_path):
    """LAION's plain pattern: one sbatch script, `srun --ntasks=3 evalkit run ...`, no --shard."""
    out = tmp_path / "out"
    cmd = " ".join([sys.executable, "-m", "evalkit.cli", "run", *_args(grid, out, cache)])
    script = tmp_path / "eval.sbatch"
    # --overcommit: three ranks on a node with fewer cores (these machines have two)
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=evalkit-srun
#SBATCH --ntasks={SHARDS}
#SBATCH --overcommit
#SBATCH --output={tmp_path}/sbatch-%j.out
export HF_HUB_OFFLINE=1
srun --ntasks={SHARDS} --overcommit --output={tmp_path}/rank-%t.out {cmd}
""")
    r = subprocess.run(["sbatch", "--wait", "--parsable", str(script)], env=ENV, cwd=REPO, capture_output=True,
                       text=True, timeout=480)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert r.returncode == 0, r.stderr + logs[-3000:]
    by_name = {name: uid for units in shard_units for uid, name in units.items()}
    for rank in range(SHARDS):
        log = (tmp_path / f"rank-{rank}.out").read_text()
        ran = {by_name[(m, t)] for m, t in re.findall(r"^\[\d+/\d+\] (\S+) x (\S+):", log, re.M)}
        # rank r computed exactly shard r of 3 (SLURM_PROCID / SLURM_NTASKS)
        assert ran == set(shard_units[rank]), (rank, log[-2000:])
        assert f"units: {len(shard_units[rank])} ok, 0 failed, 0 already done" in log, log[-2000:]
    table = _table(out)
    assert not table.duplicated(KEY).any()
    pd.testing.assert_frame_equal(table, reference)


def test_collect_step_holds_every_unit_when_the_last_shard_to_end_is_killed(cluster, grid, cache, reference,
                                                                           shard_units, tmp_path):
    """The shard that ends last is killed, after writing a unit no other shard's collect saw: the
    afterany collect step still puts it in the table."""
    out, victim = tmp_path / "out", 0
    r = subprocess.run(_submit_cmd(grid, out, cache), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    array, collect_job = _submitted_ids(r.stdout)
    assert re.search(rf"Dependency=afterany:{array}_\*", _slurm("scontrol", "show", "job", collect_job))
    mine = shard_units[victim]
    first = _wait_for(f"the first unit of shard {victim}", lambda: set(_units(out)) & set(mine))
    _slurm("scontrol", "suspend", f"{array}_{victim}")
    try:
        others = [f"{array}_{i}" for i in range(SHARDS) if i != victim]
        _wait_for("the other shards to complete", lambda: all(_job_state(j) == "COMPLETED" for j in others))
        assert _job_state(collect_job) == "PENDING"  # still waiting for the suspended shard
        seen_by_shards = set(pd.read_parquet(out / "results.parquet").unit_id)
    finally:
        _slurm("scontrol", "resume", f"{array}_{victim}", check=False)
    late = _wait_for(f"a new unit of shard {victim}", lambda: (set(_units(out)) & set(mine)) - first)
    # stopped again before it is cancelled: submitit's job runner ignores SIGTERM (it waits for
    # preemption's SIGUSR2), so a running shard would go on for KillWait after `scancel`; a suspended
    # one is killed where it stands
    _slurm("scontrol", "suspend", f"{array}_{victim}")
    _slurm("scancel", f"{array}_{victim}")
    _wait_for("the collect step", lambda: _job_state(collect_job) in ("COMPLETED", "FAILED", "CANCELLED"),
              every=0.5)
    assert _job_state(collect_job) == "COMPLETED"
    assert _job_state(f"{array}_{victim}") == "CANCELLED"
    on_disk = _units(out)
    assert set(mine) - set(on_disk), "the killed shard finished (and collected) after all"
    assert not late & seen_by_shards
    # the table is every unit on disk, the late one of the killed shard included
    table = pd.read_parquet(out / "results.parquet")
    assert set(table.unit_id) == set(on_disk) and late <= set(table.unit_id)
    assert not table.duplicated(KEY).any()
    expect = reference.merge(table[KEY], on=KEY)
    pd.testing.assert_frame_equal(_table(out), expect)


def test_refused_account_is_one_line_and_nothing_is_submitted(cluster, grid, cache, tmp_path):
    """The test cluster's `restricted` partition refuses every account, as a real one refuses an unknown one."""
    out = tmp_path / "out"
    for extra, message in ((["--partition", "no-such-partition"], "Invalid partition name specified"),
                           (["--partition", "restricted", "--account", "someone-else"],
                            "Invalid account or account/partition combination specified")):
        jobs = _all_jobs()
        r = subprocess.run(_submit_cmd(grid, out, cache, *extra), env=ENV, cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("evalkit submit: error: sbatch refused the job array: "), lines
        assert message in lines[0]
        assert not r.stdout.strip()
        assert _all_jobs() == jobs  # nothing submitted
        assert not out.exists()  # nor left in the log folder
