"""A run never outlives the sweep or launcher that started it (Linux: the kernel signals it when its parent
dies; docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

DIE_WITH_PARENT_ENV = "SCALING_DIE_WITH_PARENT"

_PRCTL: Any = None


def die_with_parent_available() -> bool:
    """Whether the kernel can signal a process when its parent dies (Linux); resolves prctl once, so a forked
    child calls it without loading anything."""
    global _PRCTL
    if _PRCTL is None:
        _PRCTL = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
    return _PRCTL is not False


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Linux: have the kernel send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG), so
    a run cannot outlive the sweep or launcher that started it. With `parent`, a parent that already died
    (before the request) sends the signal at once. False where unsupported."""
    if not die_with_parent_available() or _PRCTL(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def die_with_parent_if_asked() -> None:
    """A process started (directly or through torchrun / accelerate launch) by a sweep stops, with a
    checkpoint, when its parent dies: the sweep sets DIE_WITH_PARENT_ENV for its runs."""
    if os.environ.get(DIE_WITH_PARENT_ENV) == "1":
        die_with_parent(signal.SIGTERM)
