"""Whole-or-nothing file writes, shared by every layer (it depends on nothing else in evalkit).

Write to a temp file in the destination folder, then `os.replace`: a reader, a concurrent shard or a
run killed at any moment only ever sees the old file or the complete new one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temp path beside `path`, then move it into place; never leaves the temp."""
    path = Path(path)
    # The temp file keeps the final name inside a private folder beside it: writers that read the
    # name (matplotlib's format, torch.save's archive name) see the real one, and concurrent processes
    # never share a temp path.
    tmp_dir = path.parent / f".tmp-{os.getpid()}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / path.name
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        try:
            tmp_dir.rmdir()
        except OSError:  # another write of this process is still using it
            pass
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def fsync_path(path: Path) -> None:
    """Put a written file and its folder entry on disk (survives an OS crash, not only a killed process)."""
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))):
        try:
            fd = os.open(target, flags)
        except OSError:  # replaced meanwhile by a newer write of the same file: that one syncs itself
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
