"""The engine: plan (checkpoint x task) units, skip finished ones, run each checkpoint once over all
its tasks with images decoded once, and write every unit atomically.

Flow per shard: plan (plan.py) -> assign checkpoints to shards (deterministic, balanced by cost, from
the full plan so concurrent shards agree) -> for each checkpoint (loop.py): fetch through its
CheckpointSource and load once; per dataset: cached uint8 pixels -> pinned batches -> device ->
normalise -> encode -> every task on that dataset -> unit files; suites averaged last (suites.py).
Device and precision: device.py; the Python API: api.py.
"""

from evalkit.engine.api import evaluate
from evalkit.engine.device import (
           DeviceError,
           configure_precision,
           default_device,
           default_precision,
           resolve_device,
)
from evalkit.engine.loop import RunOptions, run
from evalkit.engine.plan import Unit, assign_shards, checkpoint_cost, plan, resolve_tasks, shard_from_env

__all__ = ["DeviceError", "RunOptions", "Unit", "assign_shards", "checkpoint_cost", "configure_precision",
           "default_device", "default_precision", "evaluate", "plan", "resolve_device", "resolve_tasks", "run",
           "shard_from_env"]
