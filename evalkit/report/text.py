"""The compact results table (checkpoint x task, main metric; failures counted) that `evalkit run` prints
at its end, and `evalkit report OUT --format md`: the same as Markdown for a CI log or a pull-request
comment. One renderer: a padded pipe table reads in a terminal and is valid GitHub Markdown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from evalkit.report.summary import View


def _cell(v: float) -> str:
    return f"{v:.4f}"


def _pipe(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    width = [max([len(h), *(len(r[j]) for r in rows)]) for j, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in
                                 enumerate(zip(cells, width))) + " |"

    sep = "|" + "|".join((("-" * (w + 1)) + ":") if j in right else (":" + "-" * (w + 1))
                         for j, w in enumerate(width)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _rows(view: View, models: set[str] | None, max_rows: int) -> tuple[np.ndarray, str]:
    """Checkpoints to list (by run, then epoch) and a line saying what was left out."""
    c = view.ckpt
    idx = np.arange(len(c)) if models is None else np.flatnonzero(c["model"].isin(models).to_numpy())
    order = c.iloc[idx].assign(_e=c["epoch"].iloc[idx].fillna(-1), _i=idx).sort_values(["run", "_e", "_i"], kind="stable")
    idx = order["_i"].to_numpy()
    if len(idx) <= max_rows:
        return idx, ""
    last = set(view.last_checkpoints().tolist())
    lasts = np.array([i for i in idx if i in last])
    if 0 < len(lasts) <= max_rows:
        return lasts, (f"{len(idx):,} checkpoints: the last of each of the {len(lasts):,} runs shown; "
                       f"`evalkit report {view.results.source}` has them all")
    return idx[:max_rows], (f"first {max_rows:,} of {len(idx):,} checkpoints shown; `evalkit report "
                            f"{view.results.source}` has them all")


def compact_table(view: View, *, models: set[str] | None = None, max_rows: int = 60) -> str:
    """checkpoint x task (main metric), FAILED where a unit failed, then the failures counted by error."""
    tasks = view.tasks
    if models is not None:
        keep = set(np.flatnonzero(view.ckpt["model"].isin(models).to_numpy()).tolist())
    else:
        keep = set(range(len(view.ckpt)))
    idx, left_out = _rows(view, models, max_rows)
    failed = {(int(u.ckpt), str(u.task)) for u in view.units.itertuples(index=False) if u.status != "ok"}
    headers = ["checkpoint", *(f"{t.task} {t.metric}" for t in tasks)]
    rows = []
    for i in idx:
        cells = [str(view.ckpt["model"].iat[i])]
        for t in tasks:
            v = t.values[i]
            cells.append(_cell(v) if np.isfinite(v) else ("FAILED" if (int(i), t.task) in failed else ""))
        rows.append(cells)
    lines = [_pipe(headers, rows, right=range(1, len(headers)))]
    if left_out:
        lines.append(f"({left_out})")
    limits = sorted({t.limit for t in tasks if t.limit is not None})
    if limits:
        lines.append(f"smoke test: first {', '.join(map(str, limits))} samples of each task (--limit); not comparable "
                     "with whole-split numbers")
    units = view.units[view.units["ckpt"].isin(keep)]
    n_failed = int((units["status"] != "ok").sum())
    if n_failed:
        errors = units[units["status"] != "ok"]["error"].fillna("").astype(str).value_counts()
        lines.append(f"{n_failed} of {len(units)} units failed:")
        lines += [f"  {n} x {err[:160] or '(no error recorded)'}" for err, n in errors.head(5).items()]
        if len(errors) > 5:
            lines.append(f"  ... and {len(errors) - 5} more distinct errors")
    else:
        lines.append(f"all {len(units)} units ok")
    return "\n".join(lines)


def markdown(view: View, *, fits: Sequence[Any] = (), cmp: Any = None, against: str | None = None,
             warnings: Sequence[str] = (), max_rows: int = 200) -> str:
    """`evalkit report OUT --format md`: overview, warnings, the compact table, failures, comparison."""
    c = view.unit_counts()
    out = [f"# evalkit results: `{view.results.source}`", "",
           f"{view.n_runs:,} runs, {len(view.ckpt):,} checkpoints, {len(view.tasks)} tasks; units: {c['ok']:,} ok, "
           f"{c['failed']:,} failed, {c['superseded']:,} superseded unit files.", ""]
    for w in [*view.results.notes, *view.warnings, *warnings, *(f.problem for f in fits if f.problem)]:
        out.append(f"> **warning:** {w}")
    if out[-1] != "":
        out.append("")
    out += [compact_table(view, max_rows=max_rows), ""]
    if view.failures:
        out += ["## Failures", "", _pipe(["error", "units", "tasks", "checkpoints"],
                                         [[g.error.replace("|", "\\|")[:300], str(g.units), ", ".join(g.tasks),
                                           ", ".join(g.checkpoints[:5]) + (f" and {len(g.checkpoints) - 5} more"
                                                                           if len(g.checkpoints) > 5 else "")]
                                          for g in view.failures], right=[1]), ""]
    if cmp is not None:
        s = cmp.summary
        out += [f"## Compare against `{against}` (tolerance {cmp.tol:g})", "",
                _pipe(list(s.columns), [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in r]
                                        for r in s.itertuples(index=False)], right=range(2, len(s.columns))), ""]
        beyond = cmp.beyond.sort_values("abs_diff", ascending=False, kind="stable")
        out.append(f"{len(beyond):,} of {len(cmp.matched):,} matched values beyond the tolerance"
                   + (":" if len(beyond) else "."))
        if len(beyond):
            shown = beyond.head(20)
            out += ["", _pipe(["run", "epoch", "task", "metric", "ours", "theirs", "diff"],
                              [[str(r.name), str(r.epoch), str(r.task), str(r.metric), f"{r.ours:.6g}",
                                f"{r.theirs:.6g}", f"{r.diff:+.6g}"] for r in shown.itertuples(index=False)],
                              right=[4, 5, 6])]
        out.append("")
    return "\n".join(out)
