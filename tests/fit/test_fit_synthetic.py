"""Synthetic laws: the fit recovers a known saturation_both law, and bootstrap intervals cover it."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.fit.bootstrap import bootstrap_fit
from evalkit.fit.forms import evaluate
from evalkit.fit.solver import fit_curve

TRUE = (60.0, 1.0e8, -0.25, 0.10)  # a, b, c, d: the shape of the paper's ImageNet-1k laws
X = np.geomspace(1e7, 1e11, 20)


def _draw(seed: int, sd: float = 0.004) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return evaluate(X, *TRUE) + rng.normal(0.0, sd, X.size)


def test_exact_recovery_without_noise() -> None:
    r = fit_curve(X, evaluate(X, *TRUE))
    assert (r.a, r.b, r.c, r.d) == pytest.approx(TRUE, rel=1e-5)
    assert r.rmse < 1e-9


@pytest.mark.parametrize("form,true", [("saturation", (60.0, 1e8, -0.25, 0.0)), ("power", (5.0, 0.0, -0.1, 0.0))])
def test_other_forms_recover(form: str, true: tuple) -> None:
    r = fit_curve(X, evaluate(X, *true), form)
    assert (r.a, r.c) == pytest.approx((true[0], true[2]), rel=1e-5)
    assert r.b == pytest.approx(true[1], rel=1e-4, abs=1e-6) and r.d == 0.0


def test_recovery_with_noise() -> None:
    """With noise the curve (not each coefficient: a, b, c trade off) is recovered over and past the data."""
    y = _draw(1)
    r = fit_curve(X, y)
    xs = np.geomspace(1e7, 1e12, 50)
    np.testing.assert_allclose(r.predict(xs), evaluate(xs, *TRUE), rtol=0.03)
    assert r.mse <= np.mean((y - evaluate(X, *TRUE)) ** 2)  # the optimum beats the truth on its own data
    assert abs(r.c - TRUE[2]) < 0.1


def _coverage(n_seeds: int, n_boot: int) -> tuple[float, float, float]:
    """Band coverage of the true curve (3 interior x), median relative width, coverage of true c."""
    x_eval = np.array([3e7, 1e9, 3e10])
    truth = evaluate(x_eval, *TRUE)
    hits, widths, c_hits = [], [], []
    for seed in range(n_seeds):
        y = _draw(100 + seed)
        fit = fit_curve(X, y)
        boot = bootstrap_fit(X, y, fit, n_boot, seed=seed)
        lo, hi = boot.band(x_eval)
        hits.append((lo <= truth) & (truth <= hi))
        widths.append((hi - lo) / truth)
        c_lo, c_hi = boot.coef_intervals()["c"]
        c_hits.append(c_lo <= TRUE[2] <= c_hi)
    return float(np.mean(hits)), float(np.median(widths)), float(np.mean(c_hits))


def test_bootstrap_coverage_fast() -> None:
    cov, width, c_cov = _coverage(n_seeds=24, n_boot=60)
    assert 0.8 <= cov <= 1.0, cov
    assert 0.002 < width < 0.1, width  # a real band: not degenerate, not vacuous
    assert c_cov >= 0.7, c_cov


@pytest.mark.slow
def test_bootstrap_coverage_many_seeds() -> None:
    cov, width, c_cov = _coverage(n_seeds=200, n_boot=200)
    assert 0.88 <= cov <= 0.99, cov
    assert 0.002 < width < 0.1, width
    assert 0.85 <= c_cov <= 0.99, c_cov


def test_bootstrap_intervals_bracket_the_fit_and_are_reproducible() -> None:
    y = _draw(7)
    fit = fit_curve(X, y)
    boot = bootstrap_fit(X, y, fit, 200, seed=3)
    iv = boot.coef_intervals()
    for name, value in zip("abcd", fit.params, strict=True):
        assert iv[name][0] < value < iv[name][1], name
    lo, hi = boot.band(X)
    assert np.all(lo < fit.predict(X)) and np.all(fit.predict(X) < hi)
    # reproducible with the same seed
    np.testing.assert_array_equal(boot.params, bootstrap_fit(X, y, fit, 200, seed=3).params)


def test_crossover_and_gap_of_two_known_laws() -> None:
    from evalkit.fit.compare import compare_groups, crossovers
    from evalkit.fit.solver import FitResult

    # equal at C = 1e10: A is worse below (steeper), better above
    fa = FitResult("power", 1e10 ** 0.5 * 0.3, 0.0, -0.5, 0.0, 0.0, 10)
    fb = FitResult("power", 1e10 ** 0.2 * 0.3, 0.0, -0.2, 0.0, 0.0, 10)
    (x_cross,) = crossovers(fa, fb, 1e6, 1e14)
    assert x_cross == pytest.approx(1e10, rel=1e-9)
    cmp = compare_groups("a", fa, None, "b", fb, None, np.array([1e8, 1e12]))
    assert cmp["better"].tolist() == ["b", "a"]
    assert cmp["gap_a_minus_b"].to_numpy() == pytest.approx(fa.predict([1e8, 1e12]) - fb.predict([1e8, 1e12]))
