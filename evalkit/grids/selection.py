"""What to evaluate, from what a user names: one model, a glob of checkpoints, a folder of runs, a
grid in the zoo or on the hub, narrowed by `where`/`epochs`. Shared by the CLI and `evaluate()`."""

from __future__ import annotations

from evalkit.models.source import HF_HUB, parse_source
from evalkit.models.spec import ModelSpec


def model_specs(model: str | None = None, pretrained: str | None = None, *, checkpoints: str | None = None,
                run_dir: str | None = None, grid: str | None = None, family: str | None = None,
                where: str | None = None, epochs: str | None = None) -> list[ModelSpec]:
    """The checkpoints to evaluate, in a stable order (see README: Running it)."""
    from evalkit.grids import runs, zoo

    kw = {"model": model, "family": family, "where": where, "epochs": epochs}
    if checkpoints:
        return runs.specs_from_glob(checkpoints, **kw)
    if run_dir:
        return runs.specs_from_run_dir(run_dir, **kw)
    if grid and parse_source(grid).kind == HF_HUB:
        from evalkit.grids.hub import specs_from_hub

        return specs_from_hub(grid, **kw)
    if grid:
        return runs.select_specs(zoo.grid_specs(grid), where, epochs)
    if not model:
        raise ValueError("give a model (--model), checkpoints (--checkpoints), a folder of runs (--run-dir) or a grid (--grid)")
    if where or epochs:
        raise ValueError("--where/--epochs select among grid checkpoints (--checkpoints, --run-dir, --grid)")
    spec = zoo.resolve_model_arg(model, pretrained)
    if family:
        spec.family = family
    return [spec]
