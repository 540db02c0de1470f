"""Which points a scaling law is fitted to: the compute-efficient frontier of a group.

Methods (x = compute or samples, y = error, lower is better on both):
- ``bins`` (default): the reference's ``pareto_bin`` selection, corrected. Geometric bins on x,
  the lowest error per bin, then only strictly improving points (plus the max-x point if it
  improves). Exactly the selected rows are kept.
- ``reference``: the same selection, then the reference's row mask, quirk included: a row is kept
  when its x is among the frontier's x values and, checked separately, its y among the frontier's
  y values. That can add rows that are not on the frontier (one on ImageNet-1k CLIP), and the
  paper's published coefficients include them. On the samples axis the paper used
  ``pareto_naive`` instead; ``reference_method="naive"`` reproduces it (with its quirk: exact
  duplicate points knock each other out).
- ``nondominated``: every point that no other point matches or beats on both x and y.
- ``all``: every point.
"""

from __future__ import annotations

import numpy as np

from evalkit.errors import UsageError

METHODS = ("bins", "nondominated", "all", "reference")
_BIN_FLOP_UNIT = 1500.0  # the reference's bin-count constant: num_bins = int(log2(max x / 1500))


def reference_sort(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Order by x then y, as the reference does before selecting (ties resolved the same way)."""
    return np.lexsort((y, x))


def _bin_points(x: np.ndarray, y: np.ndarray, num_bins: int | None) -> list[int]:
    """Indices (into x, y sorted by x then y) the reference's pareto_bin picks, before masking."""
    if num_bins is None:
        num_bins = int(np.log(x.max() / _BIN_FLOP_UNIT) / np.log(2))
    num_bins = max(num_bins, 2)
    edges = np.geomspace(x.min(), x.max(), num_bins)
    picks: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = np.flatnonzero((x >= lo) & (x < hi))  # half-open: the max-x point falls in no bin
        if inside.size:
            picks.append(int(inside[np.argmin(y[inside])]))
    if not picks:
        picks = [int(np.argmin(y))]
    keep = [picks[0]]
    best = y[picks[0]]
    for i in picks:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    i_max = int(np.flatnonzero(x == x.max())[0])
    if y[i_max] < best:
        keep.append(i_max)
    return keep


def _naive_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The reference's pareto_naive: kept iff no *other* row has x <= and y <= (so duplicates drop)."""
    le = (x[None, :] <= x[:, None]) & (y[None, :] <= y[:, None])
    np.fill_diagonal(le, False)
    return ~le.any(axis=1)


def _nondominated(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pareto set of (x, y) to minimise; of exact duplicates the first is kept."""
    order = reference_sort(x, y)
    mask = np.zeros(len(x), dtype=bool)
    best = np.inf
    for i in order:
        if y[i] < best:
            mask[i] = True
            best = y[i]
    return mask


def select_frontier(x: np.ndarray, y: np.ndarray, method: str = "bins", *, num_bins: int | None = None,
                    reference_method: str = "bin") -> np.ndarray:
    """Boolean mask (in the input order) of the rows a law is fitted to.

    `reference_method` ("bin" or "naive") picks the reference's frontier for ``method="reference"``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if method not in METHODS:
        raise UsageError(f"unknown frontier {method!r}; choose one of {', '.join(METHODS)}")
    mask = np.zeros(len(x), dtype=bool)
    if len(x) == 0:
        return mask
    if method == "all":
        return ~mask
    if method == "nondominated":
        return _nondominated(x, y)
    if method == "reference" and reference_method == "naive":
        return _naive_reference(x, y)
    if method == "reference" and reference_method != "bin":
        raise UsageError(f"unknown reference_method {reference_method!r}; use 'bin' or 'naive'")
    order = reference_sort(x, y)
    xs, ys = x[order], y[order]
    picks = _bin_points(xs, ys, num_bins)
    if method == "bins":
        mask[order[picks]] = True
        return mask
    # reference: membership of x and of y in the frontier's values, checked separately (the quirk)
    return np.isin(x, xs[picks]) & np.isin(y, ys[picks])
