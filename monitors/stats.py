"""Binomial estimates with confidence intervals (Wilson score), computed without scipy."""

from __future__ import annotations

import math
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field

#: 1 sigma of a normal distribution, the customary "68 %" interval.
ONE_SIGMA = 0.6826894921370859


class Estimate(BaseModel):
    """A fraction k/n with its interval; `value` is None when the sample is empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float | None = Field(description="Point estimate k/n, None when n == 0.")
    low: float = Field(ge=0, le=1, description="Lower bound of the interval.")
    high: float = Field(ge=0, le=1, description="Upper bound of the interval.")
    n: int = Field(ge=0, description="Sample size.")
    k: int = Field(ge=0, description="Successes in the sample.")


def z_score(confidence: float) -> float:
    """Two-sided normal quantile: P(|Z| < z) = confidence."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be within (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, confidence: float = ONE_SIGMA) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, JASA 22 (1927) 209).

    With p = k/n and z the two-sided normal quantile of `confidence`::

        centre = (p + z^2/(2n)) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p (1-p) / n + z^2 / (4 n^2))

    It never leaves [0, 1] and keeps close to nominal coverage down to small n, unlike the
    normal (Wald) interval. n == 0 gives the uninformative (0, 1).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_score(confidence)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    # at k == 0 or k == n the formula touches the boundary exactly; rounding must not cross it
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def estimate(k: int, n: int, confidence: float = ONE_SIGMA) -> Estimate:
    """k/n with its Wilson interval."""
    low, high = wilson_interval(int(k), int(n), confidence)
    return Estimate(value=(k / n if n else None), low=low, high=high, n=int(n), k=int(k))
