"""The numbers behind the report: aggregates over seeds, scaling regimes, MLPerf-style scores, power-of-two
comparisons, the data-wait onset, and every decision between alternatives. Pure functions of runs and
configurations; no formatting, no plotting.

Every comparison is decided from per-seed values with scaling.stats (Welch's t interval on the log scale,
judged against a practical threshold, `stats.Rules`): a configuration with one seed has no run-to-run
variation to judge by, so nothing that involves it is decided.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from scaling import stats
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
# Doubling the batch can at best halve the steps; a ratio below this is evaluation granularity (steps to
# target known only to the evaluation interval) or a changed LR, not better-than-perfect scaling.
SUPER_LINEAR_RATIO = 0.5

# MLPerf Training scores a benchmark from several runs by dropping the fastest and the slowest and
# averaging the rest, so that one lucky or unlucky seed does not decide it; it asks for at least 5 runs.
MLPERF_MIN_RUNS = 5

# Batch sizes within this relative distance of a power of two count as its neighbours (127/128/129, 500/512).
NEIGHBOUR_TOLERANCE = 0.05

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


def min_seeds(configurations) -> int:
    """The fewest runs of any of these configurations (or points): the seeds a decision rests on."""
    return min((len(c.runs) for c in configurations), default=0)


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
    def reached(self) -> list[Run]:
        return [run for run in self.runs if run.reached]

    @property
    def any_reached(self) -> bool:
        return bool(self.reached)

    @property
    def all_reached(self) -> bool:
        return len(self.reached) == len(self.runs)

    @property
    def outcome(self) -> str:
        """The most common status of the runs that did not reach the target (for 'diverged from 1024')."""
        missed = [run.status for run in self.runs if not run.reached]
        return Counter(missed).most_common(1)[0][0] if missed else "reached"

    @property
    def step_resolution(self) -> float | None:
        """The coarsest step resolution of the runs that reached the target."""
        return max((run.step_resolution for run in self.reached if run.step_resolution), default=None)


def series_points(configurations: list[Configuration]) -> dict[str, list[Point]]:
    """Per series, one point per global batch, sorted by batch."""
    pooled: dict[str, dict[int, list[Run]]] = {}
    for configuration in configurations:
        batch = configuration.global_bs
        if batch is None:
            continue
        pooled.setdefault(configuration.series, {}).setdefault(batch, []).extend(configuration.runs)
    return {series: [Point(b, runs) for b, runs in sorted(by_batch.items())] for series, by_batch in pooled.items()}


def _times(runs: list[Run]) -> tuple[list[float | None], list[float]]:
    """Per-seed train times to target of the runs that reached it, and their resolutions."""
    reached = [run for run in runs if run.reached and run.train_time is not None]
    return [run.train_time for run in reached], [run.time_resolution or 0.0 for run in reached]


def _steps(runs: list[Run]) -> tuple[list[float | None], list[float]]:
    reached = [run for run in runs if run.reached]
    return [run.steps_to_target for run in reached], [run.step_resolution or 0.0 for run in reached]


# --- configurations that train identically ---------------------------------------------------------------------


def training_key(configuration: Configuration) -> str:
    """What the optimizer does: every setting but the LR rule's name, and the LR schedule the run resolved.
    Two LR rules that give the same LR at a batch (linear and sqrt at the reference batch) train
    identically there; their times differ by timing noise only, so they are not ranked against each other."""
    settings = {k: v for k, v in configuration.settings.items() if k != "lr_scaling"}
    run = configuration.runs[0]
    schedule = {k: v for k, v in (run.get("lr") or {}).items() if k != "rule"}
    if not schedule:  # no result: only the rule is known, so assume it matters
        settings["lr_scaling"] = configuration.settings.get("lr_scaling")
    return json.dumps([settings, schedule], sort_keys=True, default=str)


def twin_groups(configurations: list[Configuration]) -> list[list[Configuration]]:
    """Configurations grouped by training_key, in their order."""
    groups: dict[str, list[Configuration]] = {}
    for configuration in configurations:
        groups.setdefault(training_key(configuration), []).append(configuration)
    return list(groups.values())


# --- ranking configurations by train time to target ------------------------------------------------------------


@dataclass
class Ranking:
    """The configuration with the lowest train time to target among candidates where every seed reached it,
    against every other candidate (configurations that train identically count once: `twins`)."""

    best: Configuration
    twins: list[Configuration]  # train exactly as `best` does (same LR schedule at the same batch)
    decision: stats.Best
    candidates: list[Configuration]  # one per distinct training, `best` included
    partial: list[Configuration]  # reached with some seeds only: never recommended
    samples: dict[int, list[float]] = field(default_factory=dict)  # id(candidate) -> per-seed times compared
    groups: dict[int, list[Configuration]] = field(default_factory=dict)  # id(candidate) -> it and its twins

    def twins_of(self, configuration: Configuration) -> list[Configuration]:
        """The configurations that train exactly as this candidate does (not itself)."""
        return self.groups.get(id(configuration), [configuration])[1:]

    def times(self, configuration: Configuration) -> list[float]:
        """The per-seed train times the ranking compared (averaged over identical trainings)."""
        return self.samples[id(configuration)]

    @property
    def decided(self) -> bool:
        return self.decision.decided and min_seeds(self.candidates) >= 2

    def comparison(self, other: Configuration) -> stats.Comparison:
        return self.decision.comparisons[id(other)]

    @property
    def others(self) -> list[Configuration]:
        return [c for c in self.candidates if c is not self.best]

    @property
    def ties(self) -> list[Configuration]:
        """Candidates the data do not separate from the best."""
        return [c for c in self.others if self.comparison(c).verdict != stats.LOWER]


def rank(configurations: list[Configuration], rules: stats.Rules) -> Ranking | None:
    """Rank by train time to target; only configurations where every seed reached the target compete (one
    that failed with some seed is never recommended). None when no configuration qualifies."""
    complete = [c for c in configurations if c.runs and c.all_reached and _times(c.runs)[0]]
    partial = [c for c in configurations if c.reached and not c.all_reached]
    if not complete:
        return None
    groups = twin_groups(complete)
    representatives = [group[0] for group in groups]
    pooled = {id(group[0]): _seed_means(group) for group in groups}
    samples = {key: values for key, (values, _) in pooled.items()}
    resolutions = {key: res for key, (_, res) in pooled.items()}
    decision = stats.best_of(samples, rules, resolutions=resolutions)
    best = next(c for c in representatives if id(c) == decision.best)
    twins = next(group for group in groups if group[0] is best)[1:]
    return Ranking(best, twins, decision, representatives, partial, samples,
                   {id(group[0]): group for group in groups})


def _seed_means(group: list[Configuration]) -> tuple[list[float], list[float]]:
    """Per seed, the mean train time (and resolution) over configurations that train identically: the same
    training timed twice, so their difference is timing noise and their mean the better measurement. One
    value per seed keeps the count of independent trainings honest."""
    by_seed: dict[str, list[Run]] = {}
    for configuration in group:
        for index, run in enumerate(configuration.runs):
            by_seed.setdefault(str(run.seed) if run.seed is not None else f"#{index}", []).append(run)
    values, resolutions = [], []
    for runs in by_seed.values():
        times, res = _times(runs)
        if times:
            values.append(statistics.fmean(times))
            resolutions.append(statistics.fmean(res))
    return values, resolutions


# --- steps to target: regimes ------------------------------------------------------------------------------


@dataclass
class Doubling:
    """One rung of a series' batch ladder: steps to target at the smaller and the larger batch."""

    series: str
    small: int
    large: int
    steps_small: float  # mean over the seeds that reached the target
    steps_large: float
    rate: stats.Rate | None = None  # r per doubling with its confidence interval (from per-seed steps)
    resolution_small: float | None = None  # step resolution (evaluation interval) at each end
    resolution_large: float | None = None
    std_small: float | None = None
    std_large: float | None = None
    n_small: int = 1
    n_large: int = 1

    @property
    def ratio(self) -> float:
        """r per doubling: (S(large)/S(small)) ** (1 / log2(large/small)), which is S(2B)/S(B) for an exact
        doubling and puts uneven steps (e.g. 96 -> 256) on the same scale."""
        return (self.steps_large / self.steps_small) ** (1 / math.log2(self.large / self.small))

    @property
    def regime(self) -> str:
        return classify_ratio(self.ratio)

    @property
    def regime_decided(self) -> bool:
        """The whole confidence interval of r lies in the regime of its point value (needs 2+ seeds a side)."""
        rate = self.rate
        if rate is None or rate.low is None or rate.high is None:
            return False
        return classify_ratio(rate.low) == classify_ratio(rate.high) == self.regime

    @property
    def gain_decided(self) -> bool:
        """The whole interval of r lies below NO_GAIN_MIN_RATIO: doubling saves 10% or more of the steps."""
        return self.rate is not None and self.rate.high is not None and self.rate.high < NO_GAIN_MIN_RATIO

    @property
    def no_gain_decided(self) -> bool:
        """The whole interval of r lies at or above NO_GAIN_MIN_RATIO: doubling saves under 10%."""
        return self.rate is not None and self.rate.low is not None and self.rate.low >= NO_GAIN_MIN_RATIO

    @property
    def super_linear(self) -> bool:
        return self.ratio < SUPER_LINEAR_RATIO


def classify_ratio(ratio: float) -> str:
    if ratio <= PERFECT_MAX_RATIO:
        return REGIME_PERFECT
    if ratio < NO_GAIN_MIN_RATIO:
        return REGIME_DIMINISHING
    return REGIME_NO_GAIN


def doublings(series: str, points: list[Point], rules: stats.Rules = stats.DEFAULT_RULES) -> list[Doubling]:
    """Consecutive steps of the batch ladder where every seed reached the target (a batch that one lucky seed
    in three reached is not a useful batch, and its steps are that seed's alone). Batches closer than 1.5x to
    the last kept one (127/128/129 throughput probes) are skipped: their step ratio is noise, not scaling."""
    kept = ladder([p for p in points if p.all_reached and p.steps.mean is not None], lambda p: p.batch)
    out = []
    for a, b in pairwise(kept):
        steps_a, res_a = _steps(a.runs)
        steps_b, res_b = _steps(b.runs)
        rate = stats.per_doubling(steps_a, steps_b, math.log2(b.batch / a.batch), rules, resolution_small=res_a,
                                  resolution_large=res_b)
        out.append(Doubling(series, a.batch, b.batch, a.steps.mean, b.steps.mean, rate, a.step_resolution,
                            b.step_resolution, a.steps.std, b.steps.std, len(steps_a), len(steps_b)))
    return out


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


def knee_doublings(steps: list[Doubling]) -> list[Doubling]:
    """The doublings the largest-useful-batch claim rests on: from the doubling into the knee on (without a
    knee, the last doubling)."""
    batch = knee(steps)
    if batch is None:
        return steps[-1:]
    return [d for d in steps if d.small >= batch or d.large == batch]


def knee_decided(steps: list[Doubling]) -> bool:
    """The knee (or, without one, "at least the largest batch") holds at the confidence: every doubling from
    the knee on saves under 10% of the steps (its whole interval of r at or above 0.9) and the doubling into
    the knee saves more (its whole interval below 0.9). Only the 0.9 boundary matters here."""
    batch = knee(steps)
    if not steps:
        return False
    return all(d.no_gain_decided if batch is not None and d.small >= batch else d.gain_decided
               for d in knee_doublings(steps))


def perfect_until(steps: list[Doubling], decided: bool = False) -> int | None:
    """The largest batch reached by an unbroken run of perfect-scaling doublings from the smallest batch
    (decided=True: only doublings whose whole interval is perfect scaling)."""
    batch = None
    for doubling in steps:
        if doubling.regime != REGIME_PERFECT or (decided and not doubling.regime_decided):
            break
        batch = doubling.large
    return batch


# --- time to target along a series -----------------------------------------------------------------------------


@dataclass
class Trend:
    """Where train time to target is lowest along a series, against the smallest and the largest batch."""

    series: str
    points: list[Point]  # batches where every seed reached the target
    low: Point
    comparisons: dict[int, stats.Comparison]  # end batch -> low against it

    @property
    def first(self) -> Point:
        return self.points[0]

    @property
    def last(self) -> Point:
        return self.points[-1]

    @property
    def decided(self) -> bool:
        return bool(self.comparisons) and all(c.verdict == stats.LOWER for c in self.comparisons.values())

    @property
    def n_seeds(self) -> int:
        return min_seeds(self.points)


def trend(series: str, points: list[Point], rules: stats.Rules) -> Trend | None:
    timed = [p for p in points if p.all_reached and p.train_time.mean is not None]
    if len(timed) < 2:
        return None
    low = min(timed, key=lambda p: stats.geometric_mean(_times(p.runs)[0]))
    ends = [p for p in (timed[0], timed[-1]) if p is not low]
    comparisons = {}
    for end in ends:
        (a, ra), (b, rb) = _times(low.runs), _times(end.runs)
        comparisons[end.batch] = stats.compare(a, b, rules, comparisons=len(ends), resolution_a=ra, resolution_b=rb)
    return Trend(series, timed, low, comparisons)


# --- LR rules per batch size -----------------------------------------------------------------------------------


def rule_cells(runs: list[Run]) -> dict[str, dict[int, list[Run]]]:
    """Runs by LR rule, then by global batch (sorted): the cells of the LR-rule table."""
    cells: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        if run.lr_rule is not None and run.global_bs is not None:
            cells.setdefault(run.lr_rule, {}).setdefault(run.global_bs, []).append(run)
    return {rule: dict(sorted(by_batch.items())) for rule, by_batch in cells.items()}


@dataclass
class RuleComparison:
    """The LR rules at one global batch, every other setting equal."""

    batch: int
    configurations: dict[str, Configuration]  # rule -> its configuration
    identical: list[list[str]]  # groups of 2+ rules that train identically here (same LR schedule)
    best: str | None  # the rule with the lowest train time among those where every seed reached the target
    against: dict[str, stats.Comparison | str]  # other rule -> comparison of times, or "did not reach"
    beaten: dict[str, bool] = field(default_factory=dict)  # other rule -> the data separate it from `best`

    @property
    def n_seeds(self) -> int:
        return min_seeds(self.configurations.values())

    @property
    def all_identical(self) -> bool:
        return len(self.identical) == 1 and len(self.identical[0]) == len(self.configurations)

    @property
    def decided(self) -> bool:
        return self.best is not None and bool(self.beaten) and all(self.beaten.values()) and self.n_seeds >= 2


def rule_comparisons(configurations: list[Configuration], rules: stats.Rules) -> list[RuleComparison]:
    """Per global batch (and every other setting), the LR rules against each other. Rules that train
    identically there are not ranked; a rule where every seed reached the target beats one where none did
    (with 2+ seeds each) and is compared on train time with the others."""
    groups: dict[str, list[Configuration]] = {}
    for c in configurations:
        if c.lr_rule is None or c.global_bs is None or not any(run.target is not None for run in c.runs):
            continue
        context = json.dumps({k: v for k, v in c.settings.items() if k != "lr_scaling"}, sort_keys=True, default=str)
        groups.setdefault(context, []).append(c)
    out = []
    for group in groups.values():
        by_rule = {c.lr_rule: c for c in sorted(group, key=lambda c: c.lr_rule)}
        if len(by_rule) < 2:
            continue
        twins = [[c.lr_rule for c in g] for g in twin_groups(list(by_rule.values())) if len(g) >= 2]
        ranking = rank(list(by_rule.values()), rules)
        best = ranking.best.lr_rule if ranking else None
        against: dict[str, stats.Comparison | str] = {}
        beaten: dict[str, bool] = {}
        if ranking is not None:
            twin_rules = {c.lr_rule for c in ranking.twins}
            for rule, c in by_rule.items():
                if rule == best or rule in twin_rules:
                    continue
                if not c.reached:
                    against[rule] = "did not reach"
                    beaten[rule] = len(c.runs) >= 2 and len(ranking.best.runs) >= 2
                elif any(c is other for other in ranking.candidates):
                    comparison = ranking.comparison(c)
                    against[rule], beaten[rule] = comparison, comparison.verdict == stats.LOWER
                else:  # reached with some seeds only: compared on those
                    (a, ra), (b, rb) = _seed_means([ranking.best, *ranking.twins]), _times(c.runs)
                    comparison = stats.compare(a, b, rules, resolution_a=ra, resolution_b=rb)
                    against[rule], beaten[rule] = comparison, comparison.verdict == stats.LOWER
        out.append(RuleComparison(group[0].global_bs, by_rule, twins, best, against, beaten))
    return sorted(out, key=lambda r: r.batch)


# --- time to target -----------------------------------------------------------------------------------------


def mlperf_score(times: list[float]) -> float | None:
    """MLPerf Training's scoring: drop the fastest and the slowest run, average the rest."""
    if len(times) < MLPERF_MIN_RUNS:
        return None
    kept = sorted(times)[1:-1]
    return statistics.fmean(kept)


# --- powers of two -------------------------------------------------------------------------------------------


def is_power_of_two(value: int | None) -> bool:
    return isinstance(value, int) and value > 1 and value & (value - 1) == 0


def _rates(configuration: Configuration) -> list[float]:
    return [run.throughput for run in configuration.runs if run.throughput]


@dataclass
class PowerComparison:
    """A power-of-two batch against its neighbours (every other setting equal), on per-seed throughput."""

    key: str  # "global", "per-device", or "global (= per-device)" when both are the same number
    power: int
    configuration: Configuration
    neighbours: dict[int, Configuration]
    comparisons: dict[int, stats.Comparison]  # neighbour -> power's throughput over the neighbour's

    @property
    def n_seeds(self) -> int:
        return min_seeds([self.configuration, *self.neighbours.values()])

    @property
    def verdict(self) -> str:
        """HIGHER: the power of two is faster than every neighbour; LOWER: slower than every one; EQUIVALENT:
        within the threshold of every one; else UNDECIDED."""
        verdicts = {c.verdict for c in self.comparisons.values()}
        return verdicts.pop() if len(verdicts) == 1 else stats.UNDECIDED

    @property
    def decided(self) -> bool:
        return self.verdict in (stats.HIGHER, stats.LOWER)


def _context(configuration: Configuration) -> str:
    """Everything but the batch: two configurations compare fairly when this is equal."""
    settings = {k: v for k, v in configuration.settings.items() if k not in BATCH_KEYS + RUN_ONLY_KEYS}
    return json.dumps(settings, sort_keys=True, default=str)


def power_of_two_comparisons(configurations: list[Configuration], rules: stats.Rules) -> list[PowerComparison]:
    """Each power-of-two batch (global, then per-device) against the non-powers within 5% of it that share
    every other setting; each neighbour comparison at the Bonferroni-corrected confidence."""
    out: list[PowerComparison] = []
    seen: set[tuple[int, int]] = set()
    rated = [c for c in configurations if _rates(c)]
    for key, size in (("global", lambda c: c.global_bs), ("per-device", lambda c: c.per_device_bs)):
        for power in rated:
            if not is_power_of_two(size(power)):
                continue
            neighbours = {}
            for other in rated:
                value = size(other)
                if (value is None or is_power_of_two(value) or value == size(power)
                        or abs(value - size(power)) > NEIGHBOUR_TOLERANCE * size(power)
                        or _context(other) != _context(power) or (id(power), id(other)) in seen):
                    continue
                seen.add((id(power), id(other)))
                neighbours[value] = other
            if not neighbours:
                continue
            # power over neighbour: HIGHER means the power of two has the higher throughput.
            comparisons = {value: stats.compare(_rates(power), _rates(other), rules, comparisons=len(neighbours))
                           for value, other in sorted(neighbours.items())}
            same = power.global_bs == power.per_device_bs and all(
                other.global_bs == other.per_device_bs for other in neighbours.values())
            out.append(PowerComparison("global (= per-device)" if same else key, size(power), power,
                                       dict(sorted(neighbours.items())), comparisons))
    return out


# --- data loading and throughput -----------------------------------------------------------------------------


def pooled_runs(configurations: list[Configuration]) -> list[tuple[int, list[Run]]]:
    """Runs of every configuration pooled at each global batch (the input pipeline does not care about the
    LR rule), sorted by batch."""
    runs: dict[int, list[Run]] = {}
    for configuration in configurations:
        if configuration.global_bs is not None:
            runs.setdefault(configuration.global_bs, []).extend(configuration.runs)
    return sorted(runs.items())


def pooled_by_batch(configurations: list[Configuration], value: Callable[[Run], float | None]
                    ) -> list[tuple[int, Stat]]:
    """`value(run)` pooled over every configuration at each global batch."""
    pairs = [(batch, stat(value(run) for run in group)) for batch, group in pooled_runs(configurations)]
    return [(batch, s) for batch, s in pairs if s.mean is not None]


def _seeds_per_configuration(runs: list[Run]) -> int:
    """Seeds per configuration among pooled runs (the fewest), so pooling two LR rules is not two seeds."""
    counts = Counter(json.dumps({k: v for k, v in run.config.items() if k not in RUN_ONLY_KEYS}, sort_keys=True,
                                default=str) for run in runs)
    return min(counts.values(), default=0)


@dataclass
class InputBound:
    """Where the data-wait share crosses DATA_WAIT_LIMIT for good, each batch's share against the limit."""

    levels: dict[int, stats.Level]  # batch -> mean share with its interval against the limit
    onset: int | None  # smallest batch from which the mean share stays above the limit
    n_seeds: int

    @property
    def top(self) -> tuple[int, float]:
        batch = max(self.levels, key=lambda b: self.levels[b].mean)
        return batch, self.levels[batch].mean

    @property
    def decided(self) -> bool:
        """Every batch on the right side of the onset, its interval too (all below: never the limit)."""
        if self.n_seeds < 2:
            return False
        for batch, level in self.levels.items():
            above = self.onset is not None and batch >= self.onset
            if level.verdict != (stats.HIGHER if above else stats.LOWER):
                return False
        return True


def input_bound(configurations: list[Configuration], rules: stats.Rules) -> InputBound | None:
    pooled = [(batch, runs) for batch, runs in pooled_runs(configurations)
              if any(run.data_wait is not None for run in runs)]
    if not pooled:
        return None
    levels = {batch: stats.against_level([run.data_wait for run in runs], DATA_WAIT_LIMIT, rules)
              for batch, runs in pooled}
    onset = None
    for batch, level in reversed(levels.items()):
        if level.mean <= DATA_WAIT_LIMIT:
            break
        onset = batch
    return InputBound(levels, onset, min(_seeds_per_configuration(runs) for _, runs in pooled))


@dataclass
class Saturation:
    """Where throughput stops growing along the batch ladder: per doubling, the gain with its interval."""

    rates: list[tuple[int, int, stats.Rate]]  # (small, large, throughput ratio per doubling)
    plateau: int | None  # smallest batch from which every doubling gains less than THROUGHPUT_GAIN_MIN
    n_seeds: int

    @property
    def decided(self) -> bool:
        """Each doubling from the plateau on gains less (whole interval), the one before it more."""
        if self.n_seeds < 2 or not self.rates:
            return False
        edge = 1 + THROUGHPUT_GAIN_MIN
        for small, _, rate in self.rates:
            if rate.low is None or rate.high is None:
                return False
            flat = self.plateau is not None and small >= self.plateau
            if (flat and not rate.high < edge) or (not flat and not rate.low >= edge):
                return False
        return True


def saturation(configurations: list[Configuration], rules: stats.Rules) -> Saturation | None:
    pooled = [(batch, runs) for batch, runs in pooled_runs(configurations)
              if any(run.throughput for run in runs)]
    kept = ladder(pooled, lambda pair: pair[0])
    if len(kept) < 2:
        return None
    rates = []
    for (small, a), (large, b) in pairwise(kept):
        rate = stats.per_doubling([run.throughput for run in a], [run.throughput for run in b],
                                  math.log2(large / small), rules)
        if rate is not None:
            rates.append((small, large, rate))
    plateau = None
    for small, _, rate in reversed(rates):
        if rate.ratio - 1 >= THROUGHPUT_GAIN_MIN:
            break
        plateau = small
    return Saturation(rates, plateau, min(_seeds_per_configuration(runs) for _, runs in kept))


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


# --- decompositions of one global batch ------------------------------------------------------------------------


@dataclass
class DecompositionComparison:
    series: str
    batch: int
    configurations: list[Configuration]
    decision: stats.Best  # the highest throughput against every other decomposition

    @property
    def fastest(self) -> Configuration:
        return next(c for c in self.configurations if id(c) == self.decision.best)

    @property
    def decided(self) -> bool:
        return self.decision.decided and min_seeds(self.configurations) >= 2


def decomposition_comparisons(configurations: list[Configuration], rules: stats.Rules
                              ) -> list[DecompositionComparison]:
    """Where one global batch ran with several decompositions (per-device x processes x accumulation) in
    one series, the fastest (throughput) against the others."""
    groups: dict[tuple[str, int], list[Configuration]] = {}
    for c in configurations:
        if c.global_bs is not None and c.runs[0].decomposition is not None and _rates(c):
            groups.setdefault((c.series, c.global_bs), []).append(c)
    out = []
    for (series, batch), group in groups.items():
        if len({c.runs[0].decomposition for c in group}) < 2:
            continue
        decision = stats.best_of({id(c): _rates(c) for c in group}, rules, lower=False)
        out.append(DecompositionComparison(series, batch, group, decision))
    return out
