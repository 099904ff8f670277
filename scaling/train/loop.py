"""The training loop: optimizer steps (scaling/train/step.py), evaluation on a schedule, stop at the target
or a budget. The loop owns the run record (scaling/record.py) and updates it as it goes.

Hot-loop rule: no `.item()` or other host sync per step. Per-step losses stay on the device and are read
once per logging window (one all-reduce + one copy), which is also where divergence and the time budget
are checked; whether the run has stalled (at the chance loss without progress) is decided from the
evaluations, at evaluation boundaries only.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from scaling.batching import GlobalBatchSampler
from scaling.branching import branch_point_folder, branch_steps
from scaling.config import RunConfig
from scaling.data.delivery import BatchSource
from scaling.data.tensors import TensorPair
from scaling.files import MetricsWriter, finite_or_none
from scaling.lr import LRSchedule
from scaling.noise.monitor import PROBE_BATCHES, NoiseMonitor
from scaling.record import RunRecord, TargetCrossing
from scaling.targets import behind_pace, pace_milestones
from scaling.task import Target, Task, run_target
from scaling.train.checkpoint import Checkpoint, load_start_point, start_point_step
from scaling.train.clock import PhaseTimer, RunClock, ThroughputWindows, summarize_phases, synchronize
from scaling.train.evaluation import StallRule, chance_loss, evaluate, evaluate_against, steps_per_eval
from scaling.train.state import Snapshot, TrainingState
from scaling.train.step import StepRunner
from scaling.train.target import TargetSearch

PROGRESS_REFRESH_S = 0.5
# The noise probe at a branch point pools at least this many samples (PROBE_BATCHES global batches at least):
# at a small batch, 16 batches give too few samples for |G|^2 when B_simple is far above the batch.
POINT_PROBE_SAMPLES = 4096


def total_steps(cfg: RunConfig, sampler: GlobalBatchSampler) -> int | None:
    budgets = []
    if cfg.max_steps is not None:
        budgets.append(cfg.max_steps)
    if cfg.max_epochs is not None:
        budgets.append(sampler.steps_for_epochs(cfg.max_epochs))
    return min(budgets) if budgets else None


def capped(budget: int | None, cap: int | None) -> int | None:
    """The last step the loop runs: the budget, or the cap when it comes first."""
    return cap if budget is None or (cap is not None and cap < budget) else budget


class Trainer:
    """The loop of one run. `run()` trains until the target, a budget, divergence or a stall; each helper does
    one thing: a training step, a logging-window boundary, an evaluation. It implements the interface the
    exact-step search replays through (scaling/train/target.py, `Replay`)."""

    def __init__(self, record: RunRecord, sampler: GlobalBatchSampler, state: TrainingState, schedule: LRSchedule,
                 train_data: Any, eval_data: Any, metrics: MetricsWriter, task: Task):
        cfg, plan, accelerator = record.config, record.plan, state.accelerator
        self.record, self.cfg, self.plan, self.sampler, self.state = record, cfg, plan, sampler, state
        self.accelerator, self.model, self.optimizer = accelerator, state.model, state.optimizer
        self.schedule, self.metrics, self.task = schedule, metrics, task
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.batches = sampler.batches  # the global batch of every step (one, or a --batch-schedule's)
        # A cap (cfg.cap_steps: a tuning trial that can no longer win) ends the loop early without changing
        # the LR schedule, which build.py plans over the full budget: a capped run is the uncapped one, cut.
        budget = total_steps(cfg, sampler)
        self.last_step = capped(budget, cfg.cap_steps)
        self.eval_interval = steps_per_eval(cfg, self.steps_per_epoch)
        # A run started from another run's point (--start-from) evaluates every interval counted from that point.
        self.eval_offset = start_point_step(Path(cfg.start_from)) if cfg.start_from else 0
        self.source = BatchSource(train_data, self.sampler, accelerator.process_index, accelerator.device, cfg)
        self.eval_set = eval_data.to(accelerator.device) if isinstance(eval_data, TensorPair) else eval_data
        self.unwrapped = state.unwrapped  # evaluation: no DDP hooks, eager
        self.timer = PhaseTimer(accelerator.device, enabled=cfg.time_phases, sync_each_phase=cfg.profile_sync)
        self.step_runner = StepRunner(accelerator, self.model, self.optimizer, task)
        self.clock = RunClock()  # replaced by the run's clock when training starts
        # Appends to the record's lists (which a resume refills in place).
        self.windows = ThroughputWindows(lambda: self.clock.elapsed(), record.window_rates, record.window_durations)
        self.micro_losses: list[torch.Tensor] = []
        self.micro_counts: list[int] = []  # a batch schedule's micro-steps of each step in micro_losses
        self.stop_signal: str | None = None  # set by a signal handler; acted on at the next window boundary
        self.checkpoint = Checkpoint(accelerator, Path(cfg.output_dir) / "checkpoint")
        self.noise = None
        # Not under a batch schedule: the estimators' small and big batches are the plan's (the reference run
        # of `scaling branch` measures B_simple at its fixed batch).
        if cfg.noise_scale and not self.batches.scheduled and (accelerator.num_processes > 1 or plan.micro_steps_per_process > 1
                                or plan.per_device_bs >= 2):
            self.noise = NoiseMonitor(accelerator, self.model, plan, cfg.noise_every, off_clock=self.off_the_clock,
                                      task=task)
        num_classes = record.facts.model.num_classes
        self.stall_rule = StallRule(cfg.stall_evals, chance_loss(num_classes) if num_classes >= 2 else 0.0,
                                    schedule.warmup_steps, self.steps_per_epoch)
        self.target = run_target(cfg.target_accuracy, cfg.target_loss)
        self.levels = [Target(self.target.metric, value) for value in cfg.target_levels] if self.target else []
        self.milestones = pace_milestones(cfg.pace)  # a tuning trial's pace (scaling/targets.py, behind_pace)
        self.eval_units = task.units(self.eval_set)  # the samples or target tokens an evaluation scores
        self.target_search = TargetSearch(self, enabled=cfg.exact_target and self.target is not None,
                                          max_steps=cfg.exact_target_max_steps)
        # --branch-points: the steps whose state is kept for `scaling branch` (a window boundary at each)
        self.branch_steps = branch_steps(cfg, budget)
        self.window_steps = cfg.log_every  # steps per logging window (window_length)
        self._boundary: tuple[int, float] | None = None  # (step, agreed elapsed) at the last window boundary
        self._checkpointed_at = 0

    @property
    def step(self) -> int:
        return self.record.step

    @property
    def samples(self) -> int:
        """Samples trained so far (all processes)."""
        return self.record.samples

    def request_stop(self, signal_name: str) -> None:
        """Called from a signal handler: checkpoint and stop at the next logging-window boundary."""
        self.stop_signal = signal_name

    # ---- the loop ----
    def run(self) -> RunRecord:
        cfg, accelerator, record = self.cfg, self.accelerator, self.record
        # Redrawn at most every PROGRESS_REFRESH_S (what a redraw costs: docs/performance.md).
        progress = tqdm(total=self.last_step, disable=not (accelerator.is_main_process and cfg.progress),
                        unit="step", dynamic_ncols=True, leave=False, mininterval=PROGRESS_REFRESH_S)
        self.model.train()
        if cfg.compile:
            record.compile_s = self.compile_before_the_clock()
        self.source.start(record.step)
        synchronize(accelerator.device)
        # The clock starts before the first training batch is touched; after a resume it continues from
        # the checkpoint's reading, so the time the job was down does not count (docs/clock.md).
        self.clock = RunClock(record.elapsed_s, record.eval_s)
        self.windows.restart(self.samples)
        record.clock_points.append((record.step, self.clock.train_elapsed()))
        self.target_search.start()
        while self.last_step is None or record.step < self.last_step:
            self.train_step()
            eval_due = (record.step - self.eval_offset) % self.eval_interval == 0 or record.step == self.last_step
            at_point = record.step in self.branch_steps
            if not (eval_due or at_point or record.step % self.window_steps == 0):
                continue
            window_losses, elapsed, stop = self.close_window()
            progress.update(record.step - progress.n)
            if self.check_divergence(window_losses):
                break
            time_up = cfg.max_time is not None and elapsed >= cfg.max_time
            if eval_due or time_up:  # before acting on a stop request, so a resume misses no evaluation
                entry = self.evaluate_now()
                progress.set_postfix(acc=f"{entry['accuracy']:.3f}", loss=f"{window_losses[-1]:.3f}", refresh=False)
                if self.target is not None and self.target.reached(entry["accuracy"], entry["loss"]):
                    self.reach_target()
                    break
                if self.check_stall() or self.check_pace():
                    break
            if at_point:
                self.save_branch_point()
            if time_up:
                break
            if stop:  # preemption: every process saw the request at this same step
                self.save_checkpoint()
                record.status = "interrupted"
                break
            if cfg.checkpoint_every and record.step - self._checkpointed_at >= cfg.checkpoint_every:
                self.save_checkpoint()
        progress.close()
        self.record_levels()
        # A budget ran out: the noise scale where training ended (not for a diverged or stalled run, whose
        # weights are broken or stuck at chance: its gradients say nothing about the batch).
        if record.status == "running":
            self.probe_noise("final")
        self.metrics.flush()
        return self.finish()

    def compile_before_the_clock(self) -> float:
        """torch.compile compiles on the first calls: one optimizer step (with a noise measurement, whose
        half batch has its own shapes) before the clock starts, then the state is restored. Returns the
        seconds it took (result `compile_s`)."""
        start = time.perf_counter()
        snapshot = self.snapshot()
        if self.noise is not None:
            self.noise.begin_step(self.step, force=True)
        self.use_batch(self.step)
        self.step_runner(self.source.replay_micro_batches(self.step), noise=self.noise)
        synchronize(self.accelerator.device)
        if self.noise is not None:
            self.noise.discard_pending()
        self.restore(snapshot)
        return time.perf_counter() - start

    @contextmanager
    def off_the_clock(self) -> Iterator[None]:
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

    def train_step(self) -> None:
        record = self.record
        step = record.step
        record.lr.append(self.set_lr(step))
        if self.noise is not None:
            self.noise.begin_step(step)
        if self.batches.scheduled:
            self.micro_counts.append(self.use_batch(step))
        self.micro_losses.extend(self.step_runner(self.source.micro_batches(step), self.timer, noise=self.noise))
        record.step = step + 1

    def close_window(self) -> tuple[list[float], float, bool]:
        """Logging-window boundary: the one host sync per window. Returns the window's per-step global
        mean losses, the elapsed wall time and whether any process was asked to stop (both reduced with
        max over processes, so all processes decide alike), and sets the next windows' length."""
        accelerator, record = self.accelerator, self.record
        synchronize(accelerator.device)
        rate = self.windows.close(self.samples)
        record.phase_windows.append(self.timer.close_window())
        if self.noise is not None:
            for point in self.noise.flush():
                self.metrics.write({"type": "noise", **point})
                self._track("noise", {k: v for k, v in point.items() if v is not None})
        if self.cfg.log_with and rate is not None and record.phase_windows[-1] is not None:
            self._track("phases", window_phase_shares(record.phase_windows[-1], record.window_durations[-1]))
        # Mean over this process's micro-batches, then over processes: the global-batch mean loss per step
        # (all micro-batches have the same size).
        local = self.step_means(self.micro_losses, self.micro_counts)
        if accelerator.num_processes > 1:
            window_losses = accelerator.reduce(local, reduction="mean").tolist()
            flags = torch.tensor([self.clock.elapsed(), float(self.stop_signal is not None)], device=accelerator.device)
            elapsed, stop = accelerator.reduce(flags, "max").tolist()
        else:
            window_losses, elapsed, stop = local.tolist(), self.clock.elapsed(), float(self.stop_signal is not None)
        self.micro_losses.clear()
        self.micro_counts.clear()
        record.clock_points.append((record.step, self.clock.train_elapsed()))
        if record.first_loss is None:
            record.first_loss = window_losses[0]
        record.train_loss.extend(finite_or_none(v) for v in window_losses)
        line = {
            "type": "train", "step": record.step, "samples": self.samples,
            "epoch": self.sampler.epochs_at(record.step), "time_s": elapsed, "lr": record.lr[-1],
            "train_loss": finite_or_none(sum(window_losses) / len(window_losses)), "samples_per_s": rate,
        }
        self.metrics.write(line)
        self._track("train", line)
        self.metrics.flush()
        self.window_length(elapsed)
        return window_losses, elapsed, stop > 0

    def use_batch(self, step: int) -> int:
        """The step runner set for the batch of `step` (a batch schedule changes its micro-steps); returns them."""
        micro_steps = self.batches.plan_at(step).micro_steps_per_process
        self.step_runner.micro_steps = micro_steps
        return micro_steps

    def step_means(self, losses: list[torch.Tensor], counts: list[int] | None = None) -> torch.Tensor:
        """This process's mean loss per optimizer step from its micro-steps' losses (equal micro-batches);
        `counts`: each step's micro-steps, when they differ (a batch schedule), else the plan's."""
        local = torch.stack(losses).float()
        if counts and len(set(counts)) > 1:
            return torch.stack([part.mean() for part in local.split(counts)])
        micro_steps = counts[0] if counts else self.plan.micro_steps_per_process
        return local.view(-1, micro_steps).mean(dim=1) if micro_steps > 1 else local

    def window_length(self, elapsed: float) -> None:
        """Steps in the next logging windows: a multiple of `--log-every` lasting at least `--log-min-s`, from
        the last window's time per step (what a boundary costs, hence the minimum: docs/performance.md).
        `elapsed` is agreed by all processes (max-reduced), so all choose alike; a window with an evaluation
        in it (`_boundary` cleared) keeps the length."""
        cfg = self.cfg
        if self._boundary is not None and cfg.log_min_s > 0:
            step, then = self._boundary
            per_step = (elapsed - then) / max(1, self.step - step)
            if per_step > 0:
                self.window_steps = steps_per_window(cfg.log_every, cfg.log_min_s, per_step)
        self._boundary = (self.step, elapsed)

    def check_divergence(self, window_losses: list[float]) -> bool:
        record = self.record
        diverged_at = _divergence_step(window_losses, record.first_loss, self.cfg.diverge_factor, record.step)
        if diverged_at is not None:
            record.status, record.diverged_at_step = "diverged", diverged_at
        return diverged_at is not None

    def check_stall(self) -> bool:
        """At an evaluation boundary: whether the run has stalled (scaling/train/evaluation.py, StallRule). The
        rule reads the evaluation history only, which every process holds alike: no extra sync."""
        record = self.record
        evidence = self.stall_rule.check(record.history)
        if evidence is not None:
            record.status, record.stalled_at_step, record.stall = "stalled", record.step, evidence
        return evidence is not None

    def check_pace(self) -> bool:
        """At an evaluation: whether the run fell behind a milestone of cfg.pace; it then ends as not_reached
        (what history every process holds alike, like the stall rule)."""
        if not self.milestones or self.target is None:
            return False
        behind = behind_pace(self.target, self.milestones, self.record.history, self.record.step)
        if behind is not None and self.accelerator.is_main_process:
            tqdm.write(f"scaling: behind the pace at step {self.record.step:,}: {self.target.metric} "
                       f"{behind[1]:g} was due by step {behind[0]:,}; stopping (not reached)")
        return behind is not None

    def evaluate_now(self) -> dict:
        clock = self.clock
        eval_start = clock.elapsed()
        accuracy, eval_loss = evaluate(self.unwrapped, self.eval_set, self.accelerator, self.task)
        clock.eval_s += clock.elapsed() - eval_start
        # Time to an evaluation counts up to its end (MLPerf: the clock stops once quality is known);
        # train_time_s is the same moment with every evaluation's time taken out.
        entry = {
            "step": self.step, "samples": self.samples, "epoch": self.sampler.epochs_at(self.step),
            "time_s": clock.elapsed(), "train_time_s": clock.train_elapsed(),
            "accuracy": accuracy, "loss": finite_or_none(eval_loss),
        }
        self.record.history.append(entry)
        self.metrics.write({"type": "eval", **entry})
        self._track("eval", entry)
        self.metrics.flush()
        self.windows.restart(self.samples)
        self._boundary = None  # the next window starts after the evaluation: no time per step across it
        return entry

    # ---- the exact step at the target (scaling/train/target.py) and the noise scale there ----
    def reach_target(self) -> None:
        record = self.record
        record.status, record.first_eval_at_target = "reached", len(record.history) - 1
        if record.first_eval_at_target == 0 and self.accelerator.is_main_process:
            tqdm.write(f"scaling: warning: the target ({self.target.label()}) was met at the first evaluation, step "
                       f"{record.history[0]['step']}: too easy to compare batch sizes by; set a harder target or "
                       f"evaluate earlier (--eval-every)", file=sys.stderr)
        search, levels = self.target_search.find_first_step(self.target, lambda: self.probe_noise("target"),
                                                            self.levels)
        record.target = self.crossing(search)
        record.levels = {level.value: self.crossing(found) for level, found in levels}

    def record_levels(self) -> None:
        """A run that ended short of its target: the exact first step at each level its evaluations met."""
        if self.levels and self.record.target is None and self.record.status != "interrupted":
            found = self.target_search.find_levels(self.levels)
            self.record.levels = {level.value: self.crossing(search) for level, search in found}

    def crossing(self, search: dict) -> TargetCrossing:
        """The first step at a target (or level) from its search record, with the clocks at that step."""
        step = search["first_step"]
        # The first scheduled evaluation at it: the interval's upper end, which the run evaluated.
        found = next(entry for entry in self.record.history if entry["step"] == search["window"][1])
        if step == found["step"]:  # that evaluation is the reported step
            return TargetCrossing(step, found["time_s"], found["train_time_s"], search)
        train_time = self.train_time_at(step)
        # Wall time: the training clock at that step plus the evaluations run until the one that found it.
        return TargetCrossing(step, train_time + found["time_s"] - found["train_time_s"], train_time, search)

    def train_time_at(self, step: int) -> float:
        """The training clock at the end of `step`, interpolated linearly between the logging-window
        boundaries around it (where the device is synchronized and the clock read)."""
        points = sorted(self.record.clock_points)
        for (step_a, time_a), (step_b, time_b) in zip(points, points[1:], strict=False):
            if step_a <= step <= step_b and step_b > step_a:
                return time_a + (time_b - time_a) * (step - step_a) / (step_b - step_a)
        return points[-1][1]

    # ---- what the search and the probes replay through (scaling/train/target.py, `Replay`) ----
    def snapshot(self) -> Snapshot:
        return self.state.snapshot(self.step)

    def restore(self, snapshot: Snapshot) -> None:
        self.record.step = self.state.restore(snapshot)

    def paused(self):
        return self.clock.paused()

    def replay_step(self, step: int) -> float:
        """Train optimizer step `step` again (no timing, no noise measurement); its global mean loss."""
        self.set_lr(step)
        if self.noise is not None:
            self.noise.measuring = False
        micro_steps = self.use_batch(step)
        losses = self.step_runner(self.source.replay_micro_batches(step))
        self.record.step = step + 1
        return self.accelerator.reduce(self.step_means(losses, [micro_steps]), reduction="mean").item()  # host sync: replay is off the clock

    def reaches(self, target: Target, whole: bool) -> tuple[bool, float | None]:
        return evaluate_against(self.unwrapped, self.eval_set, self.accelerator, self.task, target, self.eval_units,
                                whole)

    def probe_noise(self, label: str, batches: int = PROBE_BATCHES) -> None:
        """The noise scale at the current weights (scaling/noise/monitor.py, `probe`), on the batches of the
        next `batches` steps, off the clock; buffers and RNG are restored afterwards."""
        if self.noise is None:
            return
        with self.clock.paused():
            snapshot = self.snapshot()
            self.noise.step = self.step
            steps = range(self.step, self.step + batches)
            self.noise.probe(label, (self.source.replay_micro_batches(step) for step in steps))
            self.restore(snapshot)

    # ---- checkpoints (scaling/train/checkpoint.py saves and restores the record's loop state) ----
    def read_clock(self) -> None:
        """The clock's readings into the record (what a checkpoint or the result holds)."""
        self.record.elapsed_s, self.record.eval_s = self.clock.elapsed(), self.clock.eval_s

    def save_checkpoint(self) -> None:
        self.metrics.check()  # a deleted or replaced folder is not recreated by the save (FolderGone)
        self._checkpointed_at = self.step
        self.read_clock()
        if self.noise is not None:
            self.record.noise_state = self.noise.state_dict()
        base = self.target_search.base
        self.checkpoint.save(self.record.state_dict(), start=base.to_dict() if base is not None else None)

    def save_branch_point(self) -> None:
        """The state at a --branch-points step, in OUTPUT_DIR/branch_points/step-N (scaling/branching.py)."""
        self.metrics.check()
        if self.noise is not None:  # B_simple at the point, beside the critical batch branching measures there
            self.probe_noise("point", max(PROBE_BATCHES, math.ceil(POINT_PROBE_SAMPLES / self.plan.global_bs)))
            self.noise.points.append({"step": self.step, **self.noise.probes.pop("point")})
            self.record.noise_state = self.noise.state_dict()
        self.read_clock()
        folder = branch_point_folder(Path(self.cfg.output_dir), self.step)
        if self.accelerator.is_main_process:
            folder.parent.mkdir(exist_ok=True)
        Checkpoint(self.accelerator, folder).save(self.record.state_dict())

    def start_from_point(self, folder: Path) -> None:
        """--start-from: the loop state, model, optimizer and RNG of another run's checkpoint (a branch point),
        trained on under this run's settings (the branch's batch, budget, seed)."""
        self.record.load_state_dict(load_start_point(self.accelerator, folder))

    def load_checkpoint(self) -> None:
        """Resume: the record's loop state from the checkpoint (the sampler needs only the step: batches are a
        function of (seed, step)), the model, optimizer and RNG states through Accelerate."""
        self.record.load_state_dict(self.checkpoint.load(self.cfg))
        self._checkpointed_at = self.step
        start = self.checkpoint.load_start()
        if start is not None:
            self.target_search.base = Snapshot.from_dict(start)
        if self.noise is not None and self.record.noise_state:
            self.noise.load_state_dict(self.record.noise_state)

    def _track(self, group: str, values: dict) -> None:
        """Send a record's numbers to the trackers of --log-with as `group/name` (Accelerate logs on the main
        process only); a name that repeats the group (`train_loss` under `train`) loses the repetition."""
        if self.cfg.log_with:
            numbers = {f"{group}/{k.removeprefix(group + '_')}": v for k, v in values.items()
                       if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(numbers, step=self.step)

    def finish(self) -> RunRecord:
        record, accelerator = self.record, self.accelerator
        synchronize(accelerator.device)
        self.read_clock()
        if record.status == "running":
            record.status = "not_reached" if self.target is not None else "completed"
        # Phases after warm-up (the first window holds allocator and cache warm-up, as for throughput).
        skip = 1 if len(record.phase_windows) > 1 else 0
        kept, durations = record.phase_windows[skip:], record.window_durations[skip:]
        record.step_time = summarize_phases(kept, accelerator.num_processes, sum(durations))
        if self.noise is not None:
            record.noise_scale = self.noise.summary()
        if self.cfg.time_phases:
            own = torch.tensor([sum(w["step_wall"] for w in kept)], device=accelerator.device, dtype=torch.float64)
            record.per_rank_step_time_s = accelerator.gather(own).tolist()
        return record


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
