"""The exception tree: one EvalkitError base; UserError for what the user fixes (one line, exit 2), anything
else is a bug (traceback). Imports nothing of evalkit, so every layer can use it."""

from __future__ import annotations


class EvalkitError(Exception):
    """Every error evalkit raises on purpose."""


class UserError(EvalkitError):
    """The user's to fix (bad input, missing data, a full disk): one line, exit 2."""




def is_user_error(e: BaseException) -> bool:
    """Printed as one line (exit 2) rather than a traceback: every UserError (each evalkit error class
    derives from it), and, for now, any ValueError / FileNotFoundError (bad arguments raised as such)."""
    return isinstance(e, (UserError, FileNotFoundError, ValueError))
