"""Where the embedded world lives.

Kept free of torch so that the CLI and config loaders can resolve paths cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "EVALKIT_EMBEDDED_HOME"


def package_dir() -> Path:
    """Directory of the `evalkit.embedded` package."""
    return Path(__file__).resolve().parent


def data_root() -> Path:
    """Committed, byte-pinned test data (images, annotations, tars) shipped as package data."""
    return package_dir() / "data"


def repo_root() -> Path | None:
    """The checkout root when running from a source tree (has pyproject.toml and .git), else None."""
    root = package_dir().parents[1]
    if (root / "pyproject.toml").is_file() and (root / ".git").exists():
        return root
    return None


def embedded_home() -> Path:
    """Where built artefacts (trained checkpoints, run dirs) go.

    `$EVALKIT_EMBEDDED_HOME` wins; otherwise `<repo>/.cache/embedded` in a checkout (gitignored), else
    `~/.cache/evalkit/embedded` for an installed package.
    """
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    repo = repo_root()
    if repo is not None:
        return repo / ".cache" / "embedded"
    return Path.home() / ".cache" / "evalkit" / "embedded"


def runs_root(home: Path | None = None) -> Path:
    """open_clip-style training runs (`<runs_root>/<run_name>/checkpoints/epoch_N.pt`)."""
    return (home or embedded_home()) / "runs"
