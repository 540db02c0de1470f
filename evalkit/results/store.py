"""The results table: one row per (checkpoint, task, metric), written per unit, atomically.

Each finished (checkpoint x task) unit is one JSON file under `<out>/units/`, written to a temp
file and renamed, so a run killed at any moment leaves only whole units; a rerun skips units whose
file says `ok`, and retries failed ones. `collect` merges unit files into `results.parquet`/`.csv`.
Concurrent shards write distinct unit files, so they never clash.

A unit's id covers the resolved task (its hash) and the precision. When a task changes (other
classnames, templates, data files) or another precision is asked for, the new unit does not replace
the old file: both stay on disk, and the table keeps only the *current* one per (checkpoint, task),
the one written (or asked for again) last. `superseded()` lists the others.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write, atomic_write_bytes, atomic_write_text, fsync_path, remove_stale_temps
from evalkit.errors import NotFound, UserError
from evalkit.results.schema import RESULT_COLUMNS

log = logging.getLogger(__name__)

class ResultsWriteError(UserError, RuntimeError):
    """The table could not be written (full disk, permissions); the unit files are untouched."""


@dataclass
class UnitFile:
    """One readable unit file: its status, what it is a result of, and when it became current."""

    uid: str
    path: Path
    status: str
    key: tuple[str, str, str]  # (model, checkpoint, task)
    written_at: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def _key_of(rows: list[dict[str, Any]]) -> tuple[str, str, str]:
    r = rows[0] if rows else {}
    return (str(r.get("model") or ""), str(r.get("checkpoint") or ""), str(r.get("task") or ""))


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

    def remove_stale_temps(self) -> list[Path]:
        """Temp folders of dead writers in the results folder and its subfolders."""
        return [p for d in (self.out, self.units, self.samples, self.out / "tasks") for p in remove_stale_temps(d)]

    def path(self, uid: str) -> Path:
        return self.units / f"{uid}.json"

    def read(self, warn: bool = False, rows: bool = True) -> list[UnitFile]:
        """Every readable unit file (without its rows if not `rows`: what resuming needs of a grid of
        200k units). An unreadable one (truncated by a full disk, edited by hand) is left out, so its
        unit runs again; with `warn`, each is named in a warning."""
        out: list[UnitFile] = []
        if not self.units.is_dir():
            return out
        names = sorted(e.name for e in os.scandir(self.units) if e.name.endswith(".json"))
        for name in names:
            f = self.units / name
            try:
                payload = json.loads(f.read_text())
                found = payload["rows"]
                written = float(payload.get("written_at") or f.stat().st_mtime)
                out.append(UnitFile(f.stem, f, payload.get("status", "failed"), _key_of(found), written,
                                    found if rows else []))
            except FileNotFoundError:  # replaced or removed meanwhile
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                if warn:
                    log.warning("evalkit: warning: %s: unreadable unit file (%s: %s); left out of the table, "
                                "and computed again by the next `evalkit run`", f, type(e).__name__, e)
        return out

    def status(self) -> dict[str, str]:
        """unit id -> 'ok' | 'failed' for every readable unit file."""
        self._index = self.read(rows=False)
        return {u.uid: u.status for u in self._index}

    def unit_rows(self, uid: str) -> list[dict[str, Any]] | None:
        """The rows of one unit file, or None if it is absent or unreadable."""
        try:
            return json.loads(self.path(uid).read_text())["rows"]
        except (OSError, ValueError, KeyError):
            return None

    def reinstate(self, uids: Any) -> int:
        """Make these finished units current again where another unit of their (checkpoint, task)
        was written later (a run asked for them again, e.g. back to fp32 after an amp run)."""
        index = getattr(self, "_index", None) or self.read()
        latest: dict[tuple[str, str, str], float] = {}
        for u in index:
            latest[u.key] = max(latest.get(u.key, 0.0), u.written_at)
        by_uid = {u.uid: u for u in index}
        n = 0
        for uid in uids:
            u = by_uid.get(uid)
            if u is None or latest[u.key] <= u.written_at:
                continue
            payload = json.loads(u.path.read_text())
            payload["written_at"] = time.time()
            atomic_write_bytes(u.path, json.dumps(payload, indent=1, default=str).encode())
            n += 1
        return n

    def write_task(self, spec: Any) -> Path:
        """The resolved config behind a task hash, stored once as `<out>/tasks/<hash>.json`."""
        path = self.out / "tasks" / f"{spec.hash}.json"
        if not path.exists():
            atomic_write_text(path, json.dumps({"task_hash": spec.hash, "source": spec.source, **spec.config()},
                                               indent=1, default=str))
        return path

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
        payload = {"unit_id": uid, "status": status, "error": error, "written_at": time.time(),
                   "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]}
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

    def current(self, warn: bool = True) -> tuple[list[UnitFile], list[UnitFile]]:
        """(current, superseded) units: per (checkpoint, task) the one written last is current."""
        latest: dict[tuple[str, str, str], UnitFile] = {}
        units = self.read(warn=warn)
        for u in units:
            best = latest.get(u.key)
            if best is None or (u.written_at, u.uid) > (best.written_at, best.uid):
                latest[u.key] = u
        keep = {id(u) for u in latest.values()}
        return [u for u in units if id(u) in keep], [u for u in units if id(u) not in keep]

    def rows(self) -> list[dict[str, Any]]:
        """Rows of the current units."""
        return [r for u in self.current()[0] for r in u.rows]


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
        for name, write in (("results.parquet", lambda p, f=frame: f.to_parquet(p, index=False)),
                            ("results.csv", lambda p, f=frame: f.to_csv(p, index=False))):
            target = Path(out) / name
            try:
                atomic_write(target, write)
            except OSError as e:
                n = len(before)
                raise ResultsWriteError(
                    f"{target}: cannot write the results table ({os.strerror(e.errno) if e.errno else e}); the {n} "
                    f"unit files in {store.units} are intact. Free space or fix permissions, then run "
                    f"`evalkit collect {out}`.") from None
        if store.snapshot() == before:
            break
    return frame


def superseded(out: str | Path):
    """Unit files kept on disk but not in the table: older results of a (checkpoint, task) whose
    task changed (another hash) or that was run again in another precision."""
    import pandas as pd

    current, old = UnitStore(out).current(warn=False)
    now_of = {u.key: u for u in current}
    cols = ["model", "checkpoint", "task", "task_hash", "precision", "status", "finished_at", "unit_file",
            "current_task_hash", "current_precision"]
    rows = []
    for u in sorted(old, key=lambda u: (u.key, u.written_at)):
        r, c = u.rows[0] if u.rows else {}, (now_of[u.key].rows[0] if now_of[u.key].rows else {})
        rows.append({"model": u.key[0], "checkpoint": u.key[1], "task": u.key[2], "task_hash": r.get("task_hash"),
                     "precision": r.get("precision"), "status": u.status, "finished_at": r.get("finished_at"),
                     "unit_file": str(u.path), "current_task_hash": c.get("task_hash"),
                     "current_precision": c.get("precision")})
    return pd.DataFrame(rows, columns=cols)


def read_table(path: str | Path):
    """Read a results table (Parquet or CSV), or a results folder."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise NotFound(f"{path}: no results table. Run `evalkit run ... --out DIR` or `evalkit collect DIR`.")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
