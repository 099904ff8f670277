"""One writer per folder: a study folder has one sweep, a run folder one run; and what a run may write over.

Both locks are advisory `flock`s (STUDY_DIR/.sweep.lock, OUTPUT_DIR/.run.lock): the kernel releases them
when the holding process dies, however it dies (even SIGKILL), so a crashed process never leaves a folder
locked. The file holds the holder's pid and host, for the message a second writer gets.

`prepare_output_dir` is what a run does before it loads any data (docs/reliability.md): resolve the
default folder to a fresh one, check the folder can be written, take its lock, and refuse to write over an
earlier run unless told (`--resume` continues it, `--overwrite` replaces it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config import ConfigError, RunConfig
from scaling.results import FINAL_STATUSES, MAX_RESULT_BYTES

DEFAULT_OUTPUT_DIR = "runs/latest"  # RunConfig's default: a fresh runs/<time> per run, runs/latest links to it
RUN_LOCK = ".run.lock"
# What a run writes into its folder; --overwrite removes these (a sweep's config.yaml and logs stay).
RUN_FILES = ("result.json", "metrics.jsonl", "checkpoint", "checkpoint.tmp", "checkpoint.old", "model.pt",
             "model.pt.tmp", "trackers")
DIE_WITH_PARENT_ENV = "SCALING_DIE_WITH_PARENT"


class _FolderLock:
    """An exclusive, non-blocking flock on one file, holding the holder's pid and host."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def _try_acquire(self) -> str | None:
        """None when acquired; else who holds it."""
        handle = open(self.path, "a+")  # held open for the lock's lifetime
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


# ---------------------------------------------------------------- dying with the parent


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


# ---------------------------------------------------------------- the output folder of a run


@dataclass
class RunFolder:
    """What an output folder holds from earlier runs."""

    path: Path
    result: dict[str, Any] | None = None
    result_problem: str | None = None  # result.json exists but cannot be used
    checkpoint_step: int | None = None  # the newest copy that claims to be complete
    files: list[str] = field(default_factory=list)  # RUN_FILES present

    @property
    def status(self) -> str | None:
        return self.result["status"] if self.result else None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def resumable(self) -> bool:
        return self.checkpoint_step is not None and not self.finished

    def describe(self) -> str | None:
        """What is there, in words (None when nothing of a run is)."""
        if self.result_problem:
            return f"{self.path / 'result.json'} {self.result_problem}"
        if self.finished:
            return f"a finished run (status {self.status})"
        if self.checkpoint_step is not None:
            return (f"an {'interrupted' if self.status == 'interrupted' else 'unfinished'} run with a checkpoint "
                    f"at step {self.checkpoint_step}")
        if self.status == "running":
            return "a run that was killed while running (result.json says running, no checkpoint)"
        if self.status is not None:
            return f"a run with status {self.status}"
        if self.files:
            return f"files of an earlier run ({', '.join(self.files)})"
        return None


def inspect_run_folder(path: str | Path) -> RunFolder:
    from scaling.train.checkpoint import candidates

    path = Path(path)
    folder = RunFolder(path)
    folder.files = [name for name in RUN_FILES if _present(path / name)]
    if "metrics.jsonl" in folder.files and _empty_file(path / "metrics.jsonl"):
        folder.files.remove("metrics.jsonl")
    if "result.json" in folder.files:
        folder.result, folder.result_problem = read_result_checked(path / "result.json")
    found = candidates(path / "checkpoint")
    folder.checkpoint_step = found[0][0] if found else None
    return folder


def read_result_checked(path: Path) -> tuple[dict | None, str | None]:
    """(result, None), or (None, what is wrong with the file) for a result.json that cannot be used."""
    try:
        if path.is_dir():
            return None, "is a folder, not a file"
        size = path.stat().st_size
        if size > MAX_RESULT_BYTES:
            return None, f"is {size:,} bytes, not a result this tool wrote"
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except ValueError:
        return None, "is not valid JSON (torn or damaged)"
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        return None, "is not a result of this tool (no status)"
    return data, None


def prepare_output_dir(cfg: RunConfig, resume: bool) -> tuple[RunConfig, RunLock | None]:
    """Before any data is loaded: on the main process, resolve the default folder, make sure the folder can
    be written, take its lock, and check what it holds against --resume / --overwrite (ConfigError, one
    line, otherwise). Returns the config with the folder it will write and the held lock."""
    from scaling import distributed

    if resume and cfg.overwrite:
        raise ConfigError("give at most one of --resume and --overwrite")
    if not distributed.is_main_process():
        return cfg, None  # only the main process writes the folder (checkpoints follow its choice)
    out = Path(cfg.output_dir)
    if os.path.normpath(cfg.output_dir) == DEFAULT_OUTPUT_DIR:
        out = _latest_run(out) if resume else _fresh_run_folder(out.parent)
        cfg = dataclasses.replace(cfg, output_dir=str(out))
    make_writable_folder(out)
    lock = RunLock(out).acquire()
    try:
        folder = inspect_run_folder(out)
        if resume:
            if folder.finished:
                raise ConfigError(f"--resume: {out} holds a finished run (status {folder.status}); nothing to "
                                  f"resume (--overwrite runs it again)")
            if folder.checkpoint_step is None:
                partial = " (only an incomplete checkpoint.tmp: a save was interrupted)" if _present(
                    out / "checkpoint.tmp") else ""
                raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoint'}{partial}; run without "
                                  f"--resume (with --overwrite) to start over")
        elif cfg.overwrite:
            clear_run_files(out)
        else:
            what = folder.describe()
            if what is not None:
                hint = ("pass --resume to continue it, --overwrite to start over"
                        if folder.resumable else "pass --overwrite to replace it")
                raise ConfigError(f"output folder {out} holds {what}; {hint}, or choose another --output-dir")
    except BaseException:
        lock.release()
        raise
    return cfg, lock


def make_writable_folder(out: Path) -> None:
    """Create `out` if needed and prove a file can be created in it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a folder; choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"--output-dir {out} is not writable ({err.strerror or err}); choose another "
                          f"--output-dir") from None


def clear_run_files(out: Path) -> None:
    """--overwrite: remove what an earlier run wrote (under the run lock)."""
    for name in RUN_FILES:
        path = out / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif _present(path):
                path.unlink()
        except OSError as err:
            raise ConfigError(f"--overwrite: cannot remove {path} ({err.strerror or err})") from None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _empty_file(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _fresh_run_folder(parent: Path) -> Path:
    """runs/YYYYmmdd-HHMMSS (or -2, -3 ... when taken), with runs/latest pointing at it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for number in range(1, 1000):
            folder = parent / (stamp if number == 1 else f"{stamp}-{number}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise ConfigError(f"cannot find a free folder name {parent / stamp}-N; give --output-dir")
    except OSError as err:
        raise ConfigError(f"cannot create a run folder under {parent} ({err.strerror or err}); give a writable "
                          f"--output-dir") from None
    latest = parent / Path(DEFAULT_OUTPUT_DIR).name
    link = parent / f".latest.{os.getpid()}"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder.name)
        os.replace(link, latest)
    except OSError:
        link.unlink(missing_ok=True)
        print(f"scaling: note: {latest} is not a link (a folder from an earlier version?) and was left as it "
              f"is; this run writes {folder}", file=sys.stderr)
    return folder


def _latest_run(latest: Path) -> Path:
    """--resume with the default folder: the run runs/latest points at."""
    if latest.is_symlink():
        target = latest.parent / os.readlink(latest)  # relative links stay relative, as the run was named
        if target.is_dir():
            return target
    elif latest.is_dir():
        return latest  # a plain folder, from before runs/latest became a link
    raise ConfigError(f"--resume: {latest} does not point at a run; give the run's folder with --output-dir")
