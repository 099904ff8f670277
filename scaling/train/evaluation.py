"""Evaluation over the whole evaluation set, and when it is due."""

from __future__ import annotations

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


def steps_per_eval(cfg: RunConfig, steps_per_epoch: int) -> int:
    if cfg.eval_every is not None:
        return cfg.eval_every
    return max(1, round(cfg.eval_every_epochs * steps_per_epoch))
