"""evalkit: zero-shot evaluation of open_clip-family models over checkpoint grids.

The package import stays light (no torch) so that `evalkit --help` is instant; heavy
entry points are imported lazily through `evalkit.evaluate`.
"""

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Python API: run an evaluation and return the results table (see `evalkit.engine.evaluate`)."""
    from evalkit.engine import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
