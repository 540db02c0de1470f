"""`evalkit fit` at the command level: tidy and wide tables, outputs, comparison, bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _util import fixture_path

from evalkit.cli.fit import add_fit_parser
from evalkit.cli.results import add_import_parser
from evalkit.results.schema import TIDY_COLUMNS

WIDE = fixture_path("scaling-laws", "segmentation_results.parquet")


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="evalkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    add_import_parser(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def _tidy_from_wide(tmp_path: Path) -> Path:
    """evalkit's tidy shape built from the wide table: ImageNet-1k acc1/acc5 and ADE20K miou rows."""
    w = pd.read_parquet(WIDE)
    base = pd.DataFrame({"model": w["name"], "arch": w["model_simple"], "family": w["namespace"],
                         "checkpoint": w["path"], "epoch": w["epoch"], "samples_seen": w["samples_seen"],
                         "pretrain_dataset": w["pretrain_dataset"], "lr_scheduler": w["lr_scheduler"],
                         "gflops_per_sample": w["model_gflops"], "gflops_total": w["gflops"]})
    parts = []
    for task, ttype, metric in [("imagenet1k", "zeroshot_classification", "acc1"),
                                ("imagenet1k", "zeroshot_classification", "acc5"),
                                ("ade20k", "semantic_segmentation", "miou")]:
        p = base.copy()
        p["task"], p["task_type"], p["dataset"], p["split"] = task, ttype, task, "test"
        p["metric"], p["value"], p["status"] = metric, w[metric].to_numpy(), "ok"
        parts.append(p)
    bad = parts[0].head(30).copy()
    bad["status"], bad["value"], bad["gflops_total"] = "failed", 0.999, 1e9  # would dominate if not ignored
    df = pd.concat([*parts, bad], ignore_index=True).reindex(columns=list(TIDY_COLUMNS))
    out = tmp_path / "results.parquet"
    df.to_parquet(out, index=False)
    return out


def test_wide_table_reference_reproduces_oracle(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = _run("fit", str(WIDE), "--task", "imagenet1k", "--metric", "acc1", "--x", "gflops_total",
              "--by", "family", "--frontier", "reference", "--predict", "1e12,1e13", "--bootstrap", "30",
              "--out", str(out))
    assert rc == 0
    coef = pd.read_csv(out / "coefficients.csv").set_index("group")
    assert coef.loc["clip", ["a", "ln_b", "c", "d"]].tolist() == pytest.approx([57.8621, 18.3913, -0.2266, 0.11117],
                                                                                 rel=1e-4)
    assert coef.loc["mammut", "n_points"] == 26
    assert {"a_low", "a_high", "c_low", "c_high", "ln_b_low"}.issubset(coef.columns)
    assert (coef["c_low"] <= coef["c"]).all() and (coef["c"] <= coef["c_high"]).all()
    for name in ("coefficients.md", "predictions.csv", "comparison.csv", "comparison.md", "fit.png",
                 "fit_clip.png", "fit_mammut.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp*")), "temp files left behind"
    pred = pd.read_csv(out / "predictions.csv")
    clip = pred[(pred.group == "clip") & (pred.kind == "requested")].set_index("x")
    # the published law at 1e12: 57.8621 (1e12 + e^18.3913)^-0.2266 + 0.11117 = 0.22161 (oracle curve_evaluations)
    assert clip.loc[1e12, "error_pred"] == pytest.approx(0.2216104626, rel=1e-5)
    assert clip.loc[1e12, "error_low"] < clip.loc[1e12, "error_pred"] < clip.loc[1e12, "error_high"]
    cmp = pd.read_csv(out / "comparison.csv")
    gap = cmp[cmp.kind == "gap"].set_index("x")
    assert gap.loc[1e12, "gap_a_minus_b"] == pytest.approx(0.2216104626 - 0.2091401495, rel=1e-4)
    assert "published" not in capsys.readouterr().err


def test_tidy_and_wide_shapes_give_the_same_fit(tmp_path: Path) -> None:
    tidy = _tidy_from_wide(tmp_path)
    for src, out in ((tidy, tmp_path / "t"), (WIDE, tmp_path / "w")):
        assert _run("fit", str(src), "--task", "imagenet1k", "--metric", "acc1", "--holdout-above", "1e11",
                    "--no-plots", "--out", str(out)) == 0
    t = pd.read_csv(tmp_path / "t" / "coefficients.csv")
    w = pd.read_csv(tmp_path / "w" / "coefficients.csv")
    assert list(t.group) == ["clip", "mammut"]
    np.testing.assert_allclose(t[["a", "b", "c", "d", "rmse", "heldout_rmse"]].to_numpy(),
                               w[["a", "b", "c", "d", "rmse", "heldout_rmse"]].to_numpy(), rtol=1e-9)
    assert (t["n_heldout"] > 0).all()
    pred = pd.read_csv(tmp_path / "t" / "predictions.csv")
    assert set(pred.kind) == {"heldout"} and pred["abs_err"].notna().all()


def test_tidy_single_group_segmentation_csv(tmp_path: Path) -> None:
    tidy = pd.read_parquet(_tidy_from_wide(tmp_path))
    csv = tmp_path / "r.csv"
    tidy.to_csv(csv, index=False)
    out = tmp_path / "o"
    assert _run("fit", str(csv), "--task", "ade20k", "--metric", "miou", "--x", "samples_seen",
                "--groups", "clip", "--frontier", "nondominated", "--form", "saturation", "--out", str(out)) == 0
    coef = pd.read_csv(out / "coefficients.csv")
    assert list(coef.group) == ["clip"] and coef.loc[0, "form"] == "saturation" and coef.loc[0, "d"] == 0
    assert not (out / "comparison.csv").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--task", "imagenet1k", "--metric", "acc7"], "no metric column 'acc7'"),
    (["--task", "cifar10", "--metric", "acc1"], "no rows for task 'cifar10'"),
])
def test_wide_bad_task_or_metric(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    assert _run("fit", str(WIDE), *argv, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert needle in err and str(WIDE) in err and ("--metric" in err or "--task" in err)


def test_tidy_bad_input(tmp_path: Path, capsys) -> None:
    tidy = pd.read_parquet(_tidy_from_wide(tmp_path))
    bad = tmp_path / "missing.csv"
    tidy.drop(columns=["gflops_total"]).to_csv(bad, index=False)
    assert _run("fit", str(bad), "--task", "imagenet1k", "--metric", "acc1", "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing column(s) gflops_total" in err
    good = tmp_path / "good.csv"
    tidy.to_csv(good, index=False)
    assert _run("fit", str(good), "--task", "imagenet1k", "--metric", "miou", "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "no metric 'miou' for task 'imagenet1k'" in err and "acc1, acc5" in err and str(good) in err
    assert _run("fit", str(good), "--task", "coco", "--metric", "acc1", "--out", str(tmp_path / "o")) == 2
    assert "tasks in this table: ade20k, imagenet1k" in capsys.readouterr().err
    assert _run("fit", str(tmp_path / "nope.parquet"), "--task", "x", "--metric", "y", "--out",
                str(tmp_path / "o")) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_command_module_is_light() -> None:
    code = ("import sys, evalkit.cli.fit, evalkit.fit; "
            "bad = [m for m in ('numpy', 'pandas', 'scipy', 'matplotlib', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout + r.stderr
