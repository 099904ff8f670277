"""The numbers behind the report: aggregates over seeds, scaling regimes, MLPerf-style scores, power-of-two
comparisons, the data-wait onset. Pure functions of runs and configurations; no formatting, no plotting."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from scaling.report.runs import BATCH_KEYS, RUN_ONLY_KEYS, Configuration, Run

# Shallue et al. 2018, "Measuring the Effects of Data Parallelism on Neural Network Training": steps to a
# target fall in three regimes as the batch grows, perfect scaling (doubling the batch halves the steps),
# diminishing returns, and maximal data parallelism (no further gain). A doubling is classified by
# r = S(2B) / S(B), steps to target at 2B over steps at B; these are the report's thresholds.
PERFECT_MAX_RATIO = 0.6
NO_GAIN_MIN_RATIO = 0.9
REGIME_PERFECT = "perfect scaling"
REGIME_DIMINISHING = "diminishing returns"
REGIME_NO_GAIN = "no further gain"

# MLPerf Training scores a benchmark from several runs by dropping the fastest and the slowest and
# averaging the rest, so that one lucky or unlucky seed does not decide it; it asks for at least 5 runs.
MLPERF_MIN_RUNS = 5

# Batch sizes within this relative distance of a power of two count as its neighbours (127/128/129, 500/512).
NEIGHBOUR_TOLERANCE = 0.05
# A throughput difference counts as real when it exceeds this many times the combined noise.
NOISE_FACTOR = 2.0

# Above this share of training time spent waiting for data, the input pipeline, not the model, sets the pace.
DATA_WAIT_LIMIT = 0.30

# Below this gain per doubling of the batch, throughput has stopped growing.
THROUGHPUT_GAIN_MIN = 0.10


@dataclass
class Stat:
    """Mean, sample standard deviation (None with fewer than two values) and count of the known values."""

    mean: float | None
    std: float | None
    n: int

    @property
    def cv(self) -> float | None:
        """Coefficient of variation, std / mean."""
        return self.std / self.mean if self.std is not None and self.mean else None


def stat(values) -> Stat:
    known = [float(v) for v in values if v is not None]
    if not known:
        return Stat(None, None, 0)
    std = statistics.stdev(known) if len(known) >= 2 else None
    return Stat(statistics.fmean(known), std, len(known))


@dataclass
class Point:
    """All runs of one series at one global batch (the seeds, and any decompositions of that batch)."""

    batch: int
    runs: list[Run]

    @property
    def steps(self) -> Stat:
        return stat(run.steps_to_target for run in self.runs)

    @property
    def train_time(self) -> Stat:
        return stat(run.train_time for run in self.runs)

    @property
    def wall_time(self) -> Stat:
        return stat(run.wall_time for run in self.runs)

    @property
    def throughput(self) -> Stat:
        return stat(run.throughput for run in self.runs)

    @property
    def data_wait(self) -> Stat:
        return stat(run.data_wait for run in self.runs)

    @property
    def any_reached(self) -> bool:
        return any(run.reached for run in self.runs)

    @property
    def outcome(self) -> str:
        """The most common status of the runs that did not reach the target (for 'diverged from 1024')."""
        missed = [run.status for run in self.runs if not run.reached]
        return Counter(missed).most_common(1)[0][0] if missed else "reached"


def series_points(configurations: list[Configuration]) -> dict[str, list[Point]]:
    """Per series, one point per global batch, sorted by batch."""
    pooled: dict[str, dict[int, list[Run]]] = {}
    for configuration in configurations:
        batch = configuration.global_bs
        if batch is None:
            continue
        pooled.setdefault(configuration.series, {}).setdefault(batch, []).extend(configuration.runs)
    return {series: [Point(b, runs) for b, runs in sorted(by_batch.items())] for series, by_batch in pooled.items()}


# --- steps to target: regimes ------------------------------------------------------------------------------


@dataclass
class Doubling:
    series: str
    small: int
    large: int
    steps_small: float
    steps_large: float

    @property
    def ratio(self) -> float:
        """r per doubling: (S(large)/S(small)) ** (1 / log2(large/small)), which is S(2B)/S(B) for an exact
        doubling and puts uneven steps (e.g. 96 -> 256) on the same scale."""
        return (self.steps_large / self.steps_small) ** (1 / math.log2(self.large / self.small))

    @property
    def regime(self) -> str:
        return classify_ratio(self.ratio)


def classify_ratio(ratio: float) -> str:
    if ratio <= PERFECT_MAX_RATIO:
        return REGIME_PERFECT
    if ratio < NO_GAIN_MIN_RATIO:
        return REGIME_DIMINISHING
    return REGIME_NO_GAIN


def doublings(series: str, points: list[Point]) -> list[Doubling]:
    """Consecutive steps of the batch ladder that reached the target. Batches closer than 1.5x to the last
    kept one (127/128/129 throughput probes) are skipped: their step ratio is noise, not scaling."""
    kept = ladder([p for p in points if p.steps.mean is not None], lambda p: p.batch)
    return [Doubling(series, a.batch, b.batch, a.steps.mean, b.steps.mean) for a, b in pairwise(kept)]


def ladder(items: list, batch_of) -> list:
    """Items (sorted by batch) thinned to a ladder whose batches grow by at least 1.5x per rung."""
    kept: list = []
    for item in items:
        if not kept or batch_of(item) >= 1.5 * batch_of(kept[-1]):
            kept.append(item)
    return kept


def knee(steps: list[Doubling]) -> int | None:
    """The smallest batch from which no doubling saves 10% or more of the steps (every later r >= 0.9);
    None when the last doubling still gains."""
    batch = None
    for doubling in reversed(steps):
        if doubling.regime != REGIME_NO_GAIN:
            break
        batch = doubling.small
    return batch


def perfect_until(steps: list[Doubling]) -> int | None:
    """The largest batch reached by an unbroken run of perfect-scaling doublings from the smallest batch."""
    batch = None
    for doubling in steps:
        if doubling.regime != REGIME_PERFECT:
            break
        batch = doubling.large
    return batch


# --- time to target -----------------------------------------------------------------------------------------


def best_configuration(configurations: list[Configuration]) -> Configuration | None:
    """Lowest mean train time to target among configurations where every seed reached it (a configuration
    that reached once in five tries is not a recommendation); failing that, among any that reached."""
    def train_time(configuration: Configuration) -> float:
        return stat(run.train_time for run in configuration.runs).mean

    timed = [c for c in configurations if any(run.train_time is not None for run in c.runs)]
    eligible = [c for c in timed if c.all_reached] or timed
    return min(eligible, key=train_time, default=None)


def mlperf_score(times: list[float]) -> float | None:
    """MLPerf Training's scoring: drop the fastest and the slowest run, average the rest."""
    if len(times) < MLPERF_MIN_RUNS:
        return None
    kept = sorted(times)[1:-1]
    return statistics.fmean(kept)


def rule_cells(runs: list[Run]) -> dict[str, dict[int, list[Run]]]:
    """Runs by LR rule, then by global batch (sorted): the cells of the LR-rule comparison."""
    cells: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        if run.lr_rule is not None and run.global_bs is not None:
            cells.setdefault(run.lr_rule, {}).setdefault(run.global_bs, []).append(run)
    return {rule: dict(sorted(by_batch.items())) for rule, by_batch in cells.items()}


# --- powers of two -------------------------------------------------------------------------------------------


def is_power_of_two(value: int | None) -> bool:
    return isinstance(value, int) and value > 1 and value & (value - 1) == 0


@dataclass
class Throughput:
    """A configuration's throughput and its run-to-run noise, with where the noise estimate came from."""

    value: float
    noise: float | None
    source: str


def throughput_with_noise(configuration: Configuration) -> Throughput | None:
    """Noise is the std over seeds when there are several; with one run, the spread of its logging windows
    (std / sqrt(n), first window dropped as warm-up, as throughput_samples_per_s does)."""
    rates = stat(run.throughput for run in configuration.runs)
    if rates.mean is None:
        return None
    if rates.n >= 2:
        return Throughput(rates.mean, rates.std, f"std over {rates.n} seeds")
    run = next(run for run in configuration.runs if run.throughput is not None)
    windows = run.windows[1:]
    if len(windows) >= 3:
        return Throughput(rates.mean, statistics.stdev(windows) / math.sqrt(len(windows)),
                          f"spread of {len(windows)} windows")
    return Throughput(rates.mean, None, "unknown (one run, too few windows)")


@dataclass
class PowerComparison:
    key: str  # "global", "per-device", or "global (= per-device)" when both are the same number
    power: int
    neighbour: int
    power_rate: Throughput
    neighbour_rate: Throughput

    @property
    def difference(self) -> float:
        """Relative throughput of the power of two over its neighbour: +0.05 = the power of two is 5% faster."""
        return self.power_rate.value / self.neighbour_rate.value - 1

    @property
    def noise(self) -> float | None:
        """Combined relative noise of the two throughputs (independent errors add in quadrature)."""
        if self.power_rate.noise is None or self.neighbour_rate.noise is None:
            return None
        return math.hypot(self.power_rate.noise / self.power_rate.value,
                          self.neighbour_rate.noise / self.neighbour_rate.value)

    @property
    def exceeds_noise(self) -> bool | None:
        return None if self.noise is None else abs(self.difference) > NOISE_FACTOR * self.noise


def _context(configuration: Configuration) -> str:
    """Everything but the batch: two configurations compare fairly when this is equal."""
    settings = {k: v for k, v in configuration.settings.items() if k not in BATCH_KEYS + RUN_ONLY_KEYS}
    return json.dumps(settings, sort_keys=True, default=str)


def power_of_two_comparisons(configurations: list[Configuration]) -> list[PowerComparison]:
    """Each power-of-two batch (global, then per-device) against the non-powers within 5% of it that share
    every other setting."""
    comparisons: list[PowerComparison] = []
    seen: set[tuple[int, int]] = set()
    rated = [(c, throughput_with_noise(c)) for c in configurations]
    rated = [(c, t) for c, t in rated if t is not None]
    for key, size in (("global", lambda c: c.global_bs), ("per-device", lambda c: c.per_device_bs)):
        for power, power_rate in rated:
            if not is_power_of_two(size(power)):
                continue
            for other, other_rate in rated:
                value = size(other)
                if (value is None or is_power_of_two(value) or value == size(power)
                        or abs(value - size(power)) > NEIGHBOUR_TOLERANCE * size(power)
                        or _context(other) != _context(power) or (id(power), id(other)) in seen):
                    continue
                seen.add((id(power), id(other)))
                same = power.global_bs == power.per_device_bs and other.global_bs == other.per_device_bs
                comparisons.append(PowerComparison("global (= per-device)" if same else key, size(power), value,
                                                   power_rate, other_rate))
    return comparisons


# --- data loading and throughput -----------------------------------------------------------------------------


def pooled_by_batch(configurations: list[Configuration], value) -> list[tuple[int, Stat]]:
    """`value(run)` pooled over every configuration at each global batch (the input pipeline does not care
    about the LR rule)."""
    runs: dict[int, list[Run]] = {}
    for configuration in configurations:
        if configuration.global_bs is not None:
            runs.setdefault(configuration.global_bs, []).extend(configuration.runs)
    pairs = [(batch, stat(value(run) for run in group)) for batch, group in sorted(runs.items())]
    return [(batch, s) for batch, s in pairs if s.mean is not None]


def data_wait_onset(pairs: list[tuple[int, Stat]]) -> int | None:
    """The smallest batch from which the data-wait share stays above DATA_WAIT_LIMIT at every larger batch."""
    onset = None
    for batch, share in reversed(pairs):
        if share.mean <= DATA_WAIT_LIMIT:
            break
        onset = batch
    return onset


def throughput_plateau(pairs: list[tuple[int, Stat]]) -> int | None:
    """The smallest batch from which doubling (per-doubling rate, as for steps) raises throughput by less
    than THROUGHPUT_GAIN_MIN at every later step of the ladder; None when it keeps growing."""
    plateau = None
    for (small, a), (large, b) in reversed(list(pairwise(ladder(pairs, lambda pair: pair[0])))):
        gain = (b.mean / a.mean) ** (1 / math.log2(large / small)) - 1
        if gain >= THROUGHPUT_GAIN_MIN:
            break
        plateau = small
    return plateau
