"""The gradient noise scale measured during an ordinary run (wiring `scaling.noise.estimators` into the loop).

Every `--noise-every` optimizer steps one (small, big) pair of gradient measurements is taken, in the way
the topology allows (scaling/noise/estimators.py explains each):

- "ranks" (several processes): small = each rank's local gradient, read in a DDP communication hook just
  before the all-reduce; big = the all-reduced gradient.
- "micro_batches" (one process, several micro-steps, accumulation or emulated ranks): small = the first
  micro-batch's gradient (kept as a copy), big = the accumulated gradient.
- "half_batch" (one process, one micro-step; the fallback): small = the gradient of the first half of the
  batch, computed separately with `torch.autograd.grad` (one extra half forward/backward per measurement),
  big = the batch's own gradient.

The measurements are the tool's own work, so they run off the training clock (the caller's `off_clock`
context pauses it, after a device synchronization), like the probes; `measure_s` sums their time. Only the
"ranks" hook's squared norm of each bucket stays on the clock, inside DDP's backward.

Measurements stay on the device; `flush()` (at logging-window boundaries) reads them, turns each into raw
(|G|^2, tr(Sigma)) estimates, feeds the windowed estimator in step order and records the series (raw values
and the running B_simple). `probe()` measures on PROBE_BATCHES global batches at fixed weights, from
given weights (at the target, at the end of the run), off the clock, so B_simple is known where training
reached, not only every `every` steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from accelerate import Accelerator
from torch import nn

from scaling.batching import BatchPlan
from scaling.files import finite_or_none
from scaling.noise.estimators import (
    NoiseScaleEstimator,
    fallback_small_batch,
    is_measurement_step,
    nested_estimates,
    pool_small_batches,
    ratio_of_means,
    separate_gradients,
    squared_distance,
    squared_norm,
    unbiased_estimates,
)
from scaling.task import CLASSIFICATION, Task

# Default measurement intervals: the two-gradient methods only copy and reduce norms; the half-batch
# fallback adds half a forward/backward, which at batch 32 costs nearly a whole step (per-op overhead), so
# it measures less often (its wall-time cost, off the clock: docs/performance.md).
EVERY = {"ranks": 10, "micro_batches": 10, "half_batch": 50}
# The running estimate averages the last WINDOW measurements. A probe pools PROBE_BATCHES global batches
# at fixed weights (checked against per-example gradients at the same weights: tests/test_exact_numbers.py).
WINDOW = 5
PROBE_BATCHES = 16


class NoiseMonitor:
    def __init__(self, accelerator: Accelerator, model: nn.Module, plan: BatchPlan, every: int | None,
                 off_clock: Callable[[], AbstractContextManager] = nullcontext, task: Task = CLASSIFICATION):
        self.accelerator, self.model, self.plan, self.task = accelerator, model, plan, task
        self._off_clock = off_clock
        self.measure_s = 0.0  # the measurements' time, all off the training clock
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.estimator = NoiseScaleEstimator(WINDOW)
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
        self.probes: dict[str, dict] = {}  # "target", "final" -> the probe's summary
        self.points: list[dict] = []  # a probe at each --branch-points step, with its step (checkpointed)

    # ---- collection, inside the optimizer step ----
    def begin_step(self, step: int, force: bool = False) -> None:
        self.step = step
        self.measuring = force or is_measurement_step(step, self.every)
        self._local_sq = None

    def after_backward(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """The measurement's part after micro-step `index`'s backward, off the clock; returns its seconds
        (the phase timer leaves them out)."""
        if not self.measuring:
            return 0.0
        with self._off_clock():
            start = time.perf_counter()
            self._measure(index, inputs, labels)
        seconds = time.perf_counter() - start  # the context's closing synchronization included
        self.measure_s += seconds
        return seconds

    def _measure(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> None:
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
                loss = self.task.loss(self.model(inputs[:half]), labels[:half])
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

    def discard_pending(self) -> None:
        """Drop measurements taken outside training (the compile warm-up)."""
        self._pending.clear()
        self.measuring = False

    # ---- at logging-window boundaries ----
    def flush(self) -> list[dict]:
        """Read the pending measurements (one host sync); returns the new points of the training series."""
        if not self._pending:
            return []
        steps = [step for step, _, _ in self._pending]
        small = torch.stack([s for _, s, _ in self._pending])
        big = torch.stack([b for _, _, b in self._pending])
        self._pending.clear()
        if self.method == "ranks":
            per_rank = self.accelerator.gather(small.unsqueeze(0)).view(-1, len(steps))  # [ranks, steps]
            rows = per_rank.t().tolist()
        else:
            rows = small.tolist()
        points = []
        for step, small_value, big_value in zip(steps, rows, big.tolist(), strict=True):
            grad_sq, trace = self._estimates(small_value, big_value)
            # A diverging run's gradients overflow: its point is stored with nulls (JSON has no inf/NaN)
            # and the estimator skips it.
            b_simple = self.estimator.update_estimates(grad_sq, trace)
            point = {"step": step + 1, "grad_sq": finite_or_none(grad_sq), "trace": finite_or_none(trace),
                     "b_simple": finite_or_none(b_simple)}
            points.append(point)
        self.series.extend(points)
        return points

    def _estimates(self, small, big: float) -> tuple[float, float]:
        """Raw unbiased (|G|^2, tr(Sigma)) of one measurement (scaling/noise/estimators.py)."""
        if self.method == "ranks":
            return unbiased_estimates(*pool_small_batches(small, self.small_batch)[:2], big, self.big_batch)
        return nested_estimates(small, self.small_batch, big, self.big_batch)

    def probe(self, label: str, step_batches: Iterable[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """B_simple at the current weights from several global batches (one list of this process's
        micro-batches per optimizer step): the gradient of each global batch (B samples) against their mean
        (k x B samples), pooled over the k batches (scaling/noise/estimators.py). One estimate from k x B samples
        varies far less than k separate measurements at batch B averaged (both are unbiased): at
        B_simple > B the |G|^2 estimate from one batch is mostly noise. No optimizer step; the caller
        restores BatchNorm buffers and the RNG afterwards."""
        start = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)  # no DDP hooks: the sum over ranks is done below
        params = [p for p in model.parameters() if p.requires_grad]
        total, small_sq, first = None, [], self.step
        for step_index, micro_batches in enumerate(step_batches):
            model.zero_grad(set_to_none=True)
            for inputs, labels in micro_batches:
                inputs, labels = inputs.to(self.accelerator.device), labels.to(self.accelerator.device)
                with self.accelerator.autocast():
                    loss = self.task.loss(model(inputs), labels) / len(micro_batches)
                loss.backward()
            local = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                               for p in params])
            batch_gradient = self.accelerator.reduce(local, reduction="mean")  # the global batch's gradient
            small_sq.append(batch_gradient.square().sum())
            total = batch_gradient if total is None else total + batch_gradient
            last = first + step_index
        model.zero_grad(set_to_none=True)
        count, batch = len(small_sq), self.plan.global_bs
        big_sq = (total / count).square().sum()
        grad_sq, trace = unbiased_estimates(torch.stack(small_sq).mean().item(), batch, big_sq.item(), count * batch)
        self.probes[label] = {"b_simple": ratio_of_means([(grad_sq, trace)]), "grad_sq": grad_sq, "trace": trace,
                              "batches": count, "samples": count * batch, "first_step": first + 1,
                              "last_step": last + 1, "seconds": time.perf_counter() - start}

    def summary(self) -> dict:
        target, final = self.probes.get("target"), self.probes.get("final")
        b_simple = final["b_simple"] if final else target["b_simple"] if target else self.estimator.noise_scale
        return {
            "method": self.method, "every": self.every, "small_batch": self.small_batch,
            "big_batch": self.big_batch, "window": WINDOW, "b_simple": b_simple,
            "b_simple_at_target": target["b_simple"] if target else None,
            "at_target": target, "final": final or target, "series": self.series,
            "branch_points": self.points, "measure_s": self.measure_s,
        }

    def state_dict(self) -> dict:
        return {"estimator": self.estimator.state_dict(), "series": self.series, "measure_s": self.measure_s,
                "points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.measure_s = state.get("measure_s", 0.0)
        self.series = state["series"]
        self.points = state.get("points", [])
