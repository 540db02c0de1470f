"""Reading what a report shows: a results folder (`evalkit run --out OUT`) or a results table file.

A folder is read from its `results.parquet` when that is current, else from its unit files (a run
stopped before it collected, or one still running), so a half-written folder still gives a page,
and the page says what it was built from. What cannot give a page (no such path, no results at all,
an unreadable table and no unit files, a table without evalkit's columns) is one `ReportError` line
naming the path and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import UserError
from evalkit.results.schema import TIDY_COLUMNS

REQUIRED = ("model", "task", "metric", "value", "status")


class ReportError(UserError, ValueError):
    """Input a report cannot be built from; the message names the path and what to do."""


@dataclass
class Results:
    """The table a report shows and what is known about where it came from."""

    source: str  # what the user passed
    table: Any  # DataFrame, evalkit's tidy columns (missing ones added empty), current units only
    out: Path | None = None  # the results folder, when one was given
    origin: str = ""  # "results.parquet" | "unit files" | "table file"
    unit_files: int = 0  # unit files on disk (0 when given a table file)
    not_in_table: int = 0  # unit files whose unit is not in the table: superseded (or unreadable)
    notes: list[str] = field(default_factory=list)  # what the page must say about its input
    task_configs: dict[str, dict] = field(default_factory=dict)  # task_hash -> stored resolved config


def _read_table_file(path: Path):
    import pandas as pd

    try:
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise ReportError(f"{path}: cannot read the results table ({type(e).__name__}: {e}); pass the "
                          "results.parquet/.csv or the --out folder of `evalkit run`") from None


def _unit_names(units: Path) -> list[str]:
    if not units.is_dir():
        return []
    return [e.name[:-5] for e in os.scandir(units) if e.name.endswith(".json")]


def _newer_units(units: Path, than: float) -> int:
    """Unit files written after the table (a run that went on, or was stopped, after its last collect)."""
    n = 0
    for e in os.scandir(units):
        if e.name.endswith(".json"):
            try:
                n += e.stat().st_mtime > than + 1.0
            except OSError:
                continue
    return n


def _from_units(out: Path):
    from evalkit.results.store import UnitStore, to_frame

    return to_frame(UnitStore(out).rows())


def _task_configs(out: Path | None) -> dict[str, dict]:
    """The resolved task configs the engine stored once per hash (`OUT/tasks/<hash>.json`)."""
    found: dict[str, dict] = {}
    folder = out / "tasks" if out is not None else None
    if folder is None or not folder.is_dir():
        return found
    for f in sorted(folder.glob("*.json")):
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict):
            found[str(cfg.get("task_hash") or f.stem)] = cfg
    return found


def _normalise(table, src: str):
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        hint = ("it is a wide (reference) table: `evalkit import scaling-laws TABLE --out tidy.parquet` first"
                if "downstream_dataset" in table.columns else "expected the results table of `evalkit run`")
        raise ReportError(f"{src}: missing column(s) {', '.join(missing)}; {hint}")
    if table.empty:
        raise ReportError(f"{src}: the results table has no rows; run `evalkit run ... --out DIR` first")
    for c in TIDY_COLUMNS:
        if c not in table.columns:
            table[c] = None
    return table.reset_index(drop=True)


def load_results(path: str | os.PathLike) -> Results:
    """The current results of a folder or table file, with notes on anything half-written."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p}: no such folder or file; pass the --out folder of `evalkit run` (or its "
                          "results.parquet)")
    if p.is_file():
        return Results(str(p), _normalise(_read_table_file(p), str(p)), None, "table file")
    units_dir, table_path = p / "units", p / "results.parquet"
    names = _unit_names(units_dir)
    notes: list[str] = []
    table = None
    origin = "results.parquet"
    if table_path.is_file():
        try:
            table = _read_table_file(table_path)
        except ReportError as e:
            if not names:
                raise
            notes.append(f"{e}; read the {len(names)} unit files instead (`evalkit collect {p}` rewrites it)")
        else:
            newer = _newer_units(units_dir, table_path.stat().st_mtime) if names else 0
            if newer:
                notes.append(f"{newer} unit files are newer than {table_path.name} (a run went on after its last "
                             f"collect): read from the unit files; `evalkit collect {p}` updates the table")
                table = None
    elif names:
        notes.append(f"{p} has no results.parquet (the run was stopped before it collected, or is still running): "
                     f"read from its {len(names)} unit files; `evalkit collect {p}` writes the table")
    if table is None:
        if not names:
            raise ReportError(f"{p}: no results yet (no results.parquet, no unit files in {units_dir}); run "
                              f"`evalkit run ... --out {p}` first")
        table = _from_units(p)
        origin = "unit files"
        if table.empty:
            raise ReportError(f"{p}: none of its {len(names)} unit files is readable (truncated or edited); "
                              f"run `evalkit run ... --out {p}` again to compute them")
    table = _normalise(table, str(table_path if origin == "results.parquet" else units_dir))
    in_table = set(table["unit_id"].dropna().astype(str)) if "unit_id" in table.columns else set()
    not_in_table = len(set(names) - in_table) if in_table else 0
    return Results(str(p), table, p, origin, len(names), not_in_table, notes, _task_configs(p))
