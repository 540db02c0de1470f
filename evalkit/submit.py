"""`evalkit submit`: the same run as a SLURM job array through submitit, one shard per array task.

Each array task runs `engine.run` with `shard=(i, n)` and writes unit files into the shared results
folder; the shards never clash (distinct unit files), and each ends by collecting the table, so the
last one to finish leaves the complete table. Tests use submitit's local executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_shard(index: int, count: int, specs: list, tasks: list, options: dict[str, Any]) -> dict[str, int]:
    """One array task (module-level so submitit can pickle it)."""
    from evalkit.engine import RunOptions, run
    from evalkit.results import collect

    opts = RunOptions(**{**options, "shard": (index, count)})
    counts = run(specs, tasks, opts)
    collect(opts.out)
    return counts


def submit(specs: list, tasks: list, options: dict[str, Any], shards: int, folder: str | Path,
           cluster: str | None = None, slurm: dict[str, Any] | None = None, wait: bool = False) -> list:
    """Submit `shards` array tasks; return the submitit jobs (waiting for them if `wait`)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 240, "slurm_array_parallelism": shards, "name": "evalkit"}
    params.update(slurm or {})
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    jobs = executor.map_array(run_shard, list(range(shards)), [shards] * shards, [specs] * shards,
                              [tasks] * shards, [options] * shards)
    if wait:
        for job in jobs:
            job.result()
    return jobs
