"""Distributions the decisions need, standard library only: Student's t (cdf and quantile, from the
regularized incomplete beta function by continued fraction and bisection, so fractional Welch-Satterthwaite
degrees of freedom are exact without scipy), the normal, and the power of an interval averaged over the
spread of its estimated variance (scaling/stats.py uses it for what a study's seeds can resolve).
"""

from __future__ import annotations

import functools
import math
import statistics

# Points of the midpoint rule over the spread of the estimated variance in the power calculations.
QUADRATURE = 200


# --- Student's t ---------------------------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf, to 1e-10; cached: the power calculations ask for the same
    few quantiles again and again)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-10:
            break
    return (low + high) / 2.0


def z_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def power_over_spread(n: int, confidence: float, condition) -> float:
    """E over the sample spread of P(condition): with n seeds per side and per-seed log variance 1, the
    estimated difference is N(delta, 2/n) and the pooled variance s² ~ χ²_df / df, df = 2(n - 1) (Welch's
    with equal spreads). `condition(half)` gives P(success | the interval's half-width); the expectation over
    s is a midpoint rule on the χ² density (QUADRATURE points between its 0.01% and 99.99% quantiles)."""
    df = 2 * (n - 1)
    t = t_quantile(1.0 - (1.0 - confidence) / 2.0, df)
    low, high = max(1e-9, df - 8.0 * math.sqrt(2.0 * df)), df + 10.0 * math.sqrt(2.0 * df)
    width = (high - low) / QUADRATURE
    total = weight = 0.0
    for k in range(QUADRATURE):
        x = low + (k + 0.5) * width
        density = math.exp((df / 2.0 - 1.0) * math.log(x) - x / 2.0 - (df / 2.0) * math.log(2.0)
                           - math.lgamma(df / 2.0))
        total += density * condition(t * math.sqrt(x / df) * math.sqrt(2.0 / n))
        weight += density
    return total / weight


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))
