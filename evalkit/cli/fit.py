"""`evalkit fit`: scaling-law fits of a results table.

Nothing heavy is imported at module import time (the handlers import lazily) so `evalkit --help`
stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_fit_parser(subparsers) -> None:
    """Add `fit RESULTS --task T --metric M --out DIR ...` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "fit", help="fit scaling laws (error vs compute) per model family to a results table",
        description="Fit E(C) = a (C + b)^c + d per group to a results table (evalkit's tidy table or the "
                    "LAION wide table), with frontier selection, bootstrap intervals, held-out validation, "
                    "predictions and a two-group comparison. See docs/fit.md.")
    p.add_argument("results", help="results table: Parquet or CSV, tidy or wide")
    p.add_argument("--task", required=True, help="task / downstream dataset, e.g. imagenet1k, ade20k")
    p.add_argument("--metric", required=True, help="metric, e.g. acc1, miou, image_retrieval_recall@5")
    p.add_argument("--x", default="gflops_total", choices=["gflops_total", "samples_seen"], help="x axis")
    p.add_argument("--by", default="family", help="column whose groups get one law each (default family)")
    p.add_argument("--groups", type=lambda s: [v for v in s.split(",") if v], default=None,
                   help="only these groups, comma-separated (e.g. clip,mammut)")
    p.add_argument("--form", default="saturation_both", choices=["saturation_both", "saturation", "power"])
    p.add_argument("--frontier", default="bins", choices=["bins", "nondominated", "all", "reference"],
                   help="points to fit: bins (default), nondominated, all, or reference (LAION's exact "
                        "selection, quirk included; implies --reference-filters)")
    p.add_argument("--reference-pareto", default="auto", choices=["auto", "bin", "naive"],
                   help="reference frontier variant (auto: naive on samples_seen, bin on compute)")
    p.add_argument("--reference-filters", action="store_true", default=None,
                   help="apply the reference's row filters (min_flops 1e6, max_x, max_samples_seen, ImageNet "
                        "rule, H- rule on samples, cosine, datacomp_1b)")
    p.add_argument("--min-flops", type=float, default=None, help="drop rows with gflops_total below this")
    p.add_argument("--max-x", type=float, default=None, help="drop rows with x above this")
    p.add_argument("--max-samples-seen", type=float, default=None, help="drop rows with samples_seen above this")
    p.add_argument("--holdout-above", type=float, default=None,
                   help="fit on frontier points with x <= X, report errors on those above")
    p.add_argument("--predict", type=_floats, default=[], help="x values to predict at, e.g. 1e12,1e13")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals (e.g. 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_fit_command)


def run_fit_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from evalkit.fit.api import fit_table
    from evalkit.fit.table import Filters, TableError

    try:
        overrides = {"min_flops": args.min_flops, "max_x": args.max_x, "max_samples_seen": args.max_samples_seen}
        use_ref = args.frontier == "reference" if args.reference_filters is None else args.reference_filters
        base = Filters.reference(args.x, args.task) if use_ref else Filters()
        filters = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        report = fit_table(args.results, task=args.task, metric=args.metric, x=args.x, by=args.by, form=args.form,
                           frontier=args.frontier, holdout_above=args.holdout_above, predict=args.predict,
                           bootstrap=args.bootstrap, out=args.out, filters=filters, groups=args.groups,
                           seed=args.seed, level=args.level, reference_pareto=args.reference_pareto,
                           plots=not args.no_plots)
    except (TableError, ValueError) as exc:
        print(f"evalkit fit: error: {exc}", file=sys.stderr)
        return 2
    cols = ["group", "a", "ln_b", "c", "d", "n_points", "rmse"]
    print(report.coefficients[cols].to_string(index=False))
    if report.crossover_x is not None:
        cross = ", ".join(f"{v:.4g}" for v in report.crossover_x) or "none in range"
        print(f"crossover x: {cross}")
    print(f"wrote {len(report.files)} files to {args.out}")
    return 0
