"""A full disk or a read-only folder is one line naming the file, exit 2, nothing half-written: tested on
real small tmpfs mounts (root mounts them), at the run's first write (the task file) and at the unit
files after some units were written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _util import REPO, fill_disk


def _run(out: Path, cache: Path, tasks: str = "shapes") -> subprocess.CompletedProcess:
    from _embedded import ensure_grid

    ensure_grid()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EVALKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", "tinyclip-S", "--tasks", tasks,
                           "--device", "cpu", "--out", str(out), "--cache-dir", str(cache), "--num-workers", "0"],
                          capture_output=True, text=True, cwd=REPO, env=env)


def _one_line(r: subprocess.CompletedProcess, path_part: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("evalkit: error:")]
    assert len(errors) == 1 and path_part in errors[0], r.stderr
    return errors[0]


def _no_temps(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]
    assert not left, left


def test_full_disk_at_the_first_write_is_one_line(tmpfs, tmp_path):
    disk = tmpfs("300k")
    fill_disk(disk, 0)
    out = disk / "out"
    r = _run(out, tmp_path / "cache")
    line = _one_line(r, str(out / "tasks"))
    assert "disk is full" in line and "--out" in line
    _no_temps(disk)


def test_read_only_out_is_one_line(tmpfs, tmp_path):
    disk = tmpfs("1m", ro=True)
    r = _run(disk / "out", tmp_path / "cache")
    line = _one_line(r, str(disk / "out"))
    assert "read-only" in line


@pytest.mark.slow  # > 20 s here; `make test-slow` runs it (and .ci/run)
def test_full_disk_mid_run_keeps_the_units_written(tmpfs, tmp_path):
    """Room for the first task's files, not for the second's: the first result stays, the rerun on a
    disk with room resumes from it (skipped, not recomputed) and finishes."""
    disk = tmpfs("2m")
    out = disk / "out"
    first = _run(out, tmp_path / "cache", "shapes")
    assert first.returncode == 0, first.stderr
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 1
    fill_disk(disk, 0)
    r = _run(out, tmp_path / "cache", "shapes,shapes_coco")
    _one_line(r, str(out))
    assert sorted((out / "units").glob("*.json")) == units  # nothing lost, nothing half-written
    _no_temps(disk)
    (disk / "filler").unlink()
    again = _run(out, tmp_path / "cache", "shapes,shapes_coco")
    assert again.returncode == 0, again.stderr
    assert "units: 1 ok, 0 failed, 1 already done" in again.stdout + again.stderr
