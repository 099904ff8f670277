"""Time to target on N devices, predicted from a finished run (typically one that emulated N on one device).

Every decomposition of a global batch trains the same trajectory (docs/emulation.md), so the steps to the
target are the run's own. Only the time per optimizer step changes with the topology. From the run's phase
breakdown (result.json `step_time_breakdown`, the main process, logging windows after the first; K optimizer
steps of M micro-steps each in those windows, counted from metrics.jsonl):

    t_micro = forward_backward seconds / (K M)           forward+backward of one micro-batch of b samples
    t_data  = (data_wait + h2d) seconds / (K M)           fetching and copying one micro-batch
    t_opt, t_other = their seconds / K                    once per optimizer step, whatever the topology
    t_sync  = grad_sync seconds / K                       the run's own exposed all-reduce (0 on one process)

On N devices each rank runs A' = G / (N b') micro-steps of b' samples (b' = b unless asked otherwise; at
another b' the per-micro-step costs are scaled per sample; t_micro is divided by the compute ratio R of
scaling.devices.compute, 1 unless asked), then one all-reduce, then the same optimizer step as every other rank:

    step(N) = A' (t_micro + t_data) + t_opt + t_other + exposed all-reduce (scaling.devices.comm)
              + the loop's two small collectives per logging window (the loss and stop-flag reductions)
              + (c - 1) (A' (t_micro + t_data) + t_opt + t_other)       with --measure-comm's contention c

The run's own steady-state step is M (t_micro + t_data) + t_opt + t_other + t_sync, so the
prediction is the run's measured time plus the difference, step by step:

    train_time_to_target(N) = run's train_time_to_target + steps_to_target x (step(N) - run's step)

which keeps whatever the breakdown does not see (the first, warm-up window; the clock's own overheads) as
the run measured it. The band is the run's own step-time spread: the 16th and 84th percentiles of its
logging windows' step times (after the first) relative to their median, applied to the prediction.
c (scaling.devices.comm.Contention, 1 unless measured) is how much slower each device's own work runs when all N
compute at once than when one does alone: on a CPU host the processes share the cache, the memory bandwidth
(and the cores), on a GPU host the CPU that launches the kernels. Assumptions: every device computes a
micro-batch as fast as the run's device did, times c (no stragglers beyond what c measured); the
all-reduce follows scaling.devices.comm's model; steps to target are the run's
(the same trajectory to float rounding for models without batch-coupled layers; over hundreds of steps the
rounding can still move a crossing of the target, docs/predict.md). docs/predict.md validates all of this
against real runs.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling.batching import choose_per_device_bs
from scaling.config import ConfigError
from scaling.devices.comm import (
    BACKWARD_SHARE,
    DEFAULT_BUCKET_CAP_MB,
    FIRST_BUCKET_BYTES,
    MIB,
    AllReduceEstimate,
    ComputeLoad,
    Contention,
    DDPCost,
    Interconnect,
    allreduce_time,
    ddp_buckets,
    exposed_allreduce,
)
from scaling.devices.compute import ComputeScale, ComputeSource, compute_source
from scaling.files import read_metrics
from scaling.results import FAILURE_STATUSES, FINAL_STATUSES, Result, load_result
from scaling.targets import Target

BAND_PERCENTILES = (16.0, 84.0)
WINDOW_COLLECTIVES = 2  # accelerator.reduce of the window's losses and of (elapsed, stop flag)
SMALL_COLLECTIVE_BYTES = 64


@dataclass(frozen=True)
class RunProfile:
    """What a finished run measured, per micro-step and per optimizer step (see the module docstring)."""

    status: str
    global_bs: int
    per_device_bs: int
    num_processes: int  # logical (emulated or real)
    accumulation_steps: int
    world_size: int  # real processes
    micro_steps: int  # per real process and optimizer step (M)
    steps: int
    steps_to_target: int | None
    train_time_to_target_s: float | None
    train_elapsed_s: float
    step_s: float  # the training clock per optimizer step
    micro_compute_s: float
    micro_data_s: float
    optimizer_s: float
    other_s: float
    sync_s: float
    steps_per_window: float  # optimizer steps per logging window
    window_step_s: tuple[float, ...]  # step time of every logging window after the first
    target: str | None = None  # `90% accuracy`, `loss 1.6`; None without a target
    device: str | None = None
    notes: tuple[str, ...] = ()
    device_type: str | None = None  # environment.device_type: "cpu", "cuda", ...

    @property
    def steady_step_s(self) -> float:
        """The breakdown's step: M (t_micro + t_data) + t_opt + t_other + t_sync."""
        return (self.micro_steps * (self.micro_compute_s + self.micro_data_s) + self.optimizer_s + self.other_s
                + self.sync_s)

    @property
    def decomposition(self) -> str:
        text = f"{self.per_device_bs} x {self.num_processes} x {self.accumulation_steps}"
        if self.num_processes != self.world_size:
            text += f", emulated on {self.world_size} process{'es' * (self.world_size != 1)}"
        return text

    def band(self) -> tuple[float, float]:
        """Relative (low, high) of the window step times around their median; (1, 1) with fewer than 3."""
        if len(self.window_step_s) < 3:
            return 1.0, 1.0
        median = statistics.median(self.window_step_s)
        low, high = np.percentile(self.window_step_s, BAND_PERCENTILES)
        return float(low / median), float(high / median)


def load_run(path: str | Path) -> tuple[Result, list[dict], Path]:
    """result.json (through the schema-checking loader) and metrics.jsonl of RUN_DIR (or of the folder of a
    result.json path); ConfigError, one line, for a run that cannot be predicted from."""
    path = Path(path)
    folder = path.parent if path.name == "result.json" else path
    result_path = folder / "result.json"
    if not result_path.is_file():
        raise ConfigError(f"{folder} has no result.json: give the output folder of a finished run")
    result = load_result(result_path)
    status = result["status"]
    if status not in FINAL_STATUSES:
        raise ConfigError(f"{result_path} is not a finished run (status {status!r}); finish or resume it first")
    if status in FAILURE_STATUSES:
        raise ConfigError(f"{result_path}: the run ended as {status!r} and measured nothing to predict from")
    if result["model"] is None:
        raise ConfigError(f"{result_path} was written before results recorded the model's gradient layout "
                          f"(schema version {result['schema_version']}): rerun the configuration to predict from it")
    return result, read_metrics(folder / "metrics.jsonl"), folder


def profile_run(result: Result, metrics: list[dict] | None = None) -> RunProfile:
    """The per-micro-step and per-step costs of a finished run (module docstring)."""
    batch = result["batch"]
    global_bs, b, world = batch["global"], batch["per_device"], batch["world_size"]
    micro, steps, train_elapsed = batch["micro_steps_per_process"], result["steps"], result["train_elapsed_s"]
    if steps <= 0 or train_elapsed <= 0:
        raise ConfigError("the run trained no optimizer step: nothing to predict from")
    step_s = result["train_time_per_step_s"] or train_elapsed / steps
    rates = [r for r in result["throughput_windows"] if r]
    window_step_s = tuple(global_bs / r for r in (rates[1:] if len(rates) > 1 else rates))
    records = [r for r in (metrics or []) if r.get("type") == "train"]
    notes: list[str] = []
    breakdown = result["step_time_breakdown"]
    windows = len(rates)
    if breakdown and breakdown["measured_s"]:
        phases = {name: value["seconds"] for name, value in breakdown["phases"].items()}
        counted = _breakdown_steps(records, breakdown)
        if counted is None:
            counted = max(1.0, breakdown["measured_s"] / step_s)
            notes.append("metrics.jsonl does not match the breakdown's windows: its step count is estimated from "
                         "time")
        n_micro = counted * micro
        sync = phases["grad_sync"]
        if sync is None:
            sync = 0.0
            notes.append(f"the run's all-reduce ({world} real processes, one micro-step each) is inside its "
                         f"forward/backward time: the prediction counts it twice (pessimistic)")
        profile = dict(
            micro_compute_s=phases["forward_backward"] / n_micro,
            micro_data_s=phases["data_wait"] / n_micro + phases["h2d"] / n_micro,
            optimizer_s=phases["optimizer"] / counted,
            other_s=phases["other"] / counted,
            sync_s=sync / counted,
        )
        windows = breakdown["windows"] + 1
    else:
        profile = dict(micro_compute_s=step_s / micro, micro_data_s=0.0, optimizer_s=0.0, other_s=0.0, sync_s=0.0)
        notes.append("the run has no phase breakdown (--time-phases false): its whole step time is counted as "
                     "micro-step compute, so the optimizer and overheads are divided over devices (optimistic)")
    return RunProfile(
        status=result["status"], global_bs=global_bs, per_device_bs=b, num_processes=batch["num_processes"],
        accumulation_steps=batch["accumulation_steps"], world_size=world, micro_steps=micro, steps=steps,
        steps_to_target=result["steps_to_target"], train_time_to_target_s=result["train_time_to_target_s"],
        train_elapsed_s=train_elapsed, step_s=float(step_s), steps_per_window=steps / max(1, windows),
        window_step_s=window_step_s, target=_target_words(result["target"]), device=result["environment"].get("device"),
        notes=tuple(notes), device_type=result["environment"].get("device_type"), **profile,
    )


def _target_words(target: dict) -> str | None:
    """`90% accuracy`, `loss 1.6`: the run's target (scaling/targets.py), None without one."""
    if target["value"] is None:
        return None
    return Target(target["metric"], target["value"]).label()


def run_threads(result: dict) -> int:
    """Intra-op threads each of the run's processes computed with (environment.torch_threads, else the
    `N threads` of environment.device on the CPU; 1 when neither says)."""
    environment = result["environment"]
    threads = environment.get("torch_threads")
    if isinstance(threads, int) and threads > 0:
        return threads
    match = re.search(r"(\d+) threads?", str(environment.get("device") or ""))
    return int(match.group(1)) if match else 1


def _breakdown_steps(records: list[dict], breakdown: dict) -> float | None:
    """Optimizer steps in the breakdown's windows: every logging window writes one train record, and the
    breakdown sums all windows but the first. None when the records do not match (e.g. a resumed run)."""
    steps = [r.get("step") for r in records]
    if len(steps) < 2 or any(not isinstance(s, int) for s in steps) or steps != sorted(set(steps)):
        return None
    if len(steps) - 1 != breakdown.get("windows"):
        return None
    return float(steps[-1] - steps[0])


# ------------------------------------------------------------------------------------------------ prediction


@dataclass(frozen=True)
class DevicePlan:
    processes: int
    per_device_bs: int
    accumulation_steps: int
    global_bs: int


def plan_devices(profile: RunProfile, processes: int, per_device_bs: int | None = None) -> DevicePlan:
    """The decomposition on `processes` devices: the run's per-device batch when it divides the per-device
    share, else the largest divisor of the share below it (scaling.batching's rule)."""
    global_bs = profile.global_bs
    if processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {processes}")
    if global_bs % processes:
        valid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if global_bs % n == 0]
        raise ConfigError(f"global batch {global_bs} does not split over {processes} processes; "
                          f"device counts that divide it: {', '.join(map(str, valid))}, ...")
    share = global_bs // processes
    if per_device_bs is None:
        per_device_bs = choose_per_device_bs(share, min(share, profile.per_device_bs))
    if per_device_bs < 1 or share % per_device_bs:
        raise ConfigError(f"--per-device-bs {per_device_bs} does not divide the per-device share "
                          f"{global_bs} / {processes} = {share}")
    return DevicePlan(processes, per_device_bs, share // per_device_bs, global_bs)


@dataclass(frozen=True)
class DevicePrediction:
    """The predicted step time and time to target on `plan.processes` devices, with their parts."""

    plan: DevicePlan
    link: Interconnect | None
    gradient_bytes: int
    allreduce: AllReduceEstimate
    components: dict[str, float]  # per optimizer step on N devices, steady state
    step_s: float  # the training clock per step on N devices
    run_step_s: float
    delta_step_s: float  # step(N) - the run's step, both steady state
    steps_to_target: int | None
    train_time_to_target_s: float | None
    band_s: tuple[float, float] | None
    train_time_s: float  # for all of the run's steps (also when no target was reached)
    measured_micro_batch: bool  # the per-device batch is the run's (else scaled per sample)
    ddp_measured: bool = False  # the all-reduce and DDP's overhead are DDPCost's measurement, not the model
    contention_factor: float | None = None  # Contention.factor applied to every rank's own work (None: not measured)
    notes: tuple[str, ...] = ()
    compute: ComputeSource | None = None  # whose forward/backward time, scaled by what (scaling.devices.compute)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["link"] = None if self.link is None else self.link.to_dict()
        out["band_s"] = None if self.band_s is None else list(self.band_s)
        out["notes"] = list(self.notes)
        out["compute"] = None if self.compute is None else self.compute.to_dict()
        return out


def predict_on_devices(profile: RunProfile, gradient_bytes: list[int], processes: int,
                       link: Interconnect | None, per_device_bs: int | None = None,
                       bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, ddp: DDPCost | None = None,
                       contention: Contention | None = None, compute: ComputeScale | None = None
                       ) -> DevicePrediction:
    """Step time and train time to target on `processes` devices (module docstring). `gradient_bytes` are
    per parameter, in the order backward produces them (scaling.devices.comm.model_gradient_bytes). `ddp` (from
    `--measure-comm` at the same process count) replaces the modelled all-reduce by DDP's measured
    synchronization and adds DDP's per-micro-step overhead; `contention` (the same) slows every rank's own
    work (compute, data, optimizer, other) by its factor; `compute` (None: as measured) divides every
    micro-batch's forward/backward time by its ratio."""
    plan = plan_devices(profile, processes, per_device_bs)
    if processes > 1 and link is None:
        raise ConfigError("predicting more than one device needs an interconnect: --measure-comm, "
                          "--interconnect NAME, or --bandwidth and --latency")
    scale = plan.per_device_bs / profile.per_device_bs
    source = compute_source(compute, profile, link)
    micro_compute = profile.micro_compute_s * scale / source.ratio
    micro_data = profile.micro_data_s * scale
    first = FIRST_BUCKET_BYTES if bucket_cap_mb == DEFAULT_BUCKET_CAP_MB else int(bucket_cap_mb * MIB)
    buckets = ddp_buckets(gradient_bytes, bucket_cap_mb, first)
    backward = BACKWARD_SHARE * micro_compute
    if ddp is not None and (ddp.processes != processes or processes == 1):
        ddp = None  # measured for another process count: the model alone
    if contention is not None and (contention.processes != processes or processes == 1):
        contention = None
    comm = exposed_allreduce(buckets, processes, link or _NO_LINK, backward,
                             measured_total_s=ddp.sync_s if ddp is not None else None)
    components = {
        "compute": plan.accumulation_steps * micro_compute,
        "data": plan.accumulation_steps * micro_data,
        "optimizer": profile.optimizer_s,
        "other": profile.other_s,
        "allreduce": comm.exposed_s,
        "ddp_overhead": plan.accumulation_steps * ddp.micro_overhead_s if ddp is not None else 0.0,
        "window_collectives": _window_collectives_s(profile, processes, link),
    }
    own_work = components["compute"] + components["data"] + components["optimizer"] + components["other"]
    components["contention"] = (contention.factor - 1.0) * own_work if contention is not None else 0.0
    delta = sum(components.values()) - profile.steady_step_s
    step_s = profile.step_s + delta
    low, high = profile.band()
    time_to_target = band = None
    if profile.steps_to_target is not None and profile.train_time_to_target_s is not None:
        time_to_target = profile.train_time_to_target_s + profile.steps_to_target * delta
        band = (time_to_target * low, time_to_target * high)
    notes = list(profile.notes)
    if scale != 1:
        notes.append(f"per-device batch {plan.per_device_bs} was not measured (the run's is "
                     f"{profile.per_device_bs}): its compute is scaled per sample, which ignores how a device's "
                     f"efficiency changes with the batch")
    return DevicePrediction(
        plan=plan, link=link, gradient_bytes=int(sum(gradient_bytes)), allreduce=comm, components=components,
        step_s=step_s, run_step_s=profile.step_s, delta_step_s=delta, steps_to_target=profile.steps_to_target,
        train_time_to_target_s=time_to_target, band_s=band, train_time_s=profile.train_elapsed_s + profile.steps * delta,
        measured_micro_batch=scale == 1, ddp_measured=ddp is not None,
        contention_factor=contention.factor if contention is not None else None, notes=tuple(notes),
        compute=source,
    )


def _window_collectives_s(profile: RunProfile, processes: int, link: Interconnect | None) -> float:
    """The loop's two small collectives per logging window, spread over the window's steps."""
    if processes == 1:
        return 0.0
    per_window = WINDOW_COLLECTIVES * allreduce_time(SMALL_COLLECTIVE_BYTES, processes, link)
    return per_window / max(1.0, profile.steps_per_window)


_NO_LINK = Interconnect("none", math.inf, 0.0, "given")


def device_counts(global_bs: int, limit: int) -> list[int]:
    """Powers of two from 1 up to `limit` that divide the global batch."""
    counts, n = [], 1
    while n <= min(limit, global_bs):
        if global_bs % n == 0:
            counts.append(n)
        n *= 2
    return counts


# ------------------------------------------------------------------------------------------------ the model


def gradient_bytes(result: Result) -> list[int]:
    """Per-parameter gradient bytes (backward order) of the run's model, as the run recorded them."""
    return list(result["model"]["gradient_bytes"])


def compute_load(result: Result, per_device_bs: int) -> ComputeLoad:
    """One device's work for `--measure-comm`'s contention timing: the run's model at `per_device_bs`."""
    model = result["model"]
    return ComputeLoad(model["name"], tuple(model["input_shape"]), model["input_dtype"], model["num_classes"],
                       per_device_bs, model["task"])


# ------------------------------------------------------------------------------------------------ the words


def explain(profile: RunProfile, prediction: DevicePrediction) -> str:
    """One paragraph for the console."""
    p, plan = prediction, prediction.plan
    c = p.components
    ms = lambda seconds: f"{seconds * 1e3:.3g} ms"  # noqa: E731
    target = profile.target or "the target"
    micro = "measured" if p.measured_micro_batch else f"scaled from the run's {profile.per_device_bs}"
    r = 1.0 if p.compute is None else p.compute.ratio
    ratio = "" if r == 1 else f", divided by the compute ratio {r:.3g}"
    lines = [f"On {plan.processes} device{'s' * (plan.processes != 1)} (per-device {plan.per_device_bs} x "
             f"{plan.processes} x {plan.accumulation_steps} accumulation step{'s' * (plan.accumulation_steps != 1)}"
             f" = global {plan.global_bs})"]
    if p.train_time_to_target_s is not None:
        low, high = p.band_s
        lines.append(f"the run's {profile.steps_to_target:,} steps to {target} take a predicted "
                     f"{p.train_time_to_target_s:.3g} s of train time (band {low:.3g}–{high:.3g} s, from the "
                     f"run's step-time spread), against {profile.train_time_to_target_s:.3g} s for the run "
                     f"({profile.decomposition}).")
    else:
        lines.append(f"the run did not reach a target ({profile.status}); its {profile.steps:,} steps take a "
                     f"predicted {p.train_time_s:.3g} s of train time, against {profile.train_elapsed_s:.3g} s "
                     f"for the run ({profile.decomposition}).")
    ddp = f", DDP's wrapper {ms(c['ddp_overhead'])}" if p.ddp_measured else ""
    how = "DDP's synchronization, measured" if p.ddp_measured else "modelled"
    shared = "" if p.contention_factor is None else (
        f", {ms(c['contention'])} more for {plan.processes} devices computing at once on this host "
        f"(measured: x{p.contention_factor:.3g})")
    lines.append(
        f"Per step {ms(p.step_s)} (the run: {ms(profile.step_s)}): {plan.accumulation_steps} x "
        f"{ms(c['compute'] / plan.accumulation_steps)} forward/backward "
        f"({micro} at batch {plan.per_device_bs}{ratio}), "
        f"data {ms(c['data'])}, optimizer {ms(c['optimizer'])}, other {ms(c['other'])}{ddp}"
        f"{shared}, "
        f"and the all-reduce of {_bytes(p.gradient_bytes)} of gradients in {len(p.allreduce.bucket_bytes)} "
        f"bucket{'s' * (len(p.allreduce.bucket_bytes) != 1)} ({how}): {ms(p.allreduce.total_s)}, of which "
        f"{ms(p.allreduce.exposed_s)} not hidden behind backward.")
    if p.compute is not None:
        lines.append(p.compute.describe() + ".")
    if p.link is not None and plan.processes > 1:
        lines.append(f"Interconnect {p.link.describe()}.")
    lines += [f"Note: {note}." for note in p.notes]
    return " ".join([lines[0] + ": " + lines[1], *lines[2:]])


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


@dataclass
class PredictionReport:
    """What `scaling predict --json` prints."""

    run_dir: str
    run: dict
    prediction: dict
    comm_measurement: dict | None = None
    explanation: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def profile_dict(profile: RunProfile) -> dict:
    out = asdict(profile)
    out["window_step_s"] = list(profile.window_step_s)
    out["notes"] = list(profile.notes)
    out["steady_step_s"] = profile.steady_step_s
    return out
