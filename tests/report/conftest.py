"""The report tests' results folder (tests/_results.py writes it as the engine does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _results import write_results


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    write_results(out, fail=("clipM_s1k", 2, "ret"))
    return out
