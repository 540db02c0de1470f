"""Shared pytest fixtures. Offline by construction: no hub lookups from tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_world() -> Path:
    """The embedded world built once per session into `embedded_home()` (data + trained micro grid)."""
    from evalkit.embedded.build import build
    from evalkit.embedded.paths import embedded_home

    home = embedded_home()
    build(home, log=lambda s: None)
    return home


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size, ro=False) -> a fresh real tmpfs folder (root mounts it), unmounted afterwards: a disk
    that really fills up or really refuses writes, for the full-disk tests."""
    mounted: list[Path] = []

    def make(size: str, ro: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        assert r.returncode == 0, f"cannot mount a tmpfs (root is needed for this test): {r.stderr}"
        mounted.append(where)
        return where

    yield make
    for m in reversed(mounted):
        subprocess.run(["umount", "-l", str(m)], check=False)
