"""`evalkit report`: the page's data is the table, its plots are the table's points, frontiers and laws, and bad
input is one line or a page that says what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _results import RUNS, TASKS, write_results

from evalkit.cli import main
from evalkit.report import ReportError, build_report
from evalkit.report.html import read_data

MAIN = {"cls": "acc1", "ret": "mean_recall@1"}


def _oracle_values(table: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(model, task) -> the main metric's value, straight from the table's ok rows."""
    ok = table[(table.status == "ok") & (table.metric == table.task.map(MAIN))]
    return {(r.model, r.task): float(r.value) for r in ok.itertuples()}


def _nondominated(x: np.ndarray, y: np.ndarray) -> set[int]:
    """Brute force: i is kept iff no j has x_j <= x_i and y_j <= y_i with one of them strict."""
    keep = set()
    for i in range(len(x)):
        dominated = ((x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))).any()
        if not dominated:
            keep.add(i)
    return keep


def test_page_data_equals_the_table(results: Path) -> None:
    rep = build_report(results)
    assert rep.path == results / "report.html"
    table = pd.read_parquet(results / "results.parquet")
    data = read_data(rep.path)
    models, ckpts = data["strings"]["model"], data["strings"]["checkpoint"]
    assert sorted(models) == sorted(table.model.unique()) and len(models) == 15
    oracle = _oracle_values(table)
    for t, m in MAIN.items():
        vals = data["values"][f"{t}|{m}"]
        for i, model in enumerate(models):
            want = oracle.get((model, t))
            if want is None:  # the failed unit
                assert (model, t) == ("clipM_s1k/epoch_2", "ret") and np.isnan(vals[i])
            else:
                assert vals[i] == want  # exact: float64 in the page
    by_model = table.drop_duplicates("model").set_index("model")
    for i, model in enumerate(models):
        assert ckpts[i] == by_model.loc[model, "checkpoint"]
        assert data["strings"]["run"][i] == by_model.loc[model, "run"]
        assert data["numbers"]["epoch"][i] == by_model.loc[model, "epoch"]
        assert data["numbers"]["gflops_total"][i] == by_model.loc[model, "gflops_total"]
        assert data["numbers"]["samples_seen"][i] == by_model.loc[model, "samples_seen"]


def test_scatter_points_and_frontier(results: Path) -> None:
    rep = build_report(results)
    data = read_data(rep.path)
    figs = {f["id"]: f for f in data["raw"]["figures"]}
    fig = figs["scatter-cls-acc1-gflops_total"]
    shown = sorted(i for g in fig["groups"] for i in g["idx"])
    assert shown == list(range(15))  # every checkpoint, none sampled at this size
    fam, arch = data["strings"]["family"], data["strings"]["arch"]
    for g in fig["groups"]:  # one colour per family, one marker per architecture
        assert {fam[i] for i in g["idx"]} == {g["family"]} and {arch[i] for i in g["idx"]} == {g["arch"]}
    assert {g["symbol"] for g in fig["groups"] if g["arch"] == "tiny-S"} != {g["symbol"] for g in fig["groups"]
                                                                          if g["arch"] == "tiny-M"}
    x, err = data["numbers"]["gflops_total"], 1 - data["values"]["cls|acc1"]
    for fr in fig["frontier"]:
        members = np.flatnonzero(np.array(fam) == fr["family"])
        want = {int(members[k]) for k in _nondominated(x[members], err[members])}
        assert set(fr["idx"]) == want
        assert list(x[fr["idx"]]) == sorted(x[fr["idx"]])  # drawn left to right


def test_last_checkpoint_table_and_overview(results: Path) -> None:
    rep = build_report(results)
    data = read_data(rep.path)
    (last,) = [t for t in data["raw"]["tables"] if t["id"] == "table-last"]
    runs, epochs = data["strings"]["run"], data["numbers"]["epoch"]
    want = {r: e for r, _, _, _, _, e in RUNS}
    assert {runs[i]: epochs[i] for i in last["rows"]} == want
    assert [c["label"] for c in last["columns"]][-2:] == ["cls acc1", "ret mean_recall@1"]
    page = rep.path.read_text()
    assert "<b>4</b>runs" in page and "<b>15</b>checkpoints" in page and "<b>29</b>units ok" in page
    assert "<b>1</b>units failed" in page
    # the failure grouped by its error, with the checkpoint it hit
    assert "DataError: /data/x.jpg: cannot decode image" in page and "clipM_s1k/epoch_2" in page
    assert "No failed unit" not in page


def test_mixed_provenance_is_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, runs=RUNS[:2])
    write_results(out, runs=RUNS[2:], provenance={"precision": "amp_bf16", "device": "cuda:0 (NVIDIA H100)"})
    rep = build_report(out)
    warns = rep.view.warnings
    assert any("mixes 2 precisions" in w and "amp_bf16: 28 rows" in w for w in warns), warns
    assert any("mixes 2 devices" in w for w in warns)
    assert "the table mixes 2 precisions" in rep.path.read_text()


def test_large_table_is_sampled_and_says_so(tmp_path: Path) -> None:
    runs = tuple((f"r{i}", ("clip", "mammut")[i % 2], f"arch{i % 3}", 1.0 + i % 5, 1000 + 10 * i, 8)
                 for i in range(40))
    out = tmp_path / "out"
    write_results(out, runs=runs, tasks=TASKS[:1])
    rep = build_report(out, max_points=100, max_runs=10)
    data = read_data(rep.path)
    figs = {f["id"]: f for f in data["raw"]["figures"]}
    fig = figs["scatter-cls-acc1-samples_seen"]
    shown = {i for g in fig["groups"] for i in g["idx"]}
    front = {i for f in fig["frontier"] for i in f["idx"]}
    assert front <= shown and len(shown) < 320 and len(shown) <= 100 + len(front) + 2 * 6
    assert any(n.startswith("showing") and "of 320 checkpoints" in n for n in fig["notes"])
    # the frontier is the one of all 320 checkpoints, not of the sample
    fam = np.array(data["strings"]["family"])
    x, err = data["numbers"]["samples_seen"], 1 - data["values"]["cls|acc1"]
    for fr in fig["frontier"]:
        members = np.flatnonzero(fam == fr["family"])
        assert set(fr["idx"]) == {int(members[k]) for k in _nondominated(x[members], err[members])}
    curves = figs["curves-cls-acc1"]
    assert sum(len(f["runs"]) for f in curves["runs"]) <= 12 and "of 40 runs" in curves["notes"][0]
    assert "of 320 checkpoints" in rep.path.read_text()


def test_no_gflops_compute_plots_say_why_samples_plots_show(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    write_results(out, gflops=False)
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint has gflops_total" in err[0]
    rep = build_report(out)
    figs = {f.id: f for f in rep.figure_specs}
    assert "FLOPs were not counted" in figs["scatter-cls-acc1-gflops_total"].empty
    assert figs["scatter-cls-acc1-samples_seen"].n_points() == 15
    page = rep.path.read_text()
    assert 'data-figure="scatter-cls-acc1-gflops_total" data-empty="1"' in page and "FLOPs were not counted" in page


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    def fails(*argv: str) -> str:
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "no such folder" in fails(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "no results yet" in fails(str(tmp_path / "empty"))
    with pytest.raises(ReportError, match="no results yet"):  # the same from Python: a UserError
        build_report(tmp_path / "empty")
    wide = tmp_path / "wide.csv"
    pd.DataFrame({"name": ["a"], "downstream_dataset": ["imagenet1k"], "acc1": [0.5]}).to_csv(wide, index=False)
    assert "scaling-laws" in fails(str(wide))
    (tmp_path / "units_only" / "units").mkdir(parents=True)
    (tmp_path / "units_only" / "units" / "abc.json").write_text('{"rows": [')
    msg = fails(str(tmp_path / "units_only"))
    assert "none of its 1 unit files is readable" in msg
    write_results(tmp_path / "ok", runs=RUNS[:1])
    assert "not a fit folder" in fails(str(tmp_path / "ok"), "--fit", str(tmp_path / "empty"))
    msg = fails(str(tmp_path / "ok"), "--against", str(wide))
    assert f"--against {wide}" in msg and "not a scaling-laws results table (missing epoch)" in msg


def test_half_written_folder_reads_unit_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, collect_table=False)  # killed before it collected: unit files only
    rep = build_report(out)
    assert rep.view.results.origin == "unit files"
    assert any("has no results.parquet" in w for w in rep.warnings)
    assert "has no results.parquet" in rep.path.read_text()
    data = read_data(rep.path)
    assert len(data["strings"]["model"]) == 15 and np.isfinite(data["values"]["cls|acc1"]).all()
    # a truncated table beside the unit files: read from the units, said so
    (out / "results.parquet").write_bytes(b"PAR1 truncated")
    rep = build_report(out)
    assert rep.view.results.origin == "unit files" and any("cannot read the results table" in w for w in rep.warnings)


def test_fit_folders_drawn_and_refused(results: Path, tmp_path: Path, capsys) -> None:
    from evalkit.fit.api import fit_table

    fit_table(results / "results.parquet", task="cls", metric="acc1", frontier="all", form="power", bootstrap=50,
              predict=[1e5], out=results / "fit", plots=False)
    rep = build_report(results)  # found inside OUT
    fig = next(f for f in rep.figure_specs if f.id == "scatter-cls-acc1-gflops_total")
    record = json.loads((results / "fit" / "fit.json").read_text())
    assert {law["group"] for law in fig.laws} == {"clip", "mammut"}
    for law in fig.laws:
        g = record["groups"][law["group"]]
        assert law["x"] == g["curve"]["x"] and law["low"] == g["curve"]["low"] and law["x"][-1] == pytest.approx(1e5)
        assert law["x_fitted_max"] == g["x_fitted"][1] < 1e5  # the rest is extrapolation
    assert not rep.warnings
    # the same fit over another table: refused, one warning line, the page says why
    other = tmp_path / "other"
    write_results(other, runs=RUNS[:2])
    assert main(["report", str(other), "--fit", str(results / "fit")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitted on another table" in err[0] and "not drawn" in err[0]
    assert "fitted on another table" in (other / "report.html").read_text()
    # a fit of a task the table lacks
    write_results(tmp_path / "cls_only", tasks=TASKS[1:])
    rep = build_report(tmp_path / "cls_only", fits=[results / "fit"])
    assert any("which this table does not have" in w for w in rep.warnings)


def test_compare_against_lists_rows_beyond_tolerance(results: Path, tmp_path: Path) -> None:
    from evalkit.results.compare import compare

    theirs = pd.read_parquet(results / "results.parquet")
    bump = (theirs.model == "clipS_s1k/epoch_3") & (theirs.metric == "acc1")
    theirs.loc[bump, "value"] += 0.02
    path = tmp_path / "theirs.parquet"
    theirs.to_parquet(path)
    rep = build_report(results, against=path, tol=0.01)
    fig = next(f for f in rep.figure_specs if f.id == "compare-cls-acc1")
    want = compare(results, path, tol=0.01)
    m = want.matched[(want.matched.task == "cls") & (want.matched.metric == "acc1")]
    assert fig.compare["ours"] == m.ours.tolist() and sum(fig.compare["beyond"]) == 1
    page = rep.path.read_text()
    assert "Values beyond the tolerance: 1</h3>" in page and "clipS_s1k" in page


def test_markdown_table(results: Path, capsys) -> None:
    assert main(["report", str(results), "--format", "md"]) == 0
    text = capsys.readouterr().out
    table = pd.read_parquet(results / "results.parquet")
    oracle = _oracle_values(table)
    lines = [ln for ln in text.splitlines() if ln.startswith("| clip") or ln.startswith("| mammut")]
    assert len(lines) == 15
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for t, cell in zip(("cls", "ret"), cells[1:]):
            want = oracle.get((cells[0], t))
            assert cell == (f"{want:.4f}" if want is not None else "FAILED")
    assert "1 of 30 units failed:" in text and "1 x DataError: /data/x.jpg" in text


def test_figures_png_and_svg(results: Path, tmp_path: Path) -> None:
    from PIL import Image

    rep = build_report(results, figures=tmp_path / "figs")
    names = sorted(p.name for p in rep.figures)
    assert "scatter-cls-acc1-gflops_total.png" in names and "curves-ret-mean_recall_1.svg" in names
    assert len(names) == 2 * 6
    with Image.open(tmp_path / "figs" / "scatter-cls-acc1-gflops_total.png") as im:
        assert im.size == (1050, 750) and np.asarray(im.convert("L")).std() > 10
    assert (tmp_path / "figs" / "scatter-cls-acc1-gflops_total.svg").read_text().lstrip().startswith("<?xml")


def test_report_imports_no_torch(results: Path) -> None:
    code = ("import sys\nfrom evalkit.cli import main\nassert main(['report', sys.argv[1], '--format', 'md']) == 0\n"
            "assert main(['report', sys.argv[1]]) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_suite_average_and_members(tmp_path: Path, monkeypatch) -> None:
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "both.yaml").write_text("name: both\ntype: suite\ntasks: [cls, ret]\n")
    monkeypatch.setenv("EVALKIT_TASKS", str(tasks_dir))
    out = tmp_path / "out"
    write_results(out, suite="both")
    rep = build_report(out)
    data = read_data(rep.path)
    (spec,) = [t for t in data["raw"]["tables"] if t["id"] == "table-suite-both"]
    assert [c["label"] for c in spec["columns"]] == ["checkpoint", "both average", "cls acc1", "ret mean_recall@1"]
    assert len(spec["rows"]) == 15
    avg, a, b = (data["values"][k] for k in ("both|average", "cls|acc1", "ret|mean_recall@1"))
    np.testing.assert_allclose(avg, (a + b) / 2, rtol=0, atol=1e-12)  # the average is its members' mean
    assert rep.view.task("both").task_type == "suite" and rep.view.task("both").metric == "average"
    assert "task_hash of both" not in rep.path.read_text()  # a suite's hash is its members'; not provenance
