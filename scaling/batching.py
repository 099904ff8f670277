"""Global-batch arithmetic and the sampler that gives every decomposition the same global batches.

global_bs = per_device_bs x num_processes x accumulation_steps, where num_processes is the *logical*
process count: the real world size, or the emulated one (`--emulate-processes`). With emulation each real
process plays `num_processes / world_size` logical ranks one after another, so it runs
`ranks_per_process x accumulation_steps` micro-steps per optimizer step.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import asdict, dataclass
from functools import cached_property

import torch

from scaling.config import ConfigError, RunConfig, parse_batch_schedule


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


@dataclass(frozen=True)
class Phase:
    """One global batch of a run: its plan from optimizer step `first_step` on, `samples_before` samples
    having been trained before it; `asked` is the sample count the schedule gave for it."""

    first_step: int
    samples_before: int
    plan: BatchPlan
    asked: int = 0


@dataclass(frozen=True)
class BatchSchedule:
    """The global batch of every optimizer step: one phase for a fixed batch, one per batch of
    --batch-schedule. A batch asked from sample s starts at the first step boundary at which at least s
    samples have been trained (the step before it is not cut), so phase k+1 starts at step
    first_k + ceil((s - samples_before_k) / B_k)."""

    phases: tuple[Phase, ...]

    @classmethod
    def fixed(cls, plan: BatchPlan) -> BatchSchedule:
        return cls((Phase(0, 0, plan),))

    @classmethod
    def from_starts(cls, starts: list[tuple[int, BatchPlan]]) -> BatchSchedule:
        """Phases from (first sample, plan) pairs, the first from 0."""
        phases = [Phase(0, 0, starts[0][1], 0)]
        for asked, plan in starts[1:]:
            last = phases[-1]
            steps = max(1, -(-(asked - last.samples_before) // last.plan.global_bs))
            phases.append(Phase(last.first_step + steps, last.samples_before + steps * last.plan.global_bs, plan,
                                asked))
        return cls(tuple(phases))

    @property
    def scheduled(self) -> bool:
        return len(self.phases) > 1

    @cached_property
    def _firsts(self) -> list[int]:
        return [phase.first_step for phase in self.phases]

    def index_at(self, step: int) -> int:
        return bisect.bisect_right(self._firsts, step) - 1

    def phase_at(self, step: int) -> Phase:
        return self.phases[self.index_at(step)]

    def plan_at(self, step: int) -> BatchPlan:
        return self.phase_at(step).plan

    def samples_at(self, step: int) -> int:
        """Samples trained by the first `step` optimizer steps."""
        phase = self.phase_at(step)
        return phase.samples_before + (step - phase.first_step) * phase.plan.global_bs

    def _spans(self, dataset_size: int):
        """(first step, end step or None, steps per epoch) of each batch."""
        for index, phase in enumerate(self.phases):
            end = self.phases[index + 1].first_step if index + 1 < len(self.phases) else None
            yield phase.first_step, end, dataset_size // phase.plan.global_bs

    def epochs_at(self, step: int, dataset_size: int) -> float:
        """Epochs trained by the first `step` steps: the steps at each batch over its steps per epoch (the
        incomplete last batch of an epoch dropped), summed."""
        if not self.scheduled:  # as a fixed batch has always counted them
            return step / (dataset_size // self.phases[0].plan.global_bs)
        total = 0.0
        for first, end, per_epoch in self._spans(dataset_size):
            steps = (step if end is None else min(step, end)) - first
            if steps <= 0:
                break
            total += steps / per_epoch
        return total

    def steps_for_epochs(self, epochs: float, dataset_size: int) -> int:
        """The fewest steps, at least 1, that train `epochs` epochs (epochs_at)."""
        done = 0.0
        for first, end, per_epoch in self._spans(dataset_size):
            if end is None or done + (end - first) / per_epoch >= epochs:
                return max(1, first + math.ceil((epochs - done) * per_epoch))
            done += (end - first) / per_epoch
        raise AssertionError("unreachable: the last batch has no end")

    def to_list(self) -> list[dict]:
        """The result's `batch_schedule`: each batch, the step and sample count it started at, what the
        schedule asked, its decomposition."""
        return [{"first_step": p.first_step, "first_sample": p.samples_before, "asked": p.asked,
                 "global": p.plan.global_bs, "accumulation_steps": p.plan.accumulation_steps,
                 "micro_steps_per_process": p.plan.micro_steps_per_process} for p in self.phases]


def plan_schedule(cfg: RunConfig, plan: BatchPlan, units_per_sample: int = 1) -> BatchSchedule:
    """The run's batches: `plan` alone, or one plan per batch of --batch-schedule with `plan`'s per-device
    batch (the accumulation steps follow the batch). The schedule's starts are in units (tokens for a
    language model: `units_per_sample` per sequence), converted to samples rounding up."""
    if cfg.batch_schedule is None:
        return BatchSchedule.fixed(plan)
    pairs = parse_batch_schedule(cfg.batch_schedule)
    fixed = dataclasses.replace(cfg, per_device_bs=plan.per_device_bs, accumulation_steps=None)
    starts = [(-(-start // units_per_sample), plan_batch(dataclasses.replace(fixed, global_bs=batch), plan.world_size))
              for start, batch in pairs]
    return BatchSchedule.from_starts(starts)


def batch_unit_config(cfg: RunConfig) -> RunConfig:
    """The configuration whose plan gives the per-device batch every batch of the run shares: the run's own,
    or with --batch-schedule the greatest common divisor of its batches as the global batch (a given
    --per-device-bs must divide it over the processes; a chosen or searched one is chosen for it)."""
    if cfg.batch_schedule is None:
        return cfg
    return dataclasses.replace(cfg, global_bs=math.gcd(*(b for _, b in parse_batch_schedule(cfg.batch_schedule))))


def plan_unit(cfg: RunConfig, world_size: int) -> BatchPlan:
    """plan_batch of batch_unit_config(cfg), a schedule's refusal naming its batches."""
    try:
        return plan_batch(batch_unit_config(cfg), world_size)
    except ConfigError:
        if cfg.batch_schedule is None:
            raise
    processes = cfg.emulate_processes or world_size
    if processes % world_size:
        return plan_batch(cfg, world_size)  # that refusal has nothing to do with the schedule
    per_device = cfg.per_device_bs if isinstance(cfg.per_device_bs, int) else 1
    batches = [b for _, b in parse_batch_schedule(cfg.batch_schedule)]
    wrong = [b for b in batches if b % (processes * per_device)]
    raise ConfigError(f"--batch-schedule {cfg.batch_schedule}: every batch trains per-device {per_device} x "
                      f"{processes} process(es) x accumulation steps, so must be a multiple of "
                      f"{processes * per_device}; {', '.join(map(str, wrong))} "
                      f"{'is' if len(wrong) == 1 else 'are'} not")


class GlobalBatchSampler:
    """Index source shared by every decomposition of one global batch.

    Epoch e draws one permutation of the training set from a generator seeded by (seed, e); optimizer
    step t (counted from 0 across epochs) uses positions [i*G, (i+1)*G) of its epoch's permutation, with
    i = t mod steps_per_epoch. The incomplete last global batch of an epoch is dropped. Logical rank r,
    micro-step m takes the contiguous slice [(r*A + m)*b, (r*A + m + 1)*b) of that global batch, so the
    samples seen per optimizer step do not depend on how the batch is split.

    With a batch schedule (BatchSchedule) each batch takes the next positions of the permutation where the
    one before it stopped, in steps of its own size, the rest of an epoch too short for it dropped.
    """

    def __init__(self, dataset_size: int, plan: BatchPlan | BatchSchedule, seed: int):
        batches = plan if isinstance(plan, BatchSchedule) else BatchSchedule.fixed(plan)
        largest = max(phase.plan.global_bs for phase in batches.phases)
        if dataset_size < largest:
            raise ConfigError(
                f"global batch {largest} is larger than the training set ({dataset_size} samples); "
                f"use a smaller --global-bs or more data"
            )
        self.dataset_size = dataset_size
        self.batches = batches
        self.plan = batches.phases[0].plan  # the first (for a fixed batch, the only) batch's
        self.seed = seed
        self.steps_per_epoch = dataset_size // self.plan.global_bs  # at the first batch
        # Where each phase starts: (epoch, position) just after the last batch of the phase before it.
        self._cursors = [(0, 0)]
        for phase, following in zip(batches.phases, batches.phases[1:], strict=False):
            epoch, start = self._locate_in(len(self._cursors) - 1, following.first_step - 1)
            self._cursors.append((epoch, start + phase.plan.global_bs))
        self._slices: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._scheduled = batches.scheduled
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def epochs_at(self, step: int) -> float:
        return self.batches.epochs_at(step, self.dataset_size)

    def steps_for_epochs(self, epochs: float) -> int:
        return self.batches.steps_for_epochs(epochs, self.dataset_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.dataset_size, generator=generator)
            self._epoch = epoch
        return self._perm

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, position of the global batch's first sample in that epoch's permutation) of `step`."""
        if not self._scheduled:  # the hot path of every fixed-batch step: no phase to look up
            epoch, position = divmod(step, self.steps_per_epoch)
            return epoch, position * self.plan.global_bs
        return self._locate_in(self.batches.index_at(step), step)

    def _locate_in(self, index: int, step: int) -> tuple[int, int]:
        phase, (epoch, start) = self.batches.phases[index], self._cursors[index]
        size = phase.plan.global_bs
        offset = step - phase.first_step
        rest = (self.dataset_size - start) // size  # steps left in the epoch the phase starts in
        if offset < rest:
            return epoch, start + offset * size
        full, position = divmod(offset - rest, self.dataset_size // size)
        return epoch + 1 + full, position * size

    def global_batch(self, step: int) -> torch.Tensor:
        epoch, start = self.locate(step)
        return self.permutation(epoch)[start : start + self.batches.plan_at(step).global_bs]

    def slices(self, process_index: int, step: int = 0) -> list[tuple[int, int]]:
        """[start, end) of each micro-batch that real process `process_index` runs, within the global batch of
        `step`."""
        index = self.batches.index_at(step) if self._scheduled else 0
        key = (process_index, index)
        if key not in self._slices:
            plan = self.batches.phases[index].plan
            size = plan.per_device_bs
            first_slot = process_index * plan.ranks_per_process * plan.accumulation_steps
            self._slices[key] = [((first_slot + k) * size, (first_slot + k + 1) * size)
                                 for k in range(plan.micro_steps_per_process)]
        return self._slices[key]

    def micro_batches(self, step: int, process_index: int) -> list[torch.Tensor]:
        """The index tensors this real process runs, in order, for optimizer step `step`."""
        batch = self.global_batch(step)
        return [batch[start:end] for start, end in self.slices(process_index, step)]
