"""Where a result came from: versions, device, thread settings, host and git commit (result.json
`environment`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: Any, world_size: int, distributed_type: str) -> dict[str, Any]:
    import accelerate
    import torch

    try:
        import datasets

        datasets_version = datasets.__version__
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets_version = None
    if getattr(device, "type", "cpu") == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets_version,
        "device": device_name,
        "device_type": getattr(device, "type", str(device)),
        "world_size": world_size,
        "distributed_type": distributed_type,
        # What changes float reduction order, hence the trajectory: runs compared should agree on these.
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "hostname": platform.node(),
        "git_commit": git_commit(),
    }
