"""Data delivery: the micro-batches each process trains on, and fetching a batch of samples by index.

In-memory tensors (the fast path) are moved to the device once and indexed a whole batch at a time; any
other map-style dataset goes through a DataLoader whose batch sampler follows the same global batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from scaling.batching import GlobalBatchSampler
from scaling.config import ConfigError, RunConfig
from scaling.data.tensors import TensorPair, non_finite_rows

# `--materialize auto` holds a map-style dataset in memory when it is at most this large and reading it
# once would take at most this long (estimated from the first items).
MATERIALIZE_MAX_BYTES = 512 * 2**20
MATERIALIZE_MAX_SECONDS = 60.0


def fetch_batch(dataset: Any, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the samples at `indices`, stacked (the default collation of a DataLoader over
    (tensor, int) pairs): one index op for in-memory tensors; one `__getitems__(list of indices)` call for a
    dataset that has it (the batched-fetch protocol a DataLoader also uses, returning the list of items);
    else one item at a time."""
    if isinstance(dataset, TensorPair):
        return dataset.batch(indices.to(dataset.labels.device))
    index_list = indices.tolist()
    getitems = getattr(dataset, "__getitems__", None)
    pairs = getitems(index_list) if callable(getitems) else [dataset[i] for i in index_list]
    inputs = [p[0] for p in pairs]
    check_one_shape(inputs, index_list)
    labels = [p[1] for p in pairs]
    if torch.is_tensor(labels[0]) and labels[0].dim() > 0:  # a sequence of targets per sample (next-token)
        return torch.stack(inputs), torch.stack(labels)
    return torch.stack(inputs), torch.as_tensor([int(label) for label in labels])


def check_one_shape(inputs: list[Any], indices: list[int] | None = None, split: str = "") -> None:
    """Every input of a batch must be a tensor of one shape, or stacking them fails with a traceback that
    names neither the sample nor the dataset: one line naming the first odd sample (its index, when known)
    and both shapes. A loop of tuple comparisons over a batch the caller has read already."""
    where = f"{split} " if split else ""
    first = inputs[0].shape if inputs and torch.is_tensor(inputs[0]) else None
    for position, value in enumerate(inputs):
        sample = f"{where}sample {indices[position]}" if indices is not None else f"a {where}batch's sample"
        if not torch.is_tensor(value):
            raise ConfigError(f"{sample}'s input is {type(value).__name__}, not a tensor")
        if value.shape != first:
            other = f"sample {indices[0]}" if indices is not None else "another"
            raise ConfigError(f"{sample} has input shape {tuple(value.shape)}, {other} {tuple(first)}; every "
                              f"sample must have one shape")


def sample_batch(dataset: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` samples (cycling when the dataset is smaller): for memory trials and FLOP counts."""
    return fetch_batch(dataset, torch.arange(size) % len(dataset))


@dataclass(frozen=True)
class Read:
    """How long `materialize` took to read a dataset through the tool's reader (fetch_batch: the dataset's
    own `__getitems__`, else its `__getitem__` one item at a time, in one process): the user's pipeline's
    per-sample cost, which the run's in-memory copy no longer pays (docs/timing.md)."""

    samples: int
    seconds: float

    @property
    def per_sample_s(self) -> float:
        return self.seconds / self.samples


def materialize(dataset: Any, mode: str, name: str) -> tuple[Any, str | None, Read | None]:
    """A map-style dataset whose items are fixed (input tensor, int label) pairs, read once into a
    TensorPair, so training takes the whole-batch fast path instead of collating item by item. Returns the
    dataset (unchanged when not materialized), a line saying what happened, or None, and the timed read
    when it was materialized.

    `auto` requires the items to be the same on two reads (random augmentation in __getitem__ must stay
    random: it is then left as it is), and the whole to fit MATERIALIZE_MAX_BYTES and
    MATERIALIZE_MAX_SECONDS; `true` materializes whatever the items are; `false` never."""
    if mode == "false" or isinstance(dataset, TensorPair) or len(dataset) == 0:
        return dataset, None, None
    first = dataset[0]
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and torch.is_tensor(first[0])):
        if mode == "true":
            raise ConfigError(f"--materialize true: the {name} items are not (tensor, label) pairs")
        return dataset, None, None
    if mode == "auto":
        reason = _why_not_materialize(dataset, first)
        if reason is not None:
            return dataset, f"{name} set kept in its loader ({reason}; --materialize true forces it)", None
    start = time.perf_counter()
    indices = torch.arange(len(dataset))
    try:
        parts = [fetch_batch(dataset, indices[i:i + 4096]) for i in range(0, len(dataset), 4096)]
    except ConfigError as err:  # a sample of another shape, past those the labels were read from
        raise ConfigError(f"--materialize: {name} {err}") from None
    read = Read(len(dataset), time.perf_counter() - start)  # the reads alone: not the concatenation below
    check_one_shape([p[0][0] for p in parts], [i * 4096 for i in range(len(parts))], name)
    inputs = torch.cat([p[0] for p in parts])
    found = non_finite_rows(inputs)  # past the samples checked at load (scaling/data/__init__.py)
    if found is not None:
        raise ConfigError(f"--materialize: the {name} inputs have {found[0]:,} sample(s) with NaN or infinite "
                          f"values, the first sample {found[1]} (counting from 0); fix or drop them")
    pair = TensorPair(inputs, torch.cat([p[1] for p in parts]))
    return pair, (f"{name} set materialized: {len(pair):,} samples read once into memory "
                  f"({inputs.numel() * inputs.element_size() / 2**20:,.1f} MiB, {read.seconds:.1f} s, "
                  f"{read.per_sample_s * 1e3:.2g} ms/sample); --materialize false keeps the loader"), read


def _why_not_materialize(dataset: Any, first: tuple) -> str | None:
    last_index = len(dataset) - 1
    again, last, last_again = dataset[0], dataset[last_index], dataset[last_index]
    if not (torch.equal(first[0], again[0]) and torch.equal(last[0], last_again[0])):
        return "its items change from one read to the next: random augmentation"
    size = first[0].numel() * first[0].element_size() * len(dataset)
    if size > MATERIALIZE_MAX_BYTES:
        return f"{size / 2**20:,.0f} MiB is over {MATERIALIZE_MAX_BYTES / 2**20:,.0f} MiB"
    sample = min(len(dataset), 32)
    start = time.perf_counter()
    for index in range(sample):
        dataset[index]
    estimate = (time.perf_counter() - start) / sample * len(dataset)
    if estimate > MATERIALIZE_MAX_SECONDS:
        return f"reading it once would take about {estimate:,.0f} s"
    return None


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
        # --channels-last: NHWC images; whole-batch indexing keeps the format, loader batches are converted.
        self.memory_format = torch.channels_last if cfg.channels_last else None
        if self.fast and self.memory_format is not None and self._tensors.inputs.dim() == 4:
            self._tensors = TensorPair(self._tensors.inputs.contiguous(memory_format=self.memory_format),
                                       self._tensors.labels)
        self.dataset = dataset
        self._cfg = cfg
        self._iterator = None
        self._epoch, self._permutation = -1, None

    def start(self, first_step: int) -> None:
        if not self.fast:
            cfg = self._cfg
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=StepBatchSampler(self.sampler, self.process_index, first_step),
                collate_fn=collate,
                num_workers=cfg.num_workers, pin_memory=cfg.pin_memory, prefetch_factor=cfg.prefetch_factor,
                persistent_workers=cfg.persistent_workers,
            )
            self._iterator = iter(loader)

    def micro_batches(self, step: int):
        if self.fast:
            epoch, first = self.sampler.locate(step)
            if epoch != self._epoch:  # the epoch's permutation on the device, copied once per epoch
                self._permutation, self._epoch = self.sampler.permutation(epoch).to(self._tensors.labels.device), epoch
            for start, end in self.sampler.slices(self.process_index, step):
                yield self._tensors.batch(self._permutation[first + start : first + end])
        elif self.memory_format is not None:
            for _ in self.sampler.slices(self.process_index, step):  # one micro-batch per slice
                inputs, labels = next_batch(self._iterator)
                yield (inputs.contiguous(memory_format=self.memory_format) if inputs.dim() == 4 else inputs), labels
        else:
            for _ in self.sampler.slices(self.process_index, step):
                yield next_batch(self._iterator)

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


def collate(items: list[Any]) -> Any:
    """The DataLoader's default collation, with a batch of inputs of two shapes named in one line."""
    try:
        return torch.utils.data.default_collate(items)
    except RuntimeError:
        if all(isinstance(item, (tuple, list)) and item for item in items):
            check_one_shape([item[0] for item in items], split="training")
        raise


def next_batch(iterator: Any) -> Any:
    """The loader's next batch. A ConfigError raised in a loader worker (`collate`) comes back re-raised with the
    worker's traceback in its message: the original line alone is the error."""
    try:
        return next(iterator)
    except ConfigError as err:
        lines = str(err).strip().splitlines()
        if len(lines) > 1 and "ConfigError: " in lines[-1]:
            raise ConfigError(lines[-1].split("ConfigError: ", 1)[1]) from None
        raise


class StepBatchSampler(torch.utils.data.Sampler):
    """Index lists for this process's micro-batches, step after step, without end."""

    def __init__(self, sampler: GlobalBatchSampler, process_index: int, first_step: int):
        self.sampler = sampler
        self.process_index = process_index
        self.first_step = first_step

    def __iter__(self):
        step, epoch, order = self.first_step, -1, []
        while True:
            step_epoch, first = self.sampler.locate(step)
            if step_epoch != epoch:  # the epoch's permutation as Python ints, once per epoch
                epoch, order = step_epoch, self.sampler.permutation(step_epoch).tolist()
            for start, end in self.sampler.slices(self.process_index, step):
                yield order[first + start : first + end]
            step += 1
