"""Global-batch arithmetic and the sampler that gives every decomposition the same global batches.

global_bs = per_device_bs x num_processes x accumulation_steps, where num_processes is the *logical*
process count: the real world size, or the emulated one (`--emulate-processes`). With emulation each real
process plays `num_processes / world_size` logical ranks one after another, so it runs
`ranks_per_process x accumulation_steps` micro-steps per optimizer step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from scaling.config import ConfigError, RunConfig


@dataclass(frozen=True)
class BatchPlan:
    global_bs: int
    per_device_bs: int
    num_processes: int  # logical processes (emulated or real)
    accumulation_steps: int
    world_size: int  # real processes

    @property
    def ranks_per_process(self) -> int:
        return self.num_processes // self.world_size

    @property
    def micro_steps_per_process(self) -> int:
        """Micro-batches each real process runs per optimizer step."""
        return self.ranks_per_process * self.accumulation_steps

    @property
    def emulated(self) -> bool:
        return self.num_processes != self.world_size

    def describe(self) -> str:
        text = (
            f"global batch {self.global_bs} = per-device {self.per_device_bs} x {self.num_processes} "
            f"process{'es' if self.num_processes > 1 else ''} x {self.accumulation_steps} accumulation step"
            f"{'s' if self.accumulation_steps > 1 else ''}"
        )
        if self.emulated:
            text += f" (emulated on {self.world_size} real process{'es' if self.world_size > 1 else ''})"
        return text

    def to_dict(self) -> dict:
        out = asdict(self)
        out["global"] = out.pop("global_bs")
        out["per_device"] = out.pop("per_device_bs")
        out["emulated"] = self.emulated
        out["micro_steps_per_process"] = self.micro_steps_per_process
        return out


def nearest_valid_global_sizes(global_bs: int, unit: int) -> list[int]:
    """The multiples of `unit` just below and just above global_bs (for error messages)."""
    below = (global_bs // unit) * unit
    return [size for size in (below, below + unit) if size > 0]


def choose_per_device_bs(per_rank_bs: int, cap: int) -> int:
    """Largest divisor of per_rank_bs that is <= cap, preferring multiples of 8 (tensor-core friendly).

    A multiple of 8 is taken when it is at least half the largest divisor, so 8 does not beat 500.
    """
    divisors = [d for d in range(1, min(per_rank_bs, cap) + 1) if per_rank_bs % d == 0]
    largest = divisors[-1]
    multiples_of_8 = [d for d in divisors if d % 8 == 0]
    if multiples_of_8 and multiples_of_8[-1] * 2 >= largest:
        return multiples_of_8[-1]
    return largest


def plan_batch(cfg: RunConfig, world_size: int) -> BatchPlan:
    """Decompose the global batch once, before anything trains; every failure names all factors."""
    processes = cfg.emulate_processes or world_size
    if processes % world_size:
        raise ConfigError(
            f"--emulate-processes {processes} must be a multiple of the real world size {world_size} "
            f"(each real process plays the same number of emulated ranks)"
        )
    global_bs = cfg.global_bs
    if global_bs % processes:
        raise ConfigError(
            f"global batch {global_bs} is not divisible by {processes} processes "
                f"(global = per-device x {processes} processes x accumulation steps); "
            f"nearest valid global batch sizes: {_list(nearest_valid_global_sizes(global_bs, processes))}"
        )
    per_rank = global_bs // processes
    if isinstance(cfg.per_device_bs, int):
        per_device = cfg.per_device_bs
        if per_rank % per_device:
            unit = per_device * processes
            raise ConfigError(
                f"global batch {global_bs} != per-device {per_device} x {processes} process(es) x "
                f"accumulation steps for any whole number of steps ({global_bs} / ({per_device} x {processes}) "
                f"= {global_bs / unit:g}); nearest valid global batch sizes: "
                f"{_list(nearest_valid_global_sizes(global_bs, unit))}"
            )
        accumulation = per_rank // per_device
    elif cfg.accumulation_steps is not None:
        accumulation = cfg.accumulation_steps
        if per_rank % accumulation:
            unit = accumulation * processes
            raise ConfigError(
                f"global batch {global_bs} != per-device batch x {processes} process(es) x {accumulation} "
                f"accumulation steps for any whole per-device batch ({global_bs} / ({processes} x {accumulation}) "
                f"= {global_bs / unit:g}); nearest valid global batch sizes: "
                f"{_list(nearest_valid_global_sizes(global_bs, unit))}"
            )
        per_device = per_rank // accumulation
    else:
        # "auto" is resolved by a memory search after the model exists; start from the arithmetic choice.
        per_device = choose_per_device_bs(per_rank, cfg.max_per_device_bs)
        accumulation = per_rank // per_device
    return BatchPlan(global_bs, per_device, processes, accumulation, world_size)


def _list(values: list[int]) -> str:
    return " or ".join(str(v) for v in values)


class GlobalBatchSampler:
    """Index source shared by every decomposition of one global batch.

    Epoch e draws one permutation of the training set from a generator seeded by (seed, e); optimizer
    step t (counted from 0 across epochs) uses positions [i*G, (i+1)*G) of its epoch's permutation, with
    i = t mod steps_per_epoch. The incomplete last global batch of an epoch is dropped. Logical rank r,
    micro-step m takes the contiguous slice [(r*A + m)*b, (r*A + m + 1)*b) of that global batch, so the
    samples seen per optimizer step do not depend on how the batch is split.
    """

    def __init__(self, dataset_size: int, plan: BatchPlan, seed: int):
        if dataset_size < plan.global_bs:
            raise ConfigError(
                f"global batch {plan.global_bs} is larger than the training set ({dataset_size} samples); "
                f"use a smaller --global-bs or more data"
            )
        self.dataset_size = dataset_size
        self.plan = plan
        self.seed = seed
        self.steps_per_epoch = dataset_size // plan.global_bs
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.dataset_size, generator=generator)
            self._epoch = epoch
        return self._perm

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, position of the global batch's first sample in that epoch's permutation) of `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        return epoch, position * self.plan.global_bs

    def global_batch(self, step: int) -> torch.Tensor:
        epoch, start = self.locate(step)
        return self.permutation(epoch)[start : start + self.plan.global_bs]

    def slices(self, process_index: int) -> list[tuple[int, int]]:
        """[start, end) of each micro-batch that real process `process_index` runs, within a global batch."""
        size = self.plan.per_device_bs
        first_slot = process_index * self.plan.ranks_per_process * self.plan.accumulation_steps
        return [((first_slot + k) * size, (first_slot + k + 1) * size)
                for k in range(self.plan.micro_steps_per_process)]

    def micro_batches(self, step: int, process_index: int) -> list[torch.Tensor]:
        """The index tensors this real process runs, in order, for optimizer step `step`."""
        batch = self.global_batch(step)
        return [batch[start:end] for start, end in self.slices(process_index)]
