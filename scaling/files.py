"""Files a run writes: JSON written atomically, and metrics.jsonl flushed at every logging window."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from scaling.config import ConfigError


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
