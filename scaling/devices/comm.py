"""The cost of synchronizing gradients across N data-parallel processes: a model, presets, a measurement.

One DDP all-reduce of S bytes across N processes takes (the alpha-beta model, in NCCL's bus-bandwidth
convention; nccl-tests doc/PERFORMANCE.md)

    t(S, N) = latency + 2 (N - 1) / N * S / bus_bandwidth        (0 when N = 1)

2(N-1)/N * S is what each process sends (and receives) in a ring all-reduce (reduce-scatter then all-gather),
so `bus_bandwidth` is the per-process link bandwidth the collective achieves, comparable across N and with
a link's datasheet figure (an upper bound for it). The latency is one number per collective, independent of
N: NCCL's tree and low-latency protocols keep it nearly flat within a node; a pure ring's grows with N, so at
large N it is optimistic.

DDP does not all-reduce the gradient in one piece: it groups parameters into buckets (the first, holding the
gradients produced first in backward, capped at 1 MiB; the others at `bucket_cap_mb`, 25 MiB by default) and
all-reduces each bucket as soon as backward has produced all of its gradients, one after another, while
backward goes on. `exposed_allreduce` simulates that: bucket k is ready when backward has produced the bytes
of buckets 1..k (gradients appear at a constant rate in bytes over the backward pass); all-reduces run in
order, each starting when its bucket is ready and the previous one has finished; what is left after backward
ends is exposed. When communication is faster than backward, only the last bucket (the first layers, whose
gradients come last) is exposed; when it is slower, the rest of the queue is exposed too.

Parameters come from `scaling.devices.measure.measure_allreduce` (real all-reduces between N local processes, gloo on the CPU,
NCCL on GPUs, fitted by `fit_alpha_beta`), from a named preset (`PRESETS`, datasheet link bandwidths,
docs/predict.md cites them), or are given.

N devices on one host also share what is not a device: CPU processes share the last-level cache and the
memory bandwidth (and cores, when there are fewer than processes x threads); GPU processes share the host's
CPU for their Python and launches. `measure_allreduce(compute=...)` (scaling/devices/measure.py) also times each device's own work (the
run's model, forward, backward and an optimizer step at the per-device batch) alone and with all N at once:
`Contention`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from scaling.config import ConfigError

MIB = 2**20
GB = 1e9  # bandwidths in GB/s are 10^9 bytes per second, as datasheets and nccl-tests count them
DEFAULT_BUCKET_CAP_MB = 25.0  # torch.nn.parallel.DistributedDataParallel(bucket_cap_mb=None)
FIRST_BUCKET_BYTES = 1 * MIB  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
BACKWARD_SHARE = 2 / 3  # of a micro-step's forward+backward: backward costs about twice the forward


@dataclass(frozen=True)
class Interconnect:
    """The link the all-reduce runs over: bus bandwidth (bytes/s) and per-collective latency (s)."""

    name: str
    bus_bandwidth: float  # bytes/s
    latency: float  # seconds per all-reduce
    source: str  # "preset", "measured" or "given"
    note: str = ""
    overlap: bool = True  # DDP's bucketed all-reduce runs during backward (see exposed_allreduce)

    def describe(self) -> str:
        text = (f"{self.name}: bus bandwidth {self.bus_bandwidth / GB:.3g} GB/s, latency "
                f"{self.latency * 1e6:.3g} us ({self.source})")
        return text if self.overlap else text + ", no overlap with backward"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bus_bandwidth_gb_s"] = out.pop("bus_bandwidth") / GB
        out["latency_us"] = out.pop("latency") * 1e6
        return out


# Datasheet link bandwidths per device, one direction (an all-reduce's bus bandwidth cannot exceed it), and
# typical small-message all-reduce latencies (orders of magnitude, not datasheet figures). docs/predict.md
# gives the sources. NVLink figures are the per-GPU total over all links, halved for one direction.
_PRESETS = [
    # name, GB/s one direction, latency us, note
    ("nvlink2", 150.0, 10.0, "NVLink 2 (V100 SXM2): 300 GB/s per GPU both directions"),
    ("nvlink3", 300.0, 10.0, "NVLink 3 (A100 SXM): 600 GB/s per GPU both directions"),
    ("nvlink4", 450.0, 10.0, "NVLink 4 (H100/H200 SXM): 900 GB/s per GPU both directions"),
    ("nvlink5", 900.0, 10.0, "NVLink 5 (B200): 1.8 TB/s per GPU both directions"),
    ("pcie3", 15.75, 15.0, "PCIe 3.0 x16: 8 GT/s x 16 lanes, 128b/130b"),
    ("pcie4", 31.5, 15.0, "PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b"),
    ("pcie5", 63.0, 15.0, "PCIe 5.0 x16: 32 GT/s x 16 lanes, 128b/130b"),
    ("ib-edr", 12.5, 20.0, "InfiniBand EDR, 100 Gb/s per device"),
    ("ib-hdr", 25.0, 20.0, "InfiniBand HDR, 200 Gb/s per device"),
    ("ib-ndr", 50.0, 20.0, "InfiniBand NDR, 400 Gb/s per device"),
    ("ib-xdr", 100.0, 20.0, "InfiniBand XDR, 800 Gb/s per device"),
    ("ethernet-10g", 1.25, 50.0, "10 Gigabit Ethernet, TCP"),
    ("ethernet-25g", 3.125, 50.0, "25 Gigabit Ethernet, TCP"),
    ("ethernet-100g", 12.5, 50.0, "100 Gigabit Ethernet, TCP"),
    ("ethernet-400g", 50.0, 50.0, "400 Gigabit Ethernet, TCP"),
]
PRESETS: dict[str, Interconnect] = {
    name: Interconnect(name, gb_s * GB, us * 1e-6, "preset", note) for name, gb_s, us, note in _PRESETS
}


def preset(name: str) -> Interconnect:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown interconnect {name!r}; presets: {', '.join(PRESETS)}") from None


def given(bandwidth_gb_s: float, latency_us: float) -> Interconnect:
    """An interconnect from explicit figures (bus bandwidth in GB/s, latency in microseconds)."""
    if not (bandwidth_gb_s > 0 and math.isfinite(bandwidth_gb_s)):
        raise ConfigError(f"--bandwidth must be a positive number of GB/s, got {bandwidth_gb_s}")
    if not (latency_us >= 0 and math.isfinite(latency_us)):
        raise ConfigError(f"--latency must be a non-negative number of microseconds, got {latency_us}")
    return Interconnect("given", bandwidth_gb_s * GB, latency_us * 1e-6, "given")


# ---------------------------------------------------------------------------------------------- the model


def allreduce_time(nbytes: float, processes: int, link: Interconnect) -> float:
    """Seconds for one all-reduce of `nbytes` across `processes`: latency + 2(N-1)/N * bytes / bus bandwidth."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1 or nbytes <= 0:
        return 0.0
    return link.latency + 2 * (processes - 1) / processes * nbytes / link.bus_bandwidth


def ddp_buckets(gradient_bytes: Iterable[int], bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
                first_bucket_bytes: int = FIRST_BUCKET_BYTES) -> list[int]:
    """Bucket sizes (bytes), in the order DDP all-reduces them, from per-parameter gradient sizes given in
    the order backward produces them (for a feed-forward model: the parameters in reverse).

    As torch's `_compute_bucket_assignment_by_size` (one dtype and device): parameters are added to the
    current bucket until it holds at least its cap; the first bucket's cap is 1 MiB, every later one's
    `bucket_cap_mb` MiB (with a user-set bucket_cap_mb, DDP uses it for the first bucket too: pass
    first_bucket_bytes equal to it).
    """
    caps = [first_bucket_bytes, int(bucket_cap_mb * MIB)]
    buckets: list[int] = []
    current = 0
    for size in gradient_bytes:
        current += int(size)
        if current >= caps[min(len(buckets), 1)]:
            buckets.append(current)
            current = 0
    if current:
        buckets.append(current)
    return buckets


def model_gradient_bytes(model) -> list[int]:
    """Gradient bytes of every trainable parameter, in the order backward produces them (reverse of
    registration: DDP's own first-iteration assumption, and the true order for a sequential model)."""
    return [p.numel() * p.element_size() for p in reversed(list(model.parameters())) if p.requires_grad]


@dataclass(frozen=True)
class AllReduceEstimate:
    """One optimizer step's gradient all-reduce: every bucket's time, their sum, and the part not hidden
    behind the backward pass of the synchronized micro-step."""

    bucket_bytes: list[int]
    bucket_s: list[float]
    total_s: float
    exposed_s: float
    backward_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def exposed_allreduce(buckets: Sequence[int], processes: int, link: Interconnect, backward_s: float,
                      measured_total_s: float | None = None) -> AllReduceEstimate:
    """The all-reduce of `buckets` (bytes, DDP order) overlapped with a backward pass of `backward_s`.

    Bucket k is ready at backward_s * (bytes of buckets 1..k) / (all bytes); all-reduces run one at a time
    in bucket order; the exposed time is when the last one ends minus backward_s (never below the last
    bucket's own time, which cannot start before backward ends). With `link.overlap` false nothing overlaps:
    the whole sum is exposed. `measured_total_s` (DDPCost.sync_s: what DDP's synchronization of all the
    buckets took) replaces the modelled sum, shared between the buckets in the model's proportions.
    """
    times = [allreduce_time(b, processes, link) for b in buckets]
    if measured_total_s is not None and processes > 1 and buckets:
        modelled = sum(times)
        shares = [t / modelled for t in times] if modelled > 0 else [1 / len(times)] * len(times)
        times = [measured_total_s * share for share in shares]
    total = sum(times)
    if processes == 1 or not buckets:
        return AllReduceEstimate(list(buckets), times, 0.0, 0.0, backward_s)
    if not link.overlap:
        return AllReduceEstimate(list(buckets), times, total, total, backward_s)
    all_bytes = float(sum(buckets))
    ready, end = 0.0, 0.0
    for nbytes, seconds in zip(buckets, times, strict=True):
        ready += nbytes
        start = max(backward_s * ready / all_bytes, end)
        end = start + seconds
    return AllReduceEstimate(list(buckets), times, total, max(0.0, end - backward_s), backward_s)


# ---------------------------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class AlphaBetaFit:
    latency: float  # s
    bus_bandwidth: float  # bytes/s
    max_relative_residual: float


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float], processes: int) -> AlphaBetaFit:
    """Latency and bus bandwidth from measured all-reduce times, by least squares on relative residuals
    (t_i - latency - x_i / bw) / t_i with x_i = 2(N-1)/N * bytes_i: the times span orders of magnitude,
    and plain residuals would let the largest sizes decide the latency. A negative latency is refitted
    through 0; a negative slope (no size dependence at all) is refused."""
    if processes < 2:
        raise ValueError("fitting an all-reduce needs at least 2 processes")
    x = 2 * (processes - 1) / processes * np.asarray(nbytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError("fitting latency and bandwidth needs times at 2 or more sizes")
    design = np.stack([np.ones_like(x), x], axis=1) / t[:, None]
    (alpha, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if alpha < 0:
        alpha = 0.0
        inv_bw = float(np.sum(x / t) / np.sum((x / t) ** 2))
    if not inv_bw > 0:
        raise ValueError(f"all-reduce times do not grow with size ({t.tolist()}): cannot fit a bandwidth")
    predicted = alpha + x * inv_bw
    residual = float(np.max(np.abs(predicted - t) / t))
    return AlphaBetaFit(float(alpha), float(1.0 / inv_bw), residual)


# ---------------------------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class DDPCost:
    """What DistributedDataParallel adds for one model's parameter layout on N processes, measured on a
    stand-in module (`_stand_in`: the model's parameter sizes in its order, a backward that costs nothing):

    - `sync_s`: one synchronized backward minus one inside `no_sync`: the bucketed all-reduce as DDP issues
      it (copying gradients into buckets, the all-reduce, averaging, copying back, its hooks and thread
      hand-offs), with no compute to hide behind;
    - `micro_overhead_s`: a backward inside `no_sync` minus the same module without DDP: the wrapper's cost
      on every micro-step (its forward and autograd hooks).
    """

    processes: int
    parameter_bytes: tuple[int, ...]  # per parameter, registration order
    sync_s: float
    micro_overhead_s: float


@dataclass(frozen=True)
class ComputeLoad:
    """One device's own work for `Contention`: the run's model (scaling.models.build_model's name, input
    shape and class count) on a synthetic micro-batch of `batch` inputs of `input_dtype`, the task's loss
    (scaling/task.py), backward, and an SGD step with momentum."""

    model: str
    input_shape: tuple[int, ...]
    input_dtype: str  # a torch dtype's name: "float32", "int64", ...
    num_classes: int
    batch: int
    task: str = "classification"


@dataclass(frozen=True)
class Contention:
    """Seconds per training step of a `ComputeLoad` (forward, backward, optimizer step) on one of N local
    devices, with the others idle (`alone_s`: the median over every rank's turn and repeat) and with all N
    computing at once (`together_s`: the slowest rank's, median over repeats; every step of a data-parallel
    run waits for its slowest rank). `factor` is their ratio, not below 1: a device does not compute faster
    because others compute too (a measured ratio below 1 is the machine's noise; `measured_factor` keeps it)."""

    processes: int
    batch: int
    alone_s: float
    together_s: float

    @property
    def measured_factor(self) -> float:
        return self.together_s / self.alone_s

    @property
    def factor(self) -> float:
        return max(1.0, self.measured_factor)


@dataclass
class CommMeasurement:
    processes: int
    backend: str
    device: str
    sizes: list[int]  # bytes
    seconds: list[float]  # median per all-reduce, slowest rank
    fit: AlphaBetaFit | None = None
    elapsed_s: float = 0.0
    threads: int = 1
    ddp: DDPCost | None = None
    contention: Contention | None = None
    extra: dict = field(default_factory=dict)

    def interconnect(self) -> Interconnect:
        """The fitted link. On the CPU the all-reduce needs CPU time of its own (gloo's threads reduce and
        copy), so it overlaps with backward only when the machine has a core to spare beyond the processes'
        compute threads; NCCL on GPUs runs beside the compute kernels."""
        assert self.fit is not None
        cores = os.cpu_count() or 1
        overlap = self.device == "cuda" or self.processes * self.threads < cores
        return Interconnect(f"measured ({self.backend}, {self.processes} local processes, {self.device})",
                            self.fit.bus_bandwidth, self.fit.latency, "measured",
                            note=f"fit max relative residual {self.fit.max_relative_residual:.0%}", overlap=overlap)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fit"] = None if self.fit is None else {
            "latency_us": self.fit.latency * 1e6, "bus_bandwidth_gb_s": self.fit.bus_bandwidth / GB,
            "max_relative_residual": self.fit.max_relative_residual}
        if self.contention is not None:
            out["contention"]["factor"] = self.contention.factor
            out["contention"]["measured_factor"] = self.contention.measured_factor
        return out
