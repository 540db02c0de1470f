"""The report as one self-contained HTML file: plotly.js, the page's script and style, and the data all
inline (it opens from disk with no network and no server).

The data block (`<script type="application/json" id="evalkit-data">`) holds the table the page shows:
one entry per checkpoint (run, model, checkpoint, family, architecture, epoch, samples seen, total
GFLOPs) and each task's main metric per checkpoint, as base64 little-endian arrays (float64 values:
exactly the table's) and dictionary-coded strings; the figures are index lists into it. `read_data`
decodes it again (the tests compare it with the table).
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import UsageError
from evalkit.report.figures import SYMBOLS, Figure, Styles
from evalkit.report.fits import Fit
from evalkit.report.summary import View

_DTYPES = {"f8": "<f8", "i4": "<i4", "u2": "<u2", "u1": "<u1"}
_ASSETS = Path(__file__).resolve().parent / "assets"


def plotly_js() -> tuple[str, str]:
    """(plotly.min.js source, its version) from the installed `plotly` package."""
    try:
        from plotly.offline import get_plotlyjs, get_plotlyjs_version
    except ImportError as e:
        from evalkit.report.load import ReportError

        raise ReportError(f"the HTML report inlines plotly.js from the `plotly` package, which cannot be imported "
                          f"({e}); pip install plotly") from None
    return get_plotlyjs(), get_plotlyjs_version()


def _array(values: np.ndarray, dtype: str) -> dict[str, str]:
    data = np.ascontiguousarray(values, dtype=_DTYPES[dtype]).tobytes()
    return {"dtype": dtype, "b64": base64.b64encode(data).decode("ascii")}


def _codes(codes: np.ndarray) -> dict[str, str]:
    top = int(codes.max()) if len(codes) else 0
    return _array(codes, "u1" if top < 2**8 else "u2" if top < 2**16 else "i4")


def _numbers(values: np.ndarray) -> dict[str, str]:
    """Exact: int32 when every value is a whole number in range (epochs), else float64 (NaN = missing)."""
    v = np.asarray(values, dtype=float)
    if len(v) and np.isfinite(v).all() and (v == np.round(v)).all() and np.abs(v).max() < 2**31:
        return _array(v.astype(np.int64), "i4")
    return _array(v, "f8")


def _strings(values: Sequence[str]) -> dict[str, Any]:
    """Dictionary-coded: each string split after its last '/', heads and tails listed once each."""
    import pandas as pd

    s = pd.Series(list(values), dtype=object).astype(str)
    cut = s.str.rfind("/") + 1
    heads = [v[:k] for v, k in zip(s, cut)]
    tails = [v[k:] for v, k in zip(s, cut)]
    hc, hu = pd.factorize(pd.Series(heads, dtype=object), sort=False)
    tc, tu = pd.factorize(pd.Series(tails, dtype=object), sort=False)
    return {"heads": list(hu), "tails": list(tu), "h": _codes(hc), "t": _codes(tc)}


def _decode(col: dict[str, str]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(col["b64"]), dtype=_DTYPES[col["dtype"]])


def read_data(page: str | Path) -> dict[str, Any]:
    """The data block of a report page, decoded: {"strings": {col: list}, "numbers": {col: array},
    "values": {"task|metric": array}, "raw": the JSON}. For tests and for anyone reusing a page's data."""
    text = Path(page).read_text() if isinstance(page, Path) or not str(page).lstrip().startswith("<") else str(page)
    m = re.search(r'<script type="application/json" id="evalkit-data">(.*?)</script>', text, re.S)
    if m is None:
        raise UsageError(f"{page}: no evalkit data block (not a page written by `evalkit report`)")
    raw = json.loads(m.group(1))
    strings = {}
    for k, col in raw["strings"].items():
        h, t = _decode(col["h"]), _decode(col["t"])
        strings[k] = [col["heads"][i] + col["tails"][j] for i, j in zip(h, t)]
    return {"strings": strings, "numbers": {k: _decode(c).astype(float) for k, c in raw["numbers"].items()},
            "values": {k: _decode(c) for k, c in raw["values"].items()}, "raw": raw}


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True, num: set[int] | None = None) -> str:
    num = num or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for j, v in enumerate(r):
            if j in num:
                fv = float(v) if v is not None and v == v else None
                cells.append(f'<td class="num" data-v="{"" if fv is None else repr(fv)}">'
                             f'{"" if fv is None else _e(_fmt(fv))}</td>')
            else:
                cells.append(f"<td>{v if isinstance(v, _Raw) else _e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    return f"{v:.4g}" if abs(v) >= 1e4 or abs(v) < 1e-3 else f"{v:.6g}"


def _list(items: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n:,} more" if len(items) > n else "")


def _warns(lines: Sequence[str]) -> str:
    return "".join(f'<div class="warn">{_e(w)}</div>' for w in lines)


def _overview(view: View, fits: list[Fit], extra_warnings: Sequence[str]) -> str:
    r = view.results
    c = view.unit_counts()
    cards = [("runs", view.n_runs), ("checkpoints", len(view.ckpt)), ("tasks", len(view.tasks)),
             ("units ok", c["ok"]), ("units failed", c["failed"]), ("superseded unit files", c["superseded"]),
             ("table rows", len(r.table))]
    html_cards = "".join(f'<div class="card{" bad" if name == "units failed" and v else ""}"><b>{v:,}</b>{_e(name)}</div>'
                         for name, v in cards)
    src = f"read from {_e(r.origin)}" + (f" ({r.unit_files:,} unit files)" if r.unit_files else "")
    per_task = _table(["task", "type", "main metric", "units ok", "units failed", "limit"],
                      [(t.task, t.task_type, t.metric, t.n_ok, t.n_failed, "" if t.limit is None else f"first {t.limit}")
                       for t in view.tasks], num={3, 4})
    sup = (f'<p class="note">Superseded: unit files on disk that are not in the table (older results of a changed task or '
           f'precision); <code>evalkit collect {_e(r.source)} --superseded</code> lists them.</p>' if c["superseded"] else "")
    return (f'<section id="overview"><h2>Overview</h2><p class="note">{_e(r.source)}: {src}.</p>'
            f'{_warns([*r.notes, *view.warnings, *extra_warnings])}<div class="cards">{html_cards}</div>{sup}{per_task}'
            + _failures(view) + _provenance(view) + "</section>")


def _failures(view: View) -> str:
    if not view.failures:
        return '<h3 id="failures">Failures</h3><p>No failed unit.</p>'
    rows = [(_Raw(f"<code>{_e(g.error)}</code>"), g.units, ", ".join(g.tasks), _list(g.checkpoints))
            for g in view.failures]
    return (f'<h3 id="failures">Failures: {sum(g.units for g in view.failures):,} units, {len(view.failures)} distinct errors</h3>'
            + _table(["error", "units", "tasks", "checkpoints"], rows, num={1}))


def _provenance(view: View) -> str:
    rows = [(col, _Raw("<br>".join(f"{_e(k or '(empty)')} <span class='note'>({v:,} rows)</span>" for k, v in counts.items())))
            for col, counts in view.provenance.items()]
    rows += [(f"task_hash of {task}", _Raw("<br>".join(f"<code>{_e(k)}</code> <span class='note'>({v:,} rows)</span>"
                                                         for k, v in counts.items())))
             for task, counts in view.task_hashes.items()]
    return '<h3 id="provenance">Provenance</h3>' + _table(["column", "values"], rows, sortable=False)


def _plot(fig: Figure) -> str:
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in fig.notes)
    if fig.empty:
        return (f'<div class="plot" data-figure="{_e(fig.id)}" data-empty="1"><div class="empty" id="{_e(fig.id)}">'
                f'<span><b>{_e(fig.title)}</b><br>empty: {_e(fig.empty)}</span></div>{notes}</div>')
    return (f'<div class="plot" data-figure="{_e(fig.id)}" data-points="{fig.n_points()}">'
            f'<div id="{_e(fig.id)}"></div>{notes}</div>')


def _tasks(view: View, figs: list[Figure]) -> str:
    out = ['<section id="tasks"><h2>Per task: error against compute and samples seen, training curves</h2>',
           '<p class="note">Log-log, as the paper plots it: one colour per family (namespace), one marker per '
           'architecture, the dotted staircase is each family\'s Pareto frontier (no other checkpoint has both less '
           'compute and less error), solid lines are fitted laws over their fitted range, dashed their '
           'extrapolation, shaded their bootstrap band. Hover a point for its run, epoch, checkpoint and value.</p>']
    for tv in view.tasks:
        mine = [f for f in figs if f.task == tv.task and f.kind in ("scatter", "curves")]
        lim = f", first {tv.limit} samples (--limit)" if tv.limit is not None else ""
        out.append(f'<h3 id="task-{_e(tv.task)}">{_e(tv.task)} <span class="note">({_e(tv.task_type)}; main metric '
                   f'{_e(tv.metric)}; {tv.n_ok:,} ok, {tv.n_failed:,} failed{_e(lim)})</span></h3>')
        out.append('<div class="plots">' + "".join(_plot(f) for f in mine) + "</div>")
    return "".join(out) + "</section>"


def _suite_members(name: str) -> list[str]:
    """A suite's members from its task file (read as YAML only: no protocol is imported)."""
    import yaml

    from evalkit.tasks.loader import task_files

    try:
        files = task_files()
    except Exception:  # noqa: BLE001 - a broken task folder costs the member list, not the page
        return []
    seen: list[str] = []

    def visit(suite: str, depth: int) -> None:
        f = files.get(suite)
        if f is None or depth > 8:
            return
        data = yaml.safe_load(f.read_text()) or {}
        for other in data.get("members_of") or []:
            visit(str(other), depth + 1)
        for m in data.get("tasks") or []:
            seen.append(str(m["task"] if isinstance(m, dict) else m))

    visit(name, 0)
    return list(dict.fromkeys(seen))


def _suites(view: View, tables: list[dict]) -> str:
    suites = [t for t in view.tasks if t.task_type == "suite"]
    if not suites:
        return ""
    out = ['<section id="suites"><h2>Suites</h2><p class="note">Per checkpoint, the average of the members\' main '
           'metrics and each member.</p>']
    for tv in suites:
        names = _suite_members(tv.task)
        members = [view.task(m) for m in names]
        present = [m for m in members if m is not None]
        have = np.isfinite(tv.values)
        for m in present:
            have |= np.isfinite(m.values)
        rows = np.flatnonzero(have)
        tid = f"table-suite-{re.sub(r'[^A-Za-z0-9]+', '_', tv.task)}"
        tables.append({"id": tid, "rows": rows.tolist(), "columns": [
            {"label": "checkpoint", "string": "model"}, {"label": f"{tv.task} average", "value": tv.key},
            *({"label": f"{m.task} {m.metric}", "value": m.key} for m in present)]})
        note = "" if names else " (its task file is not in this install's task folders: members not known)"
        missing = [n for n, m in zip(names, members) if m is None]
        if missing:
            note += f" (members not in this table: {_list(missing)})"
        out.append(f'<h3>{_e(tv.task)}{_e(note)}</h3><div class="scroll" id="{tid}"></div>')
    return "".join(out) + "</section>"


def _compare(cmp: Any, against: str, figs: list[Figure]) -> str:
    if cmp is None:
        return ""
    s = cmp.summary
    summary = _table(list(s.columns), s.itertuples(index=False), num=set(range(2, len(s.columns))))
    beyond = cmp.beyond.sort_values("abs_diff", ascending=False, kind="stable")
    shown = beyond.head(500)
    rows = _table(["run", "epoch", "task", "metric", "ours", "theirs", "diff"],
                  shown[["name", "epoch", "task", "metric", "ours", "theirs", "diff"]].itertuples(index=False),
                  num={4, 5, 6})
    more = f'<p class="note">the {len(shown):,} largest of {len(beyond):,}</p>' if len(beyond) > len(shown) else ""
    plots = '<div class="plots">' + "".join(_plot(f) for f in figs if f.kind == "compare") + "</div>"
    return (f'<section id="compare"><h2>Compare: ours against {_e(against)}</h2>'
            f'<p class="note">Matched on (run, epoch, task, metric) as <code>evalkit compare</code> matches; tolerance '
            f'{cmp.tol:g} (absolute). {len(cmp.matched):,} values matched.</p>{summary}{plots}'
            f'<h3>Values beyond the tolerance: {len(beyond):,}</h3>'
            + (f'<div class="scroll">{rows}</div>{more}' if len(beyond) else "<p>None.</p>") + "</section>")


def _fits_section(fits: list[Fit]) -> str:
    if not fits:
        return ""
    import pandas as pd

    out = ['<section id="fits"><h2>Fitted laws</h2>']
    for f in fits:
        state = "drawn on the plots above" if f.drawn else "not drawn"
        out.append(f"<h3>{_e(f.folder)} <span class='note'>({_e(f.task)} {_e(f.metric)} vs {_e(f.x)}, by {_e(f.by)}, "
                   f"form {_e(f.form)}: {state})</span></h3>")
        if f.problem:
            out.append(_warns([f.problem]))
        if f.note:
            out.append(f'<p class="note">{_e(f.note)}</p>')
        coef = f.folder / "coefficients.csv"
        if coef.is_file():
            c = pd.read_csv(coef)
            cols = [k for k in ("group", "form", "a", "b", "c", "d", "n_points", "rmse", "c_low", "c_high") if k in c]
            out.append(_table(cols, c[cols].itertuples(index=False), num={i for i, k in enumerate(cols)
                                                                           if k not in ("group", "form")}))
    return "".join(out) + "</section>"


def _last_table(view: View, tables: list[dict]) -> str:
    last = view.last_checkpoints()
    tables.append({"id": "table-last", "rows": last.tolist(), "columns": [
        {"label": "run", "string": "run"}, {"label": "family", "string": "family"}, {"label": "arch", "string": "arch"},
        {"label": "epoch", "number": "epoch"}, {"label": "samples seen", "number": "samples_seen"},
        {"label": "GFLOPs total", "number": "gflops_total"},
        *({"label": f"{t.task} {t.metric}", "value": t.key} for t in view.tasks)]})
    return (f'<section id="last"><h2>Last checkpoint of each run ({len(last):,} runs)</h2><p class="note">Click a '
            'column to sort.</p><div class="scroll" id="table-last"></div></section>')


def data_block(view: View, figs: list[Figure], tables: list[dict]) -> dict[str, Any]:
    c = view.ckpt
    return {
        "format": 1, "n": len(c),
        "strings": {k: _strings(c[k].tolist()) for k in ("run", "model", "checkpoint", "family", "arch")},
        "numbers": {k: _numbers(c[k].to_numpy(dtype=float)) for k in ("epoch", "samples_seen", "gflops_total")},
        "values": {t.key: _array(t.values, "f8") for t in view.tasks},
        "tasks": [{"task": t.task, "metric": t.metric, "key": t.key, "type": t.task_type} for t in view.tasks],
        "symbols": [s for s, _ in SYMBOLS],
        "figures": [f.as_dict() for f in figs if not f.empty],
        "tables": tables,
    }


def render_page(view: View, figs: list[Figure], styles: Styles, fits: list[Fit], cmp: Any = None,
                against: str | None = None, warnings: Sequence[str] = ()) -> str:
    """The whole page as one string."""
    import evalkit

    js, js_version = plotly_js()
    tables: list[dict] = []
    body = (_overview(view, fits, warnings) + _tasks(view, figs) + _suites(view, tables) + _compare(cmp, against or "", figs)
            + _last_table(view, tables) + _fits_section(fits))
    data = json.dumps(data_block(view, figs, tables), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    sections = [("overview", "Overview"), ("failures", "Failures"), ("provenance", "Provenance"), ("tasks", "Per task"),
                *([("suites", "Suites")] if "id=\"suites\"" in body else []),
                *([("compare", "Compare")] if cmp is not None else []), ("last", "Last checkpoints"),
                *([("fits", "Fits")] if fits else [])]
    nav = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in sections)
    title = f"evalkit report: {view.results.source}"
    sampled = any(n.startswith("showing") for f in figs for n in f.notes)
    meta = (f"{len(view.ckpt):,} checkpoints, {view.n_runs:,} runs, {len(view.tasks)} tasks &middot; generated "
            f"{_e(time.strftime('%Y-%m-%d %H:%M'))} by evalkit {_e(evalkit.__version__)} &middot; plotly.js "
            f"{_e(js_version)} inlined, no network" + (" &middot; large table: plots sampled (each says so)" if sampled else ""))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{(_ASSETS / 'report.css').read_text()}</style>\n<script>{js}</script></head>\n<body>"
            f"<header><h1>{_e(title)}</h1><div class=\"meta\">{meta}</div></header><nav>{nav}</nav><main>{body}</main>\n"
            f"<script type=\"application/json\" id=\"evalkit-data\">{data}</script>\n"
            f"<script>{(_ASSETS / 'report.js').read_text()}</script></body></html>\n")
