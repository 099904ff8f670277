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
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from scaling.batching import BatchPlan, choose_per_device_bs, plan_batch
from scaling.config import ConfigError, RunConfig
from scaling.data.delivery import sample_batch
from scaling.task import CLASSIFICATION, Task

SAFETY = 0.9  # use at most 90% of the largest size that fitted, when a larger one failed


class NothingFits(Exception):
    """Not even a micro-batch of one sample fits."""


class OutOfMemory(Exception):
    """A configuration that does not fit; its result.json says so (status "oom")."""


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (OutOfMemory, torch.cuda.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def oom_suggestion(plan: BatchPlan) -> str:
    if plan.per_device_bs > 1:
        smaller = plan.per_device_bs // 2
        return (f"try --per-device-bs {smaller} (x{plan.accumulation_steps * plan.per_device_bs // smaller} "
                f"accumulation steps) if it divides the batch, or --per-device-bs auto")
    return "even a micro-batch of 1 does not fit: use a smaller model or mixed precision (--mixed-precision bf16)"


def check_fits(cfg: RunConfig, plan: BatchPlan, model: nn.Module, dataset: Any, device: torch.device,
               task: Task = CLASSIFICATION) -> None:
    """With --memory-cap-mb, one trial at the planned micro-batch must stay under the cap."""
    peak = trial_peak_bytes(copy.deepcopy(model).to(device), dataset, plan.per_device_bs, device, task=task)
    if peak > cfg.memory_cap_mb * 2**20:
        raise OutOfMemory(f"micro-batch {plan.per_device_bs} needs {peak / 2**20:.1f} MiB, over "
                          f"--memory-cap-mb {cfg.memory_cap_mb:g}")


def resolve_auto_batch(cfg: RunConfig, plan: BatchPlan, model: nn.Module, dataset: Any,
                       device: torch.device, task: Task = CLASSIFICATION) -> tuple[BatchPlan, dict]:
    """`--per-device-bs auto`: search the largest micro-batch that fits, agree on it, re-plan."""
    per_rank = plan.global_bs // plan.num_processes
    cap = int(cfg.memory_cap_mb * 2**20) if cfg.memory_cap_mb else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    try:
        largest, trials = find_max_micro_batch(model, dataset, device, per_rank, cap, dtype, task)
    except NothingFits:
        largest, trials = 0, []
    largest = agree_on_minimum(largest, device)
    if largest == 0:
        limit = f"--memory-cap-mb {cfg.memory_cap_mb:g}" if cap else "device memory"
        raise ConfigError(f"--per-device-bs auto: not even a micro-batch of 1 fits in {limit}")
    # Below a size that failed keep a margin; a size that reached the per-rank share without failing is safe.
    usable = largest if largest >= per_rank else max(1, int(largest * SAFETY))
    per_device = choose_per_device_bs(per_rank, usable)
    plan = plan_batch(dataclasses.replace(cfg, per_device_bs=per_device), plan.world_size)
    return plan, {"largest_fitting": largest, "usable": usable, "chosen": per_device,
                  "memory_cap_mb": cfg.memory_cap_mb, "trials": trials}


def trial_peak_bytes(model: nn.Module, dataset: Any, size: int, device: torch.device,
                     autocast_dtype: torch.dtype | None = None, task: Task = CLASSIFICATION) -> int:
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
            loss = task.loss(model(inputs), labels)
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
                         memory_cap_bytes: int | None = None, autocast_dtype: torch.dtype | None = None,
                         task: Task = CLASSIFICATION) -> tuple[int, list[dict]]:
    """Search on a copy of the model (its weights and BatchNorm statistics stay untouched).

    Returns the largest fitting size (at most `limit`) and the trials made.
    """
    probe = copy.deepcopy(model).to(device).train()
    trials: list[dict] = []

    def fits(size: int) -> bool:
        try:
            peak = trial_peak_bytes(probe, dataset, size, device, autocast_dtype, task)
            ok = memory_cap_bytes is None or peak <= memory_cap_bytes
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
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
