"""Build the embedded world's artefacts: data (if not shipped) and the trained micro grid.

Idempotent and resumable: a run whose every `epoch_N.pt` exists is skipped; all files are written
to a temp name and `os.replace`d, so an interrupted build never leaves a half-written checkpoint.
Checkpoints are not committed (they are ~20 MB each); CI rebuilds them from a clean clone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from evalkit.atomic import atomic_write_text
from evalkit.embedded.grid import GRID, RunSpec
from evalkit.embedded.paths import data_root, embedded_home

TRAINER_VERSION = 1  # bump when train.py changes what it writes


def data_dir(root: Path | None = None) -> Path:
    """The committed data when present, else `<root>/data` (written on demand)."""
    shipped = data_root()
    if (shipped / "GENERATOR.json").is_file():
        return shipped
    return (root or embedded_home()) / "data"


def ensure_data(root: Path | None = None) -> Path:
    from evalkit.embedded import world

    target = data_dir(root)
    if not (target / "GENERATOR.json").is_file():
        world.write_world(target)
    return target


STAMP = "embedded_stamp.json"


def fingerprint(spec: RunSpec) -> str:
    """What a run's bytes depend on: spec, model config, world and trainer versions."""
    from evalkit.embedded import world
    from evalkit.embedded.grid import model_config_path

    blob = json.dumps({"spec": spec.as_dict(), "config": json.loads(model_config_path(spec.model).read_text()),
                       "world": world.WORLD_VERSION, "trainer": TRAINER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_built(spec: RunSpec, home: Path) -> bool:
    """All epochs present and stamped with the current fingerprint (stale grids are retrained)."""
    stamp = spec.run_dir(home) / STAMP
    if not stamp.is_file() or json.loads(stamp.read_text()).get("fingerprint") != fingerprint(spec):
        return False
    return all(p.is_file() for p in spec.checkpoints(home)) and (spec.run_dir(home) / "params.txt").is_file()


def _stamp(spec: RunSpec, home: Path, seconds: float) -> None:
    atomic_write_text(spec.run_dir(home) / STAMP,
                      json.dumps({"fingerprint": fingerprint(spec), "train_seconds": round(seconds, 2)}) + "\n")


_POOLS: dict = {}


def _cost(spec: RunSpec) -> float:
    """Rough relative training cost, to start the longest runs first."""
    return spec.samples_per_epoch * spec.epochs * {"mammut": 3.0, "cap": 2.5}.get(spec.family, 1.0)


def _train_one(args: tuple[RunSpec, Path]) -> float:
    from evalkit.embedded.train import pool_key, train_run

    spec, home = args
    return train_run(spec, home, _POOLS[pool_key(spec.model)])


def build(root: Path | None = None, runs: list[str] | None = None, evaluate: bool = False,
          log=print) -> dict:
    """Write data if needed and train missing runs; returns (and writes) `build_info.json`."""
    from evalkit.embedded.train import TrainPool, pool_key

    home = Path(root) if root is not None else embedded_home()
    home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ensure_data(home)
    info_path = home / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"runs": {}}
    todo = []
    for spec in GRID:
        if runs and spec.name not in runs:
            continue
        if is_built(spec, home):
            log(f"[embedded] {spec.name}: up to date")
            continue
        todo.append(spec)
    for spec in todo:
        key = pool_key(spec.model)
        if key not in _POOLS:
            tp = time.perf_counter()
            _POOLS[key] = TrainPool.build(spec.model)
            info["pool_seconds"] = round(time.perf_counter() - tp, 2)
    # Each run is seeded and single-threaded, so runs train in parallel processes (one per core) with
    # byte-identical results; the pools are inherited through fork, never pickled.
    todo.sort(key=_cost, reverse=True)
    workers = min(len(todo), os.cpu_count() or 1)
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            done = list(ex.map(_train_one, [(s, home) for s in todo]))
    else:
        done = [_train_one((s, home)) for s in todo]
    for spec, seconds in zip(todo, done):
        _stamp(spec, home, seconds)
        info["runs"][spec.name] = {**info["runs"].get(spec.name, {}), "train_seconds": round(seconds, 2),
                                   "spec": spec.as_dict()}
    if evaluate:
        from evalkit.embedded.zeroshot import load_checkpoint_model, zeroshot_accuracy

        for spec in GRID:
            if (runs and spec.name not in runs) or not is_built(spec, home) or spec.family == "cap":
                continue  # a cap run has no contrastive head: its check is shapes_generative (make demo)
            accs = {str(e): round(zeroshot_accuracy(load_checkpoint_model(spec, e, home), spec.model), 4)
                    for e in range(1, spec.epochs + 1)}
            info["runs"].setdefault(spec.name, {})["zeroshot_top1"] = accs
            log(f"[embedded] {spec.name} zero-shot top-1 by epoch: {accs}")
    info["total_seconds_last_build"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(info_path, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Build evalkit's embedded world (data + tiny checkpoint grid).")
    ap.add_argument("--root", type=Path, default=None, help="default: $EVALKIT_EMBEDDED_HOME or <repo>/.cache/embedded")
    ap.add_argument("--runs", nargs="*", default=None, help="only these run names")
    ap.add_argument("--eval", action="store_true", help="also measure zero-shot top-1 of every checkpoint")
    args = ap.parse_args(argv)
    build(args.root, args.runs, evaluate=args.eval)


if __name__ == "__main__":
    main()
