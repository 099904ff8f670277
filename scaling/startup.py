"""A run's start-up, before training begins: Ctrl-C during it, and what it is waiting for.

Ctrl-C before training ends the command with one line and status 130. It may come while a module is half
imported (torch, logging, ...): the handler then imports nothing, and leaves by `os._exit` rather than an
exception that a half-run import could turn into a traceback (or that a library's bare `except:` could
swallow). Nothing has been written but the run's folder and its lock (an flock the kernel releases).

Start-up (the process group, the output folder, loading the dataset, building the model, Accelerate's
preparation, the checkpoint of a resume) can wait forever on a dataset factory or a download that hangs.
`StartupWatch` says what it is waiting for once a stage has lasted a while ("scaling: start-up: still
loading the dataset ...") and, with --startup-timeout-s, ends the run when start-up is over the limit:
one line naming what it was waiting for, exit status 2. Start-up ends where training's own signal handling
begins (scaling/train/signals.py calls `end`).

This module imports only what the interpreter has already imported when it starts (os, sys): run.py
installs the Ctrl-C handler before it imports anything else.
"""

from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
EXIT_TIMEOUT = 2  # a limit the user set was exceeded: a one-line error like any other of theirs
NOTE_AFTER_S = 10.0  # a stage lasting this long is named in the progress output (sooner under a short limit)
POLL_S = 0.1
GRACE_S = 5.0  # after the limit, how long the main thread has to stop by itself before the process is ended

_watch: StartupWatch | None = None  # the one watch of this process, while start-up lasts


# ---- Ctrl-C before training ----


class Interrupted(SystemExit):  # noqa: N818 - as SystemExit
    """Ctrl-C before training (status 130). Its own class, so that code catching a factory's SystemExit (a
    factory that calls sys.exit is a failure) can let this one through."""


def quiet_interrupt(message: str) -> None:
    """SIGINT ends the process with `message` (one line, the main process only) and status 130."""
    import signal

    def interrupted(signum, frame):
        say(message, err=True)
        if _importing(frame):
            _flush()
            os._exit(EXIT_INTERRUPTED)
        raise Interrupted(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)


def _importing(frame) -> bool:
    """Whether the interrupted code is (inside) a module being imported."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def say(line: str, err: bool = False) -> None:
    """`line` on stdout (or stderr) of the main process, through tqdm when it is fully imported (it clears a
    progress bar first); never importing anything: a module may be half imported."""
    if os.environ.get("RANK", "0") != "0":
        return
    stream = sys.stderr if err else sys.stdout
    auto = sys.modules.get("tqdm.auto")
    writer = getattr(auto, "tqdm", None)
    try:
        if writer is not None and hasattr(writer, "write"):
            writer.write(line, file=stream)
        else:
            stream.write(line + "\n")
        stream.flush()
    except Exception:  # noqa: BLE001 - a closed or half-built stream: the status still says it
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


# ---- what start-up is waiting for, and its limit ----


class StartupTimeout(BaseException):  # noqa: N818 - named for what happened, as SystemExit is
    """Start-up went over --startup-timeout-s. A BaseException, so that a dataset factory's own
    `except Exception` cannot swallow it; run.py's main turns it into the one line and exit status 2."""


# Functions of this package, innermost first wins, and the stage of start-up each one is.
STAGES = {
    "start_processes": "forming the process group",
    "settle": "settling the output folder",
    "prepare_output_dir": "preparing the output folder",
    "load_workload": "loading the dataset",
    "materialize_workload": "reading the dataset into memory",
    "build_model": "building the model",
    "resolve_auto_batch": "finding the largest per-device batch that fits",
    "load_checkpoint": "loading the checkpoint",
    "build": "preparing the model and optimizer (Accelerate)",
}


class StartupWatch:
    """A thread that watches the main thread's start-up: names a stage that lasts, and enforces the limit.

    At the limit the main thread gets SIGALRM, whose handler raises StartupTimeout (a hanging `time.sleep`
    or read returns at once); if it has not ended start-up GRACE_S later (stuck in C code, or the exception
    swallowed), the watch prints the same line and ends the process with status 2."""

    def __init__(self, limit_s: float | None, note_after_s: float = NOTE_AFTER_S):
        import threading
        import time

        self.limit_s = limit_s
        self.note_after_s = min(note_after_s, limit_s / 2) if limit_s is not None else note_after_s
        self._clock = time.monotonic
        self._start = self._clock()
        self._main = threading.current_thread()  # the thread that starts the run (the main one in a process)
        self._stop = threading.Event()
        self._previous_alarm = None
        self._armed = False  # the SIGALRM handler is installed (signals go to the main thread only)
        self.message: str | None = None  # the timeout's line, once the limit is passed
        self._thread = threading.Thread(target=self._watch, name="scaling-startup-watch", daemon=True)

    def start(self) -> StartupWatch:
        global _watch
        import signal
        import threading

        if self.limit_s is not None and self._main is threading.main_thread():
            self._previous_alarm = signal.signal(signal.SIGALRM, self._alarm)
            self._armed = True
        _watch = self
        self._thread.start()
        return self

    def end(self) -> None:
        """Start-up is over (training begins, or the run ended): no note, no limit from here on."""
        global _watch
        import signal
        import threading

        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        if self._armed:
            previous = self._previous_alarm  # None: a handler not installed from Python
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
            self._armed = False
        if _watch is self:
            _watch = None

    def _alarm(self, signum, frame) -> None:
        if self.message is not None and not self._stop.is_set():
            raise StartupTimeout(self.message)

    def _watch(self) -> None:
        import signal

        noted: set[str] = set()
        current, since, deadline = None, self._start, None
        while not self._stop.wait(POLL_S):
            now = self._clock()
            stage, where = self.waiting_for()
            if stage != current:
                current, since = stage, now
            if now - since >= self.note_after_s and stage not in noted and self.message is None:
                noted.add(stage)
                limit = (f"--startup-timeout-s {self.limit_s:g} ends it" if self.limit_s is not None
                         else "--startup-timeout-s SECONDS would limit it")
                say(f"scaling: start-up: still {stage}{where} after {now - since:.0f} s; {limit}")
            if self.limit_s is not None and now - self._start >= self.limit_s and self.message is None:
                self.message = (f"start-up took more than --startup-timeout-s {self.limit_s:g} s: still {stage}"
                                f"{where}; nothing was trained; find what it waits for, or raise the limit")
                deadline = now + GRACE_S if self._armed else now
                if self._armed:
                    try:
                        signal.pthread_kill(self._main.ident, signal.SIGALRM)
                    except (OSError, ValueError):
                        deadline = now
            if deadline is not None and now >= deadline and not self._stop.is_set():
                say(f"scaling: error: {self.message}", err=True)
                _flush()
                os._exit(EXIT_TIMEOUT)

    def waiting_for(self) -> tuple[str, str]:
        """The stage the main thread is in (STAGES) and, when it is in the user's own code (a dataset or
        model factory), where: ' (in FILE:LINE, FUNCTION)'."""
        frame = sys._current_frames().get(self._main.ident)
        stage, user = None, None
        package = os.path.dirname(os.path.abspath(__file__)) + os.sep
        libraries = tuple({os.path.abspath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
        while frame is not None:  # innermost first
            code = frame.f_code
            path = os.path.abspath(code.co_filename) if not code.co_filename.startswith("<") else code.co_filename
            if path.startswith(package):
                stage = stage or STAGES.get(code.co_name)
            elif user is None and stage is None and not path.startswith(("<", *libraries)):
                user = f" (in {path}:{frame.f_lineno}, {code.co_name})"
            frame = frame.f_back
        return stage or "starting up", user or ""


def end() -> None:
    """Start-up is over: training begins (scaling/train/signals.py) or the run ended."""
    if _watch is not None:
        _watch.end()
