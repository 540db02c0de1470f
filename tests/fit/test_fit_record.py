"""fit.json: the settings, each group's law, its curve and bootstrap band past the data, and the fitted points,
as `evalkit report` reads them to draw a fit over its table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _results import write_results

from evalkit.fit.api import fit_table
from evalkit.fit.forms import evaluate


def test_fit_json_holds_curve_band_and_points(tmp_path: Path) -> None:
    write_results(tmp_path / "out")
    rep = fit_table(tmp_path / "out" / "results.parquet", task="cls", metric="acc1", frontier="all", form="power",
                    bootstrap=40, predict=[1e6], out=tmp_path / "fit", plots=False)
    record = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert record["settings"]["task"] == "cls" and record["settings"]["x"] == "gflops_total"
    assert set(record["groups"]) == {"clip", "mammut"}
    for name, g in record["groups"].items():
        gf = rep.groups[name]
        x = np.asarray(g["curve"]["x"])
        fitted = gf.points[gf.points["fitted"]]
        assert x[0] == pytest.approx(fitted["x"].min()) and x[-1] == pytest.approx(1e6)  # extrapolated to --predict
        assert g["x_fitted"] == [pytest.approx(fitted["x"].min()), pytest.approx(fitted["x"].max())]
        np.testing.assert_allclose(g["curve"]["error"], evaluate(x, g["a"], g["b"], g["c"], g["d"]), rtol=1e-12)
        lo, hi = gf.boot.band(x)
        np.testing.assert_allclose(g["curve"]["low"], lo, rtol=1e-12)
        np.testing.assert_allclose(g["curve"]["high"], hi, rtol=1e-12)
        assert sorted(g["points"]["model"]) == sorted(fitted["model"])
        np.testing.assert_allclose(sorted(g["points"]["error"]), sorted(fitted["y"]))
