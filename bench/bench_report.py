"""`evalkit report` on bench_plan's paper-sized synthetic grid: build time, file size, headless load time.

The table: bench_plan's 73,768 checkpoints (its hub-layout run names and metadata, same seed) x its 3
tasks (imagenet1k: acc1/acc5/mean_per_class_recall; mscoco_captions: 7 retrieval metrics; ade20k: miou,
pixel_acc), 12 rows per checkpoint (885,216 rows), values from a per-family power law in total compute
(GFLOPs per sample per architecture x samples seen) with per-run noise, 0.5 % of the units failed with
two kinds of error, a resolved task config per task in OUT/tasks/, and a `evalkit fit` folder (imagenet1k
acc1, bins frontier, 200 bootstrap resamples) in OUT/fit so the laws are drawn. Creating all that is
timed apart and excluded.

Timed: `evalkit report OUT` as a command (a fresh interpreter: imports, reading the table, the page);
the page's size; headless Chromium (tests/_browser.py: a new browser each time, network off) from
navigation until the page's script says every plot is drawn (`<body data-ready>`), 3 times, a fresh
browser each. Goals (issue 20): built in < 30 s, loads in < 10 s, < 20 MB.

    .venv/bin/python bench/bench_report.py                 # 73,768 checkpoints, recorded in RESULTS.md
    .venv/bin/python bench/bench_report.py --checkpoints 5000 --no-record
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

# GFLOPs per sample (image + text forward) by architecture: the order of magnitude of the paper's
# model_profile.csv, enough to spread the grid over five decades of compute
GFLOPS = {"S-32": 3.0, "S-16": 8.5, "S-14": 11.0, "M-32": 5.5, "M-16": 16.0, "M-14": 20.0, "B-32": 7.4,
          "B-16": 20.6, "B-14": 26.0, "L-32": 26.0, "L-16": 81.0, "L-14": 88.0}
METRICS = {"imagenet1k": ("zeroshot_classification", ["acc1", "acc5", "mean_per_class_recall"]),
           "mscoco_captions": ("zeroshot_retrieval", ["image_retrieval_recall@1", "image_retrieval_recall@5",
                                                      "image_retrieval_recall@10", "text_retrieval_recall@1",
                                                      "text_retrieval_recall@5", "text_retrieval_recall@10",
                                                      "mean_recall@1"]),
           "ade20k": ("segmentation", ["miou", "pixel_acc"])}
LAW = {"clip": (45.0, -0.20, 0.12), "mammut": (52.0, -0.21, 0.10), "coca": (48.0, -0.20, 0.13)}


def make_results(out: Path, n: int, seed: int = 0) -> int:
    """The synthetic results folder (results.parquet, tasks/); returns the row count."""
    import numpy as np
    import pandas as pd
    from bench_plan import resolved_tasks, run_names

    from evalkit.grids import paper as pg
    from evalkit.results.schema import TIDY_COLUMNS, unit_id
    from evalkit.results.store import UnitStore

    rng = np.random.default_rng(seed)
    rows = []
    for name, meta, epochs in run_names(n, seed):
        total = float(pg.scale_samples(meta["samples_seen_scale_pretty"]))
        arch = meta["model_simple"]
        g = GFLOPS[arch.removeprefix("ViT-")]
        noise = rng.normal(0, 0.01)
        for e in epochs:
            rows.append((name, meta, e, total * e / meta["total_epochs"], g, noise))
    ck = pd.DataFrame({
        "run": [r[0] for r in rows], "namespace": [r[1]["namespace"] for r in rows],
        "model_simple": [r[1]["model_simple"] for r in rows], "epoch": [r[2] for r in rows],
        "samples_seen": [r[3] for r in rows], "gflops_per_sample": [r[4] for r in rows],
        "noise": [r[5] for r in rows], "total_epochs": [r[1]["total_epochs"] for r in rows],
        "pretrain_dataset": [r[1]["pretrain_dataset"] for r in rows], "lr_scheduler": [r[1]["lr_scheduler"] for r in rows],
        "samples_seen_scale_pretty": [r[1]["samples_seen_scale_pretty"] for r in rows],
        "global_batch_size": [r[1]["global_batch_size"] for r in rows]})
    ck["model"] = ck["run"] + "/epoch_" + ck["epoch"].astype(str)
    ck["checkpoint"] = "/grid/hub/" + ck["model"] + ".pt"
    ck["family"] = ck["namespace"]
    ck["arch"] = np.where(ck["namespace"] == "clip", ck["model_simple"], ck["namespace"] + "_" + ck["model_simple"])
    ck["gflops_total"] = ck["gflops_per_sample"] * ck["samples_seen"]
    a, c, d = (ck["namespace"].map({k: v[i] for k, v in LAW.items()}).to_numpy() for i in range(3))
    err = a * ck["gflops_total"].to_numpy() ** c + d + ck["noise"].to_numpy()
    store = UnitStore(out)
    tasks = {t.name: t for t in resolved_tasks()}
    for t in tasks.values():
        store.write_task(t)
    parts = []
    for k, (task, (ttype, metrics)) in enumerate(METRICS.items()):
        base = np.clip(1 - (err * (1.0, 1.6, 1.3)[k]), 0.001, 0.999)
        for j, m in enumerate(metrics):
            p = ck.copy()
            p["task"], p["task_type"], p["dataset"], p["metric"] = task, ttype, task, m
            p["value"] = np.clip(base + 0.03 * j, 0, 1) if m != "pixel_acc" else np.clip(base + 0.4, 0, 1)
            p["task_hash"] = tasks[task].hash
            p["n_samples"] = tasks[task].data["n_images"]
            parts.append(p)
    t = pd.concat(parts, ignore_index=True)
    t["split"], t["status"], t["error"], t["precision"], t["device"] = "test", "ok", "", "amp_bf16", "cuda:0 (NVIDIA H100)"
    t["evalkit_version"], t["open_clip_version"], t["torch_version"] = "0.1.0", "3.3.0", "2.14.1"
    t["batch_size"], t["duration_s"], t["finished_at"] = 256, 1.0, "2026-01-01T00:00:00+0000"
    fail = rng.random(len(ck)) < 0.005
    for task, error in (("imagenet1k", "DataError: /data/imagenet/val/n01440764/x.JPEG: cannot decode image"),
                        ("ade20k", "RuntimeError: CUDA out of memory (ade20k probe)")):
        bad = t.index[(t["task"] == task) & t["model"].isin(ck.loc[fail, "model"])]
        t.loc[bad, ["status", "value", "error"]] = ["failed", np.nan, error]
    t["unit_id"] = [unit_id(f"{m}|", task, h) for m, task, h in zip(t["model"], t["task"], t["task_hash"])]
    t = t.reindex(columns=[*TIDY_COLUMNS, "unit_id"])
    t.to_parquet(out / "results.parquet", index=False)
    return len(t)


def timed_build(out: Path, page: Path) -> tuple[float, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "report", str(out), "--out", str(page)],
                       capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"evalkit report failed:\n{r.stdout}\n{r.stderr}")
    return dt, [ln for ln in r.stderr.splitlines() if "warning" in ln]


def timed_loads(page: Path, repeats: int) -> tuple[list[float], dict]:
    import json

    from _browser import Chromium

    times, info = [], {}
    for _ in range(repeats):
        with Chromium(width=1400, height=1000, timeout=300) as b:
            times.append(b.open(page))
            if b.eval("document.body.dataset.error || ''"):
                raise SystemExit(f"page error: {b.eval('document.body.dataset.error')}")
            info = json.loads(b.eval("""JSON.stringify({plots: document.querySelectorAll('div.plot .main-svg').length
                ? document.querySelectorAll('div.plot').length : 0,
                points: document.querySelectorAll('.scatterlayer path.point').length,
                rows: document.querySelectorAll('#table-last tbody tr').length,
                laws: Array.from(document.querySelectorAll('.legendtext')).filter(e => / law: /.test(e.textContent)).length})"""))
            info["console_errors"] = len(b.console_errors())
            info["off_machine_requests"] = len([u for u in b.requests() if not u.startswith(("file:", "data:", "blob:"))])
    return times, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=73768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic results (default: $TMPDIR)")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_report_", dir=a.tmp) as d:
        out = Path(d) / "out"
        t0 = time.perf_counter()
        n_rows = make_results(out, a.checkpoints)
        from evalkit.fit.api import fit_table

        fit_table(out / "results.parquet", task="imagenet1k", metric="acc1", bootstrap=200, predict=[1e12, 1e13],
                  out=out / "fit", plots=False)
        setup = time.perf_counter() - t0
        page = Path(d) / "report.html"
        build, warnings = timed_build(out, page)
        size = page.stat().st_size
        loads, info = timed_loads(page, a.repeats)
    med = statistics.median(loads)
    ok = build < 30 and med < 10 and size < 20e6 and not warnings and info["laws"] > 0
    body = "\n".join([
        "| checkpoints | table rows | build s (`evalkit report`, a fresh process) | page MB | load s (median of "
        f"{len(loads)}; each) | plots drawn | markers in the DOM | last-checkpoint rows | console errors | requests off "
        "the machine | fitted laws drawn | warnings |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {a.checkpoints:,} | {n_rows:,} | {build:.1f} | {size / 1e6:.1f} | {med:.1f} "
        f"({', '.join(f'{x:.1f}' for x in loads)}) | {info['plots']} | {info['points']:,} | {info['rows']:,} | "
        f"{info['console_errors']} | {info['off_machine_requests']} | {info['laws']} | {len(warnings)} |", "",
        f"Goals (issue 20): build < 30 s, load < 10 s, size < 20 MB: {'all met' if ok else 'NOT all met'}. "
        f"Load = headless Chromium from navigation until every plot is drawn (`<body data-ready>`), a fresh "
        f"browser each time, network off. Setup excluded: the synthetic table, its task configs and a fit "
        f"folder ({setup:.1f} s). The page embeds every checkpoint's identity and main metrics; its scatters "
        f"show a stratified sample plus every frontier point, its training curves 150 runs (both said on the page)."])
    print(body)
    if a.record:
        from _results_md import write_section

        write_section("report", "Report page at grid scale (bench_report.py)", body,
                      "python bench/bench_report.py " + " ".join(sys.argv[1:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
