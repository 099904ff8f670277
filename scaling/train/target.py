"""The first optimizer step at which the evaluation metric reaches the target, and how sure that is.

Scheduled evaluations come every `eval_interval` steps, so the first one at the target (MLPerf's rule: accuracy
at or above it, or for `--target-loss` the evaluation loss at or below it), at step T, rounds steps-to-target up
by as much as that interval: at small batches, hundreds of steps. The metric is noisy from one step to the
next, so the target can be crossed anywhere before T, and lost again before the next evaluation: the only way to know the first step is to look at every step. So the search
keeps the training state of the moment training started and, when an evaluation reaches the target, trains
again from there, evaluating after every step, until the first step at the target. Every earlier step has
then been evaluated below it: the step is exact, and equals what a run evaluating after every step
(`--eval-every 1`) reports. The batches are a function of (seed, step) and the LR a function of the step, so
the replay retrains what the run trained; its per-step training losses, and its metric at the run's own
evaluations, must match what the run recorded, or the replay is not the run's trajectory and nothing it
found counts.

Where that certainty cannot be had, the result says `exact: false` and gives `interval`, the steps that
can still hold the first crossing:
- the replay was capped (`--exact-target-max-steps`) before it met the target: from the step after the
  last one replayed;
- the run was resumed from a checkpoint that does not hold the state at the start (one written by an
  earlier version of this tool): the steps before the resume point that no
  evaluation saw are unknown, the replay starts at the resume point;
- the replay did not reproduce the run (nondeterministic kernels, augmentation drawn in loader workers).
`steps_to_target` is then the upper end, the first evaluation at the target. The replay runs off the clock;
afterwards the state the run had reached is restored. Its cost (one replayed step and one evaluation per
step up to the crossing) is in docs/performance.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from scaling.record import RunRecord
from scaling.task import Target
from scaling.train.state import Snapshot

# Per-step training losses of the replay and of the run must agree to this relative tolerance for the
# replay to count as the run's own trajectory (float32 rounding of identical arithmetic gives 0); the
# accuracies at the run's own evaluations must agree exactly (same weights, same evaluation set), their
# losses to EVAL_LOSS_TOLERANCE (the replay's chunks are not the evaluation's batches, and a model's float32
# logits may round differently in a batch of another size).
LOSS_TOLERANCE = 1e-5
EVAL_LOSS_TOLERANCE = 1e-6


class Replay(Protocol):
    """What the search needs of the loop: its record (evaluations so far, the per-step losses it recorded,
    the step), snapshots of its training state, replaying one step, evaluating, and pausing its clock."""

    record: RunRecord

    def snapshot(self) -> Snapshot: ...

    def restore(self, snapshot: Snapshot) -> None: ...

    def replay_step(self, step: int) -> float: ...

    def reaches(self, target: Target, whole: bool) -> tuple[bool, float | None]: ...

    def paused(self) -> AbstractContextManager: ...


class TargetSearch:
    """Holds the training state of the moment training started (`start`) and, when an evaluation reaches the
    target, replays forward from it to the first step at the target (`find_first_step`)."""

    def __init__(self, loop: Replay, enabled: bool, max_steps: int):
        self.loop = loop
        self.enabled = enabled
        self.max_steps = max_steps
        self.base: Snapshot | None = None

    def start(self) -> None:
        """At the start of training: the state the replay starts from. A resumed run keeps the one its
        checkpoint saved (the loop sets `base`), or starts from the resume point if the checkpoint had none."""
        if self.enabled and self.max_steps > 0 and self.base is None:
            self.base = self.loop.snapshot()

    def find_first_step(self, target: Target, at_first_step: Callable[[], None] | None = None) -> dict:
        """The search record (docs/results.md). `at_first_step()` runs while the model holds the weights of the
        first step at the target (the noise probe), or those of the evaluation that reached it when the step
        is not exact. The loop is left in the state it had before the search."""
        loop = self.loop
        end_step = loop.record.step
        start = self.base.step if self.base is not None else end_step
        unseen = _unevaluated_steps(loop.record.history, end_step)
        if not unseen:  # every step before this one was evaluated (--eval-every 1): nothing to replay
            if at_first_step is not None:
                at_first_step()
            return _record("evaluation", end_step, end_step, [end_step, end_step], exact=True, metric=target.metric)
        if self.base is None:
            if at_first_step is not None:
                at_first_step()
            return _record("evaluation", end_step, unseen[0], [end_step, end_step], exact=False,
                           reason="--exact-target false" if not self.enabled else "--exact-target-max-steps 0",
                           metric=target.metric)
        began = time.perf_counter()
        with loop.paused():
            end = loop.snapshot()
            loop.restore(self.base)
            replay = self._replay(start, min(end_step, start + self.max_steps), target)
            exact, low, first, reason = self._judge(replay, start, end_step, unseen)
            at_replayed = first == replay["first"]
            if at_replayed and at_first_step is not None:
                at_first_step()  # the loop holds the reported step: the first one the replay saw at the target
            loop.restore(end)
            if not at_replayed and at_first_step is not None:
                at_first_step()  # at the evaluation that reached the target, the reported step
        return _record("replay", first, low, [start, end_step], exact=exact, reason=reason,
                       verified=replay["worst"] <= LOSS_TOLERANCE and replay["matches"],
                       max_loss_rel_diff=replay["worst"], evaluations=len(replay["values"]), metric=target.metric,
                       values={str(start): replay["values"]}, seconds=time.perf_counter() - began)

    def _replay(self, from_step: int, to_step: int, target: Target) -> dict:
        """Train again from `from_step` (the loop holds that state), evaluating after every step, up to the
        first step at the target or `to_step`. An evaluation stops once what it has not seen cannot change
        the answer (its value is then None); at the run's own evaluations it runs whole. Returns what it
        saw: the first step at the target (or None), the targeted metric's values, the worst relative
        difference between replayed and recorded losses, and whether its values at the run's own
        evaluations equal the run's."""
        loop = self.loop
        recorded = {entry["step"]: target.of(entry) for entry in loop.record.history}
        values: list[float | None] = []
        worst, matches, first = 0.0, True, None
        for step in range(from_step, to_step):
            replayed = loop.replay_step(step)
            worst = max(worst, _relative_difference(replayed, loop.record.train_loss[step]))
            reached, value = loop.reaches(target, whole=step + 1 in recorded)
            values.append(value)
            if step + 1 in recorded and not _same(target.metric, value, recorded[step + 1]):
                matches = False
            if reached:
                first = step + 1
                break
        return {"first": first, "values": values, "worst": worst, "matches": matches,
                "last": from_step + len(values)}

    def _judge(self, replay: dict, start: int, end_step: int,
               unseen: list[int]) -> tuple[bool, int, int, str | None]:
        """(exact, the first and the last step that can still be the first crossing, why not exact)."""
        if replay["worst"] > LOSS_TOLERANCE or not replay["matches"]:
            return False, unseen[0], end_step, "the replay did not reproduce the run's losses and evaluations"
        before = [step for step in unseen if step <= start]
        if replay["first"] is None:
            low = before[0] if before else replay["last"] + 1
            return (False, low, end_step,
                    f"the replay stopped at its limit of {self.max_steps} steps (--exact-target-max-steps)")
        if before:
            return (False, before[0], replay["first"],
                    f"resumed at step {start}: steps before it that no evaluation saw are unknown")
        return True, replay["first"], replay["first"], None


def _unevaluated_steps(history: list[dict], end_step: int) -> list[int]:
    """Steps before `end_step` after which no evaluation ran (each could hold the first crossing)."""
    seen = {entry["step"] for entry in history}
    return [step for step in range(1, end_step) if step not in seen]


def _record(method: str, first: int, low: int, window: list[int], exact: bool, reason: str | None = None,
            **details) -> dict:
    """The search record: `interval` [low, high] holds the first step at the target (one step when exact)."""
    return {"method": method, "exact": exact, "first_step": first, "interval": [low, first],
            "window": window, "reason": reason, **details}


def _same(metric: str, replayed: float | None, recorded: float | None) -> bool:
    """The replay's value at one of the run's own evaluations is the run's: accuracy exactly, loss to
    EVAL_LOSS_TOLERANCE."""
    if metric == "accuracy" or replayed is None or recorded is None:
        return replayed == recorded
    return abs(replayed - recorded) <= EVAL_LOSS_TOLERANCE * max(abs(recorded), 1e-12)


def _relative_difference(replayed: float, recorded: float | None) -> float:
    if recorded is None:  # the run recorded a non-finite loss here: it cannot be checked, so it fails
        return float("inf")
    if not math.isfinite(replayed):
        return float("inf")
    return abs(replayed - recorded) / max(abs(recorded), 1e-12)
