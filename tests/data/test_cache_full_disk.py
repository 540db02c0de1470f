"""The decode cache on a disk that is full or read-only, on real tmpfs mounts (root mounts them): never a
SIGBUS (the entry's space is reserved before pixels go into its memory map), never an empty build lock;
a run warns once and completes uncached with the same numbers, `evalkit cache build` fails in one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _embedded import DATA
from _util import REPO, fill_disk

from evalkit.data.cache import CacheWriteError, _BuildLock, decoded_images, entry_dir
from evalkit.data.formats.wds import read_wds
from evalkit.data.preprocess import PreprocessCfg
from evalkit.errors import UserError, is_user_error

CFG = PreprocessCfg(size=48)  # 400 images x 3 x 48 x 48 = 2.7 MB per entry
WARNING = "cannot write the image cache"


@pytest.fixture(scope="module")
def source():
    return read_wds(DATA / "wds_shapes", "test")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "filler")


RESERVE_AND_STORE = """
import errno, json, os, sys
from pathlib import Path
from evalkit.data import cache

def nope(*a):
    raise OSError(errno.EOPNOTSUPP, "not supported")

out = {}
for mode in ("fallocate", "zeros-written"):
    if mode == "zeros-written":  # a file system without fallocate: the zeros are written instead
        os.posix_fallocate = nope
    for case, folder in (("full", sys.argv[1]), ("room", sys.argv[2])):
        path = Path(folder) / f"{mode}.npy"
        try:
            arr = cache._reserved_memmap(path, (200, 3, 48, 48))
        except OSError as e:
            out[f"{mode} {case}"] = e.errno
            continue
        arr[:] = 7  # every page: a page the disk has no room for would be a SIGBUS here
        arr.flush()
        del arr
        out[f"{mode} {case}"] = "stored"
print(json.dumps(out))
"""


def test_a_memmap_too_big_for_the_disk_is_enospc_not_sigbus(tmpfs, tmp_path):
    """In a child process, since a SIGBUS would kill pytest: 1.4 MB of pixels on a 1 MB disk."""
    disk = tmpfs("1m")
    r = subprocess.run([sys.executable, "-c", RESERVE_AND_STORE, str(disk), str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode != -signal.SIGBUS, "SIGBUS: pixels were stored into pages the disk had no room for"
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"fallocate full": errno.ENOSPC, "fallocate room": "stored",
                                    "zeros-written full": errno.ENOSPC, "zeros-written room": "stored"}
    assert _files(disk) == [disk / "fallocate.npy", disk / "zeros-written.npy"]  # headers only; atomic_write drops them
    # with room, the reserved file holds exactly what numpy writes for the same array
    np.save(tmp_path / "reference.npy", np.full((200, 3, 48, 48), 7, dtype=np.uint8))
    for mode in ("fallocate", "zeros-written"):
        assert (tmp_path / f"{mode}.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()


def test_a_lock_that_cannot_be_written_is_not_left_empty(tmpfs):
    disk = tmpfs("300k")
    (disk / "entry").mkdir()
    fill_disk(disk, 0)
    lock = _BuildLock(disk / "entry" / "build.lock")
    with pytest.raises(OSError) as e:
        lock.acquire()  # the file is created (tmpfs inodes are free), its contents are not
    assert e.value.errno == errno.ENOSPC
    assert list((disk / "entry").iterdir()) == []  # an empty lock would make every other process wait LOCK_STALE_S


def test_a_full_cache_disk_decodes_uncached_with_one_warning(tmpfs, source, caplog):
    from evalkit.progress import WARNINGS

    WARNINGS.reset()  # said once per process and cache folder
    disk = tmpfs("1m")
    reference = decoded_images(source, CFG, None, num_workers=0)
    with caplog.at_level("WARNING", logger="evalkit.data.cache"):
        first = decoded_images(source, CFG, disk / "cache", num_workers=0)
        again = decoded_images(source, CFG, disk / "cache", num_workers=0)
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(again, reference)
    said = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(said) == 1, said
    pixels = entry_dir(source, CFG, disk / "cache") / "pixels.npy"
    assert said[0].startswith(f"evalkit: warning: {pixels}: {WARNING} (the disk is full); running uncached")
    assert _files(disk) == []  # no lock, no temp, no half entry
    with pytest.raises(CacheWriteError) as e:  # building the cache is the point: an error naming the file
        decoded_images(source, CFG, disk / "cache", num_workers=0, required=True)
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError) and is_user_error(e.value)
    assert str(e.value).startswith(f"{pixels}: {WARNING} (the disk is full). Free space there or point --cache-dir")


def test_a_read_only_cache_disk_still_serves_the_entries_it_has(tmpfs, source, caplog):
    from evalkit.progress import WARNINGS

    WARNINGS.reset()
    disk = tmpfs("8m")
    built = np.array(decoded_images(source, CFG, disk / "cache", num_workers=0))
    other = PreprocessCfg(size=40)  # an entry the disk does not have
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with caplog.at_level("WARNING", logger="evalkit.data.cache"):
        cached = decoded_images(source, CFG, disk / "cache", num_workers=0)
        assert not caplog.records  # read from the cache: nothing to write, nothing to say
        uncached = decoded_images(source, other, disk / "cache", num_workers=0)
    assert isinstance(cached, np.memmap) and Path(cached.filename).parent == entry_dir(source, CFG, disk / "cache")
    np.testing.assert_array_equal(cached, built)
    np.testing.assert_array_equal(uncached, decoded_images(source, other, None, num_workers=0))
    [said] = [r.getMessage() for r in caplog.records]
    assert "(the file system is read-only); running uncached" in said


def _evalkit(*args: str) -> subprocess.CompletedProcess:
    from _embedded import ensure_grid

    ensure_grid()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EVALKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env)


def _run(out: Path, *cache: str) -> subprocess.CompletedProcess:
    return _evalkit("run", "--model", "tinyclip-S", "--tasks", "shapes,shapes_coco", "--device", "cpu",
                    "--num-workers", "0", "--out", str(out), *cache)


@pytest.mark.slow  # > 20 s here; `make test-slow` runs it (and .ci/run)
def test_a_run_on_a_full_cache_disk_completes_uncached_with_the_same_numbers(tmpfs, tmp_path):
    """Before: SIGBUS (exit 135) at the first batch stored into the entry's memory map."""
    disk = tmpfs("1m")  # 400 images at tinyclip-S's 32 px are 1.2 MB per dataset
    r = _run(tmp_path / "full", "--cache-dir", str(disk / "cache"))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    warnings = [line for line in r.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1 and "(the disk is full); running uncached" in warnings[0], r.stderr  # two datasets, once
    assert "Traceback" not in r.stderr and _files(disk) == []
    reference = _run(tmp_path / "nocache", "--no-cache")
    assert reference.returncode == 0 and WARNING not in reference.stderr, reference.stderr
    cols = ["model", "task", "metric", "value", "status"]
    full, ref = (pd.read_parquet(tmp_path / d / "results.parquet")[cols].sort_values(cols[:3]).reset_index(drop=True)
                 for d in ("full", "nocache"))
    assert len(full) == 10 and (full.status == "ok").all()
    pd.testing.assert_frame_equal(full, ref)


@pytest.mark.parametrize("shard", [None, "0/2"], ids=["whole", "piece"])
def test_cache_build_on_a_full_disk_is_one_line(tmpfs, shard):
    disk = tmpfs("512k")  # less than the whole entry (1.2 MB) and than its first half
    r = _evalkit("cache", "build", "--tasks", "shapes", "--model", "tinyclip-S", "--cache-dir", str(disk / "cache"),
                 *(["--shard", shard] if shard else []))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    [line] = [line for line in r.stderr.splitlines() if line.startswith("evalkit: error:")]
    name = "pieces/0-of-2.npy" if shard else "pixels.npy"
    assert f"{disk / 'cache'}/" in line and line.split(":")[2].strip().endswith(name), line
    assert f"{WARNING} (the disk is full)" in line
    assert _files(disk) == []
