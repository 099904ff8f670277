"""The exact optimizer step at which the evaluation metric first reaches the target.

Scheduled evaluations come every `eval_interval` steps, so the first one at or above the target (MLPerf's
rule) rounds steps-to-target up by as much as that interval: at small batches, thousands of steps. Here the
training state is kept (in memory) after every evaluation below the target; when an evaluation reaches it,
the state of the previous evaluation is restored and that window is replayed, evaluating after every step,
up to the first step at or above the target (and earlier windows too while the target was within reach:
`TargetSearch`). The batches are a function of (seed, step) and the LR a function
of the step, so the replay retrains exactly what the run trained: its per-step training losses are compared
with the ones the run recorded, and the step counts as exact only when they agree (docs/clock.md). The
replay runs off the clock; afterwards the state the run had reached is restored.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from scaling.record import RunRecord
from scaling.train.state import Snapshot

# The search goes back while an evaluation at either end of a window is within NEAR_SIGMAS step-to-step
# standard deviations of the target, through as many windows as SNAPSHOT_BUDGET_BYTES of held training
# states allow (one state per window, between MIN_WINDOWS and MAX_WINDOWS of them).
NEAR_SIGMAS = 3.0
SNAPSHOT_BUDGET_BYTES = 512 * 2**20
MIN_WINDOWS, MAX_WINDOWS = 4, 64
# Per-step training losses of the replay and of the run must agree to this relative tolerance for the
# replay to count as the run's own trajectory (float32 rounding of identical arithmetic gives 0).
LOSS_TOLERANCE = 1e-5


class Replay(Protocol):
    """What the search needs of the loop: its record (evaluations so far, the per-step losses it recorded,
    the step), snapshots of its training state, replaying one step, evaluating, and pausing its clock."""

    record: RunRecord

    def snapshot(self) -> Snapshot: ...

    def restore(self, snapshot: Snapshot) -> None: ...

    def replay_step(self, step: int) -> float: ...

    def evaluate_metric(self) -> float: ...

    def paused(self) -> AbstractContextManager: ...


class TargetSearch:
    """Keeps the states of the latest evaluations below the target and, when an evaluation reaches it,
    replays the windows before it to find the first step at the target.

    The window that ends at the crossing evaluation is always replayed. Accuracy from one step to the next
    is noisy, so the target can be crossed briefly inside an earlier window and lost again before that
    window's evaluation; the search therefore goes on backwards, window by window, while an evaluation at
    either end of the window lies within NEAR_SIGMAS standard deviations of the target (sigma: the
    step-to-step spread of the accuracies replayed so far), through as many windows as the states held in
    memory allow (SNAPSHOT_BUDGET_BYTES). A search that stops at that limit, or whose replay does not
    reproduce the run's losses, is not exact: the result then gives the first evaluation at the target and
    the window.
    """

    def __init__(self, loop: Replay, enabled: bool):
        self.loop = loop
        self.enabled = enabled
        self.bases: deque[Snapshot] | None = None

    def window_start(self) -> None:
        """At the start of training and after every evaluation below the target."""
        if self.enabled:
            snapshot = self.loop.snapshot()
            if self.bases is None:
                windows = max(MIN_WINDOWS, min(MAX_WINDOWS, SNAPSHOT_BUDGET_BYTES // max(1, snapshot.nbytes())))
                self.bases = deque(maxlen=windows)
            self.bases.append(snapshot)

    def find_first_step(self, target: float, at_first_step: Callable[[], None] | None = None) -> dict:
        """Replay windows before the crossing evaluation; returns the search record (docs/results.md).
        `at_first_step()` runs while the model holds the weights of the first step at the target (the noise
        probe). The loop is left in the state it had before the search."""
        loop = self.loop
        end_step = loop.record.step
        if not self.enabled or not self.bases or end_step - self.bases[-1].step <= 1:
            if at_first_step is not None:
                at_first_step()
            return {"method": "evaluation", "window": [end_step - 1, end_step], "exact": self.enabled,
                    "first_step": end_step, "verified": None, "windows": 0, "evaluations": 0, "seconds": 0.0}
        start = time.perf_counter()
        with loop.paused():
            end = loop.snapshot()
            first, accuracies, worst, complete, low = self._search(end_step, target)
            exact = first is not None and worst <= LOSS_TOLERANCE and complete
            if exact and at_first_step is not None:
                base = max((b for b in self.bases if b.step < first), key=lambda b: b.step)
                loop.restore(base)
                self._replay(base.step, first, target=None)
                at_first_step()
            loop.restore(end)
            if not exact and at_first_step is not None:
                at_first_step()  # at the first evaluation at the target, which is then the reported step
        return {"method": "replay", "window": [low, end_step], "exact": exact,
                "first_step": first if exact else end_step, "verified": worst <= LOSS_TOLERANCE,
                "complete": complete, "max_loss_rel_diff": worst, "windows": len(accuracies),
                "evaluations": sum(len(a) for a in accuracies.values()),
                "accuracies": {str(k): v for k, v in sorted(accuracies.items())},
                "seconds": time.perf_counter() - start}

    def _search(self, end_step: int, target: float):
        """Windows from the newest backwards. Returns (first step at the target or None, replayed accuracies
        per window start, worst relative loss difference, whether the search ended by the rule, the first
        step searched)."""
        evaluated = {h["step"]: h["accuracy"] for h in self.loop.record.history}
        bases = list(self.bases)
        first, worst, replayed = None, 0.0, []
        accuracies: dict[int, list[float]] = {}
        window_end = end_step
        for index in range(len(bases) - 1, -1, -1):
            base = bases[index]
            if window_end != end_step:
                ends = [evaluated.get(base.step), evaluated.get(window_end)]
                margin = NEAR_SIGMAS * _step_to_step_sigma(replayed)
                if max((a for a in ends if a is not None), default=0.0) < target - margin:
                    return first, accuracies, worst, True, window_end
            self.loop.restore(base)
            found, window_accuracies, window_worst = self._replay(base.step, window_end, target)
            accuracies[base.step] = window_accuracies
            replayed += window_accuracies
            worst = max(worst, window_worst)
            first = found if found is not None else first
            window_end = base.step
        # Every window back to the start of training was searched; after a resume, the windows before it
        # cannot be, so the search is complete only from step 0.
        start = bases[0].step
        return first, accuracies, worst, start == 0, start

    def _replay(self, from_step: int, to_step: int, target: float | None) -> tuple[int | None, list[float], float]:
        """Train again from `from_step` (the loop holds that state) up to `to_step`, evaluating after
        every step when a target is given, stopping at the first step at or above it. Returns (that step or
        None, the accuracies, worst relative difference between replayed and recorded losses)."""
        loop = self.loop
        accuracies: list[float] = []
        worst = 0.0
        for step in range(from_step, to_step):
            replayed = loop.replay_step(step)
            worst = max(worst, _relative_difference(replayed, loop.record.train_loss[step]))
            if target is None:
                continue
            accuracies.append(loop.evaluate_metric())
            if accuracies[-1] >= target:
                return step + 1, accuracies, worst
        return None, accuracies, worst


def _step_to_step_sigma(accuracies: list[float]) -> float:
    """The noise of one evaluation's accuracy from step to step: the standard deviation of successive
    differences over sqrt(2) (each difference holds two independent draws); 0 with fewer than 3 values."""
    if len(accuracies) < 3:
        return 0.0
    diffs = [b - a for a, b in zip(accuracies, accuracies[1:], strict=False)]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / 2)


def _relative_difference(replayed: float, recorded: float | None) -> float:
    if recorded is None:  # the run recorded a non-finite loss here: it cannot be checked, so it fails
        return float("inf")
    return abs(replayed - recorded) / max(abs(recorded), 1e-12)
