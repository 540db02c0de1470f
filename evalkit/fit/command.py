"""argparse wiring for `evalkit fit` and `evalkit import`; evalkit/cli.py calls these.

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


def add_import_parser(subparsers) -> None:
    """Add `import clip-benchmark DIR... --out PATH` and `import scaling-laws FILE --out PATH`."""
    p = subparsers.add_parser("import", help="import existing evaluation results into evalkit's tidy table")
    sub = p.add_subparsers(dest="source", required=True)
    c = sub.add_parser("clip-benchmark", help="clip_benchmark result JSON files (searched recursively)")
    c.add_argument("paths", nargs="+", metavar="DIR", help="folders or JSON files")
    c.add_argument("--out", required=True, help="output table (.parquet or .csv)")
    c.add_argument("--gflops-profile", default=None,
                   help="CSV with columns model,gflops (GFLOPs per sample per architecture) to fill compute")
    c.add_argument("--samples-per-epoch", type=float, default=None,
                   help="samples per epoch, to fill samples_seen = epoch x this")
    c.add_argument("--metadata", default=None,
                   help="a scaling-laws table (results.parquet, segmentation_results.parquet) whose rows for the "
                        "same run name and epoch fill samples_seen, compute and the identity columns")
    c.set_defaults(func=run_import_command)
    s = sub.add_parser("scaling-laws", help="the reference's wide tables (results.parquet, "
                                            "segmentation_results.parquet)")
    s.add_argument("table", help="Parquet or CSV table, one row per checkpoint x downstream dataset")
    s.add_argument("--out", required=True, help="output table (.parquet or .csv)")
    s.set_defaults(func=run_import_scaling_laws_command)


def run_import_command(args: argparse.Namespace) -> int:
    from evalkit.results.importers import ImportError_, import_clip_benchmark

    try:
        profile = None
        if args.gflops_profile:
            import pandas as pd

            prof = pd.read_csv(args.gflops_profile)
            profile = dict(zip(prof["model"].astype(str), prof["gflops"].astype(float), strict=True))
        df = import_clip_benchmark(args.paths, args.out, gflops_per_sample=profile,
                                   samples_per_epoch=args.samples_per_epoch, metadata=getattr(args, "metadata", None))
    except (ImportError_, OSError, KeyError) as exc:
        print(f"evalkit import: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(df)} rows from {df['source'].nunique()} files to {args.out}")
    if getattr(args, "metadata", None):
        ckpt = df.drop_duplicates(["model", "epoch"])
        unknown = ckpt[ckpt["samples_seen"].isna()]
        if len(unknown):
            shown = ", ".join(f"{m} epoch {e}" for m, e in unknown[["model", "epoch"]].head(3).itertuples(index=False))
            print(f"evalkit import: warning: {len(unknown)} of {len(ckpt)} checkpoints are not in {args.metadata} "
                  f"(e.g. {shown}); their samples_seen and compute stay empty", file=sys.stderr)
    return 0


def run_import_scaling_laws_command(args: argparse.Namespace) -> int:
    from evalkit.results.importers import ImportError_, import_scaling_laws

    try:
        df = import_scaling_laws(args.table, args.out)
    except (ImportError_, OSError) as exc:
        print(f"evalkit import: error: {exc}", file=sys.stderr)
        return 2
    n_ckpt = df[["model", "epoch"]].drop_duplicates().shape[0]
    print(f"wrote {len(df)} rows ({n_ckpt} checkpoints, tasks {', '.join(sorted(df['task'].unique()))}) "
          f"to {args.out}")
    return 0
