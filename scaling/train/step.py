"""One optimizer step over this process's micro-batches: the hot path of every run.

Hot-loop rule: no `.item()` or other host sync per step. Per-step losses stay on the device and are read
once per logging window (scaling/train/loop.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from torch import nn

from scaling.task import CLASSIFICATION, Task
from scaling.train.clock import PhaseTimer

if TYPE_CHECKING:
    from scaling.noise.monitor import NoiseMonitor


class StepRunner:
    """One optimizer step over this process's micro-batches; returns their (device) losses.

    DDP skips its all-reduce under `no_sync` on all but the last micro-step, each loss is divided by the
    micro-step count, so with equal micro-batches the optimizer sees the gradient of the mean loss over the
    whole global batch. A token-weighted task (next-token prediction, whose micro-batches may hold different
    numbers of target tokens) weights each micro-batch by its tokens instead (`token_scale`). This is what Accelerate's `accumulate`, `backward` and optimizer wrapper do, called
    directly, with what they look up on every call read once here: their per-call bookkeeping is a
    measurable share of a small step (docs/performance.md gives it). Accelerate still builds the
    process group, wraps the model (DDP, autocast) and owns the fp16 loss scaler used here;
    tests/test_emulation.py checks every decomposition's trajectory. `after_backward(i, synced)` runs after
    micro-step i's backward (tests observe gradient sync with it).
    """

    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                 task: Task = CLASSIFICATION):
        self.model, self.task = model, task
        self.device = accelerator.device
        self.to_device = accelerator.device.type != "cpu"  # on the CPU, .to() has nothing to do
        self.micro_steps = accelerator.gradient_accumulation_steps  # the plan's micro-steps per process
        self.processes = accelerator.num_processes
        self.scaler = accelerator.scaler
        self.no_sync = getattr(model, "no_sync", None)  # only a DDP-wrapped model has one
        self.inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside Accelerate's wrapper
        # The last step's loss, kept (graph and all, its buffers already freed by backward) until the next
        # step's forward has run, as a training loop's `loss` variable keeps it: the parameters' gradient
        # accumulators, which autograd holds only weakly, then live on and are reused instead of being rebuilt
        # and freed every step (what it saves: docs/performance.md).
        self._spent_loss: torch.Tensor | None = None

    def __call__(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], timer: PhaseTimer | None = None,
                 after_backward: Callable[[int, bool], None] | None = None, noise: NoiseMonitor | None = None,
                 ) -> list[torch.Tensor]:
        timer = timer or _NO_TIMER
        last = self.micro_steps - 1
        losses = []
        timer.start_step()
        scale = None
        if self.task.token_weighted:  # the step's target tokens are counted before its first forward
            micro_batches = list(micro_batches)
            scale = self.token_scale(micro_batches)
        for index, (inputs, labels) in enumerate(micro_batches):
            timer.mark("data_wait")  # time blocked in the loader since the previous mark
            if self.to_device:
                inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                timer.mark("h2d")
            synced = index == last
            if synced or self.no_sync is None:
                loss = self.forward_backward(inputs, labels, scale)
            else:
                with self.no_sync():
                    loss = self.forward_backward(inputs, labels, scale)
            if after_backward is not None:
                after_backward(index, synced)
            timer.end_micro_step(synced)
            if noise is not None and noise.measuring:
                timer.skip(noise.after_backward(index, inputs, labels))  # off the clock (scaling/noise/monitor.py)
            losses.append(loss.detach())  # no host sync here: losses are read once per logging window
            self._spent_loss = loss
        if self.scaler is not None:
            self.scaler.step(self.inner)  # unscales, skips the step on inf/NaN gradients
            self.scaler.update()
        else:
            self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        timer.end_step()
        return losses

    def token_scale(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """micro-steps x processes / the global batch's target tokens (summed over processes: one all-reduce
        of one number per step, no host sync). A micro-batch's loss is its token sum times this: their mean
        over micro-steps and processes, what the loop records and DDP's averaged gradient follow, is then
        the global batch's token sum over its token count, however the batch is split and padded."""
        count = sum(self.task.target_count(labels.to(self.device)) for _, labels in micro_batches).double()
        if self.processes > 1:
            torch.distributed.all_reduce(count)
        return (self.micro_steps * self.processes / count.clamp_min(1)).float()

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor,
                         scale: torch.Tensor | None = None) -> torch.Tensor:
        outputs = self.model(inputs)
        loss = self.task.loss(outputs, labels) if scale is None else self.task.loss_sum(outputs, labels) * scale
        scaled = loss / self.micro_steps if self.micro_steps > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss


def optimizer_step(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                   micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], timer: PhaseTimer | None = None,
                   after_backward: Callable[[int, bool], None] | None = None, noise: NoiseMonitor | None = None,
                   task: Task = CLASSIFICATION) -> list[torch.Tensor]:
    """One optimizer step (StepRunner) for callers that take one now and then (the ceilings, tests)."""
    return StepRunner(accelerator, model, optimizer, task)(micro_batches, timer, after_backward, noise)


_NO_TIMER = PhaseTimer(torch.device("cpu"), enabled=False)
