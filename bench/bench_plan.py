"""Planning, shard assignment and resume over a paper-sized grid: wall time and peak memory per phase.

A synthetic hub layout of the paper's grid (`<full_name>/epoch_<k>.pt` as empty files, an
`epoch_latest.pt` link per run, and a `cache/results.parquet` metadata table with one row per checkpoint,
as `laion/scaling-laws-for-comparison` publishes it) of N checkpoints x 3 resolved tasks (imagenet1k,
mscoco_captions, ade20k with the real task files' classnames/templates and `data={"n_images": ...}`, so
no dataset is needed). Each size runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
Phases, timed through evalkit's own functions:

- specs: `specs_from_run_dir(root)` (the real listing + metadata + run-name path; `specs_from_glob` too)
- plan: `engine.plan(specs, tasks)`
- shards: `engine.assign_shards(units, 64, engine.checkpoint_cost)`
- resume: with half the units already written as unit files: `UnitStore.status()`, the pending filter
  and `UnitStore.reinstate(skipped)`, exactly as `engine.run` does before its checkpoint loop

Creating the files (checkpoints, metadata table, unit files) is timed apart and excluded.

    .venv/bin/python bench/bench_plan.py                     # 1,000 / 10,000 / 73,768 checkpoints
    .venv/bin/python bench/bench_plan.py --sizes 1000 --no-record
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = (1000, 10000, 73768)
TASKS = {"imagenet1k": 50000, "mscoco_captions": 5000, "ade20k": 2000}  # task -> images of its split
MODELS = [f"ViT-{s}-{p}" for s in "SMBL" for p in (32, 16, 14)]
SCALES = ["1.28M", "3M", "6.4M", "12.8M", "30M", "64M", "128M", "300M", "640M", "1.28B", "3B", "6.4B", "12.8B"]
DATASETS = ["datacomp_1b", "dfn_2b", "relaion2b-en"]
SCHEDS = ["cosine", "const", "const-cooldown"]
PHASES = ("specs", "specs_glob", "plan", "shards", "status", "pending", "reinstate")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_names(n: int, seed: int = 0) -> list[tuple[str, dict, list[int]]]:
    """(full name, metadata, epochs) of hub-layout runs holding n checkpoints in all."""
    rng = random.Random(seed)
    out: list[tuple[str, dict, list[int]]] = []
    total = 0
    i = 0
    while total < n:
        ns = rng.choices(["clip", "mammut", "coca"], weights=[10, 10, 1])[0]
        ms = rng.choice(["B-32", "L-14"]) if ns == "coca" else rng.choice(MODELS)[4:]
        ms = f"ViT-{ms}"
        scale, ds, sched = rng.choice(SCALES), rng.choice(DATASETS), rng.choice(SCHEDS)
        gbs = rng.choice([512, 1024, 4096, 16384, 45056, 90624, 180224])
        lr = rng.choice(["0.0005", "0.001", "0.0015", "0.002", "0.0025"])
        warmup, gpus = rng.choice([1500, 2000, 4000, 6000]), rng.choice([4, 16, 64, 256, 512])
        name = (f"{ns}_{ms}_s{scale}_{ds}_globalbs{gbs}_lr{lr}_b1_0.9_b2_0.95_sched_{sched}"
                f"_warmup{warmup}_gpus{gpus}_r{i}")  # _r<i>: a seed suffix the hub grammar allows, names unique
        total_epochs = rng.choice([10, 12, 20, 24, 25, 32, 48])
        epochs = list(range(1, min(total_epochs, n - total) + 1))
        meta = {"full_name": name, "namespace": ns, "model_simple": ms, "pretrain_dataset": ds,
                "lr_scheduler": sched, "samples_seen_scale_pretty": scale, "total_epochs": total_epochs,
                "global_batch_size": gbs, "lr": float(lr), "warmup": warmup, "gpus": gpus}
        out.append((name, meta, epochs))
        total += len(epochs)
        i += 1
    return out


def make_layout(root: Path, n: int) -> int:
    """Empty checkpoint files, epoch_latest links and the metadata table; returns the run count."""
    import pandas as pd

    from evalkit.grids import paper as pg
    runs = run_names(n)
    rows = []
    for name, meta, epochs in runs:
        d = root / name
        d.mkdir(parents=True)
        for e in epochs:
            (d / f"epoch_{e}.pt").touch()
        os.symlink(f"epoch_{epochs[-1]}.pt", d / "epoch_latest.pt")
        total = pg.scale_samples(meta["samples_seen_scale_pretty"])
        rows += [{**meta, "epoch": e, "samples_seen": float(total) * e / meta["total_epochs"]} for e in epochs]
    pg.metadata_path(root).parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(pg.metadata_path(root), index=False)
    return len(runs)


def resolved_tasks():
    from evalkit.tasks.loader import get_task

    return [get_task(name).resolved(data={"n_images": n, "fingerprint": f"bench-{name}"})
            for name, n in TASKS.items()]


def write_units(out: Path, units, done_frac: float) -> int:
    """Unit files (as UnitStore.write lays them out, without its fsync) for every other unit: status ok."""
    from evalkit.results.schema import RESULT_COLUMNS

    units_dir = out / "units"
    units_dir.mkdir(parents=True)
    every = max(1, round(1 / done_frac)) if done_frac > 0 else 0
    n = 0
    for i, u in enumerate(units):
        if not every or i % every:
            continue
        base = dict.fromkeys(RESULT_COLUMNS)
        base.update(model=u.spec.model, checkpoint=u.spec.pretrained, task=u.task.name, epoch=u.spec.epoch,
                    unit_id=u.uid, status="ok", task_hash=u.task.hash, precision="fp32")
        rows = [{**base, "metric": m, "value": 0.5} for m in u.task.metrics]
        payload = {"unit_id": u.uid, "status": "ok", "error": "", "written_at": time.time(), "rows": rows}
        (units_dir / f"{u.uid}.json").write_text(json.dumps(payload, indent=1, default=str))
        n += 1
    return n


def one_size(n: int, shards: int, done_frac: float, tmp: str | None) -> dict:
    """Every phase for one grid size, in this process; returns times (s) and peak RSS (MiB)."""
    logging.getLogger("evalkit").addHandler(logging.NullHandler())
    logging.getLogger("evalkit").propagate = False
    from evalkit import engine
    from evalkit.grids.runs import specs_from_glob, specs_from_run_dir
    from evalkit.results.store import UnitStore

    res: dict = {"n": n, "t": {}, "rss": {}}
    with tempfile.TemporaryDirectory(prefix="bench_plan_", dir=tmp) as d:
        root, out = Path(d) / "hub", Path(d) / "out"
        t0 = time.perf_counter()
        res["runs"] = make_layout(root, n)
        res["create_layout_s"] = time.perf_counter() - t0
        tasks = resolved_tasks()
        engine.checkpoint_cost  # noqa: B018  (imported; its per-arch cache fills in the shards phase)
        res["rss"]["base"] = _maxrss_mib()

        def timed(phase, fn):
            t = time.perf_counter()
            value = fn()
            res["t"][phase] = time.perf_counter() - t
            res["rss"][phase] = _maxrss_mib()
            return value

        specs = timed("specs", lambda: specs_from_run_dir(root))
        glob_specs = timed("specs_glob", lambda: specs_from_glob(str(root / "*" / "epoch_*.pt")))
        assert len(specs) == len(glob_specs) == n, (len(specs), len(glob_specs), n)
        del glob_specs
        units = timed("plan", lambda: engine.plan(specs, tasks))
        assert len(units) == 3 * n
        parts = timed("shards", lambda: engine.assign_shards(units, shards, engine.checkpoint_cost))
        assert sum(map(len, parts)) == len(units)
        res["shard_units_min_max"] = (min(map(len, parts)), max(map(len, parts)))
        del parts

        t0 = time.perf_counter()
        res["units_written"] = write_units(out, units, done_frac)
        res["create_units_s"] = time.perf_counter() - t0
        store = UnitStore(out)
        status = timed("status", store.status)
        pending = timed("pending", lambda: [u for u in units if status.get(u.uid) != "ok"])
        skipped = [u for u in units if status.get(u.uid) == "ok"]
        timed("reinstate", lambda: store.reinstate(u.uid for u in skipped))
        res["pending"] = len(pending)
    return res


def _row(r: dict) -> str:
    t = r["t"]
    resume = t["status"] + t["pending"] + t["reinstate"]
    return (f"| {r['n']:,} | {r['runs']:,} | {3 * r['n']:,} | {t['specs']:.2f} | {t['specs_glob']:.2f} | "
            f"{t['plan']:.2f} | {t['shards']:.2f} | {r['units_written']:,} | {t['status']:.2f} | "
            f"{t['pending'] + t['reinstate']:.2f} | {resume:.2f} | "
            f"{sum(t[p] for p in ('specs', 'plan', 'shards')) + resume:.2f} | "
            f"{r['rss']['base']:.0f} | {r['rss']['reinstate']:.0f} (+{r['rss']['reinstate'] - r['rss']['base']:.0f}) |")


def table(results: list[dict]) -> str:
    lines = [
        "| checkpoints | runs | units | specs_from_run_dir s | specs_from_glob s | plan s | assign_shards(64) s | "
        "unit files | status() s | pending + reinstate s | resume s | total s (run_dir+plan+shards+resume) | "
        "RSS before MiB | peak RSS MiB (rise) |",
        "|" + "---:|" * 14,
    ]
    lines += [_row(r) for r in results]
    base = results[0]
    if len(results) > 1:
        lines += ["", f"Linearity, time(N) / time({base['n']:,}) against N / {base['n']:,} "
                  "(linear: the ratios match; the per-checkpoint cost in microseconds in brackets):", ""]
        lines += ["| phase | " + " | ".join(f"{r['n']:,} (x{r['n'] / base['n']:.1f})" for r in results) + " |",
                  "|---|" + "---:|" * len(results)]
        for p in PHASES:
            cells = [f"x{r['t'][p] / base['t'][p]:.1f} ({1e6 * r['t'][p] / r['n']:.1f} us)" if base["t"][p] > 0
                     else "-" for r in results]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += ["", "Excluded (setup): " + "; ".join(
        f"{r['n']:,}: layout {r['create_layout_s']:.1f} s, unit files {r['create_units_s']:.1f} s" for r in results)
        + ". Unit files were just written (warm page cache)."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--done-frac", type=float, default=0.5, help="fraction of units already written (resume)")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic layout (local disk; default: $TMPDIR)")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                    help="write the section of bench/RESULTS.md (default; --no-record: print only)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one_size(a.one, a.shards, a.done_frac, a.tmp)))
        return 0
    results = []
    for n in (int(s) for s in a.sizes.split(",") if s):
        cmd = [sys.executable, __file__, "--one", str(n), "--shards", str(a.shards), "--done-frac", str(a.done_frac)]
        if a.tmp:
            cmd += ["--tmp", a.tmp]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.stderr.write(p.stderr)
            return p.returncode
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(_row(results[-1]), flush=True)
    body = table(results)
    print(body)
    if a.record:
        from _results_md import write_section

        write_section("plan", "Planning, shards and resume at grid scale (bench_plan.py)",
                      f"{a.done_frac:.0%} of the units already done; 3 tasks (imagenet1k, mscoco_captions, "
                      f"ade20k); {a.shards} shards; each size in a fresh process.\n\n" + body,
                      "python bench/bench_plan.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
