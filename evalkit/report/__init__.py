"""evalkit.report: what a person looks at after a run. One self-contained HTML page (overview, failures,
provenance, the paper's error-vs-compute plots with frontiers and fitted laws, training curves,
suites, a comparison, the last checkpoint of each run), its figures as PNG/SVG, and the compact
terminal/Markdown table. Reads results tables and fit folders only; imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.report.load import ReportError, Results, load_results

__all__ = ["ReportError", "Report", "Results", "build_report", "load_results"]


@dataclass
class Report:
    """What `build_report` wrote and what the user should be told."""

    path: Path | None  # the page or Markdown file (None: Markdown went to the caller as `text`)
    text: str = ""  # the Markdown, for --format md
    figures: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each: fit folders not drawn, empty plots, input notes
    view: Any = None
    fits: list[Any] = field(default_factory=list)
    figure_specs: list[Any] = field(default_factory=list)


def build_report(results: str | os.PathLike, *, fits: list[str | os.PathLike] | None = None,
                 against: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 figures: str | os.PathLike | None = None, fmt: str = "html", tol: float | None = None,
                 max_points: int | None = None, max_runs: int | None = None) -> Report:
    """Build the report of a results folder or table.

    `fits`: fit folders to draw (default: those `evalkit fit` wrote inside the results folder).
    `against`: a table to compare with (what `evalkit compare` reads), `tol` its tolerance.
    `out`: the page (default `<results>/report.html`; for `fmt="md"` no default: the text is returned).
    `figures`: a folder for the PNG/SVG figures.
    """
    from evalkit.report import figures as figmod
    from evalkit.report.fits import find_fit_dirs, read_fit
    from evalkit.report.summary import build_view

    if fmt not in ("html", "md"):
        raise ReportError(f"--format {fmt}: use html or md")
    res = load_results(results)
    view = build_view(res)
    folders = [Path(f) for f in fits] if fits else find_fit_dirs(res.out)
    fit_list = [read_fit(f, view) for f in folders]
    warnings = [f.problem for f in fit_list if f.problem]
    cmp = None
    if against is not None:
        from evalkit.results.compare import DEFAULT_TOL, CompareError, compare
        from evalkit.results.importers import ImportError_

        try:
            cmp = compare(res.table, against, tol=DEFAULT_TOL if tol is None else tol)
        except (CompareError, ImportError_, OSError) as e:
            raise ReportError(f"--against {against}: {e}") from None
    figs, styles, _ = figmod.build_figures(view, fit_list, cmp, max_points=max_points or figmod.MAX_POINTS,
                                           max_runs=max_runs or figmod.MAX_RUNS)
    gflops = [f for f in figs if f.kind == "scatter" and f.x == "gflops_total" and f.empty]
    if gflops and len(gflops) == sum(1 for f in figs if f.kind == "scatter" and f.x == "gflops_total"):
        warnings.append(f"{res.source}: no checkpoint has gflops_total: the compute plots are empty (they say why); "
                        "the samples-seen plots still show")
    report = Report(None, warnings=[*res.notes, *warnings], view=view, fits=fit_list, figure_specs=figs)
    if figures is not None:
        from evalkit.report.static import write_figures

        report.figures = write_figures(view, figs, figures)
    if fmt == "md":
        from evalkit.report.text import markdown

        report.text = markdown(view, fits=fit_list, cmp=cmp, against=str(against) if against else None,
                               warnings=[w for w in warnings if not any(w == f.problem for f in fit_list)])
        if out is not None:
            from evalkit.atomic import atomic_write_text

            report.path = atomic_write_text(Path(out), report.text)
        return report
    from evalkit.atomic import atomic_write_text
    from evalkit.report.html import render_page

    page = render_page(view, figs, styles, fit_list, cmp, str(against) if against else None, warnings)
    target = Path(out) if out is not None else (res.out / "report.html" if res.out is not None
                                                else Path(res.source).with_name("report.html"))
    report.path = atomic_write_text(target, page)
    return report
