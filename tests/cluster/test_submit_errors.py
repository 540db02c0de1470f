"""`evalkit submit` without a real cluster: no SLURM on the machine is one line naming --cluster local;
a refused collect step leaves nothing submitted; on a cluster without accounting the job states come
from squeue, said once. (The real-cluster tests are tests/cluster/test_slurm.py, `make test-slurm`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _util import REPO


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """An open_clip run folder (checkpoint contents are never read before submission)."""
    run = tmp_path / "logs" / "runA"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("model: tinyclip-S\ntrain_num_samples: 1000\nname: runA\n")
    (run / "checkpoints" / "epoch_1.pt").write_bytes(b"")
    return tmp_path / "logs"


def _fake_bin(folder: Path, scripts: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return folder


def _submit(run_dir: Path, out: Path, path: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "evalkit.cli", "submit", "--shards", "2", "--run-dir", str(run_dir),
                           "--tasks", "shapes", "--out", str(out), "--device", "cpu", *extra],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_no_slurm_on_the_machine_is_one_line_naming_cluster_local(run_dir, tmp_path):
    empty = tmp_path / "bin"  # a PATH without sbatch
    empty.mkdir()
    r = _submit(run_dir, tmp_path / "out", str(empty))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("evalkit submit: error: no SLURM on this machine (sbatch is not on PATH)")
    assert "--cluster local" in lines[0]
    assert not r.stdout.strip() and not (tmp_path / "out").exists()


def test_refused_collect_step_cancels_the_array(run_dir, tmp_path):
    """sbatch takes the array and refuses the collect step: the array is cancelled, one error line."""
    log = tmp_path / "calls"
    fake = _fake_bin(tmp_path / "bin", {
        "srun": "exit 0\n",
        "sbatch": f'echo "sbatch $*" >> {log}\n'
                  f'if [ "$(grep -c ^sbatch {log})" -eq 1 ]; then echo "Submitted batch job 4242"; exit 0; fi\n'
                  'echo "sbatch: error: Batch job submission failed: Job dependency problem" >&2; exit 1\n',
        "scancel": f'echo "scancel $*" >> {log}\n',
    })
    r = _submit(run_dir, tmp_path / "out", f"{fake}:{os.environ['PATH']}")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["evalkit submit: error: sbatch refused the collect step: sbatch: error: Batch job submission "
                     "failed: Job dependency problem; the job array 4242 was cancelled, nothing is left submitted"]
    calls = log.read_text().splitlines()
    assert len(calls) == 3 and calls[2] == "scancel 4242", calls


def test_watcher_falls_back_to_squeue_once_without_accounting(tmp_path, monkeypatch, capsys):
    from evalkit.cluster.submit import GONE, QueueWatcher

    fake = _fake_bin(tmp_path / "bin", {
        "sacct": 'echo "Slurm accounting storage is disabled" >&2; exit 1\n',
        # array 7: task 0 done, 1 cancelled, 2 running; task 3 already purged from squeue; another user's job 8
        "squeue": 'printf "7_0|COMPLETED|vm\\n7_1|CANCELLED|vm\\n7_2|RUNNING|vm\\n8|RUNNING|vm\\n"\n',
    })
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    w = QueueWatcher()
    for j in ("7_0", "7_1", "7_2", "7_3"):
        w.register_job(j)
    for _ in range(3):
        w.update()
    assert w.use_sacct is False
    assert [w.get_state(j, mode="cache") for j in ("7_0", "7_1", "7_2", "7_3")] == \
        ["COMPLETED", "CANCELLED", "RUNNING", GONE]
    assert [w.is_done(j, mode="cache") for j in ("7_0", "7_1", "7_2", "7_3")] == [True, True, False, True]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sacct is unusable on this cluster (Slurm accounting storage is disabled)" in err


def test_watcher_keeps_sacct_where_accounting_works(tmp_path, monkeypatch, capsys):
    from evalkit.cluster.submit import QueueWatcher

    fake = _fake_bin(tmp_path / "bin", {
        "sacct": 'printf "JobID|State|NodeList\\n9_0|COMPLETED|vm\\n9_1|SUSPENDED|vm\\n"\n',
        "squeue": "exit 3\n",
    })
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    w = QueueWatcher()
    w.register_job("9_0")
    w.register_job("9_1")
    w.update()
    assert w.use_sacct is True and w.get_state("9_0", mode="cache") == "COMPLETED"
    assert not w.is_done("9_1", mode="cache")  # suspended has not ended (submitit's own list says it has)
    assert capsys.readouterr().err == ""
