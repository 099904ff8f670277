"""Clocks and throughput windows.

Rules (docs/clock.md): the run clock starts before the first training batch is touched; evaluation time
is measured separately so training-only time excludes it; a logging window closes every `log_every`
optimizer steps and before each evaluation, after a device synchronization, so the time it reports covers
finished work only.
"""

from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work. CPU work is synchronous; CUDA kernels are not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunClock:
    """Wall time since start, and the part spent in evaluation."""

    def __init__(self, offset_s: float = 0.0, eval_offset_s: float = 0.0):
        self._start = time.perf_counter() - offset_s
        self.eval_s = eval_offset_s

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def train_elapsed(self) -> float:
        return self.elapsed() - self.eval_s


class ThroughputWindows:
    """samples/s per logging window, measured on training time only (evaluation excluded)."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self._window_start = time.perf_counter()
        self._samples = 0

    def add_samples(self, samples: int) -> None:
        self._samples += samples

    def close(self) -> float | None:
        """Close the current window (call after a device sync); returns its samples/s."""
        now = time.perf_counter()
        duration = now - self._window_start
        rate = self._samples / duration if self._samples and duration > 0 else None
        if rate is not None:
            self.rates.append(rate)
        self.restart()
        return rate

    def restart(self) -> None:
        """Start a new window now (after an evaluation, whose time must not count)."""
        self._window_start = time.perf_counter()
        self._samples = 0

    def median_after_warmup(self) -> float | None:
        """Median over windows, skipping the first (allocator warm-up, first-touch page faults)."""
        rates = self.rates[1:] if len(self.rates) > 1 else self.rates
        return statistics.median(rates) if rates else None
