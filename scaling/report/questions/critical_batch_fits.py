"""The numbers of the critical-batch-size question (critical_batch.py holds the rest of it): the gradient
noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", arXiv:1812.06162). No
formatting, no plotting.

Per series (the report's grouping of configurations, e.g. per LR rule), from the runs that reached the
target (mean over seeds at each global batch), fit

    S(B) = S_min (1 + B_noise / B)   to steps-to-target,    E(B) = E_min (1 + B / B_noise)   to samples,

(scaling.noise.fits.fit_tradeoff: both curves share S_min and E_min, relative residuals, bootstrap over the
batch sizes), next to the B_simple measured during training (result["noise_scale"]["b_simple_at_target"]),
and predict steps, samples and time to target at batch sizes not run, and the fastest global batch for a few
device counts.

`analyse` computes them (once per study: critical_batch.noise_of); critical_batch.py turns them into
findings, its section and plots.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from scaling import stats
from scaling.noise.fits import (
    BatchChoice,
    Estimate,
    TradeoffFit,
    best_batch,
    fit_tradeoff,
    predict_samples,
    predict_steps,
    predict_time,
)
from scaling.report.aggregates import Point, stat
from scaling.report.runs import Run

# Device counts for which the fastest global batch is predicted (throughput(B) = n x tp(B / n)).
DEVICE_COUNTS = (1, 8, 64)
# McCandlish et al. 2018 found B_simple within an order of magnitude of B_crit.
ORDER_OF_MAGNITUDE = 10.0
# B_crit is decided only when its interval at the study's confidence lies within this factor of it either way.
INFORMATIVE_FACTOR = 2.0
# Above this largest relative residual of the steps fit, the report says the model fits loosely.
LOOSE_FIT = 0.2
# Refits of the fastest-batch prediction on seeds resampled within each batch (fixed seed: reports repeat).
CHOICE_RESAMPLES = 200
CHOICE_SEED = 0


def noise_scale(run: Run) -> dict:
    """result["noise_scale"], an empty mapping when absent or null (older results)."""
    value = run.get("noise_scale")
    return value if isinstance(value, dict) else {}


def b_simple_at_target(run: Run) -> float | None:
    value = noise_scale(run).get("b_simple_at_target")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else None


def b_simple_series(run: Run) -> list[tuple[int, float]]:
    """(step, B_simple) over training, positive finite values only (early estimates can be noise)."""
    points = []
    for point in noise_scale(run).get("series") or []:
        if not isinstance(point, dict):
            continue
        step, value = point.get("step"), point.get("b_simple")
        if isinstance(step, int | float) and isinstance(value, int | float) and math.isfinite(value) and value > 0:
            points.append((step, float(value)))
    return points


def has_noise_data(run: Run) -> bool:
    data = noise_scale(run)
    return data.get("b_simple") is not None or b_simple_at_target(run) is not None or bool(b_simple_series(run))


def powers_of_two(low: float, high: float) -> list[int]:
    """Powers of two covering [low, high]: from the one at or below `low` to the one at or above `high`."""
    first = 2 ** max(0, math.floor(math.log2(max(1.0, low))))
    last = 2 ** max(0, math.ceil(math.log2(max(1.0, high))))
    out, value = [], first
    while value <= last:
        out.append(value)
        value *= 2
    return out


def _world_size(run: Run) -> int:
    """Real processes the run's throughput was measured over (emulated processes share one device)."""
    size = run.batch.get("world_size") or (run.get("environment") or {}).get("world_size") or 1
    return size if isinstance(size, int) and size >= 1 else 1


@dataclass
class Prediction:
    batch: int
    steps: float
    samples: float
    time_s: float | None
    note: str


@dataclass
class DeviceChoice:
    """The predicted fastest global batch on `devices` devices, and how firmly the data pick it: the share of
    refits on resampled seeds that pick the same batch, and how much slower the runner-up is predicted."""

    devices: int
    choice: BatchChoice
    note: str
    agreement: float | None = None  # share of resampled refits that choose the same batch (None: one seed)
    runner_up: int | None = None  # the next-fastest candidate
    margin: float | None = None  # predicted time of the runner-up over the choice's, minus 1
    n_seeds: int = 1
    rules: stats.Rules = field(default_factory=stats.Rules)
    fit_decided: bool = False  # the fit it rests on is itself one to act on (SeriesFit.decided)
    measured_range: bool = True  # every candidate's per-device batch is at least the smallest measured


@dataclass
class SeriesFit:
    """The fit of one series and what it predicts."""

    series: str
    batches: list[int]  # global batches that reached the target, fitted
    steps: list[float]  # mean steps to target over seeds, per batch
    samples: list[float]  # mean samples to target over seeds, per batch
    tradeoff: TradeoffFit
    b_simple: list[float]  # b_simple_at_target of the series' runs
    throughput: dict[int, float]  # global batch -> mean samples/s, as measured
    per_device: dict[float, float]  # per-device batch -> per-device samples/s
    train_time: dict[int, float]  # global batch -> mean measured train time to target
    run_batches: dict[int, str]  # every global batch run in the series (with a target) -> its outcome
    candidates: list[int] = field(default_factory=list)  # powers of two from smallest/2 to largest x 4
    n_seeds: int = 1  # the fewest seeds that reached the target at a fitted batch
    incomplete: set[int] = field(default_factory=set)  # batches run where some seed did not reach the target
    points: list[Point] = field(default_factory=list)
    rules: stats.Rules = field(default_factory=stats.Rules)
    inexact: list[int] = field(default_factory=list)  # fitted batches with a run whose steps are an interval
    low_tradeoff: TradeoffFit | None = None  # the fit on the intervals' low ends (None: every step exact)

    @property
    def failed_from(self) -> int | None:
        """The smallest batch run in the series where no seed reached the target."""
        return min((b for b, outcome in self.run_batches.items()
                    if outcome != "reached" and not outcome.startswith("reached by")), default=None)

    @property
    def extrapolated(self) -> bool:
        """B_crit beyond half the smallest or twice the largest batch fitted."""
        return not self.batches[0] / 2 <= self.b_crit.value <= self.batches[-1] * 2

    @property
    def interval(self) -> tuple[float, float] | None:
        """B_crit's central interval at the study's confidence, from the bootstrap refits; where some steps to
        target are known only to an interval, widened to cover the refits on the intervals' low ends too."""
        high_end = self.b_crit.interval(self.rules.confidence)
        if high_end is None or self.low_tradeoff is None:
            return high_end
        low_end = self.low_tradeoff.b_crit.interval(self.rules.confidence) or (self.low_tradeoff.b_crit.value,) * 2
        return min(high_end[0], low_end[0]), max(high_end[1], low_end[1])

    @property
    def informative(self) -> bool:
        """That interval lies within a factor INFORMATIVE_FACTOR of the estimate either way."""
        bounds, value = self.interval, self.b_crit.value
        return (bounds is not None and value > 0 and bounds[0] >= value / INFORMATIVE_FACTOR
                and bounds[1] <= value * INFORMATIVE_FACTOR)

    @property
    def undecided_because(self) -> list[str]:
        """Why B_crit is not an estimate to act on (empty when it is)."""
        if not self.physical:
            return ["no physical fit"]
        reasons = []
        if self.n_seeds < 2:
            reasons.append("one seed per batch")
        if self.tradeoff.resamples == 0:
            reasons.append("no uncertainty from 2 batch sizes")
        elif not self.informative:
            reasons.append(f"its {self.rules.confidence:.0%} interval is wider than a factor of "
                           f"{INFORMATIVE_FACTOR:g} either way")
        if self.extrapolated:
            reasons.append("an extrapolation")
        return reasons

    @property
    def decided(self) -> bool:
        """B_crit is an estimate worth acting on: a physical fit with an uncertainty (3+ batch sizes), every
        fitted batch with 2+ seeds, an interval at the study's confidence within a factor of 2 of the
        estimate, and inside the batches fitted."""
        return not self.undecided_because

    @property
    def b_crit(self) -> Estimate:
        return self.tradeoff.b_crit

    @property
    def physical(self) -> bool:
        return self.tradeoff.fit.physical

    @cached_property
    def residuals(self) -> list[float]:
        """Relative residuals of the steps fit, (S_i - S(B_i)) / S_i."""
        return [(s - predict_steps(self.tradeoff, b)) / s for b, s in zip(self.batches, self.steps, strict=True)]

    @property
    def worst_residual(self) -> tuple[int, float]:
        """(batch, |relative residual|) of the point the fit misses most."""
        index = max(range(len(self.residuals)), key=lambda i: abs(self.residuals[i]))
        return self.batches[index], abs(self.residuals[index])

    @property
    def b_simple_median(self) -> float | None:
        return statistics.median(self.b_simple) if self.b_simple else None

    @property
    def ratio(self) -> float | None:
        """B_crit / B_simple (median at the target)."""
        median = self.b_simple_median
        return self.b_crit.value / median if median and self.physical else None

    def time(self, batch: int, devices: int | None = None) -> float | None:
        points = self.throughput if devices is None else self.per_device
        if not points:
            return None
        return predict_time(self.tradeoff, batch, points, devices)

    def _range_note(self, batch: int, devices: int | None = None) -> str:
        """Where the throughput at `batch` lies outside the measured curve: held constant there."""
        points = self.throughput if devices is None else self.per_device
        if not points:
            return ""
        at = batch if devices is None else batch / devices
        low, high = min(points), max(points)
        unit = "batch" if devices is None else "per-device batch"
        if at < low:
            return (f"{unit} {at:g} below the measured {low:g}: throughput held at its value, so the time is "
                    f"optimistic")
        if at > high:
            return (f"{unit} {at:g} above the measured {high:g}: throughput held at its value, so the time is "
                    f"pessimistic if throughput still grows")
        return ""

    @cached_property
    def predictions(self) -> list[Prediction]:
        """Candidates not reached in the series: not run at all, or run without reaching the target."""
        rows = []
        for batch in self.candidates:
            if batch in self.batches:
                continue
            notes = []
            if batch in self.run_batches:
                notes.append(f"run, {self.run_batches[batch]}: the fit assumes it trains as the others do")
            missed = [b for b, outcome in self.run_batches.items() if b < batch and b not in self.batches]
            if missed and batch not in self.run_batches:
                notes.append(f"beyond batch {min(missed)}, which did not reach the target with every seed")
            range_note = self._range_note(batch)
            if range_note:
                notes.append(range_note)
            rows.append(Prediction(batch, predict_steps(self.tradeoff, batch),
                                   predict_samples(self.tradeoff, batch), self.time(batch), "; ".join(notes)))
        return rows

    def eligible(self, devices: int | None = None) -> list[int]:
        """Candidates for the fastest batch: divisible over the devices, with a (per-device) batch no smaller
        than the smallest measured one, since below it the throughput held constant would flatter small
        batches (all divisible candidates when none is that large). A batch that was run and did not reach
        the target with every seed, or one at or beyond a batch where no seed reached it, is never
        recommended."""
        points = self.throughput if devices is None else self.per_device
        count = devices or 1
        failed = self.failed_from
        divisible = [b for b in self.candidates if b % count == 0 and b not in self.incomplete
                     and (failed is None or b < failed)]
        return [b for b in divisible if points and b / count >= min(points)] or divisible

    @cached_property
    def fastest_as_measured(self) -> BatchChoice | None:
        """The fastest candidate in the set-up the runs were measured in (global-batch throughput curve)."""
        return best_batch(self.tradeoff, self.throughput, self.eligible()) if self.throughput else None

    @cached_property
    def fastest(self) -> list[DeviceChoice]:
        """Per device count, the candidate global batch (divisible by it) predicted to reach the target soonest,
        with its agreement over refits on seeds resampled within each batch."""
        if not self.per_device:
            return []
        chosen = {}
        for devices in DEVICE_COUNTS:
            candidates = self.eligible(devices)
            if candidates:
                chosen[devices] = (candidates, best_batch(self.tradeoff, self.per_device, candidates, devices))
        agreement = self._agreement({d: (c, choice.batch) for d, (c, choice) in chosen.items()})
        out = []
        for devices, (_, choice) in chosen.items():
            ranked = sorted(choice.times_s, key=choice.times_s.get)
            runner = ranked[1] if len(ranked) > 1 else None
            margin = choice.times_s[runner] / choice.time_s - 1 if runner is not None else None
            measured = bool(self.per_device) and choice.batch / devices >= min(self.per_device)
            out.append(DeviceChoice(devices, choice, self._range_note(choice.batch, devices), agreement.get(devices),
                                    runner, margin, self.n_seeds, self.rules, self.decided, measured))
        return out

    def _agreement(self, chosen: dict[int, tuple[list[int], int]]) -> dict[int, float]:
        """Share of CHOICE_RESAMPLES refits, each on the seeds of every fitted batch resampled with
        replacement (steps, samples and throughput of a run stay together), that choose the same batch."""
        if self.n_seeds < 2 or not chosen:
            return {}
        rng = np.random.default_rng(CHOICE_SEED)
        hits = dict.fromkeys(chosen, 0)
        for _ in range(CHOICE_RESAMPLES):
            # Fitted batches only (every seed reached): the others add throughput, not steps, and stay as run.
            resampled = [Point(p.batch, [p.runs[i] for i in rng.integers(0, len(p.runs), len(p.runs))])
                         if p.all_reached else p for p in self.points]
            refit = _fit_parts(resampled)
            if refit is None or not refit[2].fit.physical or not refit[4]:
                continue
            tradeoff, per_device = refit[2], refit[4]
            for devices, (candidates, batch) in chosen.items():
                if best_batch(tradeoff, per_device, candidates, devices).batch == batch:
                    hits[devices] += 1
        return {devices: count / CHOICE_RESAMPLES for devices, count in hits.items()}


@dataclass
class NoiseAnalysis:
    present: bool  # any run recorded a noise scale
    fits: list[SeriesFit]
    too_few: dict[str, int]  # series without a fit -> distinct batch sizes that reached the target
    b_simple_all: list[float]  # b_simple_at_target of every run
    methods: Counter


def analyse(runs: list[Run], series: dict[str, list[Point]],
            rules: stats.Rules = stats.DEFAULT_RULES, require_noise: bool = True) -> NoiseAnalysis:
    """The fits of every series (Study.series) with enough batch sizes that reached the target (only where the
    runs measured the noise scale, unless `require_noise` is false: the fits need steps and samples only)."""
    present = any(has_noise_data(run) for run in runs)
    methods = Counter(noise_scale(run).get("method") for run in runs if has_noise_data(run))
    b_all = [value for run in runs if (value := b_simple_at_target(run)) is not None]
    fits, too_few = [], {}
    if present or not require_noise:
        for name, points in series.items():
            points = [p for p in points if any(run.target is not None for run in p.runs)]
            if not points:
                continue
            fit = _fit_series(name, points, rules)
            if fit is None:
                too_few[name] = sum(1 for p in points if p.all_reached and p.steps.mean is not None)
            else:
                fits.append(fit)
    return NoiseAnalysis(present, fits, too_few, b_all, methods)


def _outcome(point: Point) -> str:
    """`reached` (every seed), `reached by 1 of 3 seeds`, or the status of the runs that missed."""
    if point.all_reached:
        return "reached"
    if point.any_reached:
        return f"reached by {len(point.reached)} of {len(point.runs)} seeds"
    return point.outcome


def _fit_parts(points: list[Point], bootstrap: bool = False):
    """(batches, steps, tradeoff, samples, per-device throughput) from the batches where every seed reached the
    target (the mean over the seeds; one that some seed missed is not fitted: its steps would be those of the
    lucky seeds); None with fewer than 2 such batches. Without `bootstrap` the fit has no uncertainty (the
    refits of DeviceChoice's agreement need only the values)."""
    reached = [p for p in points if p.all_reached and p.steps.mean is not None]
    if len(reached) < 2 or len({p.batch for p in reached}) < 2:
        return None
    batches = [p.batch for p in reached]
    steps = [p.steps.mean for p in reached]
    samples = []
    for p in reached:
        measured = stat(run.get("samples_to_target") for run in p.runs if run.reached).mean
        samples.append(measured if measured else p.steps.mean * p.batch)
    tradeoff = fit_tradeoff(batches, steps, samples) if bootstrap else fit_tradeoff(batches, steps, samples,
                                                                                     resamples=0)
    per_device: dict[float, list[float]] = {}
    for p in points:
        for run in p.runs:
            if run.throughput and run.global_bs:
                size = _world_size(run)
                per_device.setdefault(run.global_bs / size, []).append(run.throughput / size)
    per_device_mean = {b: statistics.fmean(rates) for b, rates in sorted(per_device.items())}
    return batches, steps, tradeoff, samples, per_device_mean


def _low_end_fit(reached: list[Point]) -> TradeoffFit:
    """The fit on the low ends of the steps' intervals (the earliest each first step at the target can be):
    with the fit on their high ends (steps_to_target), it bounds what the intervals allow."""
    batches, steps = [], []
    for p in reached:
        batches.append(p.batch)
        steps.append(stat(run.steps_interval[0] if run.steps_interval else run.steps_to_target
                          for run in p.runs).mean)
    return fit_tradeoff(batches, steps, [s * b for s, b in zip(steps, batches, strict=True)])


def _fit_series(name: str, points: list[Point], rules: stats.Rules = stats.DEFAULT_RULES) -> SeriesFit | None:
    reached = [p for p in points if p.all_reached and p.steps.mean is not None]
    if len(reached) < 2:
        return None
    batches, steps, tradeoff, samples, per_device = _fit_parts(points, bootstrap=True)
    runs = [run for p in points for run in p.runs]
    inexact = sorted({p.batch for p in reached for run in p.runs if run.steps_interval})
    fit = SeriesFit(
        series=name, batches=batches, steps=steps, samples=samples, tradeoff=tradeoff,
        b_simple=[value for run in runs if (value := b_simple_at_target(run)) is not None],
        throughput={p.batch: p.throughput.mean for p in points if p.throughput.mean},
        per_device=per_device,
        train_time={p.batch: p.train_time.mean for p in reached if p.train_time.mean is not None},
        run_batches={p.batch: _outcome(p) for p in points},
        n_seeds=min(len(p.reached) for p in reached),
        incomplete={p.batch for p in points if not p.all_reached},
        points=points, rules=rules, inexact=inexact,
        low_tradeoff=_low_end_fit(reached) if inexact else None,
    )
    run_batches = list(fit.run_batches)
    fit.candidates = powers_of_two(min(run_batches) / 2, max(run_batches) * 4)
    return fit
