"""In-memory (inputs, labels) tensors, indexed a whole batch at a time."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

FINITE_CHUNK_VALUES = 2**24  # values per isfinite call: its boolean mask stays at 16 MiB whatever the data's size


def non_finite_rows(values: torch.Tensor) -> tuple[int, int] | None:
    """(rows holding a NaN or an infinite value, the first such row) of a tensor of samples, or None when every
    value is finite (always for integer tensors). Whole rows at a time, in chunks of about FINITE_CHUNK_VALUES
    values, so a large in-memory dataset costs a few vectorised passes and no full-size mask."""
    if not (values.is_floating_point() or values.is_complex()) or len(values) == 0:
        return None
    rows = values.reshape(len(values), -1)
    step = max(1, FINITE_CHUNK_VALUES // max(1, rows.shape[1]))
    count, first = 0, None
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        # A finite sum proves every value finite (a NaN or an infinity never sums to a finite value), at about
        # 1/25 the cost of the mask; a sum that overflowed from large finite values falls back to the mask.
        if bool(torch.isfinite(chunk.sum())):
            continue
        bad = ~torch.isfinite(chunk).all(dim=1)
        found = int(bad.sum())
        if found and first is None:
            first = start + int(bad.nonzero()[0, 0])
        count += found
    return None if first is None else (count, first)


class TensorPair:
    """A map-style dataset over two tensors. `batch(indices)` gathers a whole batch with one index op per
    tensor, which is 10-100x faster than collating samples one by one through a DataLoader.

    The op is `index_select`: the same values as `inputs[indices]`, and on the CPU 1.5-3x faster (the
    MNIST-1D inputs: 2.9 against 4.2 us at 32 rows, 5.2 against 11.6 us at 256, 9.8 against 31 us at 1024).
    Channels-last images keep advanced indexing, which keeps their layout (index_select returns NCHW)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs = inputs
        self.labels = labels.long()
        self._channels_last = (inputs.dim() == 4 and not inputs.is_contiguous()
                               and inputs.is_contiguous(memory_format=torch.channels_last))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.inputs[indices] if self._channels_last else self.inputs.index_select(0, indices)
        return inputs, self.labels.index_select(0, indices)

    def to(self, device: torch.device) -> TensorPair:
        return TensorPair(self.inputs.to(device), self.labels.to(device))

    @classmethod
    def maybe_from(cls, dataset: Any) -> Any:
        """A TensorDataset of (inputs, labels) becomes a TensorPair; anything else is kept as it is."""
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            return cls(*dataset.tensors)
        return dataset
