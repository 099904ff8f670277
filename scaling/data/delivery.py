"""Data delivery: the micro-batches each process trains on, and fetching a batch of samples by index.

In-memory tensors (the fast path) are moved to the device once and indexed a whole batch at a time; any
other map-style dataset goes through a DataLoader whose batch sampler follows the same global batches.
"""

from __future__ import annotations

from typing import Any

import torch

from scaling.batching import GlobalBatchSampler
from scaling.config import RunConfig
from scaling.data.tensors import TensorPair


def fetch_batch(dataset: Any, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the samples at `indices`: one index op for in-memory tensors, else one item at a
    time, stacked (the default collation of a DataLoader over (tensor, int) pairs)."""
    if isinstance(dataset, TensorPair):
        return dataset.batch(indices.to(dataset.labels.device))
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])


def sample_batch(dataset: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` samples (cycling when the dataset is smaller): for memory trials and FLOP counts."""
    return fetch_batch(dataset, torch.arange(size) % len(dataset))


class BatchSource:
    """This process's micro-batches for one optimizer step.

    In-memory tensors (the fast path) are moved to the device once and indexed a whole batch at a time;
    any other map-style dataset goes through a DataLoader whose batch sampler follows the same global
    batches, with the configured workers, pinning and prefetching. Batches may still be on the host: the
    training step copies them (and times the copy).
    """

    def __init__(self, dataset: Any, sampler: GlobalBatchSampler, process_index: int, device: torch.device,
                 cfg: RunConfig):
        self.sampler = sampler
        self.process_index = process_index
        self.fast = isinstance(dataset, TensorPair) and cfg.fast_path
        self._tensors = dataset.to(device) if self.fast else None
        self.dataset = dataset
        self._cfg = cfg
        self._iterator = None

    def start(self, first_step: int) -> None:
        if not self.fast:
            cfg = self._cfg
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=StepBatchSampler(self.sampler, self.process_index, first_step),
                num_workers=cfg.num_workers, pin_memory=cfg.pin_memory, prefetch_factor=cfg.prefetch_factor,
                persistent_workers=cfg.persistent_workers,
            )
            self._iterator = iter(loader)

    def micro_batches(self, step: int):
        if self.fast:
            for indices in self.sampler.micro_batches(step, self.process_index):
                yield self._tensors.batch(indices.to(self._tensors.labels.device, non_blocking=True))
        else:
            for _ in range(self.sampler.plan.micro_steps_per_process):
                yield next(self._iterator)

    def replay_micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of any step again, outside the loader's stream (the same samples; a loader's
        random augmentation, drawn in its workers, is not reproduced)."""
        if self.fast:
            return list(self.micro_batches(step))
        return [fetch_batch(self.dataset, indices) for indices in self.sampler.micro_batches(step, self.process_index)]

    def describe(self) -> str:
        if self.fast:
            return "in-memory tensors on the device, whole-batch indexing"
        cfg = self._cfg
        return (f"DataLoader, num_workers={cfg.num_workers}, pin_memory={cfg.pin_memory}, "
                f"prefetch_factor={cfg.prefetch_factor}, persistent_workers={cfg.persistent_workers}")


class StepBatchSampler(torch.utils.data.Sampler):
    """Index lists for this process's micro-batches, step after step, without end."""

    def __init__(self, sampler: GlobalBatchSampler, process_index: int, first_step: int):
        self.sampler = sampler
        self.process_index = process_index
        self.first_step = first_step

    def __iter__(self):
        step = self.first_step
        while True:
            for indices in self.sampler.micro_batches(step, self.process_index):
                yield indices.tolist()
            step += 1
