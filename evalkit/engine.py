"""The engine: plan (checkpoint x task) units, skip finished ones, run each checkpoint once over all
its tasks with images decoded once, and write every unit atomically.

Flow per shard: plan -> assign checkpoints to shards (deterministic, balanced by cost, from the full
plan so concurrent shards agree) -> for each checkpoint: load once; per dataset: cached uint8 pixels
-> pinned batches -> device -> normalise -> encode -> every task on that dataset -> unit files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
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
from evalkit.data.roots import resolve_root
from evalkit.data.sources import DataError, ImageSource
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.factory import load_model, resolve_source
from evalkit.models.family import LoadedModel
from evalkit.models.flops import estimate_gflops, gflops_per_sample
from evalkit.models.source import parse_source
from evalkit.models.spec import ModelSpec
from evalkit.progress import Progress
from evalkit.results.store import UnitStore, collect, now, unit_id
from evalkit.tasks.base import RunContext, TaskRunner, encode_images, open_task, protocols
from evalkit.tasks.loader import expand, get_task
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
    keep_checkpoints: bool = False  # hub grid checkpoints stay in the HF cache once evaluated


@dataclass
class Unit:
    spec: ModelSpec
    task: TaskSpec
    uid: str


@dataclass
class TaskData:
    """A task with its opened data (or the error that prevented opening it)."""

    spec: TaskSpec
    source: ImageSource | None = None
    error: str = ""


class DeviceError(RuntimeError):
    """A device that was asked for and cannot be used; one line naming the cause."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpus_in_environment() -> str | None:
    """The variable that says this process was given GPUs, if any."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = os.environ.get(var, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{var}={value}"
    return None


def _why_no_cuda() -> str:
    try:
        torch.cuda.init()
    except Exception as e:  # torch says why: no driver, driver too old for this build, no device
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "no CUDA device visible"


def local_rank() -> int | None:
    """This process's rank on its node (torchrun's LOCAL_RANK, srun's SLURM_LOCALID)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


_CPU_WARNED = False


def resolve_device(requested: str | None = None, gpus_requested: bool = False) -> torch.device:
    """The device to run on, decided once before any work.

    `cuda` (or nothing, on a machine with GPUs) is `cuda:<local rank>`, so the ranks of one node
    (torchrun, `srun --ntasks-per-node=4`) each take their own GPU; with one visible GPU per rank
    (`--gpus-per-task=1`) it is `cuda:0`. When GPUs were asked for (`--device cuda[:N]`,
    `--gpus-per-shard`, or a job with CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS set) and CUDA is unusable,
    that is an error naming the cause, never a silent fp32 run on the CPU.
    """
    global _CPU_WARNED
    if requested is not None and requested != "cpu" and not re.fullmatch(r"cuda(:\d+)?", requested):
        raise DeviceError(f"--device {requested}: expected cpu, cuda or cuda:N")
    if requested == "cpu":
        return torch.device("cpu")
    asked = (f"--device {requested}" if requested else None) or ("--gpus-per-shard" if gpus_requested else None) \
        or _gpus_in_environment()
    if not torch.cuda.is_available():
        reason = _why_no_cuda()
        if asked:
            raise DeviceError(
                f"CUDA was asked for ({asked}) but torch cannot use it: {reason} (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none: a CPU build'}; CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}). Check the driver and the job's GPU "
                "binding, or pass --device cpu.")
        if not _CPU_WARNED:
            _CPU_WARNED = True
            log.warning("evalkit: warning: no usable GPU (%s); running on the CPU in fp32 (--device cpu "
                        "silences this)", reason)
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if requested and ":" in requested:
        index = int(requested.split(":")[1])
        if index >= n:
            raise DeviceError(f"--device {requested}: only {n} CUDA device(s) visible "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
        return torch.device("cuda", index)
    rank = local_rank()
    if rank is None or n == 1:
        return torch.device("cuda", 0)
    if rank >= n:
        log.warning("evalkit: warning: local rank %d but %d GPUs visible: using cuda:%d, shared with "
                    "another rank", rank, n, rank % n)
    return torch.device("cuda", rank % n)


def configure_precision(device: torch.device, precision: str) -> None:
    """fp32 means fp32: no TF32 matmuls or convolutions (CUDA's default for cuDNN, and a global
    setting other code may have switched on)."""
    if precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def default_precision(device: str) -> str:
    return "amp_bf16" if device.startswith("cuda") else "fp32"


def shard_from_env() -> tuple[int, int] | None:
    """(index, count) from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS, if set."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(rank) is not None and os.environ.get(world) is not None:
            n = int(os.environ[world])
            if n > 1:
                return int(os.environ[rank]), n
    return None


def plan(specs: list[ModelSpec], tasks: list[TaskSpec], precision: str = "fp32") -> list[Unit]:
    """Every (checkpoint, task) unit once, in a stable order.

    Tasks should come resolved (`resolve_tasks`): a unit's id then covers the classnames, templates
    and data it was computed from, and the precision, so a change of any of them is a new unit.
    """
    hashed = [(t, t.hash) for t in tasks]  # a task's hash covers its class names and templates: once each
    units: dict[str, Unit] = {}
    with _gc_paused():  # 200k new objects would trigger full collections over and over: linear again
        for s in specs:
            key = s.key
            for t, h in hashed:
                uid = unit_id(key, t.name, h, precision)
                units.setdefault(uid, Unit(s, t, uid))
    return list(units.values())


@contextlib.contextmanager
def _gc_paused():
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def assign_shards(units: list[Unit], n: int,
                  cost: Callable[[ModelSpec], float | None] | None = None) -> list[list[Unit]]:
    """Split whole checkpoints over `n` shards, heaviest first onto the least loaded (LPT).

    A checkpoint weighs `cost(spec)` (compute per sample; unknown: the mean of the known ones) times
    the images of its units' tasks (ImageNet's 50,000 against Flickr's 1,000), so a ViT-L checkpoint
    counts ~12 ViT-B/32 ones and shards finish together.
    Computed from the full plan (not from what is pending), so every shard agrees without talking;
    equal weights stay together in key order, so consecutive checkpoints reuse one built module.
    """
    by_ckpt: dict[str, list[Unit]] = {}
    for u in units:
        by_ckpt.setdefault(u.spec.key, []).append(u)
    per_sample = {k: (cost(us[0].spec) if cost else None) for k, us in by_ckpt.items()}
    known = [c for c in per_sample.values() if c]
    default = sum(known) / len(known) if known else 1.0
    sizes = [_task_size(u.task) for u in units]
    known_sizes = [z for z in sizes if z]
    default_size = sum(known_sizes) / len(known_sizes) if known_sizes else 1.0
    weight = {k: (per_sample[k] or default) * sum(_task_size(u.task) or default_size for u in us)
              for k, us in by_ckpt.items()}
    order = sorted(by_ckpt, key=lambda k: (-round(weight[k], 6), k))
    loads = [0.0] * n
    shards: list[list[Unit]] = [[] for _ in range(n)]
    for k in order:
        i = min(range(n), key=lambda j: (loads[j], j))
        shards[i] += by_ckpt[k]
        loads[i] += weight[k]
    return shards


def _task_size(task: TaskSpec) -> float | None:
    """Images a unit of this task encodes (its resolved data's count; None when unresolved)."""
    return float(task.data["n_images"]) if task.data and task.data.get("n_images") else None


@functools.lru_cache(maxsize=256)
def _arch_gflops(model: str, arch: str | None) -> float | None:
    try:
        _, cfg, _, _ = resolve_source(ModelSpec(model=model, arch=arch))
    except Exception:  # a spec that cannot resolve fails later, as its own unit; here it weighs the mean
        return None
    return estimate_gflops(cfg)


def checkpoint_cost(spec: ModelSpec) -> float | None:
    """Estimated GFLOPs per sample of a checkpoint's architecture, from its config (no model built)."""
    return _arch_gflops(spec.model, spec.arch)


def _open_task(spec: TaskSpec, data_root: str | None) -> TaskData:
    try:
        root = resolve_root(spec.dataset, data_root, spec.options.get("default_root"))
        resolved, source = open_task(spec, root)
        return TaskData(resolved, source)
    except (DataError, ValueError, OSError) as e:
        return TaskData(spec, None, str(e))


def resolve_tasks(task_specs: list[TaskSpec], data_root: str | None) -> list[TaskData]:
    """Open every task's data once and resolve its spec (classnames, templates, data identity).

    Done before planning, so unit ids and `task_hash` name what is actually computed. A task whose
    data cannot be opened keeps its unresolved spec (and hash) and fails as its own units.
    """
    seen: dict[str, TaskData] = {}
    for t in task_specs:
        if t.name not in seen:
            seen[t.name] = _open_task(t, data_root)
    return list(seen.values())


PRECISIONS = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def _autocast(device: torch.device, precision: str):
    """fp32, or autocast in bf16 / fp16 (clip_benchmark's `--amp` on CUDA is fp16 autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (one of {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def _run_dataset(lm: LoadedModel, source: ImageSource, runners: list[TaskRunner], ctx: RunContext,
                 opts: RunOptions) -> None:
    """Encode every image of `source` once and hand the features to each runner (each readout is
    computed once per batch, whatever number of tasks reads it)."""
    for index, outputs in encode_images(lm, source, {r.needs for r in runners}, ctx, opts.batch_size):
        for r in runners:
            r.update(index, outputs[r.needs])


def _versions() -> dict[str, str]:
    import open_clip

    return {"evalkit_version": evalkit.__version__, "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__}


def _rows(unit: Unit, lm: LoadedModel | None, result: Any, status: str, error: str, common: dict[str, Any],
          duration: float) -> list[dict[str, Any]]:
    spec, task = unit.spec, unit.task
    base = {
        "model": spec.name, "arch": spec.arch or (lm.arch if lm else spec.model), "family": (lm.family if lm else spec.family),
        "checkpoint": spec.checkpoint, "epoch": spec.epoch, "samples_seen": spec.samples_seen,
        "pretrain_dataset": spec.pretrain_dataset, "lr_scheduler": spec.lr_scheduler,
        "namespace": spec.namespace, "model_simple": spec.model_simple,
        "samples_seen_scale_pretty": spec.samples_seen_scale_pretty, "total_epochs": spec.total_epochs,
        "global_batch_size": spec.global_batch_size, "run": spec.run,
        "gflops_per_sample": None, "gflops_total": None,
        "task": task.name, "task_type": task.type, "dataset": task.dataset, "split": task.split,
        "task_hash": task.hash, "duration_s": round(duration, 4), "finished_at": now(),
        "status": status, "error": error, "unit_id": unit.uid, **common,
    }
    if result is None:
        return [{**base, "metric": task.main_metric or "error", "value": None, "n_samples": 0}]
    # a task file's `metrics:` selects which of the protocol's metrics are reported
    return [{**base, "metric": m, "value": v, "n_samples": result.n_samples} for m, v in result.metrics.items()
            if not task.metrics or m in task.metrics]


def evaluate(models: list[ModelSpec | str] | ModelSpec | str | None = None, tasks: list[str] | str = (), *,
             checkpoints: str | None = None, run_dir: str | None = None, grid: str | None = None,
             where: str | None = None, epochs: str | None = None, family: str | None = None, **kwargs: Any):
    """Evaluate models on tasks; return the collected results table (a pandas DataFrame).

    What the CLI takes: `models` (specs or `--model`-style strings), or `checkpoints` (a glob),
    `run_dir`, `grid` (a zoo grid or `hf-hub:ORG/REPO`), narrowed by `where`/`epochs`; `tasks`:
    registered names, suites or `wds/NAME`. Other keyword options are those of `RunOptions`.
    """
    from evalkit.grids.selection import model_specs

    opts = RunOptions(**kwargs)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if models is None:
        specs = model_specs(checkpoints=checkpoints, run_dir=run_dir, grid=grid, family=family, where=where,
                            epochs=epochs)
    else:
        listed = [models] if isinstance(models, (str, ModelSpec)) else list(models)
        specs = [m for s in listed
                 for m in ([s] if isinstance(s, ModelSpec) else model_specs(s, family=family, where=where, epochs=epochs))]
    run(specs, [get_task(t) for t in tasks], opts)
    return collect(opts.out)


def run(specs: list[ModelSpec], task_specs: list[TaskSpec], opts: RunOptions) -> dict[str, int]:
    """Run the pending units of this shard; return counts of ok / failed / skipped units."""
    device = resolve_device(opts.device, opts.gpus_requested)
    precision = opts.precision or default_precision(device.type)
    _autocast(device, precision)  # an unknown precision fails here, before any work
    configure_precision(device, precision)
    if device.type == "cuda":  # pinned buffers, streams and events then belong to this GPU, not cuda:0
        torch.cuda.set_device(device)
    if opts.progress is None:
        opts.progress = sys.stderr.isatty()
    ctx = RunContext(device=device, autocast=_autocast(device, precision), text_batch_size=opts.text_batch_size,
                     cache_dir=Path(opts.cache_dir) if opts.cache_dir else None, num_workers=opts.num_workers,
                     batch_size=opts.batch_size, progress=bool(opts.progress))
    store = UnitStore(opts.out)
    store.remove_stale_temps()  # leftovers of writers killed mid-write (this host: dead pids; others: old)
    task_specs, suites = expand(task_specs)  # a suite runs its members as tasks, then averages them
    opened = {td.spec.name: td for td in resolve_tasks(task_specs, opts.data_root)}
    for td in opened.values():
        if td.source is not None:
            store.write_task(td.spec)
    units = plan(specs, [td.spec for td in opened.values()], precision)
    shard = opts.shard or shard_from_env()
    if shard is not None:
        units = assign_shards(units, shard[1], checkpoint_cost)[shard[0]]
    status = store.status()
    pending = [u for u in units if status.get(u.uid) != "ok"]
    skipped = [u for u in units if status.get(u.uid) == "ok"]
    store.reinstate(u.uid for u in skipped)  # asked for again: current again, over any other result of its key
    counts = {"ok": 0, "failed": 0, "skipped": len(skipped)}
    common = {**_versions(), "device": _device_name(device), "precision": precision, "batch_size": opts.batch_size}
    by_ckpt: dict[str, list[Unit]] = {}
    for u in pending:
        by_ckpt.setdefault(u.spec.key, []).append(u)
    reader = _Reader()
    ctx.before_decode = lambda: (reader.quiesce(), store.flush())
    sh = _Shared(store, ctx, opts, opened, common, counts, Progress(len(pending), bar=bool(opts.progress)))
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
        _average_suites(sh, suites, list(dict.fromkeys(u.spec.key for u in units)),
                        {u.spec.key: u.spec for u in units}, precision)
    store.flush()
    sh.progress.close()
    return counts


def _member_main(member: dict[str, str], opened: dict[str, TaskData], suites: dict[str, TaskSpec]) -> str:
    if member.get("main_metric"):
        return member["main_metric"]
    name = member["task"]
    if name in suites:
        return "average"
    return opened[name].spec.main_metric


def _average_suites(sh: _Shared, suites: list[TaskSpec], keys: list[str], specs: dict[str, ModelSpec],
                    precision: str) -> None:
    """Per checkpoint, one `metric=average` row per suite: the unweighted mean of its members'
    main metrics, written once every member is ok (else `failed`, naming the members that are not).

    A suite's hash covers its members' resolved hashes, so a changed member changes the suite's
    result; suites come after their members (and inner suites before outer ones)."""

    by_name = {s.name: s for s in suites}
    resolved: dict[str, TaskSpec] = {}
    for suite in suites:  # expand() lists inner suites first
        members = {m["task"]: (resolved[m["task"]].hash if m["task"] in resolved else sh.opened[m["task"]].spec.hash)
                   for m in suite.options["tasks"]}
        resolved[suite.name] = replace(suite, data={"members": members})
    status = sh.store.status()
    for key in keys:
        spec = specs[key]
        for suite in suites:
            rsuite = resolved[suite.name]
            uid = unit_id(key, suite.name, rsuite.hash, precision)
            if status.get(uid) == "ok":
                sh.counts["skipped"] += 1
                continue
            values, problems, template = [], [], None
            for m in suite.options["tasks"]:
                name = m["task"]
                mspec = resolved.get(name) or sh.opened[name].spec
                rows = sh.store.unit_rows(unit_id(key, name, mspec.hash, precision))
                metric = _member_main(m, sh.opened, by_name)
                if rows is None:
                    problems.append(f"{name} (no result)")
                    continue
                template = template or rows[0]
                hit = [r for r in rows if r.get("metric") == metric and r.get("status") == "ok" and r.get("value") is not None]
                if not hit:
                    status_m = rows[0].get("status")
                    problems.append(f"{name} ({'failed' if status_m != 'ok' else f'no {metric}'})")
                    continue
                values.append(float(hit[0]["value"]))
            partial = suite.options.get("partial") or []
            ok = not problems
            note = "" if ok else f"members not ok: {', '.join(problems)}"
            if ok and partial:
                note = f"partial: {len(partial)} member(s) not computed by evalkit ({', '.join(partial)})"
            unit = Unit(spec, rsuite, uid)
            row = _rows(unit, None, None, "ok" if ok else "failed", note, sh.common, 0.0)[0]
            if template:
                for col in ("arch", "family", "gflops_per_sample", "gflops_total"):
                    row[col] = template.get(col)
            row.update(task_type="suite", metric="average", value=(sum(values) / len(values)) if ok else None,
                       n_samples=len(suite.options["tasks"]))
            sh.store.write(uid, [row], row["status"], "" if ok else note)
            sh.counts["ok" if ok else "failed"] += 1
            value = f"average={row['value']:.4f}" if ok else f"FAILED ({note})"
            print(f"[suite] {spec.name} x {suite.name}: {value}", file=sys.stderr, flush=True)


@dataclass
class _Shared:
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


def _load(spec: ModelSpec, state_future: Future | None, device: torch.device, built: dict) -> LoadedModel:
    state = state_future.result() if state_future is not None else None
    return load_model(spec, device=device, state=state, reuse=built)


def _evaluate_checkpoint(sh: _Shared, ckpt_units: list[Unit], state_future: Future | None, built: dict) -> None:
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
            store.write(u.uid, _rows(u, None, None, "failed", err, common, time.time() - t0), "failed", err)
            counts["failed"] += 1
            progress.unit(f"{spec.name} x {u.task.name}: FAILED ({err})")
        if not opts.keep_checkpoints:
            from evalkit.grids.hub import evict_checkpoint

            evict_checkpoint(spec)
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
            _run_dataset(lm, live[0][1].source, [r for _, _, r in live], ctx, opts)
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
                store.write(u.uid, _rows(u, lm, result, "ok", "", {**common, **extra}, share), "ok")
                counts["ok"] += 1
                main = td.spec.main_metric or next(iter(result.metrics))
                progress.unit(f"{spec.name} x {u.task.name}: {main}={result.metrics.get(main, float('nan')):.4f}")
            except Exception as e:
                _fail(store, u, lm, e, common, share, counts, progress)
    if not opts.keep_checkpoints:  # all its units are written: a downloaded hub checkpoint leaves the cache
        from evalkit.grids.hub import evict_checkpoint

        evict_checkpoint(spec)


def _prefetch(pool: _Reader, spec: ModelSpec) -> Future | None:
    """Read a local checkpoint file in the background (I/O and unpickling overlap compute); a hub grid
    checkpoint (`hf-hub-file:`) is downloaded there first, just in time. A spec that will fail anyway
    (`spec.error`) is neither downloaded nor read."""
    from evalkit.grids.hub import fetch_checkpoint, is_hub_file

    if spec.error:
        return None
    if is_hub_file(spec.pretrained):
        ref, commit = spec.pretrained, spec.extra.get("hub_commit")
        return pool.submit(lambda: read_state_dict(fetch_checkpoint(ref, commit)))
    if spec.pretrained and Path(spec.pretrained).is_file() and not parse_source(spec.model).includes_weights:
        return pool.submit(read_state_dict, spec.pretrained)
    return None


def _gflops(lm: LoadedModel, spec: ModelSpec) -> float | None:
    """FLOPs are metadata: never fail a unit over them, but say so, since rows without
    gflops_total drop out of every fit on compute."""
    try:
        return gflops_per_sample(lm)
    except Exception as e:
        if lm.arch not in _FLOPS_WARNED:
            _FLOPS_WARNED.add(lm.arch)
            log.warning("evalkit: warning: cannot count FLOPs of %s (%s, first seen in %s): %s: %s; its rows get "
                        "no gflops_per_sample/gflops_total and drop out of fits on compute",
                        lm.arch, lm.family, spec.checkpoint or spec.name, type(e).__name__, e)
        return None


_FLOPS_WARNED: set[str] = set()


def _fail(store: UnitStore, u: Unit, lm: LoadedModel | None, e: Exception, common: dict[str, Any], dt: float,
          counts: dict[str, int], progress: Progress) -> None:
    err = f"{type(e).__name__}: {e}"
    if os.environ.get("EVALKIT_DEBUG"):
        traceback.print_exc()
    store.write(u.uid, _rows(u, lm, None, "failed", err, common, dt), "failed", err)
    counts["failed"] += 1
    progress.unit(f"{u.spec.name} x {u.task.name}: FAILED ({err})")
