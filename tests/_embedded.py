"""Access to the embedded world's trained micro grid (built by `make embedded` or on first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from evalkit.embedded.grid import GRID, get_run
from evalkit.embedded.paths import data_root


def ensure_grid() -> None:
    if not all(p.is_file() for run in GRID for p in run.checkpoints()):
        subprocess.run([sys.executable, "-m", "evalkit.embedded.build"], check=True)


def trained_checkpoint(run: str = "tinyclip-S_s2k", epoch: int | None = None) -> tuple[Path, Path]:
    """(checkpoint file, model-config JSON) of a trained tiny model."""
    ensure_grid()
    spec = get_run(run)
    from evalkit.embedded.grid import model_config_path

    return spec.checkpoint(epoch or spec.epochs), model_config_path(spec.model)


DATA = data_root()
