"""Evaluation over the whole evaluation set, and when it is due."""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from scaling.config import RunConfig
from scaling.data.delivery import fetch_batch
from scaling.task import CLASSIFICATION, Task

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
def evaluate_against(model: nn.Module, dataset: Any, accelerator: Accelerator, task: Task, target: float,
                     whole: bool = False) -> tuple[bool, float | None]:
    """Whether the task's metric over the eval set reaches `target`, evaluated chunk by chunk and stopped as
    soon as the samples not yet seen cannot change the answer (scaling/task.py, `decided`): far from the
    target a few chunks settle it. Returns (reached, the metric when the whole set was evaluated, else None);
    `whole` evaluates everything. The answer is the one the whole evaluation gives, exactly."""
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
        answer = task.decided(totals.tolist(), len(dataset), target)  # host sync: once per chunk
        if answer is not None and not whole:
            break
    model.train(was_training)
    complete = totals[2].item() == len(dataset)
    metric = task.metrics(totals.tolist())[0] if complete else None
    return bool(answer if answer is not None else metric >= target), metric


def steps_per_eval(cfg: RunConfig, steps_per_epoch: int) -> int:
    if cfg.eval_every is not None:
        return cfg.eval_every
    return max(1, round(cfg.eval_every_epochs * steps_per_epoch))
