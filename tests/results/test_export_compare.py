"""Issue 12: `evalkit export --format scaling-laws`, `evalkit import scaling-laws|clip-benchmark` and
`evalkit compare`, on the reference's segmentation table (1,431 checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _util import fixture_path

from evalkit.cli import main
from evalkit.results.compare import compare, summary_path
from evalkit.results.export import LEADING_COLUMNS, REFERENCE_METRICS, ExportError, to_scaling_laws
from evalkit.results.importers import import_clip_benchmark, import_scaling_laws
from evalkit.results.schema import TIDY_COLUMNS

WIDE = fixture_path("scaling-laws", "segmentation_results.parquet")
IDENTITY = ["model", "arch", "family", "checkpoint", "epoch", "samples_seen", "pretrain_dataset", "lr_scheduler",
            "gflops_per_sample", "gflops_total", "task", "task_type", "dataset", "metric", "value", "namespace",
            "model_simple", "samples_seen_scale_pretty", "total_epochs", "global_batch_size", "run"]


@pytest.fixture(scope="module")
def tidy() -> pd.DataFrame:
    return import_scaling_laws(WIDE)


def test_import_scaling_laws_reads_the_segmentation_table(tidy: pd.DataFrame) -> None:
    w = pd.read_parquet(WIDE)
    assert list(tidy.columns) == [*TIDY_COLUMNS, "source"]
    assert len(tidy) == 4 * len(w)
    assert tidy.groupby("task").metric.unique().map(sorted).to_dict() == {
        "ade20k": ["miou"], "imagenet1k": ["acc1", "acc5", "mean_per_class_recall"]}
    r = w.iloc[0]
    mine = tidy[(tidy.model == r["name"]) & (tidy.epoch == r["epoch"])].set_index("metric")
    assert mine.loc["miou", "value"] == r["miou"] and mine.loc["acc1", "value"] == r["acc1"]
    assert mine.loc["miou", "task_type"] == "segmentation" and mine.loc["acc1", "task"] == "imagenet1k"
    one = mine.iloc[0]
    assert (one.run, one.arch, one.family, one.model_simple) == (r["name"], r["model"], r["namespace"], r["model_simple"])
    assert one.samples_seen == r["samples_seen"] and one.gflops_total == r["gflops"]
    assert one.gflops_per_sample == r["model_gflops"] and one.total_epochs == r["total_epochs"]
    assert one.checkpoint == f"{r['name']}/epoch_{r['epoch']}.pt" and (mine.status == "ok").all()


def test_export_round_trip(tidy: pd.DataFrame, tmp_path: Path) -> None:
    src = tmp_path / "tidy.parquet"
    tidy.to_parquet(src, index=False)
    for ext in ("parquet", "csv"):
        out = tmp_path / f"wide.{ext}"
        assert main(["export", str(src), "--format", "scaling-laws", "--out", str(out)]) == 0
        wide = pd.read_parquet(out) if ext == "parquet" else pd.read_csv(out)
        assert list(wide.columns[:len(LEADING_COLUMNS) + len(REFERENCE_METRICS) + 1]) == [
            *LEADING_COLUMNS, *REFERENCE_METRICS, "task"]
        assert len(wide) == 2 * 1431 and set(wide.downstream_dataset) == {"imagenet1k", "ade20k"}
        back = import_scaling_laws(out)
        pd.testing.assert_frame_equal(back[IDENTITY], tidy[IDENTITY], check_dtype=False)
    # the export's identity and numbers are the reference's own
    ref = pd.read_parquet(WIDE).set_index(["name", "epoch"])
    seg = wide[wide.downstream_dataset == "ade20k"].set_index(["name", "epoch"]).loc[ref.index]
    assert (seg.task == "semantic_segmentation").all() and seg.acc1.isna().all()
    for c in ("namespace", "model_simple", "pretrain_dataset", "lr_scheduler", "samples_seen",
              "samples_seen_scale_pretty", "total_epochs", "gflops", "miou", "model", "global_batch_size",
              "samples_seen_per_epoch"):
        assert (seg[c].to_numpy() == ref[c].to_numpy()).all(), c
    in1k = wide[wide.downstream_dataset == "imagenet1k"].set_index(["name", "epoch"]).loc[ref.index]
    assert (in1k.task == "zeroshot_classification").all() and in1k.miou.isna().all()
    assert (in1k.acc1.to_numpy() == ref.acc1.to_numpy()).all()


@pytest.mark.parametrize("task,metric,x,frontier", [
    ("imagenet1k", "acc1", "gflops_total", "reference"),
    ("ade20k", "miou", "samples_seen", "bins"),
])
def test_fit_on_the_export_equals_fit_on_the_tidy_table(tidy, tmp_path: Path, task, metric, x, frontier) -> None:
    src, wide = tmp_path / "tidy.parquet", tmp_path / "wide.parquet"
    tidy.to_parquet(src, index=False)
    assert main(["export", str(src), "--out", str(wide)]) == 0
    coefs = {}
    for name, table in (("tidy", src), ("export", wide), ("reference", WIDE)):
        out = tmp_path / name
        assert main(["fit", str(table), "--task", task, "--metric", metric, "--x", x, "--frontier", frontier,
                     "--predict", "1e12", "--no-plots", "--out", str(out)]) == 0
        coefs[name] = pd.read_csv(out / "coefficients.csv")
    cols = ["a", "b", "c", "d", "n_points", "rmse"]
    for name in ("export", "reference"):
        assert list(coefs[name].group) == list(coefs["tidy"].group) == ["clip", "mammut"]
        np.testing.assert_array_equal(coefs[name][cols].to_numpy(), coefs["tidy"][cols].to_numpy())


def _run_table(tmp_path: Path) -> Path:
    """A tidy table as `evalkit run` wrote it before the identity columns: model `<run>/epoch_<k>`, no run."""
    rows = []
    for ep in (1, 2):
        base = {"model": f"clip_ViT-B-32_s1M_run/epoch_{ep}", "arch": "ViT-B-32", "family": "clip",
                "checkpoint": f"/ckpt/clip_ViT-B-32_s1M_run/epoch_{ep}.pt", "epoch": ep, "samples_seen": 5e5 * ep,
                "gflops_per_sample": 10.0, "gflops_total": 5e6 * ep, "status": "ok", "split": "test"}
        rows += [{**base, "task": "imagenet1k", "task_type": "zeroshot_classification", "metric": "acc1",
                  "value": 0.1 * ep},
                 {**base, "task": "wds/cars", "task_type": "zeroshot_classification", "metric": "acc1",
                  "value": 0.2 * ep},
                 {**base, "task": "ade20k", "task_type": "segmentation", "metric": "miou", "value": 0.05 * ep},
                 {**base, "task": "ade20k", "task_type": "segmentation", "metric": "pixel_acc", "value": 0.5},
                 {**base, "task": "datacomp_classification", "task_type": "suite", "metric": "average",
                  "value": 0.3 * ep}]
    rows.append({**rows[0], "task": "mscoco_captions", "metric": "image_retrieval_recall@5", "status": "failed",
                 "value": 0.99})
    path = tmp_path / "run.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_export_of_an_older_run_table(tmp_path: Path) -> None:
    wide = to_scaling_laws(pd.read_csv(_run_table(tmp_path)))
    assert set(wide.name) == {"clip_ViT-B-32_s1M_run"} and list(wide.epoch.unique()) == [1, 2]
    assert set(wide.downstream_dataset) == {"imagenet1k", "cars", "ade20k", "datacomp_classification"}
    assert "mscoco_captions" not in set(wide.downstream_dataset)  # failed rows stay out
    r = wide[(wide.epoch == 2)].set_index("downstream_dataset")
    assert r.loc["datacomp_classification", "acc1"] == pytest.approx(0.6)  # the suite's average, in acc1
    assert r.loc["ade20k", "pixel_acc"] == 0.5 and r.loc["ade20k", "task"] == "semantic_segmentation"
    assert r.loc["cars", "acc1"] == pytest.approx(0.4) and np.isnan(r.loc["imagenet1k", "miou"])
    assert (r.namespace == "clip").all() and (r.model_simple == "ViT-B-32").all() and (r.gflops == 1e7).all()
    assert (r.samples_seen_per_epoch == 500000).all() and r.total_samples_seen.isna().all()  # no total_epochs
    assert r.loc["cars", "path"] == "/ckpt/clip_ViT-B-32_s1M_run/epoch_2.pt"
    # an explicit acc1 of the suite wins over its average
    df = pd.read_csv(_run_table(tmp_path))
    extra = df[df.metric == "average"].assign(metric="acc1", value=0.77)
    wide = to_scaling_laws(pd.concat([df, extra]))
    assert (wide[wide.downstream_dataset == "datacomp_classification"].acc1 == 0.77).all()


def test_export_refuses_two_results_of_one_measurement(tmp_path: Path, capsys) -> None:
    df = pd.read_csv(_run_table(tmp_path))
    doubled = pd.concat([df, df.head(1).assign(value=0.5, precision="amp_bf16")])
    bad = tmp_path / "doubled.csv"
    doubled.to_csv(bad, index=False)
    assert main(["export", str(bad), "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "clip_ViT-B-32_s1M_run epoch 1 imagenet1k acc1" in err and "evalkit collect" in err and str(bad) in err
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(ExportError, match="already in the wide shape"):
        to_scaling_laws(pd.read_parquet(WIDE))


def test_compare_against_itself_and_a_perturbed_copy(tmp_path: Path, capsys) -> None:
    tidy_path = tmp_path / "ours.parquet"
    assert main(["import", "scaling-laws", str(WIDE), "--out", str(tidy_path)]) == 0
    out = tmp_path / "same.csv"
    assert main(["compare", str(tidy_path), str(WIDE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "matched 5724 of our 5724 values" in printed and "all matched values within 0.005" in printed
    rows, summary = pd.read_csv(out), pd.read_csv(summary_path(out))
    assert len(rows) == 5724 and (rows.abs_diff == 0).all() and (rows.side == "both").all()
    assert summary.set_index(["task", "metric"]).n.to_dict() == {
        ("ade20k", "miou"): 1431, ("imagenet1k", "acc1"): 1431, ("imagenet1k", "acc5"): 1431,
        ("imagenet1k", "mean_per_class_recall"): 1431}
    assert (summary.max_abs_diff == 0).all() and (summary.n_beyond_tol == 0).all()

    theirs = pd.read_parquet(WIDE)
    bumped = theirs.index[[3, 500, 1200]]
    theirs.loc[bumped, "miou"] += 0.02
    theirs.loc[theirs.index[7], "acc1"] -= 0.01
    theirs.loc[theirs.index[8], "acc5"] += 0.004  # within --tol 0.005
    perturbed = tmp_path / "theirs.parquet"
    theirs.to_parquet(perturbed, index=False)
    out = tmp_path / "cmp.csv"
    assert main(["compare", str(tidy_path), str(perturbed), "--tol", "0.005", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "4 values beyond 0.005" in printed
    rows = pd.read_csv(out)
    beyond = rows[rows.beyond_tol]
    expected = {(theirs.loc[i, "name"], theirs.loc[i, "epoch"], "ade20k", "miou") for i in bumped}
    expected.add((theirs.loc[theirs.index[7], "name"], theirs.loc[theirs.index[7], "epoch"], "imagenet1k", "acc1"))
    assert set(beyond[["name", "epoch", "task", "metric"]].itertuples(index=False, name=None)) == expected
    assert beyond[beyond.metric == "miou"]["diff"].to_numpy() == pytest.approx([-0.02] * 3)
    for name, *_ in expected:
        assert name in printed
    s = pd.read_csv(summary_path(out)).set_index(["task", "metric"])
    assert s.loc[("ade20k", "miou"), "n_beyond_tol"] == 3 and s.loc[("ade20k", "miou"), "max_abs_diff"] == pytest.approx(0.02)
    assert s.loc[("imagenet1k", "acc5"), "n_beyond_tol"] == 0
    assert s.loc[("imagenet1k", "acc5"), "max_abs_diff"] == pytest.approx(0.004)


def test_compare_part_of_the_grid_and_nothing_in_common(tidy: pd.DataFrame, tmp_path: Path, capsys) -> None:
    ours = tidy[tidy.model.isin(tidy.model.unique()[:5])].copy()
    ours["model"] = ours["model"] + "/epoch_" + ours["epoch"].astype(str)  # `evalkit run`'s model names
    ours = ours.drop(columns=["run"])
    ours.loc[ours.index[0], "task"] = "wds/" + ours.loc[ours.index[0], "task"]
    cmp = compare(ours, WIDE)
    assert (cmp.matched.abs_diff == 0).all() and len(cmp.matched) == len(ours)
    assert (cmp.rows.side == "theirs only").sum() == len(tidy) - len(ours)
    assert cmp.summary.n_theirs_only.sum() == len(tidy) - len(ours) and cmp.beyond.empty
    other = tidy.assign(run="other_" + tidy["run"])
    p = tmp_path / "other.parquet"
    other.to_parquet(p, index=False)
    assert main(["compare", str(p), str(WIDE)]) == 2
    assert "share no (run, epoch, task, metric)" in capsys.readouterr().err


def _paper_json(root: Path, run: str, epoch: int, model: str, metrics: dict) -> Path:
    """A clip_benchmark result where the paper's runs wrote it, with the checkpoint path of the training cluster."""
    f = root / run / "checkpoints" / f"imagenet1k_epoch_{epoch}.pt_{model}_en_zeroshot_classification.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"dataset": "imagenet1k", "model": model, "pretrained": f"/scratch/ckpt_copy/epoch_{epoch}.pt",
                             "task": "zeroshot_classification", "metrics": metrics, "language": "en"}))
    return f


def test_clip_benchmark_paper_layout_with_metadata_then_compare(tmp_path: Path, capsys) -> None:
    w = pd.read_parquet(WIDE)
    picked = w.iloc[[0, 1, 2]]
    for i, (_, r) in enumerate(picked.iterrows()):
        delta = 0.01 if i == 2 else 0.0
        _paper_json(tmp_path / "logs", r["name"], int(r["epoch"]), r["model"],
                    {"acc1": r["acc1"] + delta, "acc5": r["acc5"], "mean_per_class_recall": r["mean_per_class_recall"]})
    _paper_json(tmp_path / "logs", "unknown_run", 3, "ViT-B-32", {"acc1": 0.1, "acc5": 0.2, "mean_per_class_recall": 0.1})
    out = tmp_path / "ours.parquet"
    assert main(["import", "clip-benchmark", str(tmp_path / "logs"), "--metadata", str(WIDE), "--out", str(out)]) == 0
    assert "1 of 4 checkpoints are not in" in capsys.readouterr().err
    df = pd.read_parquet(out)
    r = picked.iloc[0]
    mine = df[df.model == r["name"]].iloc[0]
    assert mine.epoch == r["epoch"] and mine.run == r["name"] and mine.samples_seen == r["samples_seen"]
    assert mine.gflops_total == r["gflops"] and mine.namespace == r["namespace"] and mine.total_epochs == r["total_epochs"]
    assert df[df.model == "unknown_run"].samples_seen.isna().all()
    assert main(["compare", str(out), str(WIDE), "--out", str(tmp_path / "c.csv")]) == 1
    rows = pd.read_csv(tmp_path / "c.csv")
    beyond = rows[rows.beyond_tol]
    assert list(beyond.name) == [picked.iloc[2]["name"]] and list(beyond.metric) == ["acc1"]
    assert (rows.side == "ours only").sum() == 3 and (rows.side == "both").sum() == 9


def test_clip_benchmark_import_keeps_the_path_run_name(tmp_path: Path) -> None:
    f = _paper_json(tmp_path, "my_run", 12, "mammut_ViT-L-32", {"acc1": 0.5})
    df = import_clip_benchmark([f])
    assert (df.model == "my_run").all() and (df.run == "my_run").all() and (df.epoch == 12).all()
    assert (df.family == "mammut").all()
