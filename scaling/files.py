"""Files the tool writes: every file written atomically and never through a symbolic link it did not create,
and metrics.jsonl flushed at every logging window into the folder the run opened, checked still to be there.

A folder the user names (--output-dir, a study folder) may itself be a link: the user chose it. What the tool
writes inside it is not followed through a link: a file or folder found there as a link (planted by whoever
can write a shared folder) is refused with one line, so no file outside the folder is ever written over.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from scaling.errors import ConfigError, shown


class OutputError(ConfigError):
    """A file the run writes could not be written (folder not writable, disk full, a planted link): one
    line, exit 2."""


class FolderGone(OutputError):
    """The run's output folder was deleted or replaced during the run: its record is no longer where it
    started, so the run ends as failed rather than report success over a lost or split record."""


def refuse_link(path: str | Path) -> None:
    """OutputError when `path` is a symbolic link: nothing is written through a link the tool did not
    create (a link to a missing file would create it, a link to a file would overwrite it)."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise OutputError(f"{path} is a symbolic link (to {shown(target)}); scaling writes no file through a link "
                          f"it did not create; remove the link and run again")


def refuse_links_below(root: str | Path, path: str | Path) -> None:
    """refuse_link for `path` and every folder between `root` (trusted: the user named it) and `path`."""
    root, path = Path(root), Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise OutputError(f"{path} is outside its folder {root}; scaling writes only inside it") from None
    current = root
    for part in parts:
        if part == "..":
            raise OutputError(f"{path} leaves its folder {root}; scaling writes only inside it")
        current = current / part
        refuse_link(current)


@contextmanager
def atomic_file(path: str | Path, *, dir_fd: int | None = None) -> Iterator[BinaryIO]:
    """A binary handle on a new temporary file in `path`'s folder, fsynced and renamed over `path` when the
    block ends without an exception (removed when it raises).

    A reader sees either the old file or the new one, never a torn one, even after SIGKILL; a link at `path`
    is refused, never followed. The folder must exist: a deleted run folder is not silently recreated. With
    `dir_fd` (a folder opened earlier) the file `path.name` is written in that folder, wherever it has been
    moved since. The file gets the usual permissions under the umask (0644). A failure to write is an
    OutputError naming the file; the old file is left as it was.
    """
    path = Path(path)
    try:
        folder = os.dup(dir_fd) if dir_fd is not None else os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        if _is_link(path.name, folder):
            refuse_link(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces a link, never follows one
    except OSError as err:
        _unlink_quietly(tmp, folder)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        _unlink_quietly(tmp, folder)
        raise
    finally:
        os.close(folder)


def write_bytes_atomic(path: str | Path, data: bytes, *, dir_fd: int | None = None) -> None:
    """`data` into `path`, atomically and through no link (atomic_file)."""
    with atomic_file(path, dir_fd=dir_fd) as handle:
        handle.write(data)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def write_text_atomic(path: str | Path, text: str, *, dir_fd: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), dir_fd=dir_fd)


def write_json_atomic(path: str | Path, obj: Any, *, dir_fd: int | None = None) -> None:
    """JSON (no NaN: JSON has none), atomically as write_bytes_atomic."""
    text = json.dumps(obj, indent=2, allow_nan=False, default=_jsonable) + "\n"  # bugs raise before any I/O
    write_text_atomic(path, text, dir_fd=dir_fd)


def open_for_writing(path: str | Path, append: bool = False):
    """A text handle on `path` (created, truncated unless `append`), refusing a link at `path`."""
    path = Path(path)
    refuse_link(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.fdopen(os.open(path, flags, 0o666), "a" if append else "w")
    except OSError as err:
        if path.is_symlink():  # planted between the check and the open
            refuse_link(path)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


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
    naming the file; the lines already flushed stay.

    At every flush (and at `check`) the file is checked to be still the one the run opened, at its path:
    a run whose folder was deleted, or moved and replaced (by another folder or a link), would otherwise go
    on writing a record nobody can find and report success over it (FolderGone). `folder_fd` is the folder
    the run opened, wherever it is now: the failure record is written there, not into a replacement."""

    def __init__(self, path: str | Path, enabled: bool, append: bool = False):
        self.enabled = enabled
        self.path = Path(path)
        self._handle = None
        self.folder_fd: int | None = None
        self._identity: tuple[int, int] | None = None
        if enabled:
            self._handle = open_for_writing(self.path, append)  # closed in close()
            info = os.fstat(self._handle.fileno())
            self._identity = (info.st_dev, info.st_ino)
            try:
                self.folder_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as err:
                self.close()
                raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from None
            self.check()  # the folder opened is the one the path names (not swapped in between)

    def write(self, record: dict) -> None:
        if self._handle is not None:
            line = json.dumps(record, allow_nan=False, default=_jsonable) + "\n"
            self._io(lambda: self._handle.write(line))

    def flush(self) -> None:
        if self._handle is not None:
            self._io(self._handle.flush)
            self.check()

    def check(self) -> None:
        """FolderGone unless metrics.jsonl at its path is still the file this writer opened."""
        if self._identity is None:
            return
        try:
            info = os.stat(self.path)
            same = (info.st_dev, info.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise FolderGone(f"{self._what_happened()} during the run; the run stops as failed rather than "
                             f"report success over a record that is no longer where it started")

    def _what_happened(self) -> str:
        folder = self.path.parent
        if not folder.exists():
            return f"output folder {folder} was deleted"
        try:
            now, then = os.stat(folder), os.fstat(self.folder_fd)
            if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
                return f"output folder {folder} was replaced (moved away, or swapped for a link or another folder)"
        except (OSError, TypeError):
            pass
        return f"{self.path} was deleted or replaced"

    def close(self) -> None:
        """Closes the file and the folder (check() still works after)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:  # the error was reported by the write or flush that met it
                pass
        folder, self.folder_fd = self.folder_fd, None
        if folder is not None:
            os.close(folder)

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
