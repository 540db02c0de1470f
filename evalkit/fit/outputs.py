"""Atomic output writing and a dependency-free Markdown table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.atomic import atomic_write


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False, float_format="%.10g"))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else str(v)
        return f"{v:.6g}"
    if v is None or v is pd.NA:
        return ""
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table of a small frame (pandas' to_markdown needs tabulate)."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows]) + "\n"
