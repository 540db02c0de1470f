"""What to evaluate, from what a user names: one model, a glob of checkpoints, a folder of runs, a
grid in the zoo or on the hub, narrowed by `where`/`epochs`. Shared by the CLI and `evaluate()`; each
way of naming checkpoints is a `Layout` of `LAYOUTS` (evalkit/grids/source.py)."""

from __future__ import annotations

from evalkit.errors import UsageError
from evalkit.grids.source import layout_for
from evalkit.models.spec import ModelSpec


def model_specs(model: str | None = None, pretrained: str | None = None, *, checkpoints: str | None = None,
                run_dir: str | None = None, grid: str | None = None, family: str | None = None,
                where: str | None = None, epochs: str | None = None) -> list[ModelSpec]:
    """The checkpoints to evaluate, in a stable order (see README: Running it)."""
    given = {"checkpoints": checkpoints, "run_dir": run_dir, "grid": grid}
    kw = {"family": family, "where": where, "epochs": epochs}
    for argument, value in given.items():
        if value:
            layout = layout_for(argument, value)
            if layout is None:
                raise UsageError(f"--{argument.replace('_', '-')} {value}: no grid layout claims it")
            return layout.specs(value, model=model, **kw)
    if not model:
        raise UsageError("give a model (--model), checkpoints (--checkpoints), a folder of runs (--run-dir) or a grid (--grid)")
    layout = layout_for("model", model)
    if layout is None:
        raise UsageError(f"--model {model}: no layout claims it")
    return layout.specs(model, pretrained=pretrained, **kw)
