"""Input and compute ceilings measured by difference, and the verdict: input-bound or compute-bound.

DS-Analyzer (Mohan et al., "Analyzing and Mitigating Data Stalls in DNN Training", VLDB 2021) measures
the input pipeline alone (the loader with no model), the compute alone (a batch already on the device,
trained again and again) and the real run; the gaps say where the time goes. Both ceilings here are in
global samples/s: one process's rate times the number of processes, which load and compute in parallel.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from scaling.config import RunConfig
from scaling.task import Task
from scaling.train.clock import synchronize
from scaling.train.state import TrainingState
from scaling.train.step import optimizer_step

WARMUP_STEPS = 3


def input_ceiling(source: Any, device: torch.device, steps: int, world_size: int) -> float:
    """Samples/s of the input pipeline alone: fetch and copy this process's micro-batches, no model."""
    source.start(0)
    samples = 0
    for step in range(WARMUP_STEPS):
        for inputs, _ in source.micro_batches(step):
            inputs.to(device)
    synchronize(device)
    start = time.perf_counter()
    for step in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        for inputs, labels in source.micro_batches(step):
            inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            samples += len(labels)
    synchronize(device)
    return samples * world_size / (time.perf_counter() - start)


def compute_ceiling(state: TrainingState, source: Any, steps: int, task: Task) -> float:
    """Samples/s of the training step alone: one step's micro-batches are put on the device once and
    trained on repeatedly (forward, backward, gradient sync, optimizer). The training state (weights,
    optimizer, loss scaler, RNG) is restored afterwards, so the run that follows starts from the same point."""
    accelerator, model, optimizer = state.accelerator, state.model, state.optimizer
    device = accelerator.device
    source.start(0)
    batches = [(x.to(device), y.to(device)) for x, y in source.micro_batches(0)]
    snapshot = state.snapshot(0)
    # LR 0: the same arithmetic, but the weights do not move. Training on one batch over and over would
    # drive the loss and gradients towards zero, into subnormal floats that run many times slower on CPUs.
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        for _ in range(WARMUP_STEPS):
            optimizer_step(accelerator, model, optimizer, batches, task=task)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            optimizer_step(accelerator, model, optimizer, batches, task=task)
        synchronize(device)
        elapsed = time.perf_counter() - start
    finally:
        state.restore(snapshot)
    per_step = sum(len(y) for _, y in batches) * accelerator.num_processes
    return steps * per_step / elapsed


def measure_ceilings(cfg: RunConfig, source: Any, state: TrainingState, task: Task, say) -> tuple[float, float]:
    """Input pipeline alone, then the training step alone; printed and returned."""
    accelerator = state.accelerator
    input_rate = input_ceiling(source, accelerator.device, cfg.probe_steps, accelerator.num_processes)
    compute_rate = compute_ceiling(state, source, cfg.probe_steps, task)
    say(f"scaling: ceilings: input pipeline alone {input_rate:,.0f} samples/s, training step alone "
        f"{compute_rate:,.0f} samples/s ({source.describe()})")
    return input_rate, compute_rate


def verdict(input_rate: float, compute_rate: float, run_rate: float | None, data_wait_fraction: float | None,
            cfg: RunConfig, fast_path: bool, device_type: str) -> dict:
    """Input-bound when the loader alone cannot keep up with the training step alone."""
    bound = "input" if input_rate < compute_rate else "compute"
    speedup = compute_rate / run_rate if run_rate else None
    return {
        "input_samples_per_s": input_rate,
        "compute_samples_per_s": compute_rate,
        "run_samples_per_s": run_rate,
        "bound": bound,
        "speedup_if_input_free": speedup,
        "data_wait_fraction": data_wait_fraction,
        "advice": advice(bound, input_rate, compute_rate, cfg, fast_path, device_type),
    }


def advice(bound: str, input_rate: float, compute_rate: float, cfg: RunConfig, fast_path: bool,
           device_type: str) -> list[str]:
    """Concrete changes, most effective first; only those that apply to this configuration."""
    if bound == "compute":
        return [f"compute-bound: the input pipeline delivers {input_rate:,.0f} samples/s, "
                f"{input_rate / compute_rate:.1f}x what the model consumes; speed comes from the model side "
                f"(a larger per-device batch, mixed precision, fewer micro-steps)"]
    return [f"input-bound: the loader delivers {input_rate:,.0f} samples/s but the model could train "
            f"{compute_rate:,.0f}/s ({compute_rate / input_rate:.1f}x faster)", *input_tips(cfg, fast_path, device_type)]


def input_tips(cfg: RunConfig, fast_path: bool, device_type: str) -> list[str]:
    """What to change in an input-bound configuration, most effective first."""
    tips = []
    if not cfg.fast_path:
        tips.append("turn the in-memory fast path back on (--fast-path true): whole-batch indexing instead of "
                    "collating samples one by one")
    elif not fast_path:
        tips.append("if the items are fixed tensors that fit in memory, --materialize true reads them once for "
                    "the whole-batch fast path")
    if cfg.num_workers == 0:
        tips.append("load in parallel: --num-workers N (up to the CPU cores per process)")
    elif cfg.num_workers > 0:
        tips.append(f"more loader workers than {cfg.num_workers} if cores are free (--num-workers)")
        if cfg.prefetch_factor is None or cfg.prefetch_factor < 4:
            tips.append("prefetch deeper: --prefetch-factor 4")
    if device_type == "cuda" and not cfg.pin_memory:
        tips.append("pin host memory for faster, asynchronous copies: --pin-memory")
    tips.append("decode once and cache decoded tensors in memory when the dataset fits; or move augmentation "
                "to the device")
    tips.append("a larger batch does not help an input-bound run: it needs more samples per second from the "
                "same pipeline")
    return tips


# A run that spends this share of its training time waiting for data is input-bound: the input pipeline,
# not the model, sets its pace (the report uses the same line).
DATA_WAIT_LIMIT = 0.30


def bottleneck(data_wait_fraction: float | None, ceilings: dict | None, cfg: RunConfig, fast_path: bool,
               device_type: str) -> dict | None:
    """Input- or compute-bound, from the run's own phase breakdown; the probe's ceilings, when measured,
    decide instead (they separate the two by measuring each alone)."""
    if ceilings is not None:
        return {"bound": ceilings["bound"], "data_wait_fraction": data_wait_fraction, "from": "probe",
                "advice": ceilings["advice"]}
    if data_wait_fraction is None:
        return None  # --time-phases false: nothing to judge from
    if data_wait_fraction < DATA_WAIT_LIMIT:
        return {"bound": "compute", "data_wait_fraction": data_wait_fraction, "from": "phase timing",
                "advice": [f"compute-bound: {data_wait_fraction:.0%} of training time waiting for data"]}
    speedup = 1 / (1 - data_wait_fraction) if data_wait_fraction < 1 else None
    gain = f"; with a free input pipeline it would train about {speedup:.1f}x faster" if speedup else ""
    return {"bound": "input", "data_wait_fraction": data_wait_fraction, "from": "phase timing",
            "advice": [f"input-bound: {data_wait_fraction:.0%} of training time waiting for data{gain}",
                       *input_tips(cfg, fast_path, device_type)]}
