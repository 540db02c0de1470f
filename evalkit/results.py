"""The results table: one row per (checkpoint, task, metric), written per unit, atomically.

Each finished (checkpoint x task) unit is one JSON file under `<out>/units/`, written to a temp
file and renamed, so a run killed at any moment leaves only whole units; a rerun skips units whose
file says `ok`, and retries failed ones. `collect` merges unit files into `results.parquet`/`.csv`.
Concurrent shards write distinct unit files, so they never clash.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write, atomic_write_bytes, fsync_path

RESULT_COLUMNS = [
    "model", "arch", "family", "checkpoint", "epoch", "samples_seen", "pretrain_dataset", "lr_scheduler",
    "gflops_per_sample", "gflops_total",
    "task", "task_type", "dataset", "split", "metric", "value", "n_samples",
    "task_hash", "evalkit_version", "open_clip_version", "torch_version", "device", "precision",
    "batch_size", "duration_s", "finished_at", "status", "error", "unit_id",
]


def unit_id(model_key: str, task_name: str, task_hash: str) -> str:
    """Identity of a unit: the same checkpoint, task and task config give the same id."""
    return hashlib.sha1(f"{model_key}\0{task_name}\0{task_hash}".encode()).hexdigest()[:20]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class UnitStore:
    """Unit files of one results folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.units = self.out / "units"
        self.samples = self.out / "samples"
        self._syncer: ThreadPoolExecutor | None = None

    def path(self, uid: str) -> Path:
        return self.units / f"{uid}.json"

    def status(self) -> dict[str, str]:
        """unit id -> 'ok' | 'failed' for every readable unit file."""
        out: dict[str, str] = {}
        if not self.units.is_dir():
            return out
        for f in self.units.glob("*.json"):
            try:
                out[f.stem] = json.loads(f.read_text()).get("status", "failed")
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def snapshot(self) -> set[tuple[str, int, int]]:
        """(name, mtime ns, size) of every unit file: changes whenever a unit is added or rewritten."""
        out = set()
        if self.units.is_dir():
            for f in self.units.glob("*.json"):
                try:
                    st = f.stat()
                except OSError:
                    continue
                out.add((f.name, st.st_mtime_ns, st.st_size))
        return out

    def done(self) -> set[str]:
        return {u for u, s in self.status().items() if s == "ok"}

    def write(self, uid: str, rows: list[dict[str, Any]], status: str, error: str = "") -> None:
        payload = {"unit_id": uid, "status": status, "error": error, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]}
        path = atomic_write_bytes(self.path(uid), json.dumps(payload, indent=1, default=str).encode())
        # Durable against a killed process already (the rename is atomic and the page cache outlives
        # it); the fsync for an OS crash runs in the background instead of stalling the grid 10-100 ms
        # per unit on slow or network disks. A unit lost in a crash before it reaches the disk reads
        # back unreadable or absent, and is simply run again.
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evalkit-fsync")
        self._syncer.submit(fsync_path, path)

    def flush(self) -> None:
        """Wait until every unit written so far is on disk."""
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None

    def write_samples(self, uid: str, frame: Any) -> Path:
        return atomic_write(self.samples / f"{uid}.parquet", lambda p: frame.to_parquet(p, index=False))

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if not self.units.is_dir():
            return rows
        for f in sorted(self.units.glob("*.json")):
            try:
                rows += json.loads(f.read_text())["rows"]
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return rows


def to_frame(rows: list[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.drop_duplicates(subset=["unit_id", "metric"], keep="last")
    return frame.sort_values(["model", "task", "metric"], kind="stable").reset_index(drop=True)


def collect(out: str | Path, attempts: int = 20):
    """Merge unit files into `<out>/results.parquet` and `<out>/results.csv` (atomically); return the table.

    Shards that finish together collect together: one could read the units, another then add its last
    one and write the full table, and the first overwrite it with its older read. So after writing,
    the unit files are listed again, and a collect that raced with a unit write runs again; the last
    table written is then always complete (each shard writes all its units before it collects).
    """
    store = UnitStore(out)
    for _ in range(attempts):
        before = store.snapshot()
        frame = to_frame(store.rows())
        atomic_write(Path(out) / "results.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
        atomic_write(Path(out) / "results.csv", lambda p, f=frame: f.to_csv(p, index=False))
        if store.snapshot() == before:
            break
    return frame


def read_table(path: str | Path):
    """Read a results table (Parquet or CSV), or a results folder."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results table. Run `evalkit run ... --out DIR` or `evalkit collect DIR`.")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
