"""The result of a run: its schema, how it is assembled, written atomically, summarised and read back.

Schema: `Result` below, described field by field in docs/results.md. A result is complete when it parses and
its status is final. Only the main process writes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TypedDict

from scaling.config import ConfigError

# A run with one of these statuses is finished; "interrupted" is not (it resumes from its checkpoint).
FINAL_STATUSES = ("reached", "not_reached", "completed", "diverged", "failed", "oom")
SCHEMA_VERSION = 1


class Result(TypedDict, total=False):
    """result.json of a finished or interrupted run (docs/results.md). The keys marked "only ..." appear in
    some results only; every other key is always present."""

    schema_version: int
    status: str
    config: dict[str, Any]
    batch: dict[str, Any]
    lr: dict[str, Any]
    target: dict[str, Any]
    time_to_target_s: float | None
    train_time_to_target_s: float | None
    steps_to_target: int | None
    samples_to_target: int | None
    epochs_to_target: float | None
    steps_to_target_resolution: int | None
    first_eval_at_target: dict[str, Any] | None
    target_search: dict[str, Any] | None
    throughput_samples_per_s: float | None
    throughput_median_window_samples_per_s: float | None
    train_time_per_step_s: float | None
    steps: int
    elapsed_s: float
    train_elapsed_s: float
    diverged_at_step: int | None
    final: dict[str, Any] | None
    history: list[dict[str, Any]]
    train_loss: list[float | None]
    lr_per_step: list[float]
    throughput_windows: list[float]
    step_time_breakdown: dict[str, Any] | None
    data_wait_fraction: float | None
    per_rank_step_time_s: list[float]
    straggler_ratio: float | None
    noise_scale: dict[str, Any] | None
    environment: dict[str, Any]
    batch_coupled_layers: list[str]
    decomposition_exact: bool
    auto_batch: dict[str, Any] | None
    steps_per_epoch: int
    train_samples: int
    eval_samples: int
    peak_memory: dict[str, int | None]
    compute: dict[str, Any]
    compile_s: float | None
    materialized: list[str]
    bottleneck: dict[str, Any] | None
    ceilings: dict[str, Any]  # only with --probe
    checkpoint: str  # only when interrupted
    stop_signal: str  # only when interrupted


OPTIONAL_FIELDS = frozenset({"ceilings", "checkpoint", "stop_signal"})


class FailureResult(TypedDict):
    """result.json of a run that ended in an exception (status "oom" or "failed")."""

    schema_version: int
    status: str
    config: dict[str, Any]
    batch: dict[str, Any]
    error: str
    environment: dict[str, Any]
    suggestion: str | None


def build_result(cfg, plan, schedule, outcome, environment: dict, extra: dict) -> Result:
    """The result document from the run's config, batch plan, LR schedule and training outcome."""
    target = outcome.target_eval
    final = outcome.history[-1] if outcome.history else None
    return {
        "schema_version": SCHEMA_VERSION,
        "status": outcome.status,
        "config": cfg.to_dict(),
        "batch": plan.to_dict(),
        "lr": {
            "rule": cfg.lr_scaling,
            "base": cfg.base_lr,
            "base_bs": cfg.base_bs,
            "scaled": schedule.peak,
            "warmup_steps": schedule.warmup_steps,
            "decay": schedule.decay,
        },
        "target": {"metric": "accuracy", "value": cfg.target_accuracy},
        "time_to_target_s": target["time_s"] if target else None,
        "train_time_to_target_s": target["train_time_s"] if target else None,
        "steps_to_target": target["step"] if target else None,
        "samples_to_target": target["samples"] if target else None,
        "epochs_to_target": target["epoch"] if target else None,
        "steps_to_target_resolution": _step_resolution(outcome.target_search),
        "first_eval_at_target": outcome.first_eval_at_target,
        "target_search": outcome.target_search,
        "throughput_samples_per_s": outcome.throughput_samples_per_s,
        "throughput_median_window_samples_per_s": outcome.median_window_rate,
        "train_time_per_step_s": outcome.train_elapsed_s / outcome.steps if outcome.steps else None,
        "steps": outcome.steps,
        "elapsed_s": outcome.elapsed_s,
        "train_elapsed_s": outcome.train_elapsed_s,
        "diverged_at_step": outcome.diverged_at_step,
        "final": {"accuracy": final["accuracy"], "loss": final["loss"]} if final else None,
        "history": outcome.history,
        "train_loss": outcome.train_loss,
        "lr_per_step": outcome.lr,
        "throughput_windows": outcome.window_rates,
        "step_time_breakdown": outcome.step_time,
        "data_wait_fraction": data_wait_fraction(outcome.step_time),
        "per_rank_step_time_s": outcome.per_rank_step_time_s,
        "straggler_ratio": straggler_ratio(outcome.per_rank_step_time_s),
        "noise_scale": outcome.noise_scale,
        "compile_s": outcome.compile_s,
        "environment": environment,
        **extra,
    }


def _step_resolution(search: dict | None) -> int | None:
    """1 when steps_to_target is exact, else the width of the evaluation window it lies in."""
    if search is None:
        return None
    low, high = search["window"]
    return 1 if search["exact"] else high - low


def failure_result(cfg, plan, environment: dict, err: BaseException, status: str,
                   suggestion: str | None) -> FailureResult:
    return {"schema_version": SCHEMA_VERSION, "status": status, "config": cfg.to_dict(), "batch": plan.to_dict(),
            "error": f"{type(err).__name__}: {err}", "environment": environment, "suggestion": suggestion}


def data_wait_fraction(step_time: dict | None) -> float | None:
    """Share of training time spent waiting for data, from the phase breakdown."""
    return step_time["phases"]["data_wait"]["fraction"] if step_time else None


def straggler_ratio(per_rank: list[float]) -> float | None:
    """Slowest rank's step time over the median rank's (1.0 = balanced)."""
    import statistics

    if not per_rank or statistics.median(per_rank) <= 0:
        return None
    return max(per_rank) / statistics.median(per_rank)


def summary_line(result: Result, path: Path) -> str:
    """The one line a run prints at the end."""
    status = result["status"]
    rate = result["throughput_samples_per_s"]
    speed = f"{rate:,.0f} samples/s" if rate else "n/a samples/s"
    if status == "reached":
        return (
            f"scaling: reached {result['target']['value']:.1%} in {result['time_to_target_s']:.2f} s "
            f"(train {result['train_time_to_target_s']:.2f} s), {result['steps_to_target']} steps, "
            f"{result['samples_to_target']:,} samples, {result['epochs_to_target']:.2f} epochs; {speed}"
            f"{_bound_text(result)} -> {path}"
        )
    final = result["final"]
    accuracy = f", final accuracy {final['accuracy']:.1%}" if final else ""
    where = f" at step {result['diverged_at_step']}" if status == "diverged" else f" after {result['steps']} steps"
    return f"scaling: {status}{where}{accuracy}; {speed}{_bound_text(result)} -> {path}"


def _bound_text(result: Result) -> str:
    """`, compute-bound (data wait 3%)`: the run's bottleneck verdict in the summary line."""
    verdict = result.get("bottleneck")
    if not verdict:
        return ""
    wait = verdict.get("data_wait_fraction")
    detail = f" ({wait:.0%} waiting for data)" if wait is not None else ""
    return f", {verdict['bound']}-bound{detail}"


def exit_status(result: Result) -> int:
    """0 for a result (a missed target or a divergence is a finding, not an error); 128 + signal number
    for an interrupted run, as a shell reports a process stopped by that signal."""
    if result["status"] == "interrupted":
        import signal

        return 128 + getattr(signal, result.get("stop_signal") or "SIGTERM")
    return 0


class OutputError(ConfigError):
    """A file the run writes could not be written (folder not writable, disk full): one line, exit 2."""


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over `path`.

    A reader sees either the old file or the new one, never a torn one, even after SIGKILL. The file is
    readable by others (0644 under the usual umask), like any file the process creates. A failure to write
    is an OutputError naming the file; the old file is left as it was.
    """
    path = Path(path)
    text = json.dumps(obj, indent=2, allow_nan=False, default=_jsonable) + "\n"  # bugs raise before any I/O
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str | None) -> None:
    if path is not None:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


MAX_RESULT_BYTES = 256 << 20


def read_result(path: str | Path, finished_only: bool = True) -> dict | None:
    """The result at `path` if it parses and is finished (any status with finished_only=False), else None.

    A torn or half-written file, a run still "running" (or killed while running) and an "interrupted" run
    all count as unfinished: a sweep runs (or resumes) them again.
    """
    try:
        if Path(path).stat().st_size > MAX_RESULT_BYTES:  # not a result this tool wrote
            return None
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
    so a killed run leaves every finished window readable. A failure to write (disk full) is an OutputError
    naming the file; the lines already flushed stay."""

    def __init__(self, path: str | Path, enabled: bool, append: bool = False):
        self.enabled = enabled
        self.path = Path(path)
        self._handle = None
        if enabled:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a" if append else "w")  # closed in close()
            except OSError as err:
                raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from None

    def write(self, record: dict) -> None:
        if self._handle is not None:
            line = json.dumps(record, allow_nan=False, default=_jsonable) + "\n"
            self._io(lambda: self._handle.write(line))

    def flush(self) -> None:
        if self._handle is not None:
            self._io(self._handle.flush)

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:  # the error was reported by the write or flush that met it
                pass

    def _io(self, action) -> None:
        try:
            action()
        except OSError as err:
            handle, self._handle = self._handle, None  # no further writes; close() drops the buffer
            try:
                handle.close()
            except OSError:
                pass
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from None


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
