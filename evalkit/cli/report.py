"""`evalkit report OUT`: one self-contained HTML page of a results folder (or Markdown with --format md).

Nothing heavy at import time; the report itself never imports torch.
"""

from __future__ import annotations

import argparse
import sys


def add_report_parser(subparsers) -> None:
    """Add `report OUT [--fit DIR ...] [--against THEIRS] [--out FILE] [--figures DIR] [--format html|md]`."""
    p = subparsers.add_parser(
        "report", help="one offline HTML page of a results folder: overview, failures, provenance, error vs "
                       "compute per family with frontiers and fitted laws, training curves, suites, comparison",
        description="Build one self-contained HTML file (plotly.js and the data inline: it opens from disk with no "
                    "network) of a results folder or table: overview and failures, provenance, per task the error "
                    "against total compute and samples seen (log-log, colour per family, marker per architecture, "
                    "Pareto frontier, fitted laws with bootstrap band and extrapolation), training curves, suites, "
                    "a comparison with another table, and the last checkpoint of each run. See docs/report.md.")
    p.add_argument("results", help="results folder (`evalkit run --out`) or a results table (.parquet/.csv)")
    p.add_argument("--fit", action="append", default=None, metavar="FITDIR",
                   help="a folder written by `evalkit fit` to draw (repeatable; default: the fit folders inside "
                        "the results folder)")
    p.add_argument("--against", help="a table to compare with, as `evalkit compare` reads it (e.g. the published "
                                     "results.parquet)")
    p.add_argument("--tol", type=float, default=None, help="tolerance of the comparison (default: compare's, 0.005)")
    p.add_argument("--out", help="output file (default: RESULTS/report.html; with --format md: standard output)")
    p.add_argument("--figures", metavar="DIR", help="also write every figure as PNG and SVG into DIR (matplotlib)")
    p.add_argument("--format", choices=["html", "md"], default="html",
                   help="html (default) or md: the compact checkpoint x task table, failures and comparison as "
                        "Markdown (a CI log, a pull-request comment)")
    p.add_argument("--max-points", type=int, default=None,
                   help="checkpoints per scatter before the page samples them (default 4000)")
    p.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    from evalkit.report import build_report

    rep = build_report(args.results, fits=args.fit, against=args.against, out=args.out, figures=args.figures,
                       fmt=args.format, tol=args.tol, max_points=args.max_points)
    for w in rep.warnings:
        print(f"evalkit report: warning: {w}", file=sys.stderr)
    if args.format == "md" and rep.path is None:
        sys.stdout.write(rep.text + "\n")
        return 0
    if rep.figures:
        print(f"figures: {len(rep.figures)} files in {args.figures}")
    print(f"report: {rep.path}")
    return 0
