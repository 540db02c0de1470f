"""`evaluate()`: the Python API, what the CLI takes, returning the collected table."""

from __future__ import annotations

from typing import Any

from evalkit.engine.loop import RunOptions, run
from evalkit.grids.selection import model_specs
from evalkit.models.spec import ModelSpec
from evalkit.results.store import collect
from evalkit.tasks.loader import get_task


def evaluate(models: list[ModelSpec | str] | ModelSpec | str | None = None, tasks: list[str] | str = (), *,
             checkpoints: str | None = None, run_dir: str | None = None, grid: str | None = None,
             where: str | None = None, epochs: str | None = None, family: str | None = None, **kwargs: Any):
    """Evaluate models on tasks; return the collected results table (a pandas DataFrame).

    What the CLI takes: `models` (specs or `--model`-style strings), or `checkpoints` (a glob),
    `run_dir`, `grid` (a zoo grid or `hf-hub:ORG/REPO`), narrowed by `where`/`epochs`; `tasks`:
    registered names, suites or `wds/NAME`. Other keyword options are those of `RunOptions`.
    """

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


