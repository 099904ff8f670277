"""The gradient noise scale measured during an ordinary run (wiring `scaling.noise` into the loop).

Every `--noise-every` optimizer steps one (small, big) pair of gradient measurements is taken, in the way
the topology allows (scaling/noise.py explains each):

- "ranks" (several processes): small = each rank's local gradient, read in a DDP communication hook just
  before the all-reduce; big = the all-reduced gradient.
- "micro_batches" (one process, several micro-steps, accumulation or emulated ranks): small = the first
  micro-batch's gradient (kept as a copy), big = the accumulated gradient.
- "half_batch" (one process, one micro-step; the fallback): small = the gradient of the first half of the
  batch, computed separately with `torch.autograd.grad` (one extra half forward/backward per measurement),
  big = the batch's own gradient.

Measurements stay on the device; `flush()` (at logging-window boundaries) reads them, feeds the EMA
estimator in step order and records the series.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from scaling.batching import BatchPlan
from scaling.noise import (
    NoiseScaleEstimator,
    fallback_small_batch,
    is_measurement_step,
    separate_gradients,
    squared_distance,
    squared_norm,
)

# Default measurement intervals: the two-gradient methods only copy and reduce norms; the half-batch
# fallback adds half a forward/backward, 1% of the throughput at one measurement in 50 steps
# (benchmarks/overhead.py measured about 4% at one in 25 on the default workload).
EVERY = {"ranks": 10, "micro_batches": 10, "half_batch": 50}


class NoiseMonitor:
    def __init__(self, accelerator: Accelerator, model: nn.Module, plan: BatchPlan, every: int | None,
                 ema_decay: float = 0.95):
        self.accelerator, self.model, self.plan = accelerator, model, plan
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.estimator = NoiseScaleEstimator(ema_decay)
        if accelerator.num_processes > 1:
            self.method = "ranks"
            self.small_batch = plan.per_device_bs * plan.micro_steps_per_process
            self._register_comm_hook()
        elif plan.micro_steps_per_process > 1:
            self.method = "micro_batches"
            self.small_batch = plan.per_device_bs
        else:
            self.method = "half_batch"
            self.small_batch = fallback_small_batch(plan.per_device_bs)
        self.big_batch = plan.global_bs if self.method != "half_batch" else plan.per_device_bs
        self.every = every or EVERY[self.method]
        self.measuring = False
        self.step = 0
        self._local_sq: torch.Tensor | None = None
        self._first: list[torch.Tensor] | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, small-side, big |G|^2)
        self.series: list[dict] = []

    # ---- collection, inside the optimizer step ----
    def begin_step(self, step: int) -> None:
        self.step = step
        self.measuring = is_measurement_step(step, self.every)
        self._local_sq = None

    def after_backward(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.measuring:
            return
        last = index == self.plan.micro_steps_per_process - 1
        n = self.plan.micro_steps_per_process
        if self.method == "micro_batches" and index == 0:
            # Accelerate divided the loss by n: p.grad holds g_1 / n.
            self._first = [p.grad.detach() * n for p in self.params]
        if not last:
            return
        grads = [p.grad for p in self.params]
        big = squared_norm(grads)
        if self.method == "ranks":
            small = self._local_sq
        elif self.method == "micro_batches":
            small = squared_distance(self._first, grads)
            self._first = None
        else:
            half = self.small_batch
            with self.accelerator.autocast():
                loss = F.cross_entropy(self.model(inputs[:half]), labels[:half])
            small = squared_distance(separate_gradients(loss, self.params), grads)
        if self.accelerator.scaler is not None:
            # fp16 loss scaling multiplies every gradient by the current scale S: undo it (S^2 on squared
            # norms) so that measurements taken under different scales average correctly. Host read of S
            # on measurement steps only.
            inverse = 1.0 / self.accelerator.scaler.get_scale() ** 2
            small, big = small * inverse, big * inverse
        self._pending.append((self.step, small.detach().float(), big.detach().float()))

    def _register_comm_hook(self) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        monitor = self

        def measuring_allreduce(process_group, bucket):
            if monitor.measuring:
                # The bucket holds this rank's local gradient until the all-reduce below replaces it.
                local = bucket.buffer().detach().float().pow(2).sum()
                monitor._local_sq = local if monitor._local_sq is None else monitor._local_sq + local
            return allreduce_hook(process_group, bucket)

        self.model.register_comm_hook(None, measuring_allreduce)

    # ---- at logging-window boundaries ----
    def flush(self) -> None:
        if not self._pending:
            return
        steps = [step for step, _, _ in self._pending]
        small = torch.stack([s for _, s, _ in self._pending])
        big = torch.stack([b for _, _, b in self._pending])
        self._pending.clear()
        if self.method == "ranks":
            per_rank = self.accelerator.gather(small.unsqueeze(0)).view(-1, len(steps))  # [ranks, steps]
            rows = per_rank.t().tolist()
        else:
            rows = small.tolist()
        for step, small_value, big_value in zip(steps, rows, big.tolist(), strict=True):
            if self.method == "ranks":
                value = self.estimator.update_pooled(small_value, self.small_batch, big_value)
            else:
                value = self.estimator.update_nested(small_value, self.small_batch, big_value, self.big_batch)
            self.series.append({"step": step + 1, "b_simple": value, "grad_sq": self.estimator.grad_sq,
                                "trace": self.estimator.trace})

    def value_at(self, step: int) -> float | None:
        """The latest estimate measured at or before optimizer step `step` (1-based, as in history)."""
        known = [point["b_simple"] for point in self.series if point["step"] <= step]
        return known[-1] if known else None

    def summary(self, target_step: int | None) -> dict:
        return {
            "method": self.method, "every": self.every, "small_batch": self.small_batch,
            "big_batch": self.big_batch, "b_simple": self.estimator.noise_scale,
            "b_simple_at_target": self.value_at(target_step) if target_step else None,
            "series": self.series,
        }

    def state_dict(self) -> dict:
        return {"estimator": self.estimator.state_dict(), "series": self.series}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.series = state["series"]
