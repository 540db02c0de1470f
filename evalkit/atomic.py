"""Whole-or-nothing file writes, shared by every layer (it depends on nothing else in evalkit).

Write to a temp file in the destination folder, then `os.replace`: a reader, a concurrent shard or a
run killed at any moment only ever sees the old file or the complete new one.

Temp folders are named `.tmp-<host>-<pid>-<random>`: unique across the nodes that share a results
folder (two shards on different hosts can have the same pid), and parseable, so that
`remove_stale_temps` can tell a dead writer's leftovers from a live one's.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from evalkit.errors import DISK_ERRNOS, UserError

# DISK_ERRNOS (errors.py): a full disk, a quota, a read-only mount or a folder without permission, said
# here in one line naming the file (`WriteError`), never a traceback.
TMP_PREFIX = ".tmp-"
STALE_AGE_S = 24 * 3600.0  # other hosts' temps (their pids can't be checked) are stale after this long


def _host_token() -> str:
    """This machine as it appears in temp names: the hostname, plus the pid namespace where there is one
    (containers sharing a hostname but not a pid namespace can't check each other's pids)."""
    host = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname())[:64] or "host"
    try:
        host += f"_ns{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        pass
    return host


HOST = _host_token()


def temp_dir_name() -> str:
    """A private temp folder name: `.tmp-<host>-<pid>-<random>`, unique per write across hosts."""
    return f"{TMP_PREFIX}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def parse_temp_dir_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temp folder name from `temp_dir_name`; None for anything else (old `.tmp-<pid>`)."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class WriteError(UserError, OSError):
    """A write refused by the disk (full, quota, read-only, permissions); names the file and what to do.
    An OSError too, so callers that handle write failures as such keep doing so."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_problem(e: OSError) -> str:
    """What a disk error means, in words: "the disk is full", ..., "permission denied"."""
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(e.errno or 0, "permission denied")


def write_error(path: Path, e: OSError) -> WriteError:
    what = disk_problem(e)
    err = WriteError(e.errno, f"{path}: cannot write it ({what}). Free space there, or point evalkit at another "
                              "folder (--out for results, --cache-dir for the image cache), or fix its permissions; "
                              "results already written are kept, and a rerun resumes from them.")
    err.filename = str(path)
    return err


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temp path beside `path`, then move it into place; never leaves the temp.
    A disk that refuses the write (`DISK_ERRNOS`) is a `WriteError` naming `path`."""
    path = Path(path)
    try:
        return _atomic_write(path, write)
    except WriteError:
        raise
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise write_error(path, e) from None
        raise


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    # The temp file keeps the final name inside a private folder beside it: writers that read the
    # name (matplotlib's format, torch.save's archive name) see the real one, and no two writes (other
    # threads, other processes, other hosts) ever share a temp path.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.parent / temp_dir_name()
    tmp_dir.mkdir()
    tmp = tmp_dir / path.name
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _last_touched(folder: Path) -> float:
    """Newest mtime of the folder and what's in it (a temp file being written keeps it fresh)."""
    newest = folder.lstat().st_mtime
    for f in folder.iterdir():
        try:
            newest = max(newest, f.lstat().st_mtime)
        except OSError:
            continue
    return newest


def remove_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the `.tmp-*` folders directly in `folder` left behind by writers that died (SIGKILL, OOM,
    a lost node); return the ones removed. Safe to call while other processes write there:

    - this host's (same hostname and pid namespace): removed when the writer's pid is not alive, or
      (pid reused) nothing in it changed for `max_age_s`;
    - other hosts' and unparseable (old `.tmp-<pid>`) ones: removed only when nothing in them changed
      for `max_age_s`, since their writer can't be checked from here.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # missing or unreadable folder: nothing to clean
        return removed
    now = time.time()
    for d in entries:
        if not d.name.startswith(TMP_PREFIX):
            continue
        try:
            if not d.is_dir() or d.is_symlink():
                continue
            old = now - _last_touched(d) > max_age_s
        except OSError:  # removed meanwhile by its writer or another cleaner
            continue
        owner = parse_temp_dir_name(d.name)
        dead = owner is not None and owner[0] == HOST and not _pid_alive(owner[1])
        if dead or old:
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
    return removed


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
