"""Issue 19: the `eval_type` column and the generative tasks in the reference's shape. `imagenet1k_generative`
exports as `downstream_dataset = imagenet1k`, `eval_type = log_likelihood` (what the paper's figure 11
selects), `namespace = cap` for cap runs; importing the export gives the tidy rows back; the fit of
`--task imagenet1k_generative --by namespace` is the same on the tidy table and on its export; the
branch's clip_benchmark JSONs import as the generative task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalkit.cli import main
from evalkit.models.spec import ModelSpec
from evalkit.results.export import to_scaling_laws
from evalkit.results.importers import import_clip_benchmark, import_scaling_laws
from evalkit.results.schema import build_rows, unit_id
from evalkit.tasks.loader import get_task

PROV = {"evalkit_version": "0.1.0", "device": "cpu", "precision": "fp32"}
# run, namespace, GFLOPs per sample, samples per epoch, tasks
RUNS = (("cap_tiny_s4k", "cap", 3.0, 4096, ("imagenet1k_generative",)),
        ("mammut_tiny_s4k", "mammut", 3.5, 4096, ("imagenet1k", "imagenet1k_generative")),
        ("mammut_tiny_s8k", "mammut", 3.5, 8192, ("imagenet1k", "imagenet1k_generative")))


def _value(namespace: str, task: str, gflops: float) -> float:
    """Error falling as a power law of compute, cap's faster than mammut's (numbers made up, exact in binary)."""
    a, c = {"cap": (4.0, -0.25), "mammut": (2.0, -0.15)}[namespace]
    return round(1 - min(0.95, a * gflops ** c) + (0.01 if task == "imagenet1k" else 0.0), 6)


def _tidy() -> pd.DataFrame:
    rows = []
    for run, ns, g, per_epoch, tasks in RUNS:
        for e in range(1, 5):
            spec = ModelSpec(model=f"mammut_{run}", pretrained=f"/ckpt/{run}/checkpoints/epoch_{e}.pt",
                             name=f"{run}/epoch_{e}", family=ns, arch="mammut_tiny-S", epoch=e,
                             samples_seen=float(per_epoch * e), namespace=ns, model_simple="tiny-S", run=run)
            for name in tasks:
                t = get_task(name)
                uid = unit_id(spec.key, t.name, t.hash)
                total = g * per_epoch * e
                v = _value(ns, name, total)
                for r in build_rows(spec, t, uid, metrics={"acc1": v, "acc5": 1.0, "mean_per_class_recall": v},
                                    n_samples=5000, status="ok", provenance=PROV):
                    rows.append({**r, "gflops_per_sample": g, "gflops_total": total})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tidy() -> pd.DataFrame:
    return _tidy()


def test_eval_type_comes_from_the_protocol() -> None:
    spec = ModelSpec(model="m", name="m")

    def types(task: str, metrics: list[str]) -> dict[str, str]:
        t = get_task(task)
        rows = build_rows(spec, t, "u", metrics=dict.fromkeys(metrics, 0.5), status="ok", provenance=PROV)
        return {r["metric"]: r["eval_type"] for r in rows}

    assert types("imagenet1k", ["acc1"]) == {"acc1": "similarity"}
    assert types("imagenet1k_generative", ["acc1", "acc5"]) == {"acc1": "log_likelihood", "acc5": "log_likelihood"}
    assert types("sugar_crepe/add_att", ["acc"]) == {"acc": "similarity"}
    assert types("sugar_crepe/add_att_generative", ["acc"]) == {"acc": "log_likelihood"}
    assert types("shapes_losses", ["contrastive_loss", "caption_loss", "cosine_distance"]) == {
        "contrastive_loss": "similarity", "caption_loss": "log_likelihood", "cosine_distance": "similarity"}
    assert types("shapes_lp", ["lp_acc1"]) == {"lp_acc1": "probe"}
    assert get_task("shapes_ade20k").options["protocol"] == "linear" and types("shapes_ade20k", ["miou"]) == {"miou": "probe"}
    # a failed unit's one row carries it too
    failed = build_rows(spec, get_task("imagenet1k_generative"), "u", metrics=None, status="failed", provenance=PROV)
    assert [(r["metric"], r["eval_type"]) for r in failed] == [("acc1", "log_likelihood")]


def test_export_names_the_generative_task_as_the_reference(tidy: pd.DataFrame) -> None:
    wide = to_scaling_laws(tidy)
    assert set(wide.downstream_dataset) == {"imagenet1k"} and set(wide.task) == {"zeroshot_classification"}
    assert len(wide) == 4 + 2 * 4 * 2  # cap: 4 checkpoints x 1 task; mammut: 8 x 2
    by = wide.groupby(["namespace", "eval_type"]).size().to_dict()
    assert by == {("cap", "log_likelihood"): 4, ("mammut", "log_likelihood"): 8, ("mammut", "similarity"): 8}
    r = wide[(wide.name == "mammut_tiny_s8k") & (wide.epoch == 3)].set_index("eval_type")
    g = 3.5 * 8192 * 3
    assert r.loc["log_likelihood", "acc1"] == _value("mammut", "imagenet1k_generative", g)
    assert r.loc["similarity", "acc1"] == _value("mammut", "imagenet1k", g)
    assert (r.gflops == g).all() and (r.model == "mammut_tiny-S").all()
    assert list(wide.columns[wide.columns.get_loc("task"):][:2]) == ["task", "eval_type"]


def test_import_of_the_export_gives_the_tidy_rows_back(tidy: pd.DataFrame, tmp_path: Path) -> None:
    src, wide = tmp_path / "tidy.parquet", tmp_path / "wide.parquet"
    tidy.to_parquet(src, index=False)
    assert main(["export", str(src), "--format", "scaling-laws", "--out", str(wide)]) == 0
    back = import_scaling_laws(wide)
    key = ["run", "epoch", "task", "metric"]
    cols = ["task_type", "eval_type", "dataset", "namespace", "value", "gflops_total", "samples_seen"]
    mine = tidy.set_index(key)[cols].sort_index()
    theirs = back.set_index(key)[cols].sort_index()
    pd.testing.assert_frame_equal(theirs, mine, check_dtype=False)
    assert set(back[back.task == "imagenet1k_generative"].task_type) == {"generative_zeroshot_classification"}
    assert set(back[back.task == "imagenet1k_generative"].dataset) == {"imagenet1k"}


def test_fit_cap_vs_mammut_on_the_export_equals_the_tidy_table(tidy: pd.DataFrame, tmp_path: Path) -> None:
    src, wide = tmp_path / "tidy.parquet", tmp_path / "wide.parquet"
    tidy.to_parquet(src, index=False)
    assert main(["export", str(src), "--out", str(wide)]) == 0
    coefs = {}
    for name, table in (("tidy", src), ("export", wide)):
        out = tmp_path / name
        assert main(["fit", str(table), "--task", "imagenet1k_generative", "--metric", "acc1", "--by", "namespace",
                     "--form", "power", "--frontier", "all", "--no-plots", "--out", str(out)]) == 0
        coefs[name] = pd.read_csv(out / "coefficients.csv")
    assert list(coefs["tidy"].group) == list(coefs["export"].group) == ["cap", "mammut"]
    cols = ["a", "c", "n_points"]
    np.testing.assert_array_equal(coefs["export"][cols].to_numpy(), coefs["tidy"][cols].to_numpy())
    # the power laws the values were made from (rounded to 1e-6): cap's error falls faster
    fit = coefs["tidy"].set_index("group")
    assert fit.n_points.to_dict() == {"cap": 4, "mammut": 8}
    assert fit.loc["cap", "c"] == pytest.approx(-0.25, abs=1e-4) and fit.loc["mammut", "c"] == pytest.approx(-0.15, abs=1e-4)
    assert fit.loc["cap", "a"] == pytest.approx(4.0, rel=1e-3) and fit.loc["mammut", "a"] == pytest.approx(2.0, rel=1e-3)
    # the similarity rows stay apart: the contrastive task fits mammut alone, on its own values
    out = tmp_path / "contrastive"
    assert main(["fit", str(wide), "--task", "imagenet1k", "--metric", "acc1", "--by", "namespace", "--form", "power",
                 "--frontier", "all", "--no-plots", "--out", str(out)]) == 0
    c = pd.read_csv(out / "coefficients.csv")
    assert list(c.group) == ["mammut"] and list(c.n_points) == [8]


def test_suite_of_generative_tasks_exports_under_the_suites_name(tmp_path: Path) -> None:
    spec = ModelSpec(model="m", pretrained="/c/r/checkpoints/epoch_1.pt", name="r/epoch_1", family="cap", epoch=1,
                     samples_seen=1e6, namespace="cap", run="r")
    rows = []
    for name in ("sugar_crepe", "sugar_crepe_generative"):
        suite = get_task(name)
        member = get_task(suite.options["tasks"][0]["task"])
        rows += build_rows(spec, member, "m1", metrics={"acc": 0.75}, status="ok", provenance=PROV)
        row = build_rows(spec, suite, "s1", metrics=None, status="ok", provenance=PROV)[0]
        row.update(task_type="suite", metric="average", value=0.5 if name == "sugar_crepe" else 0.625,
                   eval_type=rows[-1]["eval_type"])
        rows.append(row)
    wide = to_scaling_laws(pd.DataFrame(rows))
    got = {(r.downstream_dataset, r.eval_type): (r.acc1, r.acc) for r in wide.itertuples()}
    assert got[("sugar_crepe", "log_likelihood")][0] == 0.625 and got[("sugar_crepe", "similarity")][0] == 0.5
    assert got[("sugar_crepe/add_att", "log_likelihood")][1] == 0.75 and got[("sugar_crepe/add_att", "similarity")][1] == 0.75
    back = import_scaling_laws(wide).set_index(["task", "metric"]).value
    assert back["sugar_crepe_generative", "acc1"] == 0.625 and back["sugar_crepe", "acc1"] == 0.5
    assert back["sugar_crepe/add_att_generative", "acc"] == 0.75


def test_the_branchs_generative_json_imports_as_the_generative_task(tmp_path: Path) -> None:
    """The log_likelihood_eval branch writes `"task": "generative_zeroshot_classification"` for the same
    dataset name as the contrastive run (its eval_template.sbatch: `--dataset imagenet1k`)."""
    for task, acc in (("zeroshot_classification", 0.61), ("generative_zeroshot_classification", 0.42)):
        f = tmp_path / "mammut_run" / "checkpoints" / f"imagenet1k_epoch_2.pt_mammut_ViT-B-32_en_{task}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"dataset": "imagenet1k", "model": "mammut_ViT-B-32", "pretrained": "/x/epoch_2.pt",
                                 "task": task, "metrics": {"acc1": acc}, "language": "en"}))
    df = import_clip_benchmark([tmp_path]).set_index("task")
    assert df.loc["imagenet1k_generative", "value"] == 0.42 and df.loc["imagenet1k", "value"] == 0.61
    assert df.loc["imagenet1k_generative", "eval_type"] == "log_likelihood"
    assert df.loc["imagenet1k", "eval_type"] == "similarity"
    assert df.loc["imagenet1k_generative", "dataset"] == "imagenet1k"
