"""The report as a person sees it, in a real headless Chromium with the network off (`make test-browser`):
the page of the embedded grid that `make demo` writes, and a synthetic one with every section (failures,
a comparison, a table without gflops_total). No console error, no request off the machine, every plot
drawn with its points in the DOM, a screenshot that is not blank, the hover text of a known point, a
sortable table; docs/img/report.png is the demo page's screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _browser import Chromium, find_chromium
from _results import write_results
from _util import REPO

from evalkit.report import build_report
from evalkit.report.html import read_data

pytestmark = pytest.mark.browser

LOCAL = ("file:", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def browser():
    assert find_chromium(), "no chromium: `make test-browser` installs it (.ci/chromium.sh)"
    with Chromium(width=1400, height=1000, timeout=120) as b:
        yield b


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory) -> Path:
    """`make demo`'s job into a fresh folder: it evaluates the micro grid, fits, and writes report.html."""
    from evalkit.embedded import demo

    home = tmp_path_factory.mktemp("demo")
    here = os.getcwd()
    os.chdir(home)  # as `make demo` runs it: results/demo relative to the checkout (the page names it so)
    try:
        assert demo.main("results/demo") == 0
    finally:
        os.chdir(here)
    out = home / "results" / "demo"
    assert (out / "report.html").is_file() and (out / "fit" / "fit.json").is_file()
    return out / "report.html"


def _plots(b: Chromium) -> list[dict]:
    return b.eval("""JSON.stringify(Array.from(document.querySelectorAll('div.plot')).map(d => ({
        id: d.dataset.figure, empty: d.dataset.empty === '1', want: Number(d.dataset.points || 0),
        svg: d.querySelectorAll('.main-svg').length, points: d.querySelectorAll('.scatterlayer path.point').length,
        traces: d.querySelectorAll('.scatterlayer .trace').length,
        text: d.textContent.slice(0, 300)})))""")


def _load(b: Chromium, page: Path) -> list[dict]:
    seconds = b.open(page)
    assert seconds < 30
    assert b.eval("document.body.dataset.error || ''") == ""
    assert b.eval("document.body.dataset.ready") == "1"
    assert b.console_errors() == []
    assert [u for u in b.requests() if not u.startswith(LOCAL)] == []
    plots = json.loads(_plots(b))
    for p in plots:
        if p["empty"]:
            assert p["svg"] == 0 and "empty:" in p["text"], p
        else:
            assert p["svg"] >= 1 and p["traces"] >= 1, p
            assert p["points"] == p["want"] > 0, p  # every point of the spec is a marker in the DOM
    return plots


def _variance(png: bytes) -> float:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return float(np.asarray(im.convert("L"), dtype=float).std())


def _hover(b: Chromium, fig_id: str, curve: int, point: int) -> str:
    """Move the mouse onto one marker, as a person would, and read the hover label plotly draws."""
    box = json.loads(b.eval(f"""(() => {{
        const el = document.getElementById({json.dumps(fig_id)})
            .querySelectorAll('.scatterlayer .trace')[{curve}].querySelectorAll('path.point')[{point}];
        el.scrollIntoView({{block: 'center'}});
        const r = el.getBoundingClientRect();
        return JSON.stringify({{x: r.x + r.width / 2, y: r.y + r.height / 2}});
    }})()"""))
    for dx in (-3, 0):  # a move onto the point from beside it
        b.page("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"] + dx, y=box["y"])
    b.eval("new Promise(r => setTimeout(r, 300))")
    return b.eval("Array.from(document.querySelectorAll('.hoverlayer .hovertext')).map(h => h.textContent).join(' | ')")


def test_demo_page_in_chromium(browser: Chromium, demo_page: Path) -> None:
    plots = _load(browser, demo_page)
    ids = {p["id"] for p in plots}
    tasks = ("shapes", "shapes_coco", "shapes_ade20k")
    assert {f"curves-{t}-{m}" for t, m in zip(tasks, ("acc1", "mean_recall_1", "miou"))} <= ids
    assert not any(p["empty"] for p in plots)  # the embedded grid has compute, samples and epochs for all
    # the fit written by the demo is drawn over shapes' compute plot: law, extrapolation and their legend
    legend = browser.eval("document.getElementById('scatter-shapes-acc1-gflops_total').textContent")
    assert "clip law" in legend and "mammut law" in legend and "clip bootstrap band" in legend
    assert "clip extrapolation" in legend  # the demo's fit predicts at 1e3 GFLOPs, past the CLIPs' compute

    # the hover text of a known point: a checkpoint's run, epoch, path and value, equal to the table's
    table = pd.read_parquet(demo_page.parent / "results.parquet")
    data = read_data(demo_page)
    fig = next(f for f in data["raw"]["figures"] if f["id"] == "scatter-shapes-acc1-gflops_total")
    model = "tinyclip-M_s4k/epoch_2"
    i = data["strings"]["model"].index(model)
    curve, point = next((k, g["idx"].index(i)) for k, g in enumerate(fig["groups"]) if i in g["idx"])
    text = _hover(browser, fig["id"], curve, point)
    row = table[(table.model == model) & (table.task == "shapes") & (table.metric == "acc1")].iloc[0]
    assert "tinyclip-M_s4k" in text and "epoch 2" in text and row.checkpoint in text, text
    shown = float(text.split("acc1 = ")[1].split("gflops_total")[0])
    assert shown == pytest.approx(float(row.value), rel=1e-6)

    # the last-checkpoint table sorts by a column click, numbers as numbers
    order = json.loads(browser.eval("""(() => {
        const t = document.querySelector('#table-last table'), th = Array.from(t.tHead.rows[0].cells);
        th.find(h => h.textContent === 'shapes acc1').click();
        const col = th.findIndex(h => h.textContent.startsWith('shapes acc1'));
        return JSON.stringify(Array.from(t.tBodies[0].rows).map(r => [r.cells[0].textContent, r.cells[col].textContent]));
    })()"""))
    last = table[(table.task == "shapes") & (table.metric == "acc1")].sort_values("epoch").groupby("run").tail(1)
    valued = list(last.sort_values(["value", "run"], kind="stable")["run"])
    assert [r for r, _ in order][:len(valued)] == valued
    # blanks last: the cap run has no contrastive head, so no shapes acc1 (only shapes_generative)
    assert [(r, v) for r, v in order[len(valued):]] == [("cap-tiny-S_s4k", "")]

    # a screenshot that is not blank; the README's image is this page's top
    browser.eval("window.scrollTo(0, 0)")
    shot = browser.screenshot()
    assert _variance(shot) > 25
    bottom = browser.eval("Math.ceil(document.querySelector('#tasks .plots .plot').getBoundingClientRect().bottom + 12)")
    png = browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                       clip={"x": 0, "y": 0, "width": 1400, "height": bottom, "scale": 0.75})["data"]
    img = base64.b64decode(png)
    assert _variance(img) > 25
    (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
    (REPO / "docs" / "img" / "report.png").write_bytes(img)


def test_every_section_in_chromium(browser: Chromium, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, fail=("clipM_s1k", 2, "ret"))
    theirs = pd.read_parquet(out / "results.parquet")
    theirs.loc[theirs.metric == "acc1", "value"] += np.where(theirs.loc[theirs.metric == "acc1", "epoch"] == 3, 0.02, 0)
    theirs.to_parquet(tmp_path / "theirs.parquet")
    from evalkit.fit.api import fit_table

    fit_table(out / "results.parquet", task="cls", metric="acc1", frontier="all", form="power", bootstrap=30,
              predict=[1e5], out=out / "fit", plots=False)
    page = build_report(out, against=tmp_path / "theirs.parquet", tol=0.01).path
    plots = _load(browser, page)
    kinds = {p["id"].split("-")[0] for p in plots if not p["empty"]}
    assert kinds == {"scatter", "curves", "compare"}
    compare = next(p for p in plots if p["id"] == "compare-cls-acc1")
    assert compare["points"] == 15
    text = browser.eval("document.getElementById('compare').textContent")
    assert "Values beyond the tolerance: 4" in text  # epoch 3 of each of the 4 runs
    assert _variance(browser.screenshot()) > 25

    # no gflops_total: the compute plots say why, in the page, and the samples plots are drawn
    bare = tmp_path / "bare"
    write_results(bare, gflops=False)
    plots = _load(browser, build_report(bare).path)
    by = {p["id"]: p for p in plots}
    assert by["scatter-cls-acc1-gflops_total"]["empty"] and "FLOPs were not counted" in by[
        "scatter-cls-acc1-gflops_total"]["text"]
    assert by["scatter-cls-acc1-samples_seen"]["points"] == 15
