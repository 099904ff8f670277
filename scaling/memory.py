"""`--per-device-bs auto`: the largest micro-batch that fits, found by real forward/backward trials.

Grow by doubling until a trial fails (or the per-rank share of the global batch is reached), then bisect
between the last size that fitted and the first that failed. A trial fails on a real out-of-memory error,
or when its measured peak exceeds `--memory-cap-mb`:

- on CUDA the measure is `torch.cuda.max_memory_allocated` around the trial;
- elsewhere it is the bytes of parameters, gradients and optimizer state (estimated as two more copies of
  the parameters, as for Adam) plus the bytes of every tensor autograd saves for backward during the trial's
  forward (counted with `torch.autograd.graph.saved_tensors_hooks`, each storage once).

With a cap, the CPU measure makes the search testable here; on a GPU a cap leaves room on a shared card.
Every rank searches, then all take the smallest result (an all-reduce MIN), so the decomposition agrees.
A safety margin is kept below a size that was seen to fail: allocator fragmentation and the optimizer's
first step can need more than a trial did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scaling.data.tensors import TensorPair

SAFETY = 0.9  # use at most 90% of the largest size that fitted, when a larger one failed


class NothingFits(Exception):
    """Not even a micro-batch of one sample fits."""


def sample_batch(dataset: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices = torch.arange(size) % len(dataset)
    if isinstance(dataset, TensorPair):
        return dataset.batch(indices)
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def trial_peak_bytes(model: nn.Module, dataset: Any, size: int, device: torch.device,
                     autocast_dtype: torch.dtype | None = None) -> int:
    """Run one forward/backward at micro-batch `size` and return its peak memory in bytes."""
    inputs, labels = sample_batch(dataset, size)
    inputs, labels = inputs.to(device), labels.to(device)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) * 4  # params, grads, 2 states
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(inputs).float(), labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return state_bytes + sum(saved.values())


def largest_fitting(fits: Callable[[int], bool], limit: int, start: int = 8) -> int:
    """Largest size in [1, limit] for which fits() holds, assuming fits is monotone.

    Raises NothingFits when even size 1 does not fit.
    """
    size = min(start, limit)
    best, failed_at = 0, None
    while True:  # grow
        if fits(size):
            best = size
            if size >= limit:
                break
            size = min(size * 2, limit)
        else:
            failed_at = size
            break
    if failed_at is not None:
        low, high = best, failed_at  # best fits (or is 0), high fails
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        best = low
    if best == 0:
        raise NothingFits
    return best


def find_max_micro_batch(model: nn.Module, dataset: Any, device: torch.device, limit: int,
                         memory_cap_bytes: int | None = None,
                         autocast_dtype: torch.dtype | None = None) -> tuple[int, list[dict]]:
    """Search on a copy of the model (its weights and BatchNorm statistics stay untouched).

    Returns the largest fitting size (at most `limit`) and the trials made.
    """
    probe = copy.deepcopy(model).to(device).train()
    trials: list[dict] = []

    def fits(size: int) -> bool:
        try:
            peak = trial_peak_bytes(probe, dataset, size, device, autocast_dtype)
            ok = memory_cap_bytes is None or peak <= memory_cap_bytes
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _is_oom(err):
                raise
            peak, ok = None, False
        finally:
            probe.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        trials.append({"size": size, "peak_bytes": peak, "fits": ok})
        return ok

    return largest_fitting(fits, limit), trials


def agree_on_minimum(value: int, device: torch.device) -> int:
    """The smallest value over all processes (every rank must use the same micro-batch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
