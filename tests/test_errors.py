"""The exception tree (evalkit/errors.py): every evalkit error class derives from EvalkitError; bad input
is a UserError (one line, exit 2) that stays catchable as the builtin it used to be; anything else is a
bug, and a bug reaching the CLI keeps its traceback (exit 1) even when it is a ValueError."""

from __future__ import annotations

import ast
import errno
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from _util import REPO

import evalkit
from evalkit.atomic import WriteError
from evalkit.errors import EvalkitError, NotFound, UsageError, UserError, is_user_error


def _evalkit_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(evalkit.__path__, "evalkit.")]
    return [n for n in names if not n.endswith(".__main__")]  # __main__ runs the CLI on import


def test_every_exception_class_in_evalkit_derives_from_evalkit_error():
    found: dict[str, type] = {}
    for name in _evalkit_modules():
        module = importlib.import_module(name)  # a module that fails to import fails this test too
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name
                    and not issubclass(obj, Warning)):  # warning categories are not errors
                found[f"{name}.{obj.__qualname__}"] = obj
    # the walk really saw the tree: the base, both generic user errors and the layers' own classes
    for known in ("evalkit.errors.UsageError", "evalkit.errors.NotFound", "evalkit.atomic.WriteError",
                  "evalkit.tasks.spec.TaskError", "evalkit.data.sources.DataError", "evalkit.models.hub.HubReadError",
                  "evalkit.results.store.ResultsWriteError", "evalkit.cluster.submit.SubmitError"):
        assert known in found, sorted(found)
    assert len(found) >= 18, sorted(found)
    outside = sorted(n for n, cls in found.items() if not issubclass(cls, EvalkitError))
    assert outside == []
    not_users = sorted(n for n, cls in found.items() if cls is not EvalkitError and not issubclass(cls, UserError))
    assert not_users == []  # every class evalkit raises on purpose today is the user's to fix


# Bare builtins left on purpose: each is an internal contract (a caller's bug), never the user's input.
BUG_RAISES = {
    "evalkit/tasks/protocols/seg_metrics.py": 2,  # the meter's inputs (shapes, labels) come from evalkit's readers
    "evalkit/tasks/protocols/segmentation.py": 1,  # patch tokens not a square grid: a family hook's bug
    "evalkit/fit/solver.py": 1,  # x, y not 1-d of one length: the caller's arrays (data errors are UsageError)
    "evalkit/embedded/world.py": 2,  # an unknown shape kind in the demo world's generator
    "evalkit/embedded/selection_sets.py": 1,  # two images of one class paired: the generator's caller's bug
    "evalkit/models/family.py": 1,  # a family class without a name: its author's bug, traceback wanted
    "evalkit/models/families/mammut.py": 1,  # forward() without the image: evalkit's own call
    "evalkit/models/decoding.py": 2,  # chunk size < 1 and images/sequences out of step: the protocols check both
    "evalkit/registry.py": 1,  # registering under an empty name: a plug-in author's bug
}


def _bare_raises(path: Path) -> int:
    n = 0
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in ("ValueError", "FileNotFoundError"):
                n += 1
    return n


def test_no_bare_value_error_on_user_input():
    """A bare ValueError / FileNotFoundError is a traceback at the CLI now: each one left is listed above
    with why it is a bug and not bad input; a new one must be a UserError (UsageError, NotFound, ...)."""
    counts = {str(p.relative_to(REPO)): _bare_raises(p) for p in sorted((REPO / "evalkit").rglob("*.py"))}
    assert {p: n for p, n in counts.items() if n} == BUG_RAISES


def test_the_raise_counter_sees_every_form(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("def f(a):\n    if a:\n        raise ValueError('x')\n    raise FileNotFoundError\n"
                       "def g():\n    raise UsageError('fine')\n")
    assert _bare_raises(planted) == 2


def test_user_errors_keep_their_builtin_and_bugs_are_not_the_users(tmp_path):
    from evalkit.grids.paper import parse_epochs, parse_where
    from evalkit.grids.runs import specs_from_glob, specs_from_run_dir

    with pytest.raises(UsageError, match="unknown key 'modle'") as e:
        parse_where("modle=ViT-B-32")
    assert isinstance(e.value, ValueError) and is_user_error(e.value)
    with pytest.raises(ValueError, match="expected last, all"):  # callers' `except ValueError` still catch it
        parse_epochs("1,x")
    with pytest.raises(NotFound, match="matches no file") as e:
        specs_from_glob(str(tmp_path / "*.pt"))
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, OSError) and is_user_error(e.value)
    assert str(e.value) == f"--checkpoints '{tmp_path / '*.pt'}' matches no file."  # the message alone, no errno
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        specs_from_run_dir(tmp_path)
    # bugs: a bare builtin is never the user's, whatever its type
    assert not is_user_error(ValueError("x")) and not is_user_error(FileNotFoundError("x"))
    assert not is_user_error(KeyError("x")) and not is_user_error(OSError(errno.EIO, "I/O error"))
    # a disk that refuses a write is the user's, translated by atomic or not
    assert is_user_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_user_error(WriteError(errno.EROFS, "read-only")) and is_user_error(UsageError("x"))


def _cli(*args: str, plant: str = "") -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter; `plant` is code run first (to plant a bug inside evalkit)."""
    from _embedded import ensure_grid

    ensure_grid()
    code = f"import sys\n{plant}\nfrom evalkit.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EVALKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, env=env)


PLANTED_BUG = """
import evalkit.engine.loop as loop
def plan(*args, **kw):
    raise ValueError("planted bug: unit ids disagree")
loop.plan = plan
"""


def test_a_bugs_value_error_inside_a_run_is_a_traceback_and_exit_1(tmp_path):
    r = _cli("run", "--model", "tinyclip-S", "--tasks", "shapes", "--device", "cpu", "--num-workers", "0",
             "--out", str(tmp_path / "out"), "--no-cache", plant=PLANTED_BUG)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback (most recent call last)" in r.stderr, r.stderr[-2000:]
    assert r.stderr.rstrip().splitlines()[-1] == "ValueError: planted bug: unit ids disagree"
    assert 'evalkit/engine/loop.py", line' in r.stderr  # where it was raised from: the run's own code
    assert "evalkit: error:" not in r.stderr


def test_user_errors_through_the_cli_are_one_line_and_exit_2(tmp_path):
    for args, message in (
        (("--model", "tinyclip-S", "--epochs", "1"), "--where/--epochs select among grid checkpoints"),  # UsageError
        (("--run-dir", str(tmp_path)), f"{tmp_path}: no checkpoints"),  # NotFound
    ):
        r = _cli("run", *args, "--tasks", "shapes", "--device", "cpu", "--out", str(tmp_path / "out"))
        assert r.returncode == 2, (args, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"evalkit: error: {message}"), r.stderr
