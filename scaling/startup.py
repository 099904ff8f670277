"""A run's start-up, before training begins: Ctrl-C during it.

Ctrl-C before training ends the command with one line and status 130. It may come while a module is half
imported (torch, logging, ...): the handler then imports nothing, and leaves by `os._exit` rather than an
exception that a half-run import could turn into a traceback (or that a library's bare `except:` could
swallow). Nothing has been written but the run's folder and its lock (an flock the kernel releases).

This module imports only what the interpreter has already imported when it starts (os, sys): run.py
installs the Ctrl-C handler before it imports anything else.
"""

from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


# ---- Ctrl-C before training ----


def quiet_interrupt(message: str) -> None:
    """SIGINT ends the process with `message` (one line, the main process only) and status 130."""
    import signal

    def interrupted(signum, frame):
        say(message, err=True)
        if _importing(frame):
            _flush()
            os._exit(EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED)

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
