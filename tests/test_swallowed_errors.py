"""Errors that used to vanish are visible and name their file: an ImportError no longer silently removes
`fit`/`import` from the CLI, and a hub file that can't be read is not reported as "no weights"."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
from pathlib import Path

import pytest

from evalkit import cli
from evalkit.models import hub
from evalkit.models.hub import HubReadError, HubUnavailable, read_dir_layout, resolve_hub

# --- the CLI: `fit` / `import` never disappear silently ---------------------------------------------


class _Failing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import evalkit.cli.fit` fail the way a missing third-party dependency would."""

    def __init__(self, missing: str) -> None:
        self.missing = missing

    def find_spec(self, name, path=None, target=None):
        if name == "evalkit.cli.fit":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ModuleNotFoundError(f"No module named {self.missing!r}", name=self.missing)


def test_an_import_error_in_evalkits_own_fit_module_is_raised(monkeypatch):
    """Before, `except ImportError: pass` dropped `fit` and `import` from the CLI without a word."""
    monkeypatch.setitem(sys.modules, "evalkit.cli.fit", None)  # import of it fails: evalkit's own bug
    with pytest.raises(ImportError) as e:
        cli.build_parser()
    assert "evalkit.cli.fit" in str(e.value)


def test_a_missing_third_party_package_says_what_to_install(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "evalkit.cli.fit", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Failing("sklearn"), *sys.meta_path])
    parser = cli.build_parser()
    assert parser.parse_args(["collect", "x"]).command == "collect"  # every other command still works
    assert cli.main(["fit", "results.parquet", "--task", "t", "--metric", "m"]) == 2
    err = capsys.readouterr().err
    assert "evalkit fit: error:" in err and "evalkit.cli.fit" in err and "pip install scikit-learn" in err
    assert cli.main(["import", "clip-benchmark", "x"]) == 2
    assert "pip install scikit-learn" in capsys.readouterr().err


def test_fit_and_import_are_registered_normally():
    args = cli.build_parser().parse_args(["fit", "r.parquet", "--task", "t", "--metric", "m", "--out", "o"])
    from evalkit.cli.fit import run_fit_command

    assert args.command == "fit" and args.func is run_fit_command  # the real command, not the "unavailable" stub


# --- the hub: a read error is an error naming the file, not "no weights" -----------------------------


def _cached_repo(tmp_path, monkeypatch, files: dict[str, bytes], repo: str = "laion/tiny") -> Path:
    """A Hugging Face cache holding `files` for `repo`, offline."""
    import huggingface_hub.constants as c

    root = tmp_path / "hub"
    commit = "a" * 40
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return snap


CONFIG = json.dumps({"model_cfg": {"embed_dim": 8}, "preprocess_cfg": {}}).encode()


def _failing_download(snap: Path, fail_on: str, error: Exception):
    def download(repo_id, filename, **kw):
        if filename == fail_on:
            raise error
        return str(snap / filename)

    return download


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/hf/blobs/0123"),
    OSError(5, "Input/output error"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_an_unreadable_weights_file_is_reported_as_such(tmp_path, monkeypatch, error):
    """Before, every exception while fetching a weights file read as "no weights file"."""
    import huggingface_hub

    snap = _cached_repo(tmp_path, monkeypatch, {"open_clip_config.json": CONFIG})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        _failing_download(snap, "open_clip_model.safetensors", error))
    with pytest.raises(HubReadError) as e:
        resolve_hub("laion/tiny")
    msg = str(e.value)
    assert "open_clip_model.safetensors" in msg and type(error).__name__ in msg and str(error.args[-1]) in msg
    assert "no weights" not in msg


def test_weights_absent_from_the_cache_still_read_as_no_weights(tmp_path, monkeypatch):
    _cached_repo(tmp_path, monkeypatch, {"open_clip_config.json": CONFIG})
    with pytest.raises(HubUnavailable) as e:
        resolve_hub("laion/tiny")
    assert not isinstance(e.value, HubReadError)
    assert "no weights file" in str(e.value) and "open_clip_model.safetensors (not in the cache)" in str(e.value)


def test_found_weights_are_returned(tmp_path, monkeypatch):
    snap = _cached_repo(tmp_path, monkeypatch, {"open_clip_config.json": CONFIG, "open_clip_pytorch_model.bin": b"x"})
    cfg, pp, weights = resolve_hub("laion/tiny")
    assert cfg == {"embed_dim": 8} and weights == snap / "open_clip_pytorch_model.bin"


def test_an_unreadable_config_is_not_reported_as_missing(tmp_path, monkeypatch):
    import huggingface_hub

    snap = _cached_repo(tmp_path, monkeypatch, {"open_clip_config.json": CONFIG})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        _failing_download(snap, "open_clip_config.json", PermissionError(13, "Permission denied")))
    with pytest.raises(HubReadError) as e:
        resolve_hub("laion/tiny")
    assert "open_clip_config.json" in str(e.value) and "PermissionError" in str(e.value)
    assert "not in the local" not in str(e.value)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"preprocess_cfg": {}}'])
def test_a_corrupt_config_names_its_file(tmp_path, monkeypatch, content):
    snap = _cached_repo(tmp_path, monkeypatch, {"open_clip_config.json": content, "open_clip_model.safetensors": b"x"})
    with pytest.raises(HubReadError) as e:
        resolve_hub("laion/tiny")
    assert str(snap / "open_clip_config.json") in str(e.value)
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(content)
    (folder / "open_clip_model.safetensors").write_bytes(b"x")
    with pytest.raises(HubReadError) as e:
        read_dir_layout(folder)
    assert str(folder / "open_clip_config.json") in str(e.value)


def test_read_errors_print_as_one_line_user_errors(tmp_path, monkeypatch, capsys):
    """A HubReadError reaching the CLI is the user's to fix: one line naming the file, exit 2, no traceback."""
    from evalkit.errors import is_user_error

    assert is_user_error(HubReadError("x"))
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(b"{not json")
    (folder / "open_clip_model.safetensors").write_bytes(b"x")

    def command(args):
        hub.read_dir_layout(folder)  # raises HubReadError
        return 0

    monkeypatch.delenv("EVALKIT_DEBUG", raising=False)
    from evalkit.cli import run as cli_run

    monkeypatch.setattr(cli_run, "cmd_tasks", command)
    assert cli.main(["tasks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evalkit: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(folder / "open_clip_config.json") in err and "JSONDecodeError" in err
    monkeypatch.setenv("EVALKIT_DEBUG", "1")  # ... and with EVALKIT_DEBUG the traceback is there
    with pytest.raises(HubReadError, match="open_clip_config.json"):
        cli.main(["tasks"])
