"""Which exceptions are the user's to fix (printed in one line) rather than evalkit bugs (traceback)."""

from __future__ import annotations


class EvalkitError(Exception):
    """Every error evalkit raises on purpose."""


class UserError(EvalkitError):
    """The user's to fix (bad input, missing data, a full disk): one line, exit 2."""




def is_user_error(e: BaseException) -> bool:
    from evalkit.data.sources import DataError
    from evalkit.engine import DeviceError
    from evalkit.models.checkpoint import CheckpointError
    from evalkit.models.configs import ModelNotFound
    from evalkit.models.hub import HubUnavailable
    from evalkit.results.store import ResultsWriteError
    from evalkit.tasks.spec import TaskError

    return isinstance(e, (UserError, DataError, CheckpointError, ModelNotFound, HubUnavailable, TaskError, ResultsWriteError, DeviceError, FileNotFoundError, ValueError))
