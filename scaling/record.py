"""The run record: what a run is, from the moment it is built to its result.

`RunFacts` is what is measured once, when the run is built (the batch plan, the LR schedule, the data's
sizes, the model's parameters and gradient layout, the environment). `RunRecord` adds what the training
loop updates as it goes (the step, evaluations, per-step losses and LRs, clock readings, logging windows,
the noise series) and what is measured when it ends. The loop owns the record and updates it; the
checkpoint saves its loop state (`state_dict`) and a resume loads it back; `result.json` is written from it
(`to_result`), with every derived value (samples and epochs to the target, throughput, ...) computed there
and stored nowhere else. Readers load results through scaling/results.py, which validates them against the
schema (`Result`, docs/results.md).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from scaling.batching import BatchPlan, BatchSchedule
from scaling.config import RunConfig
from scaling.data.pipeline import user_pipeline
from scaling.results import SCHEMA_VERSION, FailureResult, Result, straggler_ratio
from scaling.targets import Target, easiest_first, run_target
from scaling.task import NEXT_TOKEN


@dataclass(frozen=True)
class ModelFacts:
    """The model as the run built it: what `scaling predict` and the report need without rebuilding it."""

    name: str
    task: str
    parameters: int  # trainable parameters
    gradient_bytes: list[int]  # per parameter, in the order backward produces them (DDP's bucket order)
    input_shape: list[int]  # one input, without the batch dimension
    input_dtype: str  # a torch dtype's name: "float32", "int64", ...
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "parameters": self.parameters,
                "gradient_bytes": list(self.gradient_bytes), "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype, "num_classes": self.num_classes}


@dataclass
class RunFacts:
    """Measured once, when the run is built; the same in every process."""

    config: RunConfig
    plan: BatchPlan
    lr: dict[str, Any]  # results.LRRecord: the rule, the schedule, the betas, eps and weight decay used
    environment: dict[str, Any]
    steps_per_epoch: int
    train_samples: int
    eval_samples: int
    model: ModelFacts
    batch_coupled_layers: list[str] = field(default_factory=list)
    auto_batch: dict[str, Any] | None = None
    materialized: list[str] = field(default_factory=list)
    # the training set's read into memory, when --materialize held it: {"read_s", "samples_read"}
    train_read: dict[str, Any] | None = None
    flops_per_sample: float | None = None  # counted when training starts (scaling/hardware.py)
    batches: BatchSchedule | None = None  # the batch of every step (None: `plan`'s, fixed)

    @property
    def schedule(self) -> BatchSchedule:
        return self.batches if self.batches is not None else BatchSchedule.fixed(self.plan)


@dataclass
class TargetCrossing:
    """The first step at the target: exact when `search["exact"]` (scaling/train/target.py), else the upper
    end of the search's interval (the first scheduled evaluation at the target, or for a run resumed without
    the state at its start, the first step its replay saw at the target)."""

    step: int
    time_s: float  # wall time to the target (evaluations included)
    train_time_s: float  # the training clock at that step
    search: dict[str, Any]


@dataclass
class RunRecord:
    """One run: its facts, the loop's state, and what was measured when it ended."""

    facts: RunFacts
    status: str = "running"
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    train_loss: list[float | None] = field(default_factory=list)  # global mean loss per optimizer step
    lr: list[float] = field(default_factory=list)  # LR per optimizer step
    first_loss: float | None = None  # the divergence test's reference
    elapsed_s: float = 0.0  # wall clock (evaluations included) at the last reading
    eval_s: float = 0.0  # of which evaluations
    clock_points: list[tuple[int, float]] = field(default_factory=list)  # (step, training clock) at boundaries
    window_rates: list[float] = field(default_factory=list)  # samples/s of each logging window
    window_durations: list[float] = field(default_factory=list)
    phase_windows: list[dict[str, float] | None] = field(default_factory=list)
    noise_state: dict[str, Any] | None = None  # the noise monitor's state (checkpointed)
    first_eval_at_target: int | None = None  # index into history
    target: TargetCrossing | None = None
    levels: dict[float, TargetCrossing] = field(default_factory=dict)  # --target-levels met: value -> crossing
    diverged_at_step: int | None = None
    stalled_at_step: int | None = None
    stall: dict[str, Any] | None = None  # the stall rule's evidence (scaling/train/evaluation.py, StallRule)
    compile_s: float | None = None
    # Measured when the run ends (scaling/run.py, Trainer.finish):
    step_time: dict[str, Any] | None = None
    per_rank_step_time_s: list[float] = field(default_factory=list)
    noise_scale: dict[str, Any] | None = None
    bottleneck: dict[str, Any] | None = None
    ceilings: dict[str, Any] | None = None
    peak_memory: dict[str, int | None] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # where an interrupted run can resume from
    stop_signal: str | None = None

    @property
    def config(self) -> RunConfig:
        return self.facts.config

    @property
    def plan(self) -> BatchPlan:
        return self.facts.plan

    @property
    def samples(self) -> int:
        """Samples trained so far (all processes)."""
        return self.samples_at(self.step)

    def samples_at(self, step: int) -> int:
        """Samples trained by the first `step` optimizer steps."""
        return self.facts.schedule.samples_at(step)

    def epochs_at(self, step: int) -> float:
        return self.facts.schedule.epochs_at(step, self.facts.train_samples)

    @property
    def train_elapsed_s(self) -> float:
        return self.elapsed_s - self.eval_s

    # ---- the checkpoint's share: what a resume needs to continue the loop ----
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "elapsed_s": self.elapsed_s, "eval_s": self.eval_s, "first_loss": self.first_loss,
            "history": self.history, "train_loss": self.train_loss, "lr": self.lr,
            "window_rates": self.window_rates, "window_durations": self.window_durations,
            "phase_windows": self.phase_windows, "config": self.config.to_dict(), "noise": self.noise_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.elapsed_s, self.eval_s = state["elapsed_s"], state["eval_s"]
        self.first_loss = state["first_loss"]
        self.history, self.train_loss, self.lr = state["history"], state["train_loss"], state["lr"]
        # In place: the loop's throughput windows append to these very lists.
        self.window_rates[:], self.window_durations[:] = state["window_rates"], state["window_durations"]
        self.phase_windows = state["phase_windows"]
        self.noise_state = state.get("noise")

    # ---- result.json ----
    def to_result(self) -> Result:
        """The result document (docs/results.md); every derived value is computed here."""
        facts, plan = self.facts, self.facts.plan
        target = self._target_point()
        final = self.history[-1] if self.history else None
        optional = {"ceilings": self.ceilings} if self.ceilings is not None else {}
        if self.status == "interrupted":
            optional.update(checkpoint=self.checkpoint, stop_signal=self.stop_signal)
        return {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "config": self.config.to_dict(),
            "batch": plan.to_dict(),
            "batch_schedule": facts.schedule.to_list() if facts.schedule.scheduled else None,
            "lr": dict(facts.lr),
            "target": self._target_record(),
            "tokens": self._tokens(target),
            "time_to_target_s": target["time_s"] if target else None,
            "train_time_to_target_s": target["train_time_s"] if target else None,
            "steps_to_target": target["step"] if target else None,
            "samples_to_target": self.samples_at(target["step"]) if target else None,
            "epochs_to_target": self.epochs_at(target["step"]) if target else None,
            "steps_to_target_resolution": self._step_resolution(),
            "first_eval_at_target": self._first_eval_at_target(),
            "target_search": self.target.search if self.target else None,
            "target_levels": self._levels(),
            "throughput_samples_per_s": self.throughput(),
            "throughput_median_window_samples_per_s": median_after_warmup(self.window_rates),
            "train_time_per_step_s": self.train_elapsed_s / self.step if self.step else None,
            "steps": self.step,
            "elapsed_s": self.elapsed_s,
            "train_elapsed_s": self.train_elapsed_s,
            "diverged_at_step": self.diverged_at_step,
            "stalled_at_step": self.stalled_at_step,
            "stall": self.stall,
            "final": {"accuracy": final["accuracy"], "loss": final["loss"]} if final else None,
            "history": self.history,
            "train_loss": self.train_loss,
            "lr_per_step": self.lr,
            "throughput_windows": self.window_rates,
            "step_time_breakdown": self.step_time,
            "data_wait_fraction": data_wait_fraction(self.step_time),
            "per_rank_step_time_s": self.per_rank_step_time_s,
            "straggler_ratio": straggler_ratio(self.per_rank_step_time_s),
            "noise_scale": self.noise_scale,
            "compile_s": self.compile_s,
            "environment": facts.environment,
            "model": facts.model.to_dict(),
            "batch_coupled_layers": facts.batch_coupled_layers,
            "decomposition_exact": not facts.batch_coupled_layers,
            "auto_batch": facts.auto_batch,
            "steps_per_epoch": facts.steps_per_epoch,
            "train_samples": facts.train_samples,
            "eval_samples": facts.eval_samples,
            "materialized": facts.materialized,
            "bottleneck": self.bottleneck,
            "pipeline": self._pipeline(),
            "peak_memory": self.peak_memory,
            "compute": self.compute,
            **optional,
        }

    def _target_record(self) -> dict[str, Any]:
        """The metric, its value and its direction (max: at or above; min: at or below); value None: no target."""
        target = run_target(self.config.target_accuracy, self.config.target_loss)
        if target is None:
            return {"metric": "accuracy", "value": None, "direction": "max"}
        return {"metric": target.metric, "value": target.value, "direction": target.direction}

    def _tokens(self, target: dict[str, Any] | None) -> dict[str, Any] | None:
        """A next-token run's batch, throughput, data to target and noise scale in tokens (token positions:
        sequences x context), beside their counts in sequences; None for a classifier."""
        if self.facts.model.task != NEXT_TOKEN.name:
            return None
        per_sequence = NEXT_TOKEN.units_per_sample(tuple(self.facts.model.input_shape))
        rate = self.throughput()
        noise = self.noise_scale or {}
        b_simple, at_target = noise.get("b_simple"), noise.get("b_simple_at_target")
        return {"per_sequence": per_sequence, "per_step": self.plan.global_bs * per_sequence,
                "to_target": self.samples_at(target["step"]) * per_sequence if target else None,
                "trained": self.samples * per_sequence,
                "throughput_per_s": rate * per_sequence if rate is not None else None,
                "noise_scale": b_simple * per_sequence if b_simple is not None else None,
                "noise_scale_at_target": at_target * per_sequence if at_target is not None else None}

    def throughput(self) -> float | None:
        """Samples over the training clock."""
        train = self.train_elapsed_s
        return self.samples / train if train > 0 and self.step else None

    def _pipeline(self) -> dict[str, Any]:
        """What the user's own loader would do (user_pipeline), against the compute ceiling this run measured
        training from memory: the probe's training step alone when it ran, else the run's throughput without
        its data-wait share."""
        rate, wait = self.throughput(), data_wait_fraction(self.step_time)
        if self.ceilings is not None:
            compute, source = self.ceilings["compute_samples_per_s"], "probe"
        elif rate is not None:
            compute, source = (rate / (1 - wait) if wait is not None and wait < 1 else rate), "run"
        else:
            compute, source = None, None
        bound = self.bottleneck["bound"] if self.bottleneck else None
        return user_pipeline(self.facts.train_read, self.config.num_workers, self.plan.world_size, compute, source,
                             bound)

    def _target_point(self) -> dict[str, Any] | None:
        if self.target is None:
            return None
        return {"step": self.target.step, "time_s": self.target.time_s, "train_time_s": self.target.train_time_s}

    def _levels(self) -> list[dict[str, Any]]:
        """Each of --target-levels (in the target's metric, easiest first) with its exact first step, as for the
        target itself; a level the run never met has nulls."""
        target = run_target(self.config.target_accuracy, self.config.target_loss)
        levels = easiest_first([Target(target.metric, v) for v in self.config.target_levels]) if target else []
        out = []
        for value in (level.value for level in levels):
            crossing = self.levels.get(value)
            if crossing is None:
                out.append({"value": value, "steps_to_target": None, "samples_to_target": None,
                            "epochs_to_target": None, "time_to_target_s": None, "train_time_to_target_s": None,
                            "steps_to_target_resolution": None, "search": None})
                continue
            low, high = crossing.search["interval"]
            out.append({"value": value, "steps_to_target": crossing.step,
                        "samples_to_target": self.samples_at(crossing.step),
                        "epochs_to_target": self.epochs_at(crossing.step),
                        "time_to_target_s": crossing.time_s, "train_time_to_target_s": crossing.train_time_s,
                        "steps_to_target_resolution": high - low + 1, "search": crossing.search})
        return out

    def _first_eval_at_target(self) -> dict[str, Any] | None:
        return self.history[self.first_eval_at_target] if self.first_eval_at_target is not None else None

    def _step_resolution(self) -> int | None:
        """How many steps can still be the first at the target: 1 when steps_to_target is exact, else the
        width of the search's interval."""
        if self.target is None:
            return None
        low, high = self.target.search["interval"]
        return high - low + 1

    def failure_result(self, err: BaseException, status: str, suggestion: str | None) -> FailureResult:
        """result.json of a run that ended in an exception (status "oom" or "failed")."""
        return {"schema_version": SCHEMA_VERSION, "status": status, "config": self.config.to_dict(),
                "batch": self.plan.to_dict(), "error": f"{type(err).__name__}: {err}",
                "environment": self.facts.environment, "suggestion": suggestion}


def median_after_warmup(rates: list[float]) -> float | None:
    """Median samples/s over the logging windows after the first (allocator and cache warm-up)."""
    kept = rates[1:] if len(rates) > 1 else rates
    return statistics.median(kept) if kept else None


def data_wait_fraction(step_time: dict | None) -> float | None:
    """Share of training time spent waiting for data, from the phase breakdown."""
    return step_time["phases"]["data_wait"]["fraction"] if step_time else None
