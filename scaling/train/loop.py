"""The training loop: accumulate with Accelerate, evaluate on a schedule, stop at the target or budget.

Hot-loop rule: no `.item()` or other host sync per step. Per-step losses stay on the device and are read
once per logging window (one all-reduce + one copy), which is also where divergence and the time budget
are checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from scaling.batching import BatchPlan, GlobalBatchSampler
from scaling.config import RunConfig
from scaling.data.delivery import BatchSource, fetch_batch
from scaling.data.tensors import TensorPair
from scaling.lr import LRSchedule
from scaling.noise.monitor import PROBE_BATCHES, NoiseMonitor
from scaling.results import MetricsWriter, finite_or_none
from scaling.train.checkpoint import Checkpoint
from scaling.train.clock import PhaseTimer, RunClock, ThroughputWindows, summarize_phases, synchronize
from scaling.train.target import TargetSearch, restore, take_snapshot

EVAL_BATCH_SIZE = 1024
PROGRESS_REFRESH_S = 0.5


@dataclass
class TrainOutcome:
    status: str
    steps: int
    history: list[dict] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    target_eval: dict | None = None  # the first step at the target: exact when target_search says so
    first_eval_at_target: dict | None = None  # the first scheduled evaluation at or above the target
    target_search: dict | None = None
    diverged_at_step: int | None = None
    throughput_samples_per_s: float | None = None  # samples over the training clock
    median_window_rate: float | None = None
    window_rates: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    train_elapsed_s: float = 0.0
    step_time: dict | None = None
    noise_scale: dict | None = None
    per_rank_step_time_s: list[float] = field(default_factory=list)
    compile_s: float | None = None


class StepRunner:
    """One optimizer step over this process's micro-batches; returns their (device) losses.

    DDP skips its all-reduce under `no_sync` on all but the last micro-step, each loss is divided by the
    micro-step count, so with equal micro-batches the optimizer sees the gradient of the mean loss over the
    whole global batch. This is what Accelerate's `accumulate`, `backward` and optimizer wrapper do, called
    directly, with what they look up on every call read once here: their per-call bookkeeping cost 4-10% of
    a step at batch 32-256 on the default workload (docs/performance.md). Accelerate still builds the
    process group, wraps the model (DDP, autocast) and owns the fp16 loss scaler used here;
    tests/test_emulation.py checks every decomposition's trajectory. `after_backward(i, synced)` runs after
    micro-step i's backward (tests observe gradient sync with it).
    """

    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.device = accelerator.device
        self.to_device = accelerator.device.type != "cpu"  # on the CPU, .to() has nothing to do
        self.micro_steps = accelerator.gradient_accumulation_steps  # the plan's micro-steps per process
        self.scaler = accelerator.scaler
        self.no_sync = getattr(model, "no_sync", None)  # only a DDP-wrapped model has one
        self.inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside Accelerate's wrapper
        # The last step's loss, kept (graph and all, its buffers already freed by backward) until the next
        # step's forward has run, as a training loop's `loss` variable keeps it: the parameters' gradient
        # accumulators, which autograd holds only weakly, then live on and are reused instead of being rebuilt
        # and freed every step. About 35,000 fewer instructions per step (0.4%) at batch 32 on the default
        # workload's loader path (benchmarks/instructions.py, docs/performance.md).
        self._spent_loss: torch.Tensor | None = None

    def __call__(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], timer: PhaseTimer | None = None,
                 after_backward: Callable[[int, bool], None] | None = None, noise: NoiseMonitor | None = None,
                 ) -> list[torch.Tensor]:
        timer = timer or _NO_TIMER
        last = self.micro_steps - 1
        losses = []
        timer.start_step()
        for index, (inputs, labels) in enumerate(micro_batches):
            timer.mark("data_wait")  # time blocked in the loader since the previous mark
            if self.to_device:
                inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                timer.mark("h2d")
            synced = index == last
            if synced or self.no_sync is None:
                loss = self.forward_backward(inputs, labels)
            else:
                with self.no_sync():
                    loss = self.forward_backward(inputs, labels)
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

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(inputs), labels)
        scaled = loss / self.micro_steps if self.micro_steps > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss


def optimizer_step(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                   micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], timer: PhaseTimer | None = None,
                   after_backward: Callable[[int, bool], None] | None = None, noise: NoiseMonitor | None = None,
                   ) -> list[torch.Tensor]:
    """One optimizer step (StepRunner) for callers that take one now and then (the probe, tests)."""
    return StepRunner(accelerator, model, optimizer)(micro_batches, timer, after_backward, noise)


_NO_TIMER = PhaseTimer(torch.device("cpu"), enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, accelerator: Accelerator) -> tuple[float, float]:
    """Accuracy and mean loss over the whole eval set, sharded over processes and summed."""
    was_training = model.training
    model.eval()
    shard = torch.arange(accelerator.process_index, len(dataset), accelerator.num_processes)
    device = accelerator.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    for start in range(0, len(shard), EVAL_BATCH_SIZE):
        inputs, labels = fetch_batch(dataset, shard[start : start + EVAL_BATCH_SIZE])
        inputs, labels = inputs.to(device), labels.to(device)
        with accelerator.autocast():
            logits = model(inputs)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += len(labels)
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()  # host sync: once per evaluation
    return correct / count, loss_sum / count


def steps_per_eval(cfg: RunConfig, steps_per_epoch: int) -> int:
    if cfg.eval_every is not None:
        return cfg.eval_every
    return max(1, round(cfg.eval_every_epochs * steps_per_epoch))


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int | None:
    budgets = []
    if cfg.max_steps is not None:
        budgets.append(cfg.max_steps)
    if cfg.max_epochs is not None:
        budgets.append(max(1, math.ceil(cfg.max_epochs * steps_per_epoch)))
    return min(budgets) if budgets else None


class Trainer:
    """The loop of one run. `run()` trains until the target, a budget or divergence; each helper does one
    thing: a training step, a logging-window boundary, an evaluation."""

    def __init__(self, cfg: RunConfig, plan: BatchPlan, sampler: GlobalBatchSampler, accelerator: Accelerator,
                 model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule, train_data: Any,
                 eval_data: Any, metrics: MetricsWriter):
        self.cfg, self.plan, self.sampler, self.accelerator = cfg, plan, sampler, accelerator
        self.model, self.optimizer, self.schedule, self.metrics = model, optimizer, schedule, metrics
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.last_step = total_steps(cfg, self.steps_per_epoch)
        self.eval_interval = steps_per_eval(cfg, self.steps_per_epoch)
        self.source = BatchSource(train_data, self.sampler, accelerator.process_index, accelerator.device, cfg)
        self.eval_set = eval_data.to(accelerator.device) if isinstance(eval_data, TensorPair) else eval_data
        self.unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)  # eval: no DDP hooks, eager
        self.timer = PhaseTimer(accelerator.device, enabled=cfg.time_phases, sync_each_phase=cfg.profile_sync)
        self.step_runner = StepRunner(accelerator, model, optimizer)
        self.clock = RunClock()  # replaced by the run's clock when training starts
        self.windows = ThroughputWindows(now=lambda: self.clock.elapsed())  # the clock of the moment
        self.phase_windows: list[dict[str, float]] = []
        self.outcome = TrainOutcome(status="running", steps=0)
        self.micro_losses: list[torch.Tensor] = []
        self.first_loss: float | None = None
        self.step = 0
        self._clock_offsets = (0.0, 0.0)  # (elapsed, evaluation) seconds before a resume
        self.stop_signal: str | None = None  # set by a signal handler; acted on at the next window boundary
        self.checkpoint = Checkpoint(accelerator, Path(cfg.output_dir) / "checkpoint")
        self.noise = None
        if cfg.noise_scale and (accelerator.num_processes > 1 or plan.micro_steps_per_process > 1
                                or plan.per_device_bs >= 2):
            self.noise = NoiseMonitor(accelerator, model, plan, cfg.noise_every, off_clock=self.off_the_clock)
        self.target_search = TargetSearch(self, enabled=cfg.exact_target and cfg.target_accuracy is not None)
        self.clock_points: list[tuple[int, float]] = []  # (step, training clock) at window boundaries
        self.window_steps = cfg.log_every  # steps per logging window (window_length)
        self._boundary: tuple[int, float] | None = None  # (step, agreed elapsed) at the last window boundary
        self._checkpointed_at = 0

    def request_stop(self, signal_name: str) -> None:
        """Called from a signal handler: checkpoint and stop at the next logging-window boundary."""
        self.stop_signal = signal_name

    # ---- the loop ----
    def run(self) -> TrainOutcome:
        cfg, accelerator = self.cfg, self.accelerator
        # Redrawn at most every PROGRESS_REFRESH_S: a redraw costs 0.3-0.4 ms (tqdm's formatting and write), up
        # to 0.4% of the clock at tqdm's default of every 0.1 s (benchmarks/step_cost.py, docs/performance.md).
        progress = tqdm(total=self.last_step, disable=not (accelerator.is_main_process and cfg.progress),
                        unit="step", dynamic_ncols=True, leave=False, mininterval=PROGRESS_REFRESH_S)
        self.model.train()
        if cfg.compile:
            self.outcome.compile_s = self.compile_before_the_clock()
        self.source.start(self.step)
        synchronize(accelerator.device)
        # The clock starts before the first training batch is touched; after a resume it continues from
        # the checkpoint's reading, so the time the job was down does not count (docs/clock.md).
        self.clock = RunClock(*self._clock_offsets)
        self.windows.restart(self.samples)
        self.clock_points.append((self.step, self.clock.train_elapsed()))
        self.target_search.window_start()
        while self.last_step is None or self.step < self.last_step:
            self.train_step()
            eval_due = self.step % self.eval_interval == 0 or self.step == self.last_step
            if not (eval_due or self.step % self.window_steps == 0):
                continue
            window_losses, elapsed, stop = self.close_window()
            progress.update(self.step - progress.n)
            if self.check_divergence(window_losses):
                break
            time_up = cfg.max_time is not None and elapsed >= cfg.max_time
            if eval_due or time_up:  # before acting on a stop request, so a resume misses no evaluation
                accuracy = self.evaluate_now()
                progress.set_postfix(acc=f"{accuracy:.3f}", loss=f"{window_losses[-1]:.3f}", refresh=False)
                if cfg.target_accuracy is not None and accuracy >= cfg.target_accuracy:
                    self.reach_target()
                    break
                self.target_search.window_start()
            if time_up:
                break
            if stop:  # preemption: every process saw the request at this same step
                self.save_checkpoint()
                self.outcome.status = "interrupted"
                break
            if cfg.checkpoint_every and self.step - self._checkpointed_at >= cfg.checkpoint_every:
                self.save_checkpoint()
        progress.close()
        if self.outcome.status == "running":  # a budget ran out: the noise scale where training ended
            self.probe_noise("final")
        self.metrics.flush()
        return self.finish()

    def compile_before_the_clock(self) -> float:
        """torch.compile compiles on the first calls: one optimizer step (with a noise measurement, whose
        half batch has its own shapes) before the clock starts, then the state is restored. Returns the
        seconds it took (result `compile_s`)."""
        start = time.perf_counter()
        snapshot = take_snapshot(self)
        if self.noise is not None:
            self.noise.begin_step(self.step, force=True)
        self.step_runner(self.source.replay_micro_batches(self.step), noise=self.noise)
        synchronize(self.accelerator.device)
        if self.noise is not None:
            self.noise.discard_pending()
        restore(self, snapshot)
        return time.perf_counter() - start

    @contextmanager
    def off_the_clock(self):
        """The tool's own work inside a step (the noise measurement): the device finishes the training work
        queued before it on the clock, then the clock is paused until the device has finished this work."""
        synchronize(self.accelerator.device)
        with self.clock.paused():
            yield
            synchronize(self.accelerator.device)

    def set_lr(self, step: int) -> float:
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    @property
    def samples(self) -> int:
        """Samples trained so far (all processes)."""
        return self.step * self.plan.global_bs

    def train_step(self) -> None:
        step = self.step
        self.outcome.lr.append(self.set_lr(step))
        if self.noise is not None:
            self.noise.begin_step(step)
        self.micro_losses.extend(self.step_runner(self.source.micro_batches(step), self.timer, noise=self.noise))
        self.step = step + 1

    def close_window(self) -> tuple[list[float], float, bool]:
        """Logging-window boundary: the one host sync per window. Returns the window's per-step global
        mean losses, the elapsed wall time and whether any process was asked to stop (both reduced with
        max over processes, so all processes decide alike), and sets the next windows' length."""
        accelerator = self.accelerator
        synchronize(accelerator.device)
        rate = self.windows.close(self.samples)
        self.phase_windows.append(self.timer.close_window())
        if self.noise is not None:
            for point in self.noise.flush():
                self.metrics.write({"type": "noise", **point})
                self._track("noise", {k: v for k, v in point.items() if v is not None})
        if self.cfg.log_with and rate is not None and self.phase_windows[-1] is not None:
            self._track("phases", window_phase_shares(self.phase_windows[-1], self.windows.durations[-1]))
        # Mean over this process's micro-batches, then over processes: the global-batch mean loss per step
        # (all micro-batches have the same size).
        local = self.step_means(self.micro_losses)
        if accelerator.num_processes > 1:
            window_losses = accelerator.reduce(local, reduction="mean").tolist()
            flags = torch.tensor([self.clock.elapsed(), float(self.stop_signal is not None)], device=accelerator.device)
            elapsed, stop = accelerator.reduce(flags, "max").tolist()
        else:
            window_losses, elapsed, stop = local.tolist(), self.clock.elapsed(), float(self.stop_signal is not None)
        self.micro_losses.clear()
        self.clock_points.append((self.step, self.clock.train_elapsed()))
        if self.first_loss is None:
            self.first_loss = window_losses[0]
        self.outcome.train_loss.extend(finite_or_none(v) for v in window_losses)
        self.outcome.steps = self.step
        record = {
            "type": "train", "step": self.step, "samples": self.samples,
            "epoch": self.step / self.steps_per_epoch, "time_s": elapsed, "lr": self.outcome.lr[-1],
            "train_loss": finite_or_none(sum(window_losses) / len(window_losses)), "samples_per_s": rate,
        }
        self.metrics.write(record)
        self._track("train", record)
        self.metrics.flush()
        self.window_length(elapsed)
        return window_losses, elapsed, stop > 0

    def step_means(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """This process's mean loss per optimizer step from its micro-steps' losses (equal micro-batches)."""
        local = torch.stack(losses).float()
        micro_steps = self.plan.micro_steps_per_process
        return local.view(-1, micro_steps).mean(dim=1) if micro_steps > 1 else local

    def window_length(self, elapsed: float) -> None:
        """Steps in the next logging windows: a multiple of `--log-every` lasting at least `--log-min-s`, from
        the last window's time per step. A boundary costs 0.3-0.4 ms on the CPU with the default CNN (the
        metrics line, the loss read-back, the noise-scale points; a device synchronization on GPUs): 1.5-2% of
        a 1.8 ms step every 10 steps, under 0.1% once windows last 0.5 s (benchmarks/step_cost.py). `elapsed`
        is agreed by all processes (max-reduced), so all choose alike; a window with an evaluation in it
        (`_boundary` cleared) keeps the length."""
        cfg = self.cfg
        if self._boundary is not None and cfg.log_min_s > 0:
            step, then = self._boundary
            per_step = (elapsed - then) / max(1, self.step - step)
            if per_step > 0:
                self.window_steps = steps_per_window(cfg.log_every, cfg.log_min_s, per_step)
        self._boundary = (self.step, elapsed)

    def check_divergence(self, window_losses: list[float]) -> bool:
        diverged_at = _divergence_step(window_losses, self.first_loss, self.cfg.diverge_factor, self.step)
        if diverged_at is not None:
            self.outcome.status, self.outcome.diverged_at_step = "diverged", diverged_at
        return diverged_at is not None

    def evaluate_now(self) -> float:
        clock = self.clock
        eval_start = clock.elapsed()
        accuracy, eval_loss = evaluate(self.unwrapped, self.eval_set, self.accelerator)
        clock.eval_s += clock.elapsed() - eval_start
        # Time to an evaluation counts up to its end (MLPerf: the clock stops once quality is known);
        # train_time_s is the same moment with every evaluation's time taken out.
        record = {
            "step": self.step, "samples": self.samples, "epoch": self.step / self.steps_per_epoch,
            "time_s": clock.elapsed(), "train_time_s": clock.train_elapsed(),
            "accuracy": accuracy, "loss": finite_or_none(eval_loss),
        }
        self.outcome.history.append(record)
        self.metrics.write({"type": "eval", **record})
        self._track("eval", record)
        self.metrics.flush()
        self.windows.restart(self.samples)
        self._boundary = None  # the next window starts after the evaluation: no time per step across it
        return accuracy

    # ---- the exact step at the target (scaling/train/target.py) and the noise scale there ----
    def reach_target(self) -> None:
        outcome = self.outcome
        outcome.status, outcome.first_eval_at_target = "reached", outcome.history[-1]
        search = self.target_search.find_first_step(self.cfg.target_accuracy, lambda: self.probe_noise("target"))
        outcome.target_search = search
        if not search["exact"]:
            outcome.target_eval = outcome.first_eval_at_target
            return
        step = search["first_step"]
        train_time = self.train_time_at(step)
        # Wall time: the training clock at that step plus the evaluations run until the one that found it.
        outcome.target_eval = {"step": step, "samples": step * self.plan.global_bs,
                               "epoch": step / self.steps_per_epoch, "time_s": train_time + self.clock.eval_s,
                               "train_time_s": train_time}

    def train_time_at(self, step: int) -> float:
        """The training clock at the end of `step`, interpolated linearly between the logging-window
        boundaries around it (where the device is synchronized and the clock read)."""
        points = sorted(self.clock_points)
        for (step_a, time_a), (step_b, time_b) in zip(points, points[1:], strict=False):
            if step_a <= step <= step_b and step_b > step_a:
                return time_a + (time_b - time_a) * (step - step_a) / (step_b - step_a)
        return points[-1][1]

    def replay_step(self, step: int) -> float:
        """Train optimizer step `step` again (no timing, no noise measurement); its global mean loss."""
        self.set_lr(step)
        if self.noise is not None:
            self.noise.measuring = False
        losses = self.step_runner(self.source.replay_micro_batches(step))
        self.step = step + 1
        return self.accelerator.reduce(self.step_means(losses), reduction="mean").item()  # host sync: replay is off the clock

    def evaluate_accuracy(self) -> float:
        return evaluate(self.unwrapped, self.eval_set, self.accelerator)[0]

    def probe_noise(self, label: str) -> None:
        """The noise scale at the current weights (scaling/noise/monitor.py, `probe`), on the batches of the next
        PROBE_BATCHES steps, off the clock; buffers and RNG are restored afterwards."""
        if self.noise is None:
            return
        with self.clock.paused():
            snapshot = take_snapshot(self)
            self.noise.step = self.step
            steps = range(self.step, self.step + PROBE_BATCHES)
            self.noise.probe(label, (self.source.replay_micro_batches(step) for step in steps))
            restore(self, snapshot)

    # ---- checkpoints (scaling/train/checkpoint.py saves and restores; the loop says what its state is) ----
    def state_dict(self) -> dict:
        """The loop's own state. The sampler needs only the step: batches are a function of (seed, step)."""
        return {
            "step": self.step, "elapsed_s": self.clock.elapsed(), "eval_s": self.clock.eval_s,
            "first_loss": self.first_loss, "history": self.outcome.history, "train_loss": self.outcome.train_loss,
            "lr": self.outcome.lr, "window_rates": self.windows.rates, "window_durations": self.windows.durations,
            "phase_windows": self.phase_windows, "config": self.cfg.to_dict(),
            "noise": self.noise.state_dict() if self.noise is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self._clock_offsets = (state["elapsed_s"], state["eval_s"])
        self.first_loss = state["first_loss"]
        self.outcome.history, self.outcome.train_loss = state["history"], state["train_loss"]
        self.outcome.lr, self.outcome.steps = state["lr"], state["step"]
        self.windows.rates, self.windows.durations = state["window_rates"], state["window_durations"]
        self.phase_windows = state["phase_windows"]
        self._checkpointed_at = state["step"]
        if self.noise is not None and state.get("noise"):
            self.noise.load_state_dict(state["noise"])

    def save_checkpoint(self) -> None:
        self._checkpointed_at = self.step
        self.checkpoint.save(self.state_dict())

    def load_checkpoint(self) -> None:
        self.load_state_dict(self.checkpoint.load(self.cfg))

    def _track(self, group: str, record: dict) -> None:
        """Send a record's numbers to the trackers of --log-with as `group/name` (Accelerate logs on the main
        process only); a name that repeats the group (`train_loss` under `train`) loses the repetition."""
        if self.cfg.log_with:
            values = {f"{group}/{k.removeprefix(group + '_')}": v for k, v in record.items()
                      if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(values, step=self.step)

    def finish(self) -> TrainOutcome:
        outcome, accelerator = self.outcome, self.accelerator
        synchronize(accelerator.device)
        outcome.elapsed_s = self.clock.elapsed()
        outcome.train_elapsed_s = self.clock.train_elapsed()
        if outcome.status == "running":
            outcome.status = "not_reached" if self.cfg.target_accuracy is not None else "completed"
        if outcome.train_elapsed_s > 0 and self.step:
            outcome.throughput_samples_per_s = self.samples / outcome.train_elapsed_s
        outcome.median_window_rate = self.windows.median_after_warmup()
        outcome.window_rates = self.windows.rates
        # Phases after warm-up (the first window holds allocator and cache warm-up, as for throughput).
        skip = 1 if len(self.phase_windows) > 1 else 0
        kept, durations = self.phase_windows[skip:], self.windows.durations[skip:]
        outcome.step_time = summarize_phases(kept, accelerator.num_processes, sum(durations))
        if self.noise is not None:
            outcome.noise_scale = self.noise.summary()
        if self.cfg.time_phases:
            own = torch.tensor([sum(w["step_wall"] for w in kept)], device=accelerator.device, dtype=torch.float64)
            outcome.per_rank_step_time_s = accelerator.gather(own).tolist()
        return outcome


def steps_per_window(log_every: int, log_min_s: float, step_s: float) -> int:
    """The smallest multiple of `log_every` steps of `step_s` seconds each that lasts at least `log_min_s`."""
    return log_every * max(1, math.ceil(log_min_s / (log_every * step_s)))


def window_phase_shares(window: dict[str, float], wall_s: float) -> dict[str, float]:
    """A logging window's phases as shares of its wall time, for trackers (`phases/data_wait`, ...)."""
    if wall_s <= 0:
        return {}
    shares = {"data_wait": window["data_wait"], "h2d": window["h2d"],
              "forward_backward": window["fwd_bwd_nosync"] + window["fwd_bwd_sync"],
              "optimizer": window["optimizer"]}
    return {name: seconds / wall_s for name, seconds in shares.items()}


def _divergence_step(losses: list[float], first_loss: float, factor: float, end_step: int) -> int | None:
    """The first step in the window whose loss is NaN/inf or above factor x the first loss."""
    limit = factor * first_loss if math.isfinite(first_loss) else -math.inf
    for offset, value in enumerate(losses):
        if not math.isfinite(value) or value > limit:
            return end_step - len(losses) + offset + 1
    return None
