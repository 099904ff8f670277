"""One writer per study folder.

An advisory `flock` on STUDY_DIR/.sweep.lock: the kernel releases it when the holding process dies, however
it dies (even SIGKILL), so a crashed sweep never leaves the study locked. The file holds the holder's pid
and host, for the message a second sweep gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from scaling.config import ConfigError


class StudyLock:
    def __init__(self, study_dir: str | Path):
        self.path = Path(study_dir) / ".sweep.lock"
        self._handle = None

    def __enter__(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"study folder {self.path.parent} is in use by a running sweep ({holder}); wait for it to "
                f"finish or stop it, then run again (finished configurations are kept)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
