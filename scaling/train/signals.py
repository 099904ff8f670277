"""SIGTERM and SIGINT become a request to stop: the loop checkpoints at its next logging-window boundary
(docs/reliability.md)."""

from __future__ import annotations

import signal
from collections.abc import Callable

from scaling.startup import end as end_startup


class StopOnSignals:
    """SIGTERM (schedulers' preemption) and SIGINT (Ctrl-C) call `request_stop(signal name)` instead of
    killing the process, so the trainer checkpoints and stops at the next logging-window boundary instead of
    dying mid-step; the old handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, request_stop: Callable[[str], None]):
        self.request_stop = request_stop
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignals:
        def handler(signum, frame):
            self.request_stop(signal.Signals(signum).name)

        # Training begins here: start-up's watch (what it waits for, --startup-timeout-s) ends.
        end_startup()

        for number in self.SIGNALS:
            self.previous[number] = signal.signal(number, handler)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
