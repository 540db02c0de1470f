"""`evalkit export | compare | import`: the results table in and out of other tools' shapes."""

from __future__ import annotations

import argparse
import sys

from evalkit.results.compare import DEFAULT_TOL  # both modules import pandas only inside their functions
from evalkit.results.export import FORMATS as EXPORT_FORMATS


def add_export_parser(subparsers) -> None:
    """Add `export RESULTS --format scaling-laws --out FILE`."""
    p = subparsers.add_parser(
        "export", help="write a results table in another shape (the reference's scaling-laws tables)",
        description="Write evalkit's tidy results table in the wide shape of LAION's scaling-law tables "
                    "(one row per checkpoint x downstream dataset, one column per metric), so the reference's "
                    "fitter scripts read it unchanged. See evalkit/results/export.py for the column mapping.")
    p.add_argument("results", help="results table (Parquet or CSV) or results folder")
    p.add_argument("--format", default="scaling-laws", choices=EXPORT_FORMATS, help="output shape (default scaling-laws)")
    p.add_argument("--out", required=True, help="output table: .parquet or .csv")
    p.set_defaults(func=run_export_command)


def run_export_command(args: argparse.Namespace) -> int:
    from evalkit.results.export import ExportError, export_results
    from evalkit.results.importers import ImportError_

    try:
        wide = export_results(args.results, args.out, args.format)
    except (ExportError, ImportError_, OSError) as exc:
        print(f"evalkit export: error: {exc}", file=sys.stderr)
        return 2
    n_ckpt = wide[["name", "epoch", "path"]].astype(str).drop_duplicates().shape[0]
    print(f"wrote {len(wide)} rows ({n_ckpt} checkpoints x {wide['downstream_dataset'].nunique()} downstream "
          f"datasets) to {args.out}")
    return 0


def add_compare_parser(subparsers) -> None:
    """Add `compare OURS THEIRS [--tol T] [--out FILE.csv]`."""
    p = subparsers.add_parser(
        "compare", help="compare two results tables per checkpoint and metric (e.g. against published numbers)",
        description="Match two results tables (evalkit's tidy table or results folder, or the reference's "
                    "results.parquet / segmentation_results.parquet) on (run, epoch, task, metric); print a "
                    "summary per task and metric (n, max and mean |diff|) and the values beyond the tolerance. "
                    "Exit status 0: all within tolerance; 1: some beyond; 2: unreadable or nothing in common.")
    p.add_argument("ours", help="our results: table or results folder")
    p.add_argument("theirs", help="the table to check against, e.g. the published results.parquet")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help=f"absolute tolerance (default {DEFAULT_TOL})")
    p.add_argument("--out", default=None,
                   help="CSV of every compared value (and OUT_summary.csv with the summary)")
    p.add_argument("--show", type=int, default=20, help="rows beyond tolerance to print (default 20)")
    p.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from evalkit.results.compare import CompareError, compare, write_comparison
    from evalkit.results.importers import ImportError_

    try:
        cmp = compare(args.ours, args.theirs, tol=args.tol)
        files = write_comparison(cmp, args.out) if args.out else ()
    except (CompareError, ImportError_, OSError) as exc:
        print(f"evalkit compare: error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(cmp.summary.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        beyond = cmp.beyond
        n_ours = int((cmp.rows["side"] != "theirs only").sum())
        print(f"\nmatched {len(cmp.matched)} of our {n_ours} values; {int((cmp.rows['side'] == 'ours only').sum())} "
              f"only in ours, {int((cmp.rows['side'] == 'theirs only').sum())} only in theirs")
        if beyond.empty:
            print(f"all matched values within {args.tol:g}")
        else:
            print(f"{len(beyond)} values beyond {args.tol:g} (largest first):")
            shown = beyond.sort_values("abs_diff", ascending=False, kind="stable")
            shown = shown.drop(columns=["beyond_tol", "side"]).head(max(args.show, 0))
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
            if len(beyond) > len(shown):
                print(f"... and {len(beyond) - len(shown)} more" + (f" (all in {files[0]})" if files else ""))
    for f in files:
        print(f"wrote {f}")
    return 1 if not beyond.empty else 0


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
