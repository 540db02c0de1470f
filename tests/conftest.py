"""Shared pytest fixtures. Offline by construction: no hub lookups from tests."""

from __future__ import annotations

import os
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
