"""The checkpoint loop: for each pending checkpoint, load once (its weights fetched by its
CheckpointSource in a prefetch thread while the previous one computes), one image pass per dataset for
all its tasks, every unit written atomically, then the source releases the checkpoint."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import evalkit
from evalkit.data.cache import default_cache_dir
from evalkit.data.sources import DataError, ImageSource
from evalkit.engine.device import (
    autocast_for,
    configure_precision,
    default_precision,
    device_name,
    resolve_device,
)
from evalkit.engine.plan import (
    TaskData,
    Unit,
    assign_shards,
    checkpoint_cost,
    leave_out_headless,
    plan,
    resolve_tasks,
    shard_from_env,
)
from evalkit.engine.suites import average_suites
from evalkit.errors import UsageError
from evalkit.grids.source import source_for
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.factory import load_model
from evalkit.models.family import LoadedModel
from evalkit.models.flops import gflops_per_sample
from evalkit.models.spec import ModelSpec
from evalkit.progress import WARNINGS, Progress
from evalkit.results.schema import build_rows
from evalkit.results.store import UnitStore
from evalkit.tasks.base import RunContext, TaskRunner, encode_images, protocols
from evalkit.tasks.loader import expand
from evalkit.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    data_root: str | None = None
    out: str | Path = "results"
    device: str | None = None
    precision: str | None = None
    batch_size: int = 64
    text_batch_size: int = 1024
    log_samples: bool = False
    cache_dir: str | Path | None = field(default_factory=default_cache_dir)
    num_workers: int | None = None
    shard: tuple[int, int] | None = None
    progress: bool | None = None
    gpus_requested: bool = False  # the job was given GPUs (submit --gpus-per-shard): no CUDA is an error
    keep_checkpoints: bool = False  # a fetched checkpoint is not released (the hub grid's stay in the HF cache)
    limit: int | None = None  # the first N samples of each task (smoke tests): part of each task's hash


def run_dataset(lm: LoadedModel, source: ImageSource, runners: list[TaskRunner], ctx: RunContext,
                 opts: RunOptions) -> None:
    """Encode every image of `source` once and hand the features to each runner (each readout is
    computed once per batch, whatever number of tasks reads it)."""
    for index, outputs in encode_images(lm, source, {r.needs for r in runners}, ctx, opts.batch_size):
        for r in runners:
            r.update(index, outputs[r.needs])


def _unit_rows(u: Unit, lm: LoadedModel | None, result: Any, status: str, error: str, common: dict[str, Any],
               duration: float) -> list[dict[str, Any]]:
    return build_rows(u.spec, u.task, u.uid, metrics=result.metrics if result is not None else None,
                      n_samples=result.n_samples if result is not None else 0, status=status, error=error,
                      provenance=common, duration=duration, arch=lm.arch if lm else None,
                      family=lm.family if lm else None)


def _versions() -> dict[str, str]:
    import open_clip

    return {"evalkit_version": evalkit.__version__, "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__}


def run(specs: list[ModelSpec], task_specs: list[TaskSpec], opts: RunOptions) -> dict[str, int]:
    """Run the pending units of this shard; return counts of ok / failed / skipped units."""
    device = resolve_device(opts.device, opts.gpus_requested)
    precision = opts.precision or default_precision(device.type)
    autocast = autocast_for(device, precision)  # an unknown precision fails here, before any work
    configure_precision(device, precision)
    if device.type == "cuda":  # pinned buffers, streams and events then belong to this GPU, not cuda:0
        torch.cuda.set_device(device)
    bar = sys.stderr.isatty() if opts.progress is None else bool(opts.progress)  # the caller's options stay as given
    ctx = RunContext(device=device, autocast=autocast, text_batch_size=opts.text_batch_size,
                     cache_dir=Path(opts.cache_dir) if opts.cache_dir else None, num_workers=opts.num_workers,
                     batch_size=opts.batch_size, progress=bar)
    store = UnitStore(opts.out)
    store.remove_stale_temps()  # leftovers of writers killed mid-write (this host: dead pids; others: old)
    task_specs, suites = expand(task_specs)  # a suite runs its members as tasks, then averages them
    if opts.limit is not None:  # a task cut to its first N samples is another task: its own hash, units, rows
        if opts.limit < 1:
            raise UsageError(f"--limit {opts.limit}: need at least 1 sample per task")
        task_specs = [replace(t, limit=opts.limit) for t in task_specs]
        suites = [replace(s, limit=opts.limit) for s in suites]
    opened = {td.spec.name: td for td in resolve_tasks(task_specs, opts.data_root)}
    for td in opened.values():
        if td.source is not None:
            store.write_task(td.spec)
    units = plan(specs, [td.spec for td in opened.values()], precision)
    units, left_out = leave_out_headless(units)
    for why, n in left_out.items():
        log.warning("evalkit: %d unit%s not planned: %s (generative tasks only)", n, "s" * (n != 1), why)
    shard = opts.shard or shard_from_env()
    if shard is not None:
        units = assign_shards(units, shard[1], checkpoint_cost)[shard[0]]
    status = store.status()
    pending = [u for u in units if status.get(u.uid) != "ok"]
    skipped = [u for u in units if status.get(u.uid) == "ok"]
    store.reinstate(u.uid for u in skipped)  # asked for again: current again, over any other result of its key
    counts = {"ok": 0, "failed": 0, "skipped": len(skipped)}
    common = {**_versions(), "device": device_name(device), "precision": precision, "batch_size": opts.batch_size}
    by_ckpt: dict[str, list[Unit]] = {}
    for u in pending:
        by_ckpt.setdefault(u.spec.key, []).append(u)
    reader = _Reader()
    ctx.before_decode = lambda: (reader.quiesce(), store.flush())
    sh = Shared(store, ctx, opts, opened, common, counts, Progress(len(pending), bar=bar))
    groups = list(by_ckpt.values())
    built: dict = {}  # the last built module, reused for the next checkpoint of the same architecture
    prefetched = _prefetch(reader, groups[0][0].spec) if groups else None
    for gi, ckpt_units in enumerate(groups):
        current, prefetched = prefetched, (_prefetch(reader, groups[gi + 1][0].spec) if gi + 1 < len(groups) else None)
        # everything of this checkpoint (model, classifiers, runners, results) lives in the call's frame
        # and is released when it returns, before the next architecture is built
        _evaluate_checkpoint(sh, ckpt_units, current, built)
        del current
    reader.quiesce()
    if suites:
        average_suites(sh, suites, list(dict.fromkeys(u.spec.key for u in units)),
                        {u.spec.key: u.spec for u in units}, precision, {(u.spec.key, u.task.name) for u in units})
    store.flush()
    sh.progress.close()
    return counts


@dataclass
class Shared:
    """What every checkpoint of one run shares."""

    store: UnitStore
    ctx: RunContext
    opts: RunOptions
    opened: dict[str, TaskData]
    common: dict[str, Any]
    counts: dict[str, int]
    progress: Progress


class _Reader:
    """The checkpoint-prefetch thread, which can be let finish and joined (`quiesce`) before images
    are decoded, so decode workers fork from a process with no other thread mid-work; the next
    `submit` starts a new one."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evalkit-prefetch")
        return self.pool.submit(fn, *args)

    def quiesce(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # finished futures keep their results
            self.pool = None


def _load(spec: ModelSpec, fetched: Future | None, device: torch.device, built: dict) -> LoadedModel:
    weights, state = fetched.result() if fetched is not None else (None, None)
    return load_model(spec, device=device, state=state, reuse=built, weights=weights)


def _evaluate_checkpoint(sh: Shared, ckpt_units: list[Unit], state_future: Future | None, built: dict) -> None:
    """Every pending unit of one checkpoint: load once, one image pass per dataset, write each unit."""
    store, ctx, opts, common, counts, progress = sh.store, sh.ctx, sh.opts, sh.common, sh.counts, sh.progress
    spec = ckpt_units[0].spec
    t0 = time.time()
    try:
        lm = _load(spec, state_future, ctx.device, built)  # the state dict dies with _load's frame
        del state_future
        gflops = _gflops(lm, spec)
        extra = {"gflops_per_sample": gflops,
                 "gflops_total": gflops * spec.samples_seen if gflops and spec.samples_seen else None}
    except Exception as e:  # one bad checkpoint never stops the grid
        err = f"{type(e).__name__}: {e}"
        for u in ckpt_units:
            store.write(u.uid, _unit_rows(u, None, None, "failed", err, common, time.time() - t0), "failed", err)
            counts["failed"] += 1
            progress.unit(f"{spec.name} x {u.task.name}: FAILED ({err})")
        if not opts.keep_checkpoints:
            source_for(spec).release(spec)
        return
    load_s = time.time() - t0
    by_source: dict[str, list[tuple[Unit, TaskData]]] = {}
    for u in ckpt_units:
        td = sh.opened[u.task.name]
        by_source.setdefault(td.source.name if td.source else f"!{u.task.name}", []).append((u, td))
    for group in by_source.values():
        t1 = time.time()
        live: list[tuple[Unit, TaskData, TaskRunner]] = []
        for u, td in group:
            try:
                if td.source is None:
                    raise DataError(td.error)
                runner = protocols()[td.spec.type](td.spec, td.source)
                runner.prepare(lm, ctx)
                live.append((u, td, runner))
            except Exception as e:
                _fail(store, u, lm, e, common, time.time() - t1, counts, progress)
        if not live:
            continue
        try:
            run_dataset(lm, live[0][1].source, [r for _, _, r in live], ctx, opts)
        except Exception as e:
            for u, _, _ in live:
                _fail(store, u, lm, e, common, time.time() - t1, counts, progress)
            continue
        share = (time.time() - t1) / len(live) + load_s / len(ckpt_units)
        for u, td, runner in live:
            try:
                result = runner.result(log_samples=opts.log_samples)
                if opts.log_samples and result.samples is not None:
                    store.write_samples(u.uid, result.samples)
                rows = _unit_rows(u, lm, result, "ok", "", common, share)
                for r in rows:
                    r.update(extra)
                store.write(u.uid, rows, "ok")
                counts["ok"] += 1
                main = td.spec.main_metric or next(iter(result.metrics))
                progress.unit(f"{spec.name} x {u.task.name}: {main}={result.metrics.get(main, float('nan')):.4f}")
            except Exception as e:
                _fail(store, u, lm, e, common, share, counts, progress)
    if not opts.keep_checkpoints:  # all its units are written: what its source fetched (a download) goes
        source_for(spec).release(spec)


def _prefetch(pool: _Reader, spec: ModelSpec) -> Future | None:
    """Fetch a checkpoint through its source and read it in the background (download, I/O and unpickling
    overlap compute): a future of (weights file, state dict). A spec that will fail anyway (`spec.error`)
    is neither fetched nor read."""
    if spec.error:
        return None
    source = source_for(spec)

    def fetch() -> tuple[Path | None, dict | None]:
        path = source.fetch(spec)
        return path, (read_state_dict(path) if path is not None else None)

    return pool.submit(fetch)


def _gflops(lm: LoadedModel, spec: ModelSpec) -> float | None:
    """FLOPs are metadata: never fail a unit over them, but say so, since rows without
    gflops_total drop out of every fit on compute."""
    try:
        return gflops_per_sample(lm)
    except Exception as e:
        WARNINGS.warn(log, f"flops:{lm.arch}", "evalkit: warning: cannot count FLOPs of %s (%s, first seen in %s): "
                      "%s: %s; its rows get no gflops_per_sample/gflops_total and drop out of fits on compute",
                      lm.arch, lm.family, spec.checkpoint or spec.name, type(e).__name__, e)
        return None


def _fail(store: UnitStore, u: Unit, lm: LoadedModel | None, e: Exception, common: dict[str, Any], dt: float,
          counts: dict[str, int], progress: Progress) -> None:
    err = f"{type(e).__name__}: {e}"
    if os.environ.get("EVALKIT_DEBUG"):
        traceback.print_exc()
    store.write(u.uid, _unit_rows(u, lm, None, "failed", err, common, dt), "failed", err)
    counts["failed"] += 1
    progress.unit(f"{u.spec.name} x {u.task.name}: FAILED ({err})")
