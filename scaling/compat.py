"""Work-arounds for library behaviour that costs measurable time, each with its measurement."""

from __future__ import annotations

import functools


def cache_accelerate_import_probes() -> None:
    """Cache `is_lomo_available` as seen by Accelerate's optimizer wrapper.

    `AcceleratedOptimizer.step` (accelerate 1.15) calls `is_lomo_available()` twice per call, and each call
    runs `importlib.util.find_spec`, i.e. a scan of sys.path with file-system stats: about 100 us per step.
    On the default 2-core workload at batch 256 that was 12% of the step time (benchmarks/overhead.py,
    profiled with cProfile). Whether a package is installed cannot change while training runs, so the
    answer is cached; behaviour is unchanged.
    """
    import accelerate.optimizer as accelerated_optimizer

    probe = getattr(accelerated_optimizer, "is_lomo_available", None)
    if probe is not None and not hasattr(probe, "cache_info"):
        accelerated_optimizer.is_lomo_available = functools.lru_cache(maxsize=None)(probe)
