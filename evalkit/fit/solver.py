"""Least-squares fit of E(C) = a (C + b)^c + d, fast and reliable.

Why not thousands of curve_fit starts (the reference): for fixed (b, c) the model is linear in
(a, d), so the best a, d >= 0 follow in closed form (a two-variable NNLS). The loss then only
depends on (ln b, c); we scan that plane on a vectorised grid, polish the best few grid cells with a
local solver on the profiled loss, and finish with a joint 4-parameter polish. That lands on the
global least-squares optimum in milliseconds, including where multi-start curve_fit stops short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from evalkit.errors import UsageError
from evalkit.fit.forms import Form, evaluate, get_form

_C_MIN = -10.0  # c is unbounded below in the reference; -10 is far past any plausible exponent


@dataclass(frozen=True)
class FitResult:
    """Fitted coefficients (b on the raw x scale) and the loss they reach on the fitted points."""

    form: str
    a: float
    b: float
    c: float
    d: float
    sse: float
    n_points: int
    info: dict = field(default_factory=dict, compare=False)

    @property
    def mse(self) -> float:
        return self.sse / self.n_points

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.mse))

    @property
    def ln_b(self) -> float:
        return float(np.log(self.b)) if self.b > 0 else float("-inf")

    @property
    def params(self) -> tuple[float, float, float, float]:
        return (self.a, self.b, self.c, self.d)

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return evaluate(x, self.a, self.b, self.c, self.d)


@dataclass(frozen=True)
class GridSpec:
    """Resolution of the (ln b, c) scan; the default is dense enough for the paper's data."""

    n_lnb: int = 96
    n_c: int = 96
    n_starts: int = 3  # distinct grid cells that get a local polish
    lnb_below: float = 12.0  # scan ln b from ln(min x) - lnb_below ...
    lnb_above: float = 4.0  # ... to ln(max x) + lnb_above
    c_range: tuple[float, float] = (-5.0, -0.002)
    joint_polish: bool = True  # finish with a joint 4-parameter polish (last digits of the loss)
    tol: float = 1e-15  # local solver tolerances (xtol, ftol, gtol)


# For bootstrap replicates: a coarser scan, one start, plus the full-data optimum as a warm start.
FAST_GRID = GridSpec(n_lnb=40, n_c=40, n_starts=1, joint_polish=False, tol=1e-10)


def _linear_part(phi: np.ndarray, y: np.ndarray, has_d: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (A, d) with A, d >= 0 for y ~ A * phi + d, for every basis row of phi (..., n).

    Closed form: the unconstrained solution if feasible, otherwise the better of the two faces
    (A = 0 or d = 0), which is exact for a convex quadratic in two variables.
    """
    n = y.shape[-1]
    sp = phi.sum(-1)
    spp = np.einsum("...i,...i->...", phi, phi)
    spy = phi @ y
    sy = y.sum()
    syy = float(y @ y)

    def sse(a: np.ndarray, d: np.ndarray) -> np.ndarray:
        return syy - 2 * a * spy - 2 * d * sy + a * a * spp + 2 * a * d * sp + n * d * d

    with np.errstate(divide="ignore", invalid="ignore"):
        a_face = np.where(spp > 0, np.maximum(spy / spp, 0.0), 0.0)
    if not has_d:
        zero = np.zeros_like(a_face)
        return a_face, zero, sse(a_face, zero)
    d_face = np.full_like(a_face, max(sy / n, 0.0))
    zero = np.zeros_like(a_face)
    best_a, best_d = a_face, zero
    best = sse(a_face, zero)
    s_face = sse(zero, d_face)
    take = s_face < best
    best_a, best_d, best = np.where(take, 0.0, best_a), np.where(take, d_face, best_d), np.where(take, s_face, best)
    den = n * spp - sp * sp
    with np.errstate(divide="ignore", invalid="ignore"):
        a_u = (n * spy - sp * sy) / den
        d_u = (sy - a_u * sp) / n
    ok = (den > 1e-12 * n * spp) & (a_u >= 0) & (d_u >= 0)
    s_u = np.where(ok, sse(np.where(ok, a_u, 0.0), np.where(ok, d_u, 0.0)), np.inf)
    take = s_u < best
    return np.where(take, a_u, best_a), np.where(take, d_u, best_d), np.where(take, s_u, best)


class _Problem:
    """Data plus the profiled model, in a normalised basis phi = ((x + b) / (x0 + b))^c <= 1."""

    def __init__(self, x: np.ndarray, y: np.ndarray, form: Form) -> None:
        self.x, self.y, self.form = x, y, form
        self.x0 = float(x.min())

    def basis(self, lnb: np.ndarray, c: np.ndarray) -> np.ndarray:
        """phi for a (lnb, c) grid: lnb (Gb,), c (Gc,) -> (Gb, Gc, n)."""
        b = np.exp(lnb) if self.form.has_b else np.zeros_like(lnb)
        rel = np.log(self.x[None, :] + b[:, None]) - np.log(self.x0 + b)[:, None]
        return np.exp(c[None, :, None] * rel[:, None, :])

    def profile_residuals(self, theta: np.ndarray) -> np.ndarray:
        lnb, c = self._split(theta)
        phi = self.basis(np.array([lnb]), np.array([c]))[0, 0]
        a, d, _ = _linear_part(phi[None, :], self.y, self.form.has_d)
        return a[0] * phi + d[0] - self.y

    def _split(self, theta: np.ndarray) -> tuple[float, float]:
        return (float(theta[0]), float(theta[1])) if self.form.has_b else (float("-inf"), float(theta[0]))

    def linear_at(self, lnb: float, c: float) -> tuple[float, float]:
        phi = self.basis(np.array([lnb]), np.array([c]))[0, 0]
        a, d, _ = _linear_part(phi[None, :], self.y, self.form.has_d)
        return float(a[0]), float(d[0])

    def to_raw(self, big_a: float, lnb: float, c: float, d: float) -> tuple[float, float, float, float]:
        """(A in the normalised basis, ln b, c, d) -> (a, b, c, d) on the raw scale."""
        b = float(np.exp(lnb)) if self.form.has_b else 0.0
        return float(big_a * np.exp(-c * np.log(self.x0 + b))), b, float(c), float(d)

    def sse_raw(self, p: tuple[float, float, float, float]) -> float:
        r = evaluate(self.x, *p) - self.y
        return float(r @ r)


def _pick_starts(sse: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k best grid cells that are not neighbours of an already picked one (distinct basins)."""
    order = np.argsort(sse, axis=None)
    picked: list[tuple[int, int]] = []
    for flat in order:
        i, j = np.unravel_index(flat, sse.shape)
        if not np.isfinite(sse[i, j]):
            break
        if all(abs(i - pi) > 2 or abs(j - pj) > 2 for pi, pj in picked):
            picked.append((int(i), int(j)))
        if len(picked) >= k:
            break
    return picked


def _polish_joint(prob: _Problem, big_a: float, lnb: float, c: float, d: float, lnb_bounds) -> np.ndarray:
    """Joint least-squares polish of (A, ln b, c, d) with an analytic Jacobian (free params only)."""
    form = prob.form
    x, y, x0 = prob.x, prob.y, prob.x0

    def unpack(t: np.ndarray) -> tuple[float, float, float, float]:
        i = 0
        big = t[i]
        i += 1
        lb = t[i] if form.has_b else float("-inf")
        i += int(form.has_b)
        cc = t[i]
        i += 1
        dd = t[i] if form.has_d else 0.0
        return big, lb, cc, dd

    def parts(t: np.ndarray):
        big, lb, cc, dd = unpack(t)
        b = np.exp(lb) if form.has_b else 0.0
        rel = np.log(x + b) - np.log(x0 + b)
        phi = np.exp(cc * rel)
        return big, b, cc, dd, rel, phi

    def fun(t: np.ndarray) -> np.ndarray:
        big, _, _, dd, _, phi = parts(t)
        return big * phi + dd - y

    def jac(t: np.ndarray) -> np.ndarray:
        big, b, cc, _, rel, phi = parts(t)
        cols = [phi]
        if form.has_b:
            cols.append(big * phi * cc * (b / (x + b) - b / (x0 + b)))
        cols.append(big * phi * rel)
        if form.has_d:
            cols.append(np.ones_like(x))
        return np.stack(cols, axis=1)

    t0, lo, hi = [big_a], [0.0], [np.inf]
    if form.has_b:
        t0.append(lnb)
        lo.append(lnb_bounds[0])
        hi.append(lnb_bounds[1])
    t0.append(c)
    lo.append(_C_MIN)
    hi.append(0.0)
    if form.has_d:
        t0.append(d)
        lo.append(0.0)
        hi.append(np.inf)
    t0 = np.clip(np.array(t0, dtype=float), lo, hi)
    res = least_squares(fun, t0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=2000)
    return np.array(unpack(res.x), dtype=float)


def fit_curve(x: np.ndarray, y: np.ndarray, form: str | Form = "saturation_both",
              grid: GridSpec | None = None, warm_start: FitResult | None = None) -> FitResult:
    """Global least-squares fit of the form to (x, y) on the linear error scale.

    `warm_start` adds that fit's (ln b, c) as one more local start (used by the bootstrap).

    Raises ValueError when there are fewer points than free parameters.
    """
    form = get_form(form) if isinstance(form, str) else form
    grid = grid or GridSpec()
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-d arrays of the same length")
    if len(x) < form.n_params:
        raise UsageError(f"{form.name} needs at least {form.n_params} points, got {len(x)}")
    if np.any(x <= 0) or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise UsageError("x must be positive and finite, y finite")
    prob = _Problem(x, y, form)
    lx_min, lx_max = np.log(x.min()), np.log(x.max())
    lnb_bounds = (lx_min - 40.0, lx_max + 40.0)
    c_grid = -np.geomspace(-grid.c_range[1], -grid.c_range[0], grid.n_c)[::-1]
    if form.has_b:
        lnb_grid = np.linspace(lx_min - grid.lnb_below, lx_max + grid.lnb_above, grid.n_lnb)
    else:
        lnb_grid = np.array([float("-inf")])
    phi = prob.basis(lnb_grid, c_grid)
    _, _, sse = _linear_part(phi, y, form.has_d)
    sse = np.where(np.isfinite(sse), sse, np.inf)

    best_p: tuple[float, float, float, float] | None = None
    best_sse = np.inf
    starts = [(lnb_grid[i], c_grid[j], sse[i, j]) for i, j in _pick_starts(sse, grid.n_starts)]
    if warm_start is not None and warm_start.c < 0:
        lnb_w = float(np.clip(warm_start.ln_b, *lnb_bounds)) if form.has_b else float("-inf")
        starts.insert(0, (lnb_w, warm_start.c, -np.inf))
    tol = max(grid.tol, 1e-15)
    for lnb0, c0, grid_sse in starts:
        if grid_sse >= best_sse:  # a grid cell no better than a polished optimum: same basin or worse
            continue
        theta0 = [lnb0, c0] if form.has_b else [c0]
        lo = [lnb_bounds[0], _C_MIN] if form.has_b else [_C_MIN]
        hi = [lnb_bounds[1], 0.0] if form.has_b else [0.0]
        res = least_squares(prob.profile_residuals, theta0, bounds=(lo, hi), method="trf",
                            x_scale=1.0, diff_step=1e-7, xtol=max(tol, 1e-14), ftol=tol, gtol=tol, max_nfev=400)
        lnb, c = prob._split(res.x)
        big_a, d = prob.linear_at(lnb, c)
        cands = [(big_a, lnb, c, d)]
        if grid.joint_polish:
            cands.append(tuple(_polish_joint(prob, big_a, lnb, c, d, lnb_bounds)))
        for cand in cands:
            p = prob.to_raw(*cand)
            s = prob.sse_raw(p)
            if s < best_sse:
                best_sse, best_p = s, p
    if best_p is None:  # every grid cell degenerate: constant fit
        best_p = (0.0, float(np.exp(lx_max)) if form.has_b else 0.0, 0.0, float(max(y.mean(), 0.0)) if form.has_d else 0.0)
        best_sse = prob.sse_raw(best_p)
    a, b, c, d = best_p
    return FitResult(form.name, a, b, c, d, float(best_sse), len(x))
