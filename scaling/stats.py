"""Deciding comparisons from repeated runs: pure statistics, no I/O, standard library only.

A study runs each configuration with a few seeds. Two configurations differ only when the difference of their
per-seed values exceeds the run-to-run variation at a stated confidence *and* a practical threshold:

- `compare(a, b, rules)`: Welch's t interval on the log of the per-seed values, i.e. on the ratio of their
  geometric means. Logs because run-to-run noise in times and step counts is multiplicative, and because the
  verdict is then the same whichever side is named first. The difference counts ("a is lower") only when the
  whole interval lies beyond the practical threshold (`Rules.threshold`, 5% by default); when the whole
  interval lies within it, the two are *equivalent* (no practical difference); otherwise undecided. With one
  value on either side there is no run-to-run variation to judge by, and nothing is decided.
- A quantity known only to a resolution (steps to target between two evaluations) adds the variance of a
  uniform rounding error, resolution² / 12 per value, and a difference of means within the resolution is
  never decided.
- `best_of(samples, rules)`: the lowest of several, decided only when it beats every other one, each
  comparison at the Bonferroni-corrected confidence so that the chance of a false "fastest" stays at
  1 - confidence however many candidates there are.
- When undecided, what the seeds could tell, from the observed per-seed spread and nothing else (the
  observed difference may be noise: an A/A study's is): `resolvable`, the smallest relative difference
  this many seeds would decide with 80% power (the threshold plus the interval's half-width at that power),
  and `seeds_needed`, the seeds per configuration whose interval would resolve the threshold itself: lie
  within ±threshold, with 80% power, were there no difference at all (so that any difference beyond the
  threshold is then told apart from none).

The t distribution and the power calculations are in scaling/distributions.py.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from scaling.distributions import (
    normal_cdf,
    power_over_spread,
    t_quantile,
    z_quantile,
)

DEFAULT_CONFIDENCE = 0.95
DEFAULT_THRESHOLD = 0.05
# Power of the seeds-needed estimate: the chance that a study with that many seeds resolves the question.
POWER = 0.8
# Beyond this many seeds per configuration the estimate says "more than": the two are as good as the same.
MAX_SEEDS = 100

LOWER = "lower"  # a < b beyond the threshold
HIGHER = "higher"  # a > b beyond the threshold
EQUIVALENT = "equivalent"  # |a / b - 1| within the threshold, at the confidence
UNDECIDED = "undecided"


# --- the rules of a decision ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """When a difference counts: the confidence of the interval and the practical threshold (relative)."""

    threshold: float = DEFAULT_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1) (a relative difference, 0.05 = 5%), got "
                             f"{self.threshold}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must lie in [0.5, 1) (0.95 = 95%), got {self.confidence}")

    @property
    def log_threshold(self) -> float:
        return math.log1p(self.threshold)

    def corrected(self, comparisons: int) -> float:
        """Bonferroni: the confidence of each of `comparisons` tests that together hold `confidence`."""
        return 1.0 - (1.0 - self.confidence) / max(1, comparisons)


DEFAULT_RULES = Rules()


# --- two samples ----------------------------------------------------------------------------------------------


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]


def _log_spread(values: list[float], resolutions: Sequence[float] | None) -> tuple[float, float]:
    """Mean and variance of log(values); the variance adds the rounding error of values known only to a
    resolution (uniform over one resolution: resolution² / 12, relative to the value on the log scale)."""
    logs = [math.log(v) for v in values]
    variance = statistics.variance(logs) if len(logs) >= 2 else 0.0
    if resolutions:
        variance += statistics.fmean((r / v) ** 2 / 12.0 for r, v in zip(resolutions, values, strict=True))
    return statistics.fmean(logs), variance


@dataclass(frozen=True)
class Comparison:
    """`a` against `b`: the ratio of geometric means a / b with its confidence interval, and the verdict."""

    n_a: int
    n_b: int
    mean_a: float | None  # arithmetic means, as the tables show them
    mean_b: float | None
    ratio: float | None  # geometric mean of a over that of b
    low: float | None  # confidence interval of the ratio
    high: float | None
    confidence: float  # of this interval (after any Bonferroni correction)
    threshold: float
    verdict: str  # LOWER, HIGHER, EQUIVALENT or UNDECIDED
    reason: str  # why, in words: "one seed", "interval crosses the 5% threshold", ...
    seeds_needed: int | None = None  # seeds per configuration that would resolve the threshold (undecided only)
    resolvable: float | None = None  # smallest relative difference these seeds would decide (undecided only)
    resolution: float = 0.0  # the larger resolution of the two sides (0: exact values)
    variance: float = 0.0  # per-seed variance of the logs, the mean of the two sides (resolution included)

    @property
    def decided(self) -> bool:
        """The two differ beyond the threshold at the confidence."""
        return self.verdict in (LOWER, HIGHER)

    @property
    def difference(self) -> float | None:
        """a / b - 1: +0.05 means a is 5% higher."""
        return None if self.ratio is None else self.ratio - 1.0

    def reversed(self) -> Comparison:
        """`b` against `a`: the same interval and verdict, seen from the other side."""
        flip = {LOWER: HIGHER, HIGHER: LOWER}
        return Comparison(self.n_b, self.n_a, self.mean_b, self.mean_a,
                          None if self.ratio is None else 1.0 / self.ratio,
                          None if self.high is None else 1.0 / self.high, None if self.low is None else 1.0 / self.low,
                          self.confidence, self.threshold, flip.get(self.verdict, self.verdict), self.reason,
                          self.seeds_needed, self.resolvable, self.resolution, self.variance)

    def to_dict(self) -> dict:
        return {"n_a": self.n_a, "n_b": self.n_b, "mean_a": self.mean_a, "mean_b": self.mean_b,
                "ratio": self.ratio, "ci_low": self.low, "ci_high": self.high, "confidence": self.confidence,
                "threshold": self.threshold, "verdict": self.verdict, "reason": self.reason,
                "seeds_needed": self.seeds_needed, "resolvable": self.resolvable,
                "resolution": self.resolution or None}


def compare(a: Sequence[float | None], b: Sequence[float | None], rules: Rules = DEFAULT_RULES, *,
            comparisons: int = 1, resolution_a: Sequence[float] | None = None,
            resolution_b: Sequence[float] | None = None) -> Comparison:
    """Welch's t interval of log(a) - log(b) at `rules.confidence` (Bonferroni over `comparisons`), judged
    against `rules.threshold`. Resolutions, when given, are one per value (missing or non-positive values
    are dropped together with their resolution)."""
    pairs_a = [(v, r) for v, r in zip(a, resolution_a or [0.0] * len(a), strict=True)
               if v is not None and math.isfinite(v) and v > 0]
    pairs_b = [(v, r) for v, r in zip(b, resolution_b or [0.0] * len(b), strict=True)
               if v is not None and math.isfinite(v) and v > 0]
    values_a, values_b = [v for v, _ in pairs_a], [v for v, _ in pairs_b]
    res_a, res_b = [r or 0.0 for _, r in pairs_a], [r or 0.0 for _, r in pairs_b]
    confidence = rules.corrected(comparisons)
    mean_a = statistics.fmean(values_a) if values_a else None
    mean_b = statistics.fmean(values_b) if values_b else None
    resolution = max(res_a + res_b, default=0.0)
    base = dict(n_a=len(values_a), n_b=len(values_b), mean_a=mean_a, mean_b=mean_b, confidence=confidence,
                threshold=rules.threshold, resolution=resolution)
    if not values_a or not values_b:
        return Comparison(ratio=None, low=None, high=None, verdict=UNDECIDED, reason="no value", **base)
    log_a, var_a = _log_spread(values_a, res_a)
    log_b, var_b = _log_spread(values_b, res_b)
    delta = log_a - log_b
    ratio = math.exp(delta)
    if len(values_a) < 2 or len(values_b) < 2:
        return Comparison(ratio=ratio, low=None, high=None, verdict=UNDECIDED, reason="one seed", **base)
    se_a, se_b = var_a / len(values_a), var_b / len(values_b)
    se = math.sqrt(se_a + se_b)
    if se > 0:
        df = (se_a + se_b) ** 2 / (se_a ** 2 / (len(values_a) - 1) + se_b ** 2 / (len(values_b) - 1))
        half = t_quantile(1.0 - (1.0 - confidence) / 2.0, df) * se
    else:  # identical values on each side, exactly known: the interval is the point
        half = 0.0
    low, high = delta - half, delta + half
    edge = rules.log_threshold
    beyond_resolution = abs(mean_a - mean_b) > resolution
    if low > edge and beyond_resolution:
        verdict, reason = HIGHER, f"the whole interval lies above +{rules.threshold:.0%}"
    elif high < -edge and beyond_resolution:
        verdict, reason = LOWER, f"the whole interval lies below −{rules.threshold:.0%}"
    elif -edge < low and high < edge:
        verdict, reason = EQUIVALENT, f"the whole interval lies within ±{rules.threshold:.0%}"
    elif not beyond_resolution and (low > edge or high < -edge):
        verdict, reason = UNDECIDED, f"the means differ by no more than the resolution ({resolution:g})"
    else:
        verdict, reason = UNDECIDED, f"the interval crosses the {rules.threshold:.0%} threshold"
    needed = resolvable = None
    variance = (var_a + var_b) / 2.0
    if verdict == UNDECIDED:
        seeds = min(len(values_a), len(values_b))
        needed = seeds_needed(variance, rules, confidence, current=seeds)
        resolvable = resolvable_difference(variance, seeds, rules, confidence)
    return Comparison(ratio=ratio, low=math.exp(low), high=math.exp(high), verdict=verdict, reason=reason,
                      seeds_needed=needed, resolvable=resolvable, variance=variance, **base)


def seeds_needed(variance: float, rules: Rules, confidence: float, current: int) -> int | None:
    """The fewest seeds per configuration whose interval lies within ±threshold with probability POWER were
    there no difference (so that a difference beyond the threshold is then told from none): the power of
    that equivalence test, computed over the spread of the estimated variance (`_power`). It does not assume
    the observed difference is real. None when it exceeds MAX_SEEDS."""
    if variance <= 0:
        return current + 1
    edge = rules.log_threshold / math.sqrt(variance)  # in units of the per-seed spread
    root = math.sqrt(2.0)

    def within(n: int):
        # |estimate| < edge - half, the estimate N(0, 2/n)
        return lambda half: max(0.0, 2.0 * normal_cdf((edge - half) / (root / math.sqrt(n))) - 1.0)

    def enough(n: int) -> bool:
        return power_over_spread(n, confidence, within(n)) >= POWER

    # The power grows with n (a narrower interval around a tighter estimate): bisect for the first n enough.
    low, high = current, MAX_SEEDS
    if not enough(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def resolvable_difference(variance: float, seeds: int, rules: Rules, confidence: float) -> float:
    """The smallest relative difference that `seeds` seeds per configuration decide with probability POWER
    (the whole interval beyond the threshold; power over the spread of the estimated variance: `_power`),
    by bisection on the log difference."""
    if variance <= 0:
        return math.expm1(rules.log_threshold)
    sigma, edge = math.sqrt(variance), rules.log_threshold
    spread = math.sqrt(2.0 / seeds)

    def power(delta: float) -> float:
        return power_over_spread(seeds, confidence, lambda half: normal_cdf((delta - edge - half * sigma) / (sigma * spread)))

    low, high = edge, edge + 1.0
    while power(high) < POWER:
        high = edge + 2.0 * (high - edge)
    for _ in range(40):
        middle = (low + high) / 2.0
        low, high = (middle, high) if power(middle) < POWER else (low, middle)
    return math.expm1(high)


# --- several samples --------------------------------------------------------------------------------------------


@dataclass
class Best:
    """The candidate with the lowest geometric mean, and whether it beats every other one."""

    best: Hashable
    comparisons: dict[Hashable, Comparison] = field(default_factory=dict)  # best against each other one

    @property
    def decided(self) -> bool:
        return bool(self.comparisons) and all(c.verdict == LOWER for c in self.comparisons.values())

    @property
    def ties(self) -> list[Hashable]:
        """Candidates not separated from the best (undecided or equivalent)."""
        return [key for key, c in self.comparisons.items() if c.verdict != LOWER]

    @property
    def seeds_needed(self) -> int | None:
        """The most seeds any undecided comparison needs (None: some would need more than MAX_SEEDS)."""
        needed = [c.seeds_needed for c in self.comparisons.values() if c.verdict == UNDECIDED]
        if not needed or any(n is None for n in needed):
            return None
        return max(needed)


def geometric_mean(values: Sequence[float | None]) -> float | None:
    clean = _clean(values)
    return math.exp(statistics.fmean(math.log(v) for v in clean)) if clean else None


def median_interval(values: Sequence[float | None], confidence: float = DEFAULT_CONFIDENCE,
                    ) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the median: the order statistics x_(j) and x_(n+1-j), j the
    largest rank with P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2 (Conover, *Practical Nonparametric
    Statistics*, 3.2: the sign test's interval). Coverage is at least `confidence` whatever the distribution.
    None when there are too few values for that confidence (fewer than 6 at 95%); None and non-finite values
    are left out."""
    clean = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    n, alpha = len(clean), (1 - confidence) / 2
    rank, tail = 0, 0.0  # after each rank taken: tail = P(Binomial(n, 1/2) < rank)
    while rank < n // 2:
        tail += math.comb(n, rank) / 2**n
        if tail > alpha:
            break
        rank += 1
    return (clean[rank - 1], clean[n - rank]) if rank else None


def best_of(samples: Mapping[Hashable, Sequence[float | None]], rules: Rules = DEFAULT_RULES, *, lower: bool = True,
            resolutions: Mapping[Hashable, Sequence[float]] | None = None) -> Best | None:
    """The candidate with the lowest (or, lower=False, highest) geometric mean against every other, each
    comparison at the Bonferroni-corrected confidence; None without any value."""
    centres = {key: geometric_mean(values) for key, values in samples.items()}
    centres = {key: value for key, value in centres.items() if value is not None}
    if not centres:
        return None
    best = (min if lower else max)(centres, key=centres.get)
    others = [key for key in centres if key != best]
    resolutions = resolutions or {}
    result = Best(best)
    for key in others:
        a, b = samples[best], samples[key]
        ra, rb = resolutions.get(best), resolutions.get(key)
        if lower:
            c = compare(a, b, rules, comparisons=len(others), resolution_a=ra, resolution_b=rb)
        else:  # the highest: compare the reciprocals, so that LOWER still means "better"
            c = compare([1 / v if v else None for v in a], [1 / v if v else None for v in b], rules,
                        comparisons=len(others), resolution_a=ra, resolution_b=rb)
        result.comparisons[key] = c
    return result


# --- one sample against a level ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """The mean of a sample against a fixed level: its t interval and whether it lies above or below."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    verdict: str  # HIGHER (the whole interval above the level), LOWER, or UNDECIDED

    @property
    def decided(self) -> bool:
        return self.verdict in (LOWER, HIGHER)


def against_level(values: Sequence[float | None], level: float, rules: Rules = DEFAULT_RULES,
                  comparisons: int = 1) -> Level:
    """The one-sample t interval of the mean (plain scale: shares such as the data-wait fraction)."""
    clean = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return Level(0, None, None, None, UNDECIDED)
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return Level(1, mean, None, None, UNDECIDED)
    confidence = rules.corrected(comparisons)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, len(clean) - 1) * statistics.stdev(clean) / math.sqrt(
        len(clean))
    low, high = mean - half, mean + half
    verdict = HIGHER if low > level else LOWER if high < level else UNDECIDED
    return Level(len(clean), mean, low, high, verdict)


# --- a ratio per doubling, against bands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """The per-doubling ratio r = (y(large) / y(small)) ** (1 / log2(large / small)) with its interval."""

    ratio: float
    low: float | None
    high: float | None
    n_small: int
    n_large: int
    confidence: float = DEFAULT_CONFIDENCE
    variance: float = 0.0  # per-seed variance of the log values (mean of the two sides)
    doublings: float = 1.0  # log2(large / small)

    def seeds_to_clear(self, boundaries: Sequence[float]) -> int | None:
        """Seeds per configuration for the interval of r to clear the nearest boundary with probability POWER,
        if r is what was observed (the sample-size formula of `seeds_needed`, on the log scale of the
        ratio between the two batches); None beyond MAX_SEEDS or with no spread to go by."""
        if self.variance <= 0 or self.n_small < 2 or self.n_large < 2:
            return None
        effect = min(abs(math.log(self.ratio) - math.log(b)) for b in boundaries) * self.doublings
        if effect <= 0:
            return None
        z = z_quantile(1.0 - (1.0 - self.confidence) / 2.0) + z_quantile(POWER)
        n = math.ceil(2.0 * self.variance * z * z / (effect * effect))
        return None if n > MAX_SEEDS else max(n, min(self.n_small, self.n_large) + 1)


def per_doubling(small: Sequence[float | None], large: Sequence[float | None], doublings: float,
                 rules: Rules = DEFAULT_RULES, *, resolution_small: Sequence[float] | None = None,
                 resolution_large: Sequence[float] | None = None, comparisons: int = 1) -> Rate | None:
    """Welch's interval of log(large) - log(small), divided by the number of doublings between them."""
    c = compare(large, small, rules, comparisons=comparisons, resolution_a=resolution_large,
                resolution_b=resolution_small)
    if c.ratio is None:
        return None
    power = 1.0 / doublings
    low = c.low ** power if c.low is not None else None
    high = c.high ** power if c.high is not None else None
    return Rate(c.ratio ** power, low, high, c.n_b, c.n_a, c.confidence, c.variance, doublings)
