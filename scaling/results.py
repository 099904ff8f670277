"""The result file and the metrics stream: atomic writes by the main process, reading results back.

Schema: docs/results.md. A result is complete when it parses and its status is final.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# A run with one of these statuses is finished; "interrupted" is not (it resumes from its checkpoint).
FINAL_STATUSES = ("reached", "not_reached", "completed", "diverged", "failed", "oom")
SCHEMA_VERSION = 1


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over `path`.

    A reader sees either the old file or the new one, never a torn one, even after SIGKILL.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, allow_nan=False, default=_jsonable)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/inf; a diverged loss is stored as null."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def read_result(path: str | Path, finished_only: bool = True) -> dict | None:
    """The result at `path` if it parses and is finished (any status with finished_only=False), else None.

    A torn or half-written file, a run still "running" (or killed while running) and an "interrupted" run
    all count as unfinished: a sweep runs (or resumes) them again.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "status" not in data:
        return None
    if finished_only and data["status"] not in FINAL_STATUSES:
        return None
    return data


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl; flushed at every logging-window boundary,
    so a killed run leaves every finished window readable."""

    def __init__(self, path: str | Path, enabled: bool, append: bool = False):
        self.enabled = enabled
        self._handle = None
        if enabled:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a" if append else "w")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps(record, allow_nan=False, default=_jsonable) + "\n")

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a torn last line from a killed run is skipped)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


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
        "hostname": platform.node(),
        "git_commit": git_commit(),
    }
