"""One builder per decode-cache entry across processes (issue 15.5): the others wait and read its pixels;
a builder that died leaves a lock that is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _embedded import DATA

import evalkit.data.cache as cache
from evalkit.atomic import HOST, atomic_write
from evalkit.data.open import open_classification
from evalkit.data.preprocess import PreprocessCfg

CFG = PreprocessCfg(size=32)

CHILD = r"""
import json, os, sys, time
from pathlib import Path

import numpy as np

import evalkit.data.cache as cache
from evalkit.data.open import open_classification
from evalkit.data.preprocess import PreprocessCfg

root, cache_dir, out, go = sys.argv[1:5]
source = open_classification(Path(root))
opens, builds = [0], [0]
real_open, real_decode = source.opener, cache.decode_all

def counting_open(i):
    opens[0] += 1
    time.sleep(0.002)  # a build long enough that all four ask while it runs
    return real_open(i)

def counting_decode(*args, **kw):
    builds[0] += 1
    return real_decode(*args, **kw)

source.opener, cache.decode_all = counting_open, counting_decode
Path(out + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.002)
arr = cache.decoded_images(source, PreprocessCfg(size=32), Path(cache_dir), num_workers=0)
np.save(out + ".npy", np.asarray(arr))
Path(out + ".json").write_text(json.dumps({"opens": opens[0], "builds": builds[0]}))
"""


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for pr in procs:
            if pr.poll() not in (None, 0):
                raise AssertionError(f"child failed:\n{pr.communicate()[1]}")
        assert time.monotonic() < end, "children did not get ready"
        time.sleep(0.05)


def test_four_processes_build_one_entry_once_and_get_identical_pixels(tmp_path):
    root = DATA / "imagenet_folder"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    outs = [tmp_path / f"out{k}" for k in range(4)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(cache_dir), str(o), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for o in outs]
    try:
        _wait_for([Path(f"{o}.ready") for o in outs], procs, 240)
        go.touch()  # all four ask for the uncached entry at the same moment
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stats = [json.loads(Path(f"{o}.json").read_text()) for o in outs]
    source = open_classification(root)
    assert sum(s["builds"] for s in stats) == 1, stats
    assert sum(s["opens"] for s in stats) == len(source), stats  # every image decoded once, in all
    want = cache.decoded_images(source, CFG, None, num_workers=0)  # a single-process build
    for o in outs:
        np.testing.assert_array_equal(np.load(f"{o}.npy"), want)
    [entry] = cache.list_entries(cache_dir)
    assert entry["n"] == len(source)
    assert not list(cache_dir.rglob(cache.LOCK_FILE + "*")) and not list(cache_dir.rglob(".tmp-*"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # exited and reaped: the pid names no process
    return p.pid


def _in_thread(fn, timeout: float = 120.0):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # pragma: no cover - re-raised below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still waiting after {timeout}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_lock_of_a_dead_builder_on_this_host_is_taken_over(tmp_path):
    source = open_classification(DATA / "wds_shapes")
    entry = cache.entry_dir(source, CFG, tmp_path)
    entry.mkdir(parents=True)
    pid = _dead_pid()
    (entry / cache.LOCK_FILE).write_text(json.dumps({"host": HOST, "pid": pid, "token": "dead"}))
    half = entry / f".tmp-{HOST}-{pid}-0123456789ab"  # the dead builder's half-written pixels
    half.mkdir()
    (half / "pixels.npy").write_bytes(b"\0" * 4096)
    t0 = time.monotonic()
    got = _in_thread(lambda: np.asarray(cache.decoded_images(source, CFG, tmp_path, num_workers=0)))
    assert time.monotonic() - t0 < cache.LOCK_STALE_S  # not by waiting out the heartbeat timeout
    np.testing.assert_array_equal(got, cache.decoded_images(source, CFG, None, num_workers=0))
    assert not (entry / cache.LOCK_FILE).exists() and not half.exists()
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "pixels.npy"]


def test_lock_of_another_host_is_waited_for_while_its_heartbeat_moves(tmp_path, monkeypatch):
    source = open_classification(DATA / "wds_shapes")
    want = cache.decoded_images(source, CFG, None, num_workers=0)
    entry = cache.entry_dir(source, CFG, tmp_path)
    entry.mkdir(parents=True)
    lock = entry / cache.LOCK_FILE
    lock.write_text(json.dumps({"host": "some-other-node", "pid": os.getpid(), "token": "remote"}))
    monkeypatch.setattr(cache, "LOCK_STALE_S", 1.0)

    def remote_builder():  # beats for 2.5 s (> LOCK_STALE_S), then publishes the entry and unlocks
        for k in range(25):
            os.utime(lock, (time.time() + k, time.time() + k))
            time.sleep(0.1)
        atomic_write(entry / "pixels.npy", lambda p: np.save(p, want))
        lock.unlink()

    builder = threading.Thread(target=remote_builder, daemon=True)
    builder.start()
    monkeypatch.setattr(cache, "decode_all", lambda *a, **k: pytest.fail("decoded while another host was building"))
    t0 = time.monotonic()
    got = _in_thread(lambda: np.asarray(cache.decoded_images(source, CFG, tmp_path, num_workers=0)))
    builder.join()
    assert time.monotonic() - t0 > 2.0
    np.testing.assert_array_equal(got, want)


def test_lock_of_another_host_without_heartbeat_is_taken_over_after_the_timeout(tmp_path, monkeypatch):
    source = open_classification(DATA / "wds_shapes")
    entry = cache.entry_dir(source, CFG, tmp_path)
    entry.mkdir(parents=True)
    (entry / cache.LOCK_FILE).write_text(json.dumps({"host": "some-other-node", "pid": 1, "token": "gone"}))
    monkeypatch.setattr(cache, "LOCK_STALE_S", 1.0)
    t0 = time.monotonic()
    got = _in_thread(lambda: np.asarray(cache.decoded_images(source, CFG, tmp_path, num_workers=0)))
    assert time.monotonic() - t0 >= 1.0
    np.testing.assert_array_equal(got, cache.decoded_images(source, CFG, None, num_workers=0))
    assert not (entry / cache.LOCK_FILE).exists()


def test_default_workers_follow_the_cpu_affinity_not_the_core_count(monkeypatch):
    source = open_classification(DATA / "wds_shapes")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    seen = []
    monkeypatch.setattr(cache, "decode_all", lambda src, cfg, out, workers, progress, **kw: seen.append(workers))
    cache.decoded_images(source, CFG, None)
    assert 1 <= cache.available_cpus() <= 3 and seen == [cache.available_cpus()]


def test_lock_left_long_ago_on_another_host_is_taken_over_at_once(tmp_path):
    source = open_classification(DATA / "wds_shapes")
    entry = cache.entry_dir(source, CFG, tmp_path)
    entry.mkdir(parents=True)
    lock = entry / cache.LOCK_FILE
    lock.write_text(json.dumps({"host": "a-lost-node", "pid": 1, "token": "old"}))
    old = time.time() - 3 * cache.LOCK_STALE_S - 60
    os.utime(lock, (old, old))
    t0 = time.monotonic()
    _in_thread(lambda: cache.decoded_images(source, CFG, tmp_path, num_workers=0))
    assert time.monotonic() - t0 < 60 and not lock.exists()
