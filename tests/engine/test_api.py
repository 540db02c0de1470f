"""The Python API takes what the CLI takes: grids, run folders and globs, narrowed by where/epochs."""

from __future__ import annotations

import pandas as pd
import pytest
from _embedded import ensure_grid

import evalkit
from evalkit.cli import main
from evalkit.embedded.paths import embedded_home
from evalkit.errors import UsageError


def test_evaluate_takes_a_run_folder_with_filters_like_the_cli(tmp_path):
    ensure_grid()
    runs = embedded_home() / "runs"
    with pytest.raises(UsageError, match=r"--where/--epochs select among grid checkpoints"):  # a filter needs a grid
        evalkit.evaluate("tinyclip-S", ["shapes"], epochs="last", out=tmp_path / "none", device="cpu")
    pattern = str(runs / "tinyclip-S_s2k" / "checkpoints" / "epoch_*.pt")
    table = evalkit.evaluate(tasks=["shapes"], checkpoints=pattern, epochs="last", out=tmp_path / "api", device="cpu",
                             cache_dir=tmp_path / "c")
    assert (table.status == "ok").all() and list(table.epoch.unique()) == [4]  # the last of epochs 1..4
    assert main(["run", "--checkpoints", pattern, "--epochs", "last", "--tasks", "shapes", "--out", str(tmp_path / "cli"),
                 "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 0
    cli = pd.read_parquet(tmp_path / "cli" / "results.parquet")
    cols = ["model", "checkpoint", "task", "metric", "value"]
    pd.testing.assert_frame_equal(table[cols].sort_values(cols[:4]).reset_index(drop=True),
                                  cli[cols].sort_values(cols[:4]).reset_index(drop=True))
