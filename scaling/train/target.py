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
from scaling.targets import easiest_first
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
    target, replays forward from it to the first step at the target (`find_first_step`), finding on the way the
    first step at each easier level of the same metric (`--target-levels`); a run that ends short of its
    target replays to the levels its evaluations met (`find_levels`)."""

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

    def find_first_step(self, target: Target, at_first_step: Callable[[], None] | None = None,
                        levels: list[Target] = ()) -> tuple[dict, list[tuple[Target, dict]]]:
        """The search record of the target (docs/results.md) and one of each level in `levels` (easier values
        of its metric: every one is met by the step that meets the target). `at_first_step()` runs while the
        model holds the weights of the first step at the target (the noise probe), or those of the evaluation
        that reached it when the step is not exact. The loop is left in the state it had before the search.
        The levels come back easiest first, each with its record."""
        ordered = easiest_first(levels)
        records = self._search([*ordered, target], at_first_step)
        return records[-1], list(zip(ordered, records[:-1], strict=True))

    def find_levels(self, levels: list[Target]) -> list[tuple[Target, dict]]:
        """For a run that ended without reaching its target: the search records of the levels its evaluations
        met (easiest first), from one replay up to the first evaluation at the hardest of them."""
        history = self.loop.record.history
        met = [level for level in easiest_first(levels) if _first_evaluation_at(level, history) is not None]
        return list(zip(met, self._search(met), strict=True)) if met else []

    def _search(self, targets: list[Target], at_first_step: Callable[[], None] | None = None) -> list[dict]:
        """One record per target (easiest first; each met by a scheduled evaluation, the last at the latest
        one): replayed from the start up to the first step at the last, evaluating every step."""
        loop = self.loop
        history = loop.record.history
        metric = targets[-1].metric
        uppers = [_first_evaluation_at(t, history) for t in targets]
        end_step = uppers[-1]
        unseen = _unevaluated_steps(history, end_step)
        if not unseen or self.base is None:  # every step was evaluated (--eval-every 1), or no replay
            if at_first_step is not None:
                at_first_step()
            reason = None if not unseen else ("--exact-target false" if not self.enabled
                                              else "--exact-target-max-steps 0")
            out = []
            for upper in uppers:
                before = [step for step in unseen if step < upper]
                out.append(_record("evaluation", upper, before[0] if before else upper, [upper, upper],
                                   exact=not before, reason=reason if before else None, metric=metric))
            return out
        start = self.base.step
        began = time.perf_counter()
        with loop.paused():
            end = loop.snapshot()
            loop.restore(self.base)
            replay = self._replay(start, min(end_step, start + self.max_steps), targets)
            judged = [self._judge(replay, k, start, upper, [s for s in unseen if s < upper])
                      for k, upper in enumerate(uppers)]
            at_replayed = judged[-1][2] == replay["firsts"][-1]
            if at_replayed and at_first_step is not None:
                at_first_step()  # the loop holds the reported step: the first one the replay saw at the target
            loop.restore(end)
            if not at_replayed and at_first_step is not None:
                at_first_step()  # at the evaluation that reached the target, the reported step
        seconds = time.perf_counter() - began
        verified = replay["worst"] <= LOSS_TOLERANCE and replay["matches"]
        out = [_record("replay", first, low, [start, upper], exact=exact, reason=reason, verified=verified,
                       max_loss_rel_diff=replay["worst"], metric=metric)
               for (exact, low, first, reason), upper in zip(judged, uppers, strict=True)]
        out[-1].update(evaluations=len(replay["values"]), values={str(start): replay["values"]}, seconds=seconds)
        return out

    def _replay(self, from_step: int, to_step: int, targets: list[Target]) -> dict:
        """Train again from `from_step` (the loop holds that state), evaluating after every step, up to the
        first step at the last of `targets` (easiest first) or `to_step`, noting the first step at each. An
        evaluation stops once what it has not seen cannot change the answer (its value is then None); at the
        run's own evaluations it runs whole. Returns what it saw: the first step at each target (None where
        not met), the metric's values, the worst relative difference between replayed and recorded losses, and
        whether its values at the run's own evaluations equal the run's."""
        loop = self.loop
        recorded = {entry["step"]: targets[-1].of(entry) for entry in loop.record.history}
        values: list[float | None] = []
        firsts: list[int | None] = [None] * len(targets)
        worst, matches, sought = 0.0, True, 0
        for step in range(from_step, to_step):
            replayed = loop.replay_step(step)
            worst = max(worst, _relative_difference(replayed, loop.record.train_loss[step]))
            reached, value = loop.reaches(targets[sought], whole=step + 1 in recorded)
            values.append(value)
            if step + 1 in recorded and not _same(targets[-1].metric, value, recorded[step + 1]):
                matches = False
            while reached:  # this step meets the level sought: note it, and ask the next (harder) one
                firsts[sought] = step + 1
                sought += 1
                if sought == len(targets):
                    break
                reached = loop.reaches(targets[sought], whole=False)[0]
            if sought == len(targets):
                break
        return {"firsts": firsts, "values": values, "worst": worst, "matches": matches,
                "last": from_step + len(values)}

    def _judge(self, replay: dict, index: int, start: int, upper: int,
               unseen: list[int]) -> tuple[bool, int, int, str | None]:
        """For target `index` of the replay, first met by a scheduled evaluation at step `upper` with the steps
        in `unseen` before it not evaluated: (exact, the first and the last step that can still be the first
        crossing, why not exact)."""
        if not unseen:
            return True, upper, upper, None
        if replay["worst"] > LOSS_TOLERANCE or not replay["matches"]:
            return False, unseen[0], upper, "the replay did not reproduce the run's losses and evaluations"
        before = [step for step in unseen if step <= start]
        first = replay["firsts"][index]
        if first is None:
            low = before[0] if before else replay["last"] + 1
            return (False, low, upper,
                    f"the replay stopped at its limit of {self.max_steps} steps (--exact-target-max-steps)")
        if before:
            return (False, before[0], first,
                    f"resumed at step {start}: steps before it that no evaluation saw are unknown")
        return True, first, first, None


def _first_evaluation_at(target: Target, history: list[dict]) -> int | None:
    """The step of the first scheduled evaluation at the target, None if none met it."""
    return next((entry["step"] for entry in history if target.reached(entry["accuracy"], entry["loss"])), None)


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
