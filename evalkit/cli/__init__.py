"""The `evalkit` command: argument parsing and printing only, one module per command group (run.py:
evaluating; results.py: export, compare, import; fit.py; report.py). Heavy modules load inside handlers, so
`evalkit --help` never imports torch."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from evalkit.cli.report import add_report_parser
    from evalkit.cli.results import add_compare_parser, add_export_parser
    from evalkit.cli.run import add_run_parsers

    p = argparse.ArgumentParser(prog="evalkit", description="Zero-shot evaluation of CLIP/MaMMUT checkpoints at scale.")
    sub = p.add_subparsers(dest="command", required=True)
    add_run_parsers(sub)
    add_export_parser(sub)
    add_compare_parser(sub)
    add_report_parser(sub)
    try:
        from evalkit.cli.fit import add_fit_parser
        from evalkit.cli.results import add_import_parser
    except ImportError as e:
        # evalkit's own module failing to import is a bug: never hide it. A third-party package
        # missing from the install only disables `fit`/`import`, and they say what to install.
        if (e.name or "evalkit").split(".")[0] == "evalkit":
            raise
        _add_unavailable(sub, ("fit", "import"), e)
    else:
        add_fit_parser(sub)
        add_import_parser(sub)
    return p


_PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "skimage": "scikit-image"}


def _add_unavailable(sub, commands: tuple[str, ...], error: ImportError) -> None:
    """Subcommands that can't load: each fails with the import error and the package to install."""
    top = (error.name or "").split(".")[0]
    msg = (f"the module evalkit.cli.fit could not be imported ({type(error).__name__}: {error}); "
           f"install the missing package: pip install {_PIP_NAMES.get(top, top)}")

    def fail(args: argparse.Namespace) -> int:
        print(f"evalkit {args.command}: error: {msg}", file=sys.stderr)
        return 2

    for name in commands:
        q = sub.add_parser(name, help=f"(unavailable: {top} is not installed)", add_help=False)
        q.add_argument("rest", nargs=argparse.REMAINDER)
        q.set_defaults(func=fail)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # user-facing errors in one line; EVALKIT_DEBUG=1 for the traceback
        from evalkit.errors import is_user_error

        if os.environ.get("EVALKIT_DEBUG") or not is_user_error(e):
            raise
        print(f"evalkit: error: {e}", file=sys.stderr)
        return 2
