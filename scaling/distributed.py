"""The one place that says which process this is, before and after Accelerate starts.

torchrun, `accelerate launch` and SLURM-through-torchrun all export RANK / WORLD_SIZE / LOCAL_RANK,
so config validation (which must happen before any process group exists) can read them here.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0
