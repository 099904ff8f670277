"""A run's quality target: the metric, its value and its direction. Without torch, so that the report (which
reads results, and never trains) can use it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Target:
    """What stops a run at its quality goal: an evaluation metric (`accuracy`, reached at or above `value`, or
    `loss`, at or below it: nats per token for a language model) over the whole evaluation set."""

    metric: str  # "accuracy" | "loss"
    value: float

    @property
    def direction(self) -> str:
        """"max" (higher is better: at or above the value) or "min" (at or below)."""
        return "max" if self.metric == "accuracy" else "min"

    def reached(self, accuracy: float, loss: float | None) -> bool:
        if self.metric == "accuracy":
            return accuracy >= self.value
        return loss is not None and loss <= self.value

    def of(self, entry: dict) -> float | None:
        """The targeted metric of an evaluation (an entry of the run's history)."""
        return entry[self.metric]

    def decided(self, sums: list[float], total: int) -> bool | None:
        """Whether the metric over all `total` units (samples, or target tokens) reaches the target whatever the
        units not yet in `sums` (loss sum, correct, seen) hold: True or False once it is settled, None while it
        can still go either way. Accuracy: settled when the correct units so far already reach it, or not even
        all the rest correct would. Loss: a cross-entropy is >= 0, so the loss so far over all `total` units is
        a floor on the final mean: above the target it is settled (not reached); reached is known only once
        every unit is seen. The same formula as the whole evaluation's."""
        loss_sum, correct, seen = sums
        if self.metric == "accuracy":
            if correct / total >= self.value:
                return True
            if (correct + total - seen) / total < self.value:
                return False
            return None
        if loss_sum / total > self.value:  # NaN compares False: a non-finite loss is settled at the end
            return False
        if seen >= total:
            return loss_sum / total <= self.value
        return None

    def label(self) -> str:
        """`90% accuracy`, `loss 1.60`."""
        return f"{self.value * 100:g}% accuracy" if self.metric == "accuracy" else f"loss {self.value:.2f}"


def run_target(target_accuracy: float | None, target_loss: float | None) -> Target | None:
    """The run's target from its config (config.validate allows at most one)."""
    if target_loss is not None:
        return Target("loss", target_loss)
    return Target("accuracy", target_accuracy) if target_accuracy is not None else None


def easiest_first(levels: list[Target]) -> list[Target]:
    """Levels of one metric from the easiest to the hardest, the order a run meets them: accuracies rising,
    losses falling."""
    return sorted(levels, key=lambda t: t.value, reverse=any(t.direction == "min" for t in levels))


def pace_milestones(pace: list[float]) -> list[tuple[int, float]]:
    """cfg.pace, flat `step, value, step, value, ...` (config.validate checks it), as (step, value) pairs."""
    return [(int(pace[i]), float(pace[i + 1])) for i in range(0, len(pace), 2)]


def behind_pace(target: Target, milestones: list[tuple[int, float]], history: list[dict],
                step: int) -> tuple[int, float] | None:
    """The first milestone (step, value) the run has fallen behind at `step`: one whose step it has passed
    while the best value of its evaluations so far has not reached the milestone's value. None when it keeps
    up. A tuned study sets the milestones from the best trial at the batch so far, each at stop_factor x the
    step where that trial got there (scaling/study/tune.py, `pace_for`): a trial behind one of them needs more
    than stop_factor x the best's steps to reach that level, and is stopped as it can no longer win."""
    values = [v for v in (target.of(entry) for entry in history) if v is not None and math.isfinite(v)]
    if not values:
        best = None
    else:
        best = max(values) if target.direction == "max" else min(values)
    for milestone_step, value in milestones:
        if milestone_step > step:
            break
        if best is None or (best < value if target.direction == "max" else best > value):
            return milestone_step, value
    return None
