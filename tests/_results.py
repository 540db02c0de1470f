"""Shared by the report tests: results folders written the way the engine writes them (schema.build_rows, UnitStore.write, collect),
with values from a known law, so report tests need no model and run in seconds."""

from __future__ import annotations

import hashlib
from pathlib import Path

from evalkit.models.spec import ModelSpec
from evalkit.results.schema import build_rows, unit_id
from evalkit.results.store import UnitStore, collect
from evalkit.tasks.spec import TaskSpec

RUNS = (  # run, family, arch, GFLOPs per sample, samples per epoch, epochs
    ("clipS_s1k", "clip", "tiny-S", 2.0, 1000, 4),
    ("clipS_s2k", "clip", "tiny-S", 2.0, 2000, 4),
    ("clipM_s1k", "clip", "tiny-M", 5.0, 1000, 4),
    ("mammutS_s2k", "mammut", "mammut_tiny-S", 3.0, 2000, 3),
)
PROVENANCE = {"evalkit_version": "0.1.0", "open_clip_version": "3.3.0", "torch_version": "2.14.1", "device": "cpu",
              "precision": "fp32", "batch_size": 64}


def task(name: str, kind: str, metrics: list[str], main: str) -> TaskSpec:
    return TaskSpec(name=name, type=kind, dataset=name, metrics=metrics, main_metric=main,
                    source=f"tests/{name}.yaml").resolved(data={"fingerprint": f"fp-{name}", "n_images": 400})


TASKS = (task("cls", "zeroshot_classification", ["acc1", "acc5"], "acc1"),
         task("ret", "zeroshot_retrieval", ["image_retrieval_recall@5", "mean_recall@1"], "mean_recall@1"))


def law_value(run: str, task_name: str, gflops_total: float) -> float:
    """A value that falls with compute as a power law, with a fixed per-(run, task) jitter."""
    jitter = int(hashlib.sha1(f"{run}{task_name}{gflops_total}".encode()).hexdigest()[:6], 16) / 0xFFFFFF
    base = 0.9 if task_name == "cls" else 0.5
    return round(1.0 - min(0.99, base * (gflops_total / 1e3) ** -0.3) + 0.01 * jitter, 6)


def write_results(out: Path, runs=RUNS, tasks=TASKS, *, gflops: bool = True, fail: tuple[str, int, str] | None = None,
                  provenance: dict | None = None, collect_table: bool = True, suite: str | None = None) -> list[ModelSpec]:
    """A results folder: every (checkpoint, task) unit of `runs` x `tasks`; `fail` = (run, epoch, task) fails;
    `suite`: also a suite of that name over `tasks`, its `average` row per checkpoint as the engine writes it."""
    store = UnitStore(out)
    for t in tasks:
        store.write_task(t)
    specs = []
    for run, family, arch, g, per_epoch, epochs in runs:
        for e in range(1, epochs + 1):
            spec = ModelSpec(model=arch, pretrained=f"/ckpts/{run}/checkpoints/epoch_{e}.pt", name=f"{run}/epoch_{e}",
                             family=family, arch=arch, epoch=e, samples_seen=float(per_epoch * e), run=run)
            specs.append(spec)
            total = g * per_epoch * e
            for t in tasks:
                uid = unit_id(spec.key, t.name, t.hash, "fp32")
                prov = {**PROVENANCE, **(provenance or {})}
                if fail == (run, e, t.name):
                    err = "DataError: /data/x.jpg: cannot decode image"
                    store.write(uid, build_rows(spec, t, uid, metrics=None, status="failed", error=err,
                                                provenance=prov), "failed", err)
                    continue
                v = law_value(run, t.name, total)
                metrics = {m: (v if m == t.main_metric else round(min(1.0, v + 0.05), 6)) for m in t.metrics}
                rows = build_rows(spec, t, uid, metrics=metrics, n_samples=400, status="ok", provenance=prov)
                for r in rows:
                    r.update(gflops_per_sample=g if gflops else None, gflops_total=total if gflops else None)
                store.write(uid, rows, "ok")
            if suite:
                st = TaskSpec(name=suite, type="suite", dataset=suite, split="", metrics=["average"],
                              main_metric="average", source=f"tests/{suite}.yaml")
                uid = unit_id(spec.key, suite, st.hash, "fp32")
                row = build_rows(spec, st, uid, metrics=None, status="ok", provenance={**PROVENANCE, **(provenance or {})})[0]
                mains = [law_value(run, t.name, total) for t in tasks]
                row.update(task_type="suite", metric="average", value=sum(mains) / len(mains), n_samples=len(tasks),
                           arch=arch, family=family)
                store.write(uid, [row], "ok")
    store.flush()
    if collect_table:
        collect(out)
    return specs
