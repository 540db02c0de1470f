"""The exception tree: one EvalkitError base; UserError for what the user fixes (one line, exit 2), anything
else is a bug (traceback). Imports nothing of evalkit, so every layer can use it.

Bad input that callers have always caught as a builtin stays catchable as one: `UsageError` is a
ValueError, `NotFound` a FileNotFoundError, and the layers' own classes (TaskError, DataError, ...)
keep the builtin they derive from. A bare ValueError or FileNotFoundError is a bug, never the user's.
"""

from __future__ import annotations

import errno

# What a full disk, a quota, a read-only mount or a folder without permission look like: the user's to
# fix, never a bug (evalkit.atomic says it in one line naming the file).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class EvalkitError(Exception):
    """Every error evalkit raises on purpose."""


class UserError(EvalkitError):
    """The user's to fix (bad input, missing data, a full disk): one line, exit 2."""


class UsageError(UserError, ValueError):
    """A bad argument or setting (a CLI flag, an API keyword, a config value): names it and what is allowed."""


class NotFound(UserError, FileNotFoundError):
    """A file, folder or checkpoint the user pointed at is not there: names it and what to do."""


def is_disk_error(e: BaseException) -> bool:
    """An OSError saying the disk refused a write (full, quota, read-only, permissions)."""
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def is_user_error(e: BaseException) -> bool:
    """Printed as one line (exit 2) rather than a traceback: every UserError, and a disk that refused a
    write (evalkit.atomic names the file as a WriteError, a UserError; a raw one is the disk's too)."""
    return isinstance(e, UserError) or is_disk_error(e)
