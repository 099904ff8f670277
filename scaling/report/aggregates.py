"""Aggregates over seeds that several questions share: a statistic of per-seed values (Stat), the runs of one
series at one global batch (Point, series_points), the per-seed values a decision compares, and the batch
ladder. Pure functions of runs and configurations; no formatting, no plotting.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from scaling.report.runs import Configuration, Run


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


def target_points(points: list[Point]) -> list[Point]:
    """Points whose runs chase a target (throughput probes without one have no time to target)."""
    return [p for p in points if any(run.target is not None for run in p.runs)]


def reached_times(runs: list[Run]) -> tuple[list[float | None], list[float]]:
    """Per-seed train times to target of the runs that reached it, and their resolutions."""
    reached = [run for run in runs if run.reached and run.train_time is not None]
    return [run.train_time for run in reached], [run.time_resolution or 0.0 for run in reached]


def reached_steps(runs: list[Run]) -> tuple[list[float | None], list[float]]:
    """Per-seed steps to target of the runs that reached it, and their resolutions."""
    reached = [run for run in runs if run.reached]
    return [run.steps_to_target for run in reached], [run.step_resolution or 0.0 for run in reached]


# A per-seed quantity a decision compares: runs -> (values, resolutions), e.g. reached_times or reached_steps.
Measure = Callable[[list[Run]], tuple[list, list[float]]]


def throughputs(configuration: Configuration) -> list[float]:
    """The per-seed throughputs (samples/s) of a configuration's runs that recorded one."""
    return [run.throughput for run in configuration.runs if run.throughput]


def ladder(items: list, batch_of) -> list:
    """Items (sorted by batch) thinned to a ladder whose batches grow by at least 1.5x per rung."""
    kept: list = []
    for item in items:
        if not kept or batch_of(item) >= 1.5 * batch_of(kept[-1]):
            kept.append(item)
    return kept
