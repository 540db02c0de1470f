"""Atomic writes: temp names unique across hosts (hostname + pid + random, parseable), the temp file
keeps the final name, and `remove_stale_temps` removes dead writers' leftovers and nothing live."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from evalkit import atomic
from evalkit.atomic import atomic_write, atomic_write_bytes, parse_temp_dir_name, remove_stale_temps


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_keeps_the_final_name_in_a_private_folder_named_by_host_and_pid(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("x")

    atomic_write(tmp_path / "plot.png", write)
    tmp = seen[0]
    assert tmp.name == "plot.png" and tmp.parent.parent == tmp_path
    assert tmp.parent.name.startswith(".tmp-")
    host, pid = parse_temp_dir_name(tmp.parent.name)
    assert pid == os.getpid() and host == atomic.HOST
    assert re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:20] in re.sub(r"[^A-Za-z0-9]", "", host)
    assert (tmp_path / "plot.png").read_text() == "x" and list(tmp_path.iterdir()) == [tmp_path / "plot.png"]


def test_two_hosts_with_the_same_pid_writing_one_file_never_share_a_temp(tmp_path, monkeypatch):
    """Shards on two nodes can have the same pid; before, both wrote `.tmp-<pid>/<name>`, so one moved
    the other's half-written temp into place (or failed to find its own)."""
    target = tmp_path / "unit.json"
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    temps = []

    def outer(tmp):
        temps.append(tmp)
        tmp.write_bytes(b"from host A")
        monkeypatch.setattr(atomic, "HOST", "hostB")  # the other node, same pid, same moment
        atomic_write_bytes(target, b"from host B")
        assert target.read_bytes() == b"from host B"
        assert tmp.read_bytes() == b"from host A"  # untouched by the other writer

    monkeypatch.setattr(atomic, "HOST", "hostA")
    atomic_write(target, outer)
    assert target.read_bytes() == b"from host A"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_names_are_unique_per_write_and_parse():
    names = {atomic.temp_dir_name() for _ in range(200)}
    assert len(names) == 200
    assert parse_temp_dir_name(".tmp-node-7.cluster-123-abcdef") == ("node-7.cluster", 123)
    assert parse_temp_dir_name(".tmp-1234") is None and parse_temp_dir_name("unit.json") is None


def test_a_failed_write_leaves_no_temp(tmp_path):
    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="^killed$"):  # the writer's own error, not a wrapped one
        atomic_write(tmp_path / "a.txt", boom)
    assert list(tmp_path.iterdir()) == []


def _make(folder, name, age_s=0.0):
    d = folder / name
    d.mkdir()
    (d / "unit.json").write_text("half")
    if age_s:
        t = time.time() - age_s
        os.utime(d / "unit.json", (t, t))
        os.utime(d, (t, t))
    return d


def test_remove_stale_temps_removes_dead_writers_only(tmp_path):
    host, day = atomic.HOST, 24 * 3600
    dead = _make(tmp_path, f".tmp-{host}-{_dead_pid()}-aaaa")
    live = _make(tmp_path, f".tmp-{host}-{os.getpid()}-bbbb")
    live_but_ancient = _make(tmp_path, f".tmp-{host}-{os.getpid()}-cccc", age_s=2 * day)  # pid reused
    other_fresh = _make(tmp_path, ".tmp-elsewhere-1-dddd")
    other_old = _make(tmp_path, ".tmp-elsewhere-2-eeee", age_s=2 * day)
    legacy_fresh = _make(tmp_path, ".tmp-12345")
    legacy_old = _make(tmp_path, ".tmp-12346", age_s=2 * day)
    not_temp = _make(tmp_path, "units", age_s=2 * day)
    (tmp_path / ".tmp-file").write_text("a file, not a temp folder")

    removed = remove_stale_temps(tmp_path)
    assert set(removed) == {dead, live_but_ancient, other_old, legacy_old}
    for d in (live, other_fresh, legacy_fresh, not_temp):
        assert d.is_dir()
    assert (tmp_path / ".tmp-file").is_file()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_other_hosts_temp_being_written_counts_as_fresh(tmp_path):
    d = _make(tmp_path, ".tmp-elsewhere-2-ffff", age_s=2 * 24 * 3600)
    (d / "unit.json").write_text("still being written")  # its writer is alive on the other node
    assert remove_stale_temps(tmp_path) == [] and d.is_dir()


def test_cleanup_during_a_write_keeps_the_live_temp(tmp_path):
    def write(tmp):
        tmp.write_text("x")
        assert remove_stale_temps(tmp_path) == []
        assert tmp.is_file()

    atomic_write(tmp_path / "a.txt", write)
    assert (tmp_path / "a.txt").read_text() == "x"
