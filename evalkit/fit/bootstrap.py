"""Bootstrap uncertainty over the frontier points.

Resampling the fitted frontier points with replacement and refitting gives a distribution of
curves; percentiles of it give the band, the coefficient intervals and prediction intervals. The
fast solver makes this affordable (the reference's t-interval on curve_fit's covariance is not a
usable interval: see docs/fit.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.fit.forms import evaluate, get_form
from evalkit.fit.solver import FAST_GRID, FitResult, GridSpec, fit_curve

PARAM_NAMES = ("a", "b", "c", "d")


@dataclass(frozen=True)
class BootstrapResult:
    """Refitted (a, b, c, d) per replicate (rows) and the interval level."""

    params: np.ndarray
    level: float = 0.95

    @property
    def n(self) -> int:
        return len(self.params)

    def _q(self) -> tuple[float, float]:
        tail = 100 * (1 - self.level) / 2
        return tail, 100 - tail

    def samples(self, x: np.ndarray | float) -> np.ndarray:
        """Predictions of every replicate at x: shape (n, len(x))."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        p = self.params
        return evaluate(x[None, :], p[:, :1], p[:, 1:2], p[:, 2:3], p[:, 3:4])

    def band(self, x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of the curve at x."""
        lo, hi = np.percentile(self.samples(x), self._q(), axis=0)
        return lo, hi

    def coef_intervals(self) -> dict[str, tuple[float, float]]:
        """Percentile interval per coefficient (b on the raw scale; ln b follows by monotonicity)."""
        lo, hi = np.percentile(self.params, self._q(), axis=0)
        return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(PARAM_NAMES)}


def bootstrap_fit(x: np.ndarray, y: np.ndarray, fit: FitResult, n: int, *, seed: int = 0, level: float = 0.95,
                  grid: GridSpec = FAST_GRID) -> BootstrapResult:
    """Refit `n` resamples (with replacement) of the points; resamples with too few distinct x are redrawn."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    form = get_form(fit.form)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 4))
    k = 0
    tries = 0
    while k < n:
        tries += 1
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < form.n_params and tries < 50 * n:
            continue
        r = fit_curve(x[idx], y[idx], form, grid=grid, warm_start=fit)
        out[k] = r.params
        k += 1
    return BootstrapResult(out, level)
