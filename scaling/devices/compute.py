"""Whose compute a prediction uses: the run's own device as measured, or that device's time scaled.

`scaling predict` takes each device's forward/backward time from the run (scaling/devices/predict.py). An
interconnect preset can imply another device than the run's: NVLink connects NVIDIA GPUs of one generation
(NVLink 4: H100/H200, the presets' own notes in scaling/devices/comm.py) and InfiniBand the GPUs of a cluster,
while the run may have been measured on a CPU. The prediction then still computes at the run's speed unless
told otherwise, and says so. Two ways to scale it, exclusive of each other:

    --compute-ratio R     R = the target's compute speed / the measured one; every micro-batch's
                          forward/backward time is divided by R (data, optimizer and overheads stay as measured)
    --target-device NAME  R = peak FLOP/s of NAME / peak FLOP/s of the run's device, both at the run's
                          precision, from scaling/hardware.py's datasheet table: it assumes the target reaches
                          the same fraction of its peak (the same utilisation, MFU) as the run's device did

A CPU has no peak in that table, so `--target-device` on a CPU run is refused: give R yourself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scaling.config import ConfigError

# GPUs each NVLink generation connects (scaling/devices/comm.py's preset notes; NVIDIA's datasheets).
NVLINK_GPUS = {
    "nvlink2": ("V100",),
    "nvlink3": ("A100", "A800"),
    "nvlink4": ("H100", "H200", "H800"),
    "nvlink5": ("B200", "B100", "GB200"),
}


@dataclass(frozen=True)
class ComputeScale:
    """What the user asked for: the ratio the forward/backward time is divided by, and where it came from."""

    ratio: float = 1.0
    source: str = "measured"  # "measured", "compute_ratio" or "target_device"
    target_device: str | None = None
    basis: dict | None = None  # --target-device: precision, both peaks (FLOP/s), the run's MFU


@dataclass(frozen=True)
class ComputeSource:
    """The compute a prediction uses (`prediction.compute` in `scaling predict --json`)."""

    source: str
    device: str | None  # the run's device (result.json environment.device)
    device_type: str | None
    ratio: float
    measured_samples_per_s: float | None  # forward/backward samples/s of one device at the run's batch
    samples_per_s: float | None  # the same, scaled: measured x ratio
    target_device: str | None = None
    implied_device: str | None = None  # what the interconnect implies, where the run's device is not that
    interconnect: str | None = None
    basis: dict | None = None

    def describe(self) -> str:
        device = self.device or "an unrecorded device"
        rate = "" if self.measured_samples_per_s is None else \
            f", {self.measured_samples_per_s:,.0f} samples/s forward/backward per device"
        text = f"Compute: measured on {device}{rate}"
        if self.source == "compute_ratio":
            return text + (f", scaled by --compute-ratio {self.ratio:g}: each micro-batch's forward/backward "
                           f"time divided by {self.ratio:g} (data, optimizer and other as measured)")
        if self.source == "target_device":
            b = self.basis
            return text + (f", scaled to {self.target_device} by the ratio of datasheet peaks at {b['precision']},"
                           f" {b['target_peak_flops_per_s'] / 1e12:g} / {b['measured_peak_flops_per_s'] / 1e12:g}"
                           f" TFLOP/s = {self.ratio:.3g}: this assumes the {self.target_device} reaches the same "
                           f"utilisation as measured{_mfu(b['mfu'])} (data, optimizer and other as measured)")
        if self.implied_device is not None:
            return text + (f"; the interconnect {self.interconnect} implies {self.implied_device}: the compute "
                           f"time is the {_owner(self)} unless you scale it with --compute-ratio or "
                           f"--target-device")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.describe()}


def _mfu(mfu: float | None) -> str:
    return f" (MFU {mfu * 100:.3g}%)" if mfu else ""


def _owner(source: ComputeSource) -> str:
    if source.device_type == "cpu":
        return "CPU's"
    return f"{source.device}'s" if source.device else "run's device's"


def implied_device(interconnect: str | None, device_type: str | None, device: str | None) -> str | None:
    """The device a preset implies where the run's device is not one ("GPUs (H100/H200/H800)"), else None."""
    name = (interconnect or "").lower()
    if name in NVLINK_GPUS:
        gpus = NVLINK_GPUS[name]
        on_them = device_type == "cuda" and any(gpu.lower() in (device or "").lower() for gpu in gpus)
        return None if on_them else f"GPUs ({'/'.join(gpus)})"
    if name.startswith("ib-") and device_type != "cuda":
        return "GPUs"
    return None


def compute_source(scale: ComputeScale | None, profile: Any, link: Any = None) -> ComputeSource:
    """The compute a prediction uses, from the user's scale (None: as measured), the run's profile
    (scaling.devices.predict.RunProfile: device, device_type, per_device_bs, micro_compute_s) and the link
    (scaling.devices.comm.Interconnect; only a preset implies a device)."""
    scale = scale or ComputeScale()
    measured = profile.per_device_bs / profile.micro_compute_s if profile.micro_compute_s > 0 else None
    rate = None if measured is None else measured * scale.ratio
    preset = link.name if link is not None and link.source == "preset" else None
    return ComputeSource(scale.source, profile.device, profile.device_type, scale.ratio, measured, rate,
                         scale.target_device, implied_device(preset, profile.device_type, profile.device), preset,
                         scale.basis)


def requested_scale(result: dict, compute_ratio: float | None, target_device: str | None) -> ComputeScale:
    """`--compute-ratio R` or `--target-device NAME` (exclusive; neither: as measured); ConfigError, one line,
    for a ratio that is not a finite number > 0, an unknown device, or a run whose device has no known peak."""
    if compute_ratio is not None and target_device is not None:
        raise ConfigError("--compute-ratio and --target-device exclude each other: give one")
    if compute_ratio is not None:
        if not (math.isfinite(compute_ratio) and compute_ratio > 0):
            raise ConfigError(f"--compute-ratio must be a finite number > 0 (target compute speed / measured), "
                              f"got {compute_ratio}")
        return ComputeScale(float(compute_ratio), "compute_ratio")
    if target_device is not None:
        return _target_device_scale(result, target_device)
    return ComputeScale()


def known_devices() -> dict[str, dict[str, float]]:
    """Device name -> peak TFLOP/s per precision (scaling/hardware.py's table)."""
    from scaling.hardware import PEAK_TFLOPS

    return dict(PEAK_TFLOPS)


def _target_device_scale(result: dict, name: str) -> ComputeScale:
    devices = known_devices()
    match = next((known for known in devices if known.lower() == name.strip().lower()), None)
    if match is None:
        raise ConfigError(f"unknown --target-device {name!r}; devices with a known peak: {', '.join(devices)}")
    efficiency = result.get("compute") or {}
    measured_peak = efficiency.get("peak_flops_per_s_per_device")
    device = (result.get("environment") or {}).get("device") or "the run's device"
    if not measured_peak:
        raise ConfigError(f"--target-device needs the peak FLOP/s of the device the run was measured on, and "
                          f"{device} has none in scaling/hardware.py's table: use --compute-ratio R instead")
    precision = efficiency.get("precision") or "fp32"
    if precision not in devices[match]:
        raise ConfigError(f"--target-device {match} has no {precision} peak in scaling/hardware.py's table (the "
                          f"run computed in {precision}): use --compute-ratio R instead")
    target_peak = devices[match][precision] * 1e12
    basis = {"precision": precision, "measured_peak_flops_per_s": float(measured_peak),
             "measured_peak_source": efficiency.get("peak_source"), "target_peak_flops_per_s": target_peak,
             "flops_per_sample": efficiency.get("flops_per_sample"), "mfu": efficiency.get("mfu")}
    return ComputeScale(target_peak / float(measured_peak), "target_device", match, basis)
