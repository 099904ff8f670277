"""Checkpoints and preemption: save and restore a run, and turn SIGTERM/SIGINT into a request to stop.

A checkpoint is Accelerate's `save_state` (model, optimizer, every process's RNG states) plus the loop's own
state dict (`trainer_state.json`), which the trainer hands over: this module does not know what is in it.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from scaling.config import ConfigError, RunConfig
from scaling.results import write_json_atomic

# Keys that may differ between an interrupted run and its resumption (they do not change the training).
RESUMABLE_CHANGES = {"progress", "max_time", "checkpoint_every", "log_with", "output_dir"}
STATE_FILE = "trainer_state.json"


class Checkpoint:
    """The checkpoint folder of one run."""

    def __init__(self, accelerator: Accelerator, directory: Path):
        self.accelerator = accelerator
        self.directory = directory

    def save(self, loop_state: dict) -> None:
        """Written to a temporary folder and renamed, so a kill during saving keeps the previous checkpoint.
        `loop_state` must hold the run's config under "config" (checked on load)."""
        accelerator = self.accelerator
        tmp = self.directory.with_name("checkpoint.tmp")
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, loop_state)
            old = self.directory.with_name("checkpoint.old")
            if self.directory.exists():
                self.directory.rename(old)
            tmp.rename(self.directory)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def load(self, cfg: RunConfig) -> dict:
        """Restore model, optimizer and RNG states; return the loop state. Refuses a checkpoint written with
        settings that change the training."""
        state_file = self.directory / STATE_FILE
        if not state_file.is_file():
            raise ConfigError(f"--resume: no checkpoint in {self.directory}")
        state = json.loads(state_file.read_text())
        check_resumable(state["config"], cfg)
        self.accelerator.load_state(str(self.directory))
        return state


def check_resumable(saved: dict, cfg: RunConfig) -> None:
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise ConfigError(f"--resume: the checkpoint was written with a different {changed[0]} "
                          f"({saved.get(changed[0])!r}, now {getattr(cfg, changed[0])!r})")


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

        for number in self.SIGNALS:
            self.previous[number] = signal.signal(number, handler)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
