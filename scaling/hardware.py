"""Counted FLOPs, device peaks and memory: achieved FLOP/s, model FLOP utilization (MFU), peak memory.

The FLOPs of one training step are counted, not guessed: `torch.utils.flop_counter.FlopCounterMode`
records every matmul/convolution of a forward and backward pass at the per-device batch. MFU follows
PaLM (Chowdhery et al. 2022, appendix B): achieved model FLOP/s over the device's peak. Peaks are dense
(no sparsity) datasheet figures looked up by device name and precision; a device that is not in the table
gets no MFU rather than a guess.
"""

from __future__ import annotations

import copy
import resource
from typing import Any

import torch
from torch import nn

from scaling.data.delivery import sample_batch
from scaling.task import CLASSIFICATION, Task

# Dense peak TFLOP/s per device, from NVIDIA's datasheets (SXM parts unless named). fp32 is the
# non-tensor-core rate; "tf32" applies when torch allows TF32 matmuls. Order matters: first match wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]


def precision_key(mixed_precision: str, device: torch.device) -> str:
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def peak_flops_per_s(device: torch.device, mixed_precision: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s of one device at this precision, the table row used), or (None, None) if unknown."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    key = precision_key(mixed_precision, device)
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in name and key in peaks:
            return peaks[key] * 1e12, f"{pattern} {key} dense (datasheet)"
    return None, None


def count_train_flops(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, task: Task = CLASSIFICATION
                      ) -> int:
    """FLOPs of one forward + backward at this batch, counted on a copy of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        task.loss(probe(inputs), labels).backward()
    return int(counter.get_total_flops())


def count_flops_per_sample(model: nn.Module, dataset: Any, micro_batch: int, device: torch.device,
                           task: Task = CLASSIFICATION) -> float | None:
    """Counted FLOPs of one training step per sample (forward + backward) at the micro-batch (at most 64)."""
    inputs, labels = sample_batch(dataset, min(micro_batch, 64))
    try:
        return count_train_flops(model, inputs.to(device), labels.to(device), task) / len(labels)
    except (RuntimeError, NotImplementedError, TypeError):  # an op the counter cannot trace: no MFU
        return None


def compute_efficiency(flops_per_sample: float | None, samples_per_s: float | None, world_size: int,
                       device: torch.device, mixed_precision: str) -> dict[str, Any]:
    achieved = flops_per_sample * samples_per_s if flops_per_sample and samples_per_s else None
    per_device = achieved / world_size if achieved else None
    peak, source = peak_flops_per_s(device, mixed_precision)
    return {
        "flops_per_sample": flops_per_sample,
        "achieved_flops_per_s": achieved,
        "achieved_flops_per_s_per_device": per_device,
        "peak_flops_per_s_per_device": peak,
        "peak_source": source,
        "precision": precision_key(mixed_precision, device),
        "mfu": per_device / peak if per_device and peak else None,
    }


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """Device peaks since the last reset (allocated by tensors, reserved by the caching allocator) and the
    host process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        return {"allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
                "reserved_bytes": int(torch.cuda.max_memory_reserved(device)), "host_peak_rss_bytes": host}
    return {"allocated_bytes": None, "reserved_bytes": None, "host_peak_rss_bytes": host}
