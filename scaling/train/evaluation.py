"""Evaluation over the whole evaluation set, when it is due, and what a run's evaluations say about whether
it still learns (`StallRule`: the `stalled` status)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from scaling.config import RunConfig
from scaling.data.delivery import fetch_batch
from scaling.files import finite_or_none
from scaling.task import CLASSIFICATION, Target, Task

EVAL_BATCH_SIZE = 1024


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, accelerator: Accelerator, task: Task = CLASSIFICATION
             ) -> tuple[float, float]:
    """The task's metric (accuracy) and mean loss over the whole eval set, sharded over processes and summed."""
    was_training = model.training
    model.eval()
    shard = torch.arange(accelerator.process_index, len(dataset), accelerator.num_processes)
    device = accelerator.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # the task's sums: loss, correct, count
    for start in range(0, len(shard), EVAL_BATCH_SIZE):
        inputs, labels = fetch_batch(dataset, shard[start : start + EVAL_BATCH_SIZE])
        inputs, labels = inputs.to(device), labels.to(device)
        with accelerator.autocast():
            logits = model(inputs)
        totals += task.evaluation_sums(logits, labels)
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    return task.metrics(totals.tolist())  # host sync: once per evaluation


DECIDE_CHUNK = 256  # samples per process between two looks at whether the rest can change the answer


@torch.no_grad()
def evaluate_against(model: nn.Module, dataset: Any, accelerator: Accelerator, task: Task, target: Target,
                     units: int, whole: bool = False) -> tuple[bool, float | None]:
    """Whether the targeted metric over the eval set (of `units` samples or target tokens: task.units) reaches
    `target`, evaluated chunk by chunk and stopped as soon as what is not yet seen cannot change the answer
    (scaling/task.py, `Target.decided`): far from the target a few chunks settle it. Returns (reached, the
    metric when the whole set was evaluated, else None); `whole` evaluates everything. The answer is the one
    the whole evaluation gives, exactly."""
    was_training = model.training
    model.eval()
    shard = torch.arange(accelerator.process_index, len(dataset), accelerator.num_processes)
    chunks = math.ceil(math.ceil(len(dataset) / accelerator.num_processes) / DECIDE_CHUNK)  # alike on every rank
    device = accelerator.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    answer = None
    for index in range(chunks):
        part = shard[index * DECIDE_CHUNK:(index + 1) * DECIDE_CHUNK]
        sums = torch.zeros(3, device=device, dtype=torch.float64)
        if len(part):
            inputs, labels = fetch_batch(dataset, part)
            with accelerator.autocast():
                sums = task.evaluation_sums(model(inputs.to(device)), labels.to(device))
        totals += accelerator.reduce(sums, reduction="sum") if accelerator.num_processes > 1 else sums
        answer = target.decided(totals.tolist(), units)  # host sync: once per chunk
        if answer is not None and not whole:
            break
    model.train(was_training)
    complete = index == chunks - 1
    value = None
    if complete:
        accuracy, loss = task.metrics(totals.tolist())
        value = accuracy if target.metric == "accuracy" else finite_or_none(loss)
    return bool(answer), value


def steps_per_eval(cfg: RunConfig, steps_per_epoch: int) -> int:
    if cfg.eval_every is not None:
        return cfg.eval_every
    return max(1, round(cfg.eval_every_epochs * steps_per_epoch))


# ---- a run that has stopped learning: status "stalled" (docs/results.md, `stall`) ----
CHANCE_TOLERANCE = 0.02  # an evaluation loss above (1 - 2%) x the chance loss is at chance
ACCURACY_PROGRESS = 0.01  # progress: accuracy 1 point above its value at the last progress, ...
LOSS_PROGRESS = 0.01  # ... or the loss 1% of the chance loss below it


def chance_loss(num_classes: int) -> float:
    """The cross-entropy of scoring every class alike, ln(C): what a classifier that learned nothing scores.
    The best constant prediction scores the entropy of the labels, at most ln(C): with unbalanced classes
    it lies below, and a stuck model there may not count as at chance (the rule then fails safe)."""
    return math.log(num_classes)


@dataclass(frozen=True)
class StallRule:
    """Whether a run has stalled, from its evaluation history alone (the same on every process: evaluations
    are reduced over processes, so all stop at the same step with no communication of their own).

    Stalled at an evaluation when it and the evaluations before it, back over at least `evaluations` (K) of
    them spanning at least `min_steps` optimizer steps (one epoch: evaluations every few steps cannot stop a
    run after a handful of steps), are each
      - after warmup (step > warmup_steps: the LR is still rising before it, and a run may sit at chance
        until it is large enough),
      - at chance: loss None (non-finite) or >= (1 - CHANCE_TOLERANCE) x ln(C),
      - after the last progress: an evaluation makes progress when its accuracy is more than
        ACCURACY_PROGRESS above, or its loss more than LOSS_PROGRESS x ln(C) below, the values of the last
        evaluation that made progress (the run's first evaluation is the first reference: evaluations come
        after training steps, none scores the initial weights).

    Conservative on purpose: a run stopped wrongly turns into a wrong finding (a configuration reported as
    never reaching the target), a run not stopped only costs its budget. So a plateau above chance never
    stalls a run (one often precedes an LR decay or a sudden drop); progress is measured from the last
    evaluation that made progress, not the best one since (as Keras' EarlyStopping with min_delta), so a
    run creeping up slowly accumulates progress rather than being judged per evaluation; and accuracy
    counts as well as the loss, because a model whose scores are still small (loss near ln(C) early on)
    can already rank the classes. `evaluations` 0 turns the rule off.
    """

    evaluations: int
    chance_loss: float
    warmup_steps: int
    min_steps: int

    def check(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The evidence (result.json's `stall`) when the run has stalled at its last evaluation, else None."""
        if self.evaluations <= 0 or self.chance_loss <= 0 or not history:
            return None
        reference = self._last_progress(history)
        window: list[dict[str, Any]] = []
        for entry in reversed(history[reference + 1:]):
            if entry["step"] <= self.warmup_steps or not self._at_chance(entry["loss"]):
                break
            window.insert(0, entry)
        if len(window) < self.evaluations or window[-1]["step"] - window[0]["step"] < self.min_steps:
            return None
        best = history[reference]
        return {"evaluations": len(window), "steps": [entry["step"] for entry in window],
                "accuracies": [entry["accuracy"] for entry in window],
                "losses": [entry["loss"] for entry in window],
                "chance_loss": self.chance_loss, "tolerance": CHANCE_TOLERANCE, "min_steps": self.min_steps,
                "last_progress": {"step": best["step"], "accuracy": best["accuracy"], "loss": best["loss"]},
                "warmup_steps": self.warmup_steps}

    def _at_chance(self, loss: float | None) -> bool:
        return loss is None or loss >= (1 - CHANCE_TOLERANCE) * self.chance_loss

    def _last_progress(self, history: list[dict[str, Any]]) -> int:
        """The index of the last evaluation that made progress over the one before it that did."""
        last = 0
        for index in range(1, len(history)):
            accuracy, loss = history[index]["accuracy"], history[index]["loss"]
            ref_accuracy, ref_loss = history[last]["accuracy"], history[last]["loss"]
            margin = LOSS_PROGRESS * self.chance_loss
            better_loss = loss is not None and (ref_loss is None or loss < ref_loss - margin)
            if accuracy > ref_accuracy + ACCURACY_PROGRESS or better_loss:
                last = index
        return last
