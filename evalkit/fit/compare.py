"""Comparison of two groups' laws (e.g. CLIP vs MaMMUT): gap, crossover, interval separation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from evalkit.fit.bootstrap import BootstrapResult
from evalkit.fit.solver import FitResult


def crossovers(fa: FitResult, fb: FitResult, lo: float, hi: float, n_grid: int = 2000) -> list[float]:
    """Compute values in [lo, hi] where the two fitted curves cross (sign changes of the gap)."""
    lx = np.linspace(np.log(lo), np.log(hi), n_grid)

    def gap(t: float) -> float:
        return float(fa.predict(np.exp(t)) - fb.predict(np.exp(t)))

    g = fa.predict(np.exp(lx)) - fb.predict(np.exp(lx))
    out = []
    for i in np.flatnonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0):
        out.append(float(np.exp(brentq(gap, lx[i], lx[i + 1], xtol=1e-12))))
    return out


def compare_groups(name_a: str, fa: FitResult, boot_a: BootstrapResult | None,
                   name_b: str, fb: FitResult, boot_b: BootstrapResult | None,
                   xs: np.ndarray, level: float = 0.95) -> pd.DataFrame:
    """Per x: both predicted errors, the gap (a - b) with its bootstrap interval, and whether the two
    groups' intervals separate. Replicates of the two groups are independent resamples, so pairing
    them by index gives draws of the gap."""
    xs = np.asarray(xs, dtype=float)
    ea, eb = fa.predict(xs), fb.predict(xs)
    df = pd.DataFrame({"x": xs, "group_a": name_a, "group_b": name_b, "error_a": ea, "error_b": eb,
                       "gap_a_minus_b": ea - eb, "better": np.where(ea < eb, name_a, name_b)})
    nan = np.full(len(xs), np.nan)
    if boot_a is not None and boot_b is not None:
        tail = 100 * (1 - level) / 2
        sa, sb = boot_a.samples(xs), boot_b.samples(xs)
        m = min(len(sa), len(sb))
        glo, ghi = np.percentile(sa[:m] - sb[:m], [tail, 100 - tail], axis=0)
        alo, ahi = boot_a.band(xs)
        blo, bhi = boot_b.band(xs)
        df["gap_low"], df["gap_high"] = glo, ghi
        df["error_a_low"], df["error_a_high"] = alo, ahi
        df["error_b_low"], df["error_b_high"] = blo, bhi
        df["intervals_separate"] = (ahi < blo) | (bhi < alo)
        df["gap_excludes_zero"] = (glo > 0) | (ghi < 0)
    else:
        for col in ("gap_low", "gap_high", "error_a_low", "error_a_high", "error_b_low", "error_b_high"):
            df[col] = nan
        df["intervals_separate"] = pd.NA
        df["gap_excludes_zero"] = pd.NA
    return df
