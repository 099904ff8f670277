"""Clocks and throughput windows.

Rules (docs/clock.md): the run clock starts before the first training batch is touched; evaluation time
is measured separately so training-only time excludes it; a logging window closes every `log_every`
optimizer steps (or a multiple of them lasting at least `log_min_s`: Trainer.window_length) and before each
evaluation, after a device synchronization, so the time it reports covers finished work only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work. CPU work is synchronous; CUDA kernels are not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunClock:
    """Wall time since start, and the part spent in evaluation. Time inside `paused()` does not count at
    all: the tool's own extra work (replaying a window to find the exact step at the target, probing the
    noise scale at the target) is not part of training (docs/clock.md)."""

    def __init__(self, offset_s: float = 0.0, eval_offset_s: float = 0.0):
        self._start = time.perf_counter() - offset_s
        self.eval_s = eval_offset_s
        self.paused_s = 0.0  # excluded time, for the record
        self._pause_depth = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nested pauses count once (the outermost)."""
        start = time.perf_counter()
        self._pause_depth += 1
        try:
            yield
        finally:
            self._pause_depth -= 1
            if self._pause_depth == 0:
                duration = time.perf_counter() - start
                self._start += duration
                self.paused_s += duration

    def train_elapsed(self) -> float:
        return self.elapsed() - self.eval_s


class ThroughputWindows:
    """samples/s per logging window, measured on training time only (evaluation excluded). `now` is the
    clock the windows read: the run's clock, so that time it excludes (the tool's own measurements) is out
    of the windows too. Windows are given the run's sample count at their ends, so the steps in between
    do no bookkeeping."""

    def __init__(self, now: Callable[[], float] = time.perf_counter, rates: list[float] | None = None,
                 durations: list[float] | None = None) -> None:
        self.rates: list[float] = [] if rates is None else rates  # the run record's lists, appended to
        self.durations: list[float] = [] if durations is None else durations
        self._now = now
        self.restart(0)

    def close(self, samples: int) -> float | None:
        """Close the current window at `samples` trained so far (call after a device sync); returns its
        samples/s."""
        duration = self._now() - self._window_start
        window_samples = samples - self._start_samples
        rate = window_samples / duration if window_samples and duration > 0 else None
        if rate is not None:
            self.rates.append(rate)
            self.durations.append(duration)
        self.restart(samples)
        return rate

    def restart(self, samples: int) -> None:
        """Start a new window now, at `samples` trained so far (after an evaluation, whose time must not
        count)."""
        self._window_start = self._now()
        self._start_samples = samples


class PhaseTimer:
    """Where each optimizer step's time goes, per rank, summed per logging window.

    `mark(phase)` attributes the time since the previous mark to `phase`. On the CPU the marks are
    `perf_counter` readings (the CPU runs synchronously). On CUDA, device phases are timed with CUDA events
    recorded in stream order and read only when a window closes (after its device sync), so the normal
    mode adds no host synchronization per step (as airbench times its GPU work); waiting for data is host
    time and always measured with `perf_counter`. `sync_each_phase=True` (the opt-in profiling mode)
    synchronizes at every mark instead, which makes every phase a host-measured wall time.

    The synchronized micro-step is timed separately from the no-sync ones so the all-reduce can be
    estimated by difference: grad_sync = t(synced micro-step) - mean t(no-sync micro-step). That needs
    accumulation (A > 1); with several processes and A = 1 it is not separable and stays inside
    forward_backward (reported as None).
    """

    def __init__(self, device: torch.device, enabled: bool = True, sync_each_phase: bool = False):
        self.device = device
        self.enabled = enabled
        self.use_events = device.type == "cuda" and not sync_each_phase
        self.sync_each_phase = sync_each_phase and device.type == "cuda"
        self._reset_window()
        self._last = 0.0
        self._last_event = None

    def _reset_window(self) -> None:
        self.window: dict[str, float] = {"data_wait": 0.0, "h2d": 0.0, "fwd_bwd_nosync": 0.0,
                                         "fwd_bwd_sync": 0.0, "optimizer": 0.0}
        self.counts = {"nosync": 0, "sync": 0}
        self._event_pairs: list[tuple[str, object, object]] = []
        self._step_start = 0.0
        self.step_wall = 0.0

    def start_step(self) -> None:
        if not self.enabled:
            return
        self._last = self._step_start = time.perf_counter()
        if self.use_events:
            self._last_event = self._record_event()

    def _record_event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, phase: str) -> None:
        """End the interval that began at the previous mark, attributing it to `phase`."""
        if not self.enabled:
            return
        if self.sync_each_phase:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.use_events and phase != "data_wait":
            event = self._record_event()
            self._event_pairs.append((phase, self._last_event, event))
            self._last_event = event
        else:
            self.window[phase] += now - self._last
            if self.use_events:
                self._last_event = self._record_event()
        self._last = now

    def skip(self, seconds: float) -> None:
        """The tool's own work since the previous mark took `seconds` off the clock: the next phase starts
        now (nothing since the previous mark is attributed to a phase; on CUDA the device work before it
        was timed by that mark's event) and the step's wall time leaves the `seconds` out."""
        if not self.enabled:
            return
        self._last = time.perf_counter()
        self._step_start += seconds
        if self.use_events:
            self._last_event = self._record_event()

    def end_micro_step(self, synced: bool) -> None:
        """A micro-step's forward and backward are done: its phase (synchronized or not) and its count."""
        if self.enabled:
            self.mark("fwd_bwd_sync" if synced else "fwd_bwd_nosync")
            self.counts["sync" if synced else "nosync"] += 1

    def end_step(self) -> None:
        """The optimizer step is done: its phase, and the step's wall time."""
        if self.enabled:
            self.mark("optimizer")
            self.step_wall += self._last - self._step_start

    def close_window(self) -> dict[str, float] | None:
        """Phase seconds of the window (call after a device sync), then start a new window."""
        if not self.enabled:
            return None
        for phase, start, end in self._event_pairs:
            self.window[phase] += start.elapsed_time(end) / 1000.0
        totals = dict(self.window)
        totals.update(micro_nosync=self.counts["nosync"], micro_sync=self.counts["sync"], step_wall=self.step_wall)
        self._reset_window()
        return totals


def summarize_phases(windows: list[dict[str, float]], world_size: int, window_wall_s: float) -> dict | None:
    """Sum phase windows (after warm-up) into the result's step_time_breakdown.

    `window_wall_s` is the wall time of the same windows as measured by the throughput clock, so the
    fractions say how much of the real elapsed training time each phase took; "other" is what the phases
    do not cover (LR setting, bookkeeping, window boundaries).
    """
    if not windows or None in windows or window_wall_s <= 0:
        return None
    total = {key: sum(w[key] for w in windows) for key in windows[0]}
    nosync, synced = total["fwd_bwd_nosync"], total["fwd_bwd_sync"]
    n_nosync, n_sync = total["micro_nosync"], total["micro_sync"]
    if world_size > 1 and n_nosync and n_sync:
        grad_sync = max(0.0, synced - n_sync * nosync / n_nosync)
    elif world_size > 1:
        grad_sync = None  # not separable without no-sync micro-steps to compare with
    else:
        grad_sync = 0.0
    phases = {
        "data_wait": total["data_wait"],
        "h2d": total["h2d"],
        "forward_backward": nosync + synced - (grad_sync or 0.0),
        "grad_sync": grad_sync,
        "optimizer": total["optimizer"],
    }
    covered = sum(v for v in phases.values() if v is not None)
    phases["other"] = max(0.0, window_wall_s - covered)
    return {
        "phases": {name: {"seconds": value, "fraction": None if value is None else value / window_wall_s}
                   for name, value in phases.items()},
        "measured_s": window_wall_s,
        "covered_fraction": covered / window_wall_s,
        "windows": len(windows),
    }
