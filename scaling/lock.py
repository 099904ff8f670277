"""One writer per folder: a study folder has one sweep, a run folder one run.

Both locks are advisory `flock`s (STUDY_DIR/.sweep.lock, OUTPUT_DIR/.run.lock): the kernel releases them
when the holding process dies, however it dies (even SIGKILL), so a crashed process never leaves a folder
locked. The file holds the holder's pid and host, for the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from scaling.config import ConfigError
from scaling.files import refuse_link

RUN_LOCK = ".run.lock"


class _FolderLock:
    """An exclusive, non-blocking flock on one file, holding the holder's pid and host."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def _try_acquire(self) -> str | None:
        """None when acquired; else who holds it."""
        refuse_link(self.path)  # opening a planted link would truncate the file it points at
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        handle = os.fdopen(fd, "r+")  # held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            handle.close()
            return holder
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class StudyLock(_FolderLock):
    def __init__(self, study_dir: str | Path):
        super().__init__(Path(study_dir) / ".sweep.lock")

    def __enter__(self) -> StudyLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            holder = self._try_acquire()
        except OSError as err:
            raise ConfigError(f"cannot use study folder {self.path.parent}: {err.strerror or err}") from None
        if holder is not None:
            raise ConfigError(
                f"study folder {self.path.parent} is in use by a running sweep ({holder}); wait for it to "
                f"finish or stop it, then run again (finished configurations are kept)"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(_FolderLock):
    """Held by a run's main process from before it loads data until it exits: no two processes ever write
    one run folder."""

    def __init__(self, folder: str | Path):
        super().__init__(Path(folder) / RUN_LOCK)

    def acquire(self) -> RunLock:
        try:
            holder = self._try_acquire()
        except OSError as err:
            raise ConfigError(f"--output-dir {self.path.parent} is not writable: {err.strerror or err}") from None
        if holder is not None:
            raise ConfigError(f"output folder {self.path.parent} is in use by another run ({holder}); wait for "
                              f"it to end or choose another --output-dir")
        return self


def run_lock_holder(folder: str | Path) -> str | None:
    """Who holds the run lock of `folder` (None when nobody does). Takes the lock for an instant."""
    path = Path(folder) / RUN_LOCK
    if not path.is_file():
        return None
    probe = _FolderLock(path)
    try:
        holder = probe._try_acquire()
    except OSError:
        return None
    probe.release()
    return holder


def wait_for_run_lock(folder: str | Path, timeout: float) -> str | None:
    """Wait until nobody holds the run lock of `folder`; the holder if it is still held after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        holder = run_lock_holder(folder)
        if holder is None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.1)
