"""Wilson score interval held against scipy and checked for coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitors.stats import ONE_SIGMA, estimate, wilson_interval, z_score


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (47, 50),
                                 (940, 1000), (1, 100000)])
@pytest.mark.parametrize("cl", [ONE_SIGMA, 0.9, 0.95])
def test_wilson_matches_scipy(k: int, n: int, cl: float) -> None:
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=cl, method="wilson")
    low, high = wilson_interval(k, n, cl)
    np.testing.assert_allclose([low, high], [ref.low, ref.high], rtol=1e-9, atol=1e-12)


def test_z_score_is_one_sigma() -> None:
    assert z_score(ONE_SIGMA) == pytest.approx(1.0, abs=1e-9)
    assert z_score(0.95) == pytest.approx(stats.norm.ppf(0.975), rel=1e-9)


@pytest.mark.parametrize("n", [30, 200, 2000])
def test_wilson_coverage_is_near_nominal(n: int) -> None:
    """Exact coverage (sum of binomial probabilities of the k whose interval holds p)."""
    ks = np.arange(n + 1)
    bounds = np.array([wilson_interval(int(k), n) for k in ks])
    covs = []
    for p in np.linspace(0.05, 0.95, 37):
        pmf = stats.binom.pmf(ks, n, p)
        cover = (bounds[:, 0] <= p) & (p <= bounds[:, 1])
        covs.append(pmf[cover].sum())
    covs_a = np.array(covs)
    # Wilson oscillates around nominal; its mean coverage is close to it, and its dips
    # (largest where n p is small) shrink as n grows (Brown, Cai, DasGupta, Stat. Sci. 16
    # (2001) 101). A Wald interval fails the second check at n = 30.
    assert abs(covs_a.mean() - ONE_SIGMA) < 0.02
    assert covs_a.min() > ONE_SIGMA - 0.01 - 0.6 / np.sqrt(n)


def test_estimate_empty_and_bad_input() -> None:
    e = estimate(0, 0)
    assert e.value is None and (e.low, e.high) == (0.0, 1.0) and e.n == 0
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        z_score(1.0)


def test_estimate_fields() -> None:
    e = estimate(94, 100)
    assert e.value == pytest.approx(0.94)
    assert e.low < 0.94 < e.high and e.n == 100 and e.k == 94
