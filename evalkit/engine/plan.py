"""Planning: every (checkpoint, task) unit once, the tasks opened and resolved first (so unit ids name
what is computed), and whole checkpoints spread over shards by their cost."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from evalkit.data.roots import resolve_root
from evalkit.data.sources import DataError, ImageSource
from evalkit.models.factory import resolve_source
from evalkit.models.flops import estimate_gflops
from evalkit.models.spec import ModelSpec
from evalkit.results.schema import unit_id
from evalkit.tasks.base import open_task
from evalkit.tasks.spec import TaskSpec


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


def leave_out_headless(units: list[Unit]) -> tuple[list[Unit], dict[str, int]]:
    """The units whose model family lacks a head the task reads (a contrastive task on a `cap`
    checkpoint, trained without the contrastive loss) are not planned: never a failed unit, never a
    meaningless number. Returns the kept units and, per reason, how many were left out."""
    from evalkit.models.family import families
    from evalkit.tasks.base import protocols

    fams, protos = families(), protocols()
    kept, left = [], {}
    for u in units:
        fam = fams.get(u.spec.family) if u.spec.family else None
        proto = protos.get(u.task.type) if u.task.type in protos else None
        if fam is not None and proto is not None and not fam.has_contrastive and "contrastive" in proto.heads(u.task):
            why = f"{u.task.type} reads the contrastive head, which family {fam.name} has none of"
            left[why] = left.get(why, 0) + 1
        else:
            kept.append(u)
    return kept, left


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
    """Images a unit of this task encodes (its resolved data's count; None when unresolved), times its
    protocol's cost per image in image forwards (a generative task scores every prompt per image)."""
    if not (task.data and task.data.get("n_images")):
        return None
    from evalkit.tasks.base import protocols

    proto = protocols().get(task.type)
    return float(task.data["n_images"]) * (proto.cost_per_image(task) if proto is not None else 1.0)


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


