"""Checkpoints and preemption: save and restore a run, and turn SIGTERM/SIGINT into a request to stop.

A checkpoint is Accelerate's `save_state` (model, optimizer, every process's RNG states) plus the loop's own
state dict (`trainer_state.json`), which the trainer hands over. A resume validates every field it reads
(check_loop_state, check_start): a checkpoint's files are verified against its manifest, but a manifest can be
rewritten with the files, so a step of 10**30 or -7 must be refused in one line, not reach the arithmetic of
the sampler or the LR schedule. It may also hold, per process, the training state of the moment training started (`start_<rank>.pt`), from
which a resumed run's exact-step search replays (scaling/train/target.py).

The folder holds at most three copies (docs/reliability.md):

    checkpoint/       the current one
    checkpoint.tmp/   being written (complete once its manifest.json exists)
    checkpoint.old/   the previous one, between the two renames of a save

`manifest.json` is written last, after every process's files: it lists each file with its size and SHA-256,
so a load can tell a complete copy from a torn one without trusting any of it. Whatever a kill leaves (any
combination of the three), the next save succeeds and a load takes the newest copy that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.config import ConfigError, RunConfig
from scaling.errors import shown
from scaling.files import OutputError, atomic_file, write_json_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

# Keys that may differ between an interrupted run and its resumption (they do not change the training).
RESUMABLE_CHANGES = {"progress", "max_time", "checkpoint_every", "log_with", "output_dir"}
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
COPIES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")  # the current one first: it wins a tie
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")
MAX_STATE_BYTES = 1 << 30  # trainer_state.json: per-step losses and LRs, tens of MB for a million steps
# Bounds on what a checkpoint may claim: far above any real run (a billion steps would take gigabytes of
# per-step losses and LRs in trainer_state.json, which MAX_STATE_BYTES refuses anyway), small enough that no
# arithmetic on them overflows (a seed times an epoch as a C long long, a deque's length).
MAX_STEPS = 10**9
MAX_SECONDS = 1e9  # about 30 years of wall time
MAX_NOISE_WINDOW = 10**6
# The keys the loop writes (scaling/train/loop.py's evaluate_now, clock.py's PhaseTimer, noise/monitor.py): the
# result and the replay read them all.
EVALUATION_KEYS = {"step", "samples", "epoch", "time_s", "train_time_s", "accuracy", "loss"}
PHASE_KEYS = {"data_wait", "h2d", "fwd_bwd_nosync", "fwd_bwd_sync", "optimizer", "micro_nosync", "micro_sync",
              "step_wall"}
NOISE_POINT_KEYS = {"step", "grad_sq", "trace", "b_simple"}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from: one line naming the file (exit 2)."""


class Checkpoint:
    """The checkpoint folder of one run."""

    def __init__(self, accelerator: Accelerator, directory: Path):
        self.accelerator = accelerator
        self.directory = Path(directory)  # the same in every process: the run settled its folder first
        self.note: str | None = None  # said once resumed: which copy was used, and why
        self._loaded_step = 0  # the step of the loop state loaded: the start state cannot be later

    @property
    def tmp(self) -> Path:
        return self.directory.with_name(self.directory.name + ".tmp")

    @property
    def old(self) -> Path:
        return self.directory.with_name(self.directory.name + ".old")

    # ---- save ----

    def save(self, loop_state: dict, start: dict | None = None) -> None:
        """Written to checkpoint.tmp (manifest last), then renamed over checkpoint, so a kill at any point
        keeps a complete copy; correct whatever earlier interrupted saves left behind. `loop_state` must hold
        the run's config under "config" (checked on load); `start` (tensors and plain containers) is this
        process's training state at the start. A write error is an OutputError on every process.

        checkpoint.tmp is made afresh by this save: a link found there (planted in a shared folder) is
        removed, never followed, and the folder is checked to be still the one made before anything is
        written into it by its descriptor (the trainer state and the manifest) or renamed into place."""
        accelerator = self.accelerator
        tmp, old = self.tmp, self.old
        error, made = None, []  # the main process's descriptor of the checkpoint.tmp it made
        if accelerator.is_main_process:
            error = _attempt(lambda: made.append(_fresh_folder(tmp)))
        try:
            accelerator.wait_for_everyone()
            if error is None:
                # safetensors and torch report a failed write as their own errors (SafetensorError,
                # RuntimeError)
                error = _attempt(lambda: accelerator.save_state(str(tmp)), any_error=True)
            if error is None and start is not None:
                error = _attempt(lambda: _save_tensors(start, tmp / self.start_file), any_error=True)
            error = self._agree(error)
            if accelerator.is_main_process and error is None:
                error = _attempt(lambda: self._finish(tmp, old, loop_state, made[0]))
            error = self._agree(error)
        finally:
            for fd in made:
                os.close(fd)
        if error is not None:
            raise OutputError(f"cannot write checkpoint {self.directory}: {error}; the previous checkpoint (if "
                              f"any) is kept")

    def _finish(self, tmp: Path, old: Path, loop_state: dict, folder_fd: int) -> None:
        _still_made(tmp, folder_fd)
        write_json_atomic(tmp / STATE_FILE, loop_state, dir_fd=folder_fd)
        files = {}
        for path in sorted(tmp.iterdir()):
            if path.is_file() and path.name != MANIFEST:
                _fsync(path)
                files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"format": MANIFEST_FORMAT, "step": loop_state.get("step"),
                    "num_processes": self.accelerator.num_processes, "files": files}
        _still_made(tmp, folder_fd)  # the files hashed are the ones written
        write_json_atomic(tmp / MANIFEST, manifest, dir_fd=folder_fd)  # last: from here on tmp is complete
        _fsync_fd(folder_fd)
        # Any `old` is a leftover of an interrupted save and older than tmp: drop it before making room.
        _remove(old)
        if self.directory.exists() or self.directory.is_symlink():
            self.directory.rename(old)  # a link planted at checkpoint is moved as a link, never followed
        tmp.rename(self.directory)
        _fsync(self.directory.parent)
        _remove(old)

    def _agree(self, error: str | None) -> str | None:
        """Every process learns whether any process failed, so none waits at a barrier for a failed one."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return error
        import torch

        flag = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
        failed = accelerator.reduce(flag, reduction="sum").item() > 0
        if failed and error is None:
            error = "another process could not write its part"
        return error

    @property
    def start_file(self) -> str:
        return f"start_{self.accelerator.process_index}.pt"

    # ---- load ----

    def load_start(self) -> dict | None:
        """The training state at the start saved with the checkpoint just loaded (verified with it), or None
        for a checkpoint written without one."""
        import torch

        path = self.directory / self.start_file
        if not path.is_file():
            return None
        try:
            with _quiet_unpickler():
                start = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"--resume: checkpoint file {path} cannot be read ({type(err).__name__}: "
                                  f"{_first_line(err)}); rerun with --overwrite to start over") from None
        problem = start_problem(start, self._loaded_step)
        if problem is not None:
            raise CheckpointError(f"--resume: checkpoint file {path} is not a usable start state: {problem}; "
                                  f"rerun with --overwrite to start over")
        return start

    def load(self, cfg: RunConfig) -> dict:
        """Restore model, optimizer and RNG states from the newest copy that verifies; return the loop state.
        Refuses (CheckpointError naming the file) a checkpoint that is missing, torn, corrupt, written by a
        different number of processes, or written with settings that change the training."""
        accelerator = self.accelerator
        chosen, state, skipped = select(self.directory, accelerator.num_processes, accelerator.process_index)
        check_resumable(state["config"], cfg)
        if cfg.max_steps is not None and state["step"] > cfg.max_steps:
            raise CheckpointError(f"--resume: checkpoint file {chosen / STATE_FILE} is at step {state['step']:,}, "
                                  f"past this run's --max-steps {cfg.max_steps:,}; rerun with --overwrite to "
                                  f"start over")
        self._loaded_step = state["step"]
        if chosen != self.directory:
            self.note = (f"resuming from {chosen.name} (step {state.get('step')})"
                         + (f"; skipped {skipped}" if skipped else ""))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:  # the copy resumed from becomes the current one
                _attempt_or_raise(lambda: (_remove(self.directory), chosen.rename(self.directory)),
                                  f"cannot move {chosen} to {self.directory}")
            accelerator.wait_for_everyone()
        elif skipped:
            self.note = f"skipped {skipped}"
        try:
            accelerator.load_state(str(self.directory))
        except Exception as err:  # verified files that still do not fit this model/optimizer
            raise CheckpointError(f"--resume: cannot load checkpoint {self.directory}: {type(err).__name__}: "
                                  f"{_first_line(err)}; rerun with --overwrite to start over") from None
        if self.note:
            accelerator.print(f"scaling: note: {self.note}")
        return state


def start_point_step(folder: Path) -> int:
    """The step of a --start-from checkpoint, from its manifest (0 when it cannot be read: loading it then
    refuses it in one line)."""
    try:
        step = json.loads((Path(folder) / MANIFEST).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return step if isinstance(step, int) and step >= 0 else 0


def load_start_point(accelerator: Accelerator, folder: Path) -> dict:
    """--start-from: restore model, optimizer and RNG states from another run's checkpoint folder (verified
    as a resume verifies its own) and return its loop state; its settings may differ from this run's (a
    branch's batch, budget and seed), the model and optimizer must be the same (or loading fails in one line)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() and not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"--start-from: {folder} holds no checkpoint")
    try:
        state = verify(folder, accelerator.num_processes, accelerator.process_index)
    except CheckpointError as err:
        raise CheckpointError(f"--start-from: {err}") from None
    try:
        accelerator.load_state(str(folder))
    except Exception as err:  # verified files that do not fit this model/optimizer
        raise CheckpointError(f"--start-from: cannot load checkpoint {folder}: {type(err).__name__}: "
                              f"{_first_line(err)} (the same model and optimizer as the run that wrote it?)") from None
    return state


def check_resumable(saved: Any, cfg: RunConfig) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError("--resume: the checkpoint holds no run config; rerun with --overwrite to start over")
    # A setting the checkpoint's run did not have yet (an older version) had its default then.
    defaults = RunConfig().to_dict()
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
    if changed:
        raise CheckpointError(f"--resume: the checkpoint was written with a different {changed[0]} "
                              f"({shown(saved.get(changed[0]))}, now {shown(getattr(cfg, changed[0]))})")


# ---- finding and verifying a checkpoint (no Accelerator needed: the sweep and the folder check use it) ----


def candidates(directory: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every copy that claims to be complete (a manifest, or a trainer state of a checkpoint
    written before manifests), newest first; the current copy first among equals. Nothing is verified."""
    found = []
    for rank, name in enumerate(COPIES):
        folder = directory.with_name(name) if name != "checkpoint" else directory
        step = _claimed_step(folder)
        if step is not None:
            found.append((step, -rank, folder))
    return [(step, folder) for step, _, folder in sorted(found, reverse=True)]


def _claimed_step(folder: Path) -> int | None:
    """The step a copy claims (-1 when it cannot say), or None when it does not claim to be complete: a copy is
    complete once its manifest exists (or, written before manifests, its trainer state)."""
    for name in (MANIFEST, STATE_FILE):
        path = folder / name
        if path.exists() or path.is_symlink():
            try:
                data = _read_json(path)
            except CheckpointError:
                return -1  # claims completeness but is damaged: verify() names the file
            step = data.get("step") if isinstance(data, dict) else None
            return step if _is_count(step, MAX_STEPS) else -1
    return None


def select(directory: Path, num_processes: int = 1, process_index: int = 0) -> tuple[Path, dict, str | None]:
    """The newest copy whose every file verifies, its loop state, and what was skipped on the way (or None).
    Raises CheckpointError naming the file when no copy can be used."""
    found = candidates(directory)
    if not found:
        partial = directory.with_name(directory.name + ".tmp")
        extra = " (only an incomplete checkpoint.tmp: a save was interrupted)" if partial.is_dir() else ""
        raise CheckpointError(f"--resume: no checkpoint in {directory}{extra}; run without --resume (with "
                              f"--overwrite) to start over")
    problems = []
    for _, folder in found:
        try:
            state = verify(folder, num_processes, process_index)
            skipped = "; ".join(problems) if problems else None
            return folder, state, skipped
        except CheckpointError as err:
            problems.append(str(err).removeprefix("--resume: "))
    raise CheckpointError(f"--resume: {problems[0]}; rerun with --overwrite to start over")


def verify(folder: Path, num_processes: int = 1, process_index: int = 0) -> dict:
    """Check every file a resume reads; return the loop state. CheckpointError names the first bad file."""
    manifest_path = folder / MANIFEST
    if manifest_path.exists() or manifest_path.is_symlink():
        manifest = _read_json(manifest_path)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or STATE_FILE not in files:
            raise CheckpointError(f"checkpoint file {manifest_path} is not a checkpoint manifest")
        written_by = manifest.get("num_processes")
        if written_by != num_processes:
            raise CheckpointError(f"checkpoint {folder} was written by {shown(written_by)} process(es), this run "
                                  f"has {num_processes}; resume with the same launcher and process count")
        for name, expected in files.items():
            _check_manifest_entry(manifest_path, name, expected)
            _verify_file(folder / name, expected)
    else:  # written before manifests: the files accelerate needs, each loadable
        for name in (STATE_FILE, "optimizer.bin"):
            if not (folder / name).is_file():
                raise CheckpointError(f"checkpoint file {folder / name} is missing")
        _verify_loadable(folder)
    rng = folder / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise CheckpointError(f"checkpoint file {rng} is missing (written by fewer processes?)")
    _verify_rng(rng)
    state = _read_json(folder / STATE_FILE)
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint file {folder / STATE_FILE} is not a trainer state of this tool")
    check_loop_state(state, folder / STATE_FILE)
    return state


# ---- what a resume reads from a checkpoint: every field checked before the run uses it ----


def check_loop_state(state: dict, path: Path) -> None:
    """CheckpointError naming `path` and the first field that a run could not have written (RunRecord's
    state_dict: scaling/record.py)."""
    problem = loop_state_problem(state)
    if problem is not None:
        raise CheckpointError(f"checkpoint file {path} is not a usable trainer state: {problem}")


def loop_state_problem(state: dict) -> str | None:
    """What is wrong with a loop state, or None. Bounds and types, and the invariants every save keeps: one
    training loss and one LR per step, evaluations at steps already trained, one duration per window rate."""
    for key in ("step", "elapsed_s", "eval_s", "first_loss", "history", "train_loss", "lr", "window_rates",
                "window_durations", "phase_windows", "config"):
        if key not in state:
            return f"it has no {key!r}"
    step = state["step"]
    if not _is_count(step, MAX_STEPS):
        return f"step is {shown(step)}, not a whole number from 0 to {MAX_STEPS:,}"
    for key in ("elapsed_s", "eval_s"):
        if not _is_number(state[key], 0.0, MAX_SECONDS):
            return f"{key} is {shown(state[key])}, not a number of seconds from 0 to {MAX_SECONDS:g}"
    if state["eval_s"] > state["elapsed_s"] * (1 + 1e-9) + 1e-6:
        return f"eval_s ({state['eval_s']:g}) is more than elapsed_s ({state['elapsed_s']:g}), which includes it"
    if state["first_loss"] is not None and not _is_number(state["first_loss"]):
        return f"first_loss is {shown(state['first_loss'])}, not a finite number or null"
    if not isinstance(state["config"], dict):
        return f"config is {shown(state['config'])}, not a run config"
    for key, allow_none in (("train_loss", True), ("lr", False)):
        problem = _numbers_problem(key, state[key], allow_none, length=step)
        if problem is not None:
            return problem
    return (_history_problem(state["history"], step) or _windows_problem(state)
            or _noise_problem(state.get("noise"), step))


def _history_problem(history: Any, step: int) -> str | None:
    if not isinstance(history, list):
        return f"history is {shown(history)}, not a list of evaluations"
    previous = 0
    for index, entry in enumerate(history):
        at = entry.get("step") if isinstance(entry, dict) else None
        if not _is_count(at, step) or at < previous:
            return (f"history[{index}] is not an evaluation at a step from {previous:,} to {step:,} "
                    f"({shown(entry)})")
        previous = at
        if set(entry) != EVALUATION_KEYS:
            return f"history[{index}] has the keys {shown(sorted(map(str, entry)))}, not an evaluation's"
        for key, value in entry.items():
            if (value is not None or key != "loss") and not _is_number(value, 0.0):
                return f"history[{index}][{key!r}] is {shown(value)}, not a finite number" + (
                    " or null" if key == "loss" else " >= 0")
        if entry["accuracy"] > 1:
            return f"history[{index}]['accuracy'] is {shown(entry['accuracy'])}, not a fraction from 0 to 1"
    return None


def _windows_problem(state: dict) -> str | None:
    rates, durations, phases = state["window_rates"], state["window_durations"], state["phase_windows"]
    for key, values in (("window_rates", rates), ("window_durations", durations)):
        problem = _numbers_problem(key, values, allow_none=False, low=0.0)
        if problem is not None:
            return problem
    if len(rates) != len(durations):
        return f"{len(rates):,} window_rates but {len(durations):,} window_durations (one each per window)"
    if not isinstance(phases, list):
        return f"phase_windows is {shown(phases)}, not a list"
    for index, window in enumerate(phases):
        if window is None:
            continue
        if not isinstance(window, dict) or set(window) != PHASE_KEYS or not all(_is_number(v, 0.0)
                                                                               for v in window.values()):
            return f"phase_windows[{index}] is {shown(window)}, not a window's phase seconds and counts"
    return None


def _noise_problem(noise: Any, step: int) -> str | None:
    """The noise monitor's state (scaling/noise/monitor.py), or None for a run without one."""
    if noise is None:
        return None
    estimator = noise.get("estimator") if isinstance(noise, dict) else None
    if not isinstance(estimator, dict) or not isinstance(noise.get("series"), list):
        return f"noise is {shown(noise)}, not a noise-scale monitor's state"
    window = estimator.get("window")
    if window is not None and (not _is_count(window, MAX_NOISE_WINDOW) or window < 1):
        return f"noise.estimator.window is {shown(window)}, not a whole number from 1 to {MAX_NOISE_WINDOW:,}"
    for key in ("count", "skipped"):
        if not _is_count(estimator.get(key, 0), step):
            return f"noise.estimator.{key} is {shown(estimator.get(key))}, not a whole number from 0 to {step:,}"
    values = estimator.get("values")
    if not isinstance(values, list) or (window is not None and len(values) > window) or any(
            not isinstance(pair, list) or len(pair) != 2 or not all(_is_number(v) for v in pair) for pair in values):
        return f"noise.estimator.values is {shown(values)}, not at most {shown(window)} pairs of finite numbers"
    for index, point in enumerate(noise["series"]):
        if not isinstance(point, dict) or set(point) != NOISE_POINT_KEYS or not _is_count(point["step"], step) or any(
                value is not None and not _is_number(value) for key, value in point.items() if key != "step"):
            return f"noise.series[{index}] is {shown(point)}, not a measurement at a step from 0 to {step:,}"
    points = noise.get("points", [])
    if not isinstance(points, list) or any(not isinstance(p, dict) or not _is_count(p.get("step"), step) or not (
            p.get("b_simple") is None or _is_number(p["b_simple"])) for p in points):
        return f"noise.points is {shown(points)}, not probes at steps from 0 to {step:,}"
    if not _is_number(noise.get("measure_s", 0.0), 0.0, MAX_SECONDS):
        return f"noise.measure_s is {shown(noise.get('measure_s'))}, not a number of seconds"
    return None


def start_problem(start: Any, loaded_step: int) -> str | None:
    """What is wrong with a saved start state (scaling/train/state.py's Snapshot.to_dict), or None."""
    import torch

    if not isinstance(start, dict):
        return f"it holds {type(start).__name__}, not a training state"
    missing = [key for key in ("step", "model", "optimizer", "scaler", "rng_cpu", "rng_cuda") if key not in start]
    if missing:
        return f"it has no {missing[0]!r}"
    if not _is_count(start["step"], loaded_step):
        return f"step is {shown(start['step'])}, not a whole number from 0 to the checkpoint's step {loaded_step:,}"
    model, optimizer = start["model"], start["optimizer"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in model.items()):
        return "model is not a dict of named tensors"
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        return "optimizer is not an optimizer state (state and param_groups)"
    if start["scaler"] is not None and not isinstance(start["scaler"], dict):
        return "scaler is neither null nor a loss-scaler state"
    if not (torch.is_tensor(start["rng_cpu"]) and start["rng_cpu"].dtype == torch.uint8):
        return "rng_cpu is not a CPU random-number state (a uint8 tensor)"
    cuda = start["rng_cuda"]
    if cuda is not None and not (isinstance(cuda, list) and all(torch.is_tensor(t) and t.dtype == torch.uint8
                                                                  for t in cuda)):
        return "rng_cuda is neither null nor a list of CUDA random-number states"
    return None


def _is_count(value: Any, high: int) -> bool:
    """A whole number from 0 to `high` (a JSON true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def _is_number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite int or float from `low` to `high` (no bool; JSON's 1e999 reads as inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an int too large for a float
        return False


def _numbers_problem(key: str, values: Any, allow_none: bool, length: int | None = None,
                     low: float = -math.inf) -> str | None:
    if not isinstance(values, list):
        return f"{key} is {shown(values)}, not a list of numbers"
    if length is not None and len(values) != length:
        return f"{key} holds {len(values):,} values for {length:,} steps (one per step)"
    for index, value in enumerate(values):
        if not ((allow_none and value is None) or _is_number(value, low)):
            return f"{key}[{index}] is {shown(value)}, not a finite number" + (" or null" if allow_none else "")
    return None


def _check_manifest_entry(manifest_path: Path, name: Any, expected: Any) -> None:
    """A manifest entry names a file of its own folder, with a byte count and a SHA-256 in hex."""
    fine = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and isinstance(expected, dict) and _is_count(expected.get("size"), 1 << 62)
            and isinstance(expected.get("sha256"), str) and len(expected["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in expected["sha256"]))
    if not fine:
        raise CheckpointError(f"checkpoint file {manifest_path} is not a checkpoint manifest (its entry "
                              f"{shown(name)}: {shown(expected)})")


def _verify_file(path: Path, expected: dict) -> None:
    try:
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise CheckpointError(f"checkpoint file {path} is {size:,} bytes, {expected.get('size'):,} were "
                                  f"written (truncated or replaced)")
        if _sha256(path) != expected.get("sha256"):
            raise CheckpointError(f"checkpoint file {path} is corrupt (its SHA-256 differs from the one written)")
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {err.strerror or err}") from None


def _verify_loadable(folder: Path) -> None:
    """A checkpoint without a manifest: open the model and optimizer files as accelerate will, each on its
    own, so that the message names the file that failed (an error's text need not name its file)."""
    from accelerate.utils import load

    model = folder / "model.safetensors"
    if model.is_file():
        _refused_unless_loads(model, lambda: _read_safetensors(model))
    else:
        model = folder / "pytorch_model.bin"
        _refused_unless_loads(model, lambda: load(model, map_location="cpu"))
    optimizer = folder / "optimizer.bin"
    _refused_unless_loads(optimizer, lambda: load(optimizer, map_location="cpu"))


def _read_safetensors(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            handle.get_tensor(key)


def _refused_unless_loads(path: Path, read: Callable[[], Any]) -> None:
    """CheckpointError naming `path` when `read` fails (torn, not a checkpoint file, or a pickle that
    torch's weights_only loader refuses)."""
    try:
        with _quiet_unpickler():
            read()
    except Exception as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({type(err).__name__}: "
                              f"{_first_line(err)})") from None


@contextlib.contextmanager
def _quiet_unpickler() -> Iterator[None]:
    """torch's weights_only loader warns of a pickle protocol it was not written with (a file pickled by
    hand, a planted one) before it refuses or reads it: the refusal is the one line a user gets."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def _verify_rng(path: Path) -> None:
    """Accelerate ignores an RNG-state file it cannot read; a resume must not."""
    from accelerate.utils import load

    try:
        with _quiet_unpickler():
            states = load(path)
    except Exception as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    if not isinstance(states, dict) or any(key not in states for key in RNG_KEYS):
        raise CheckpointError(f"checkpoint file {path} is not an RNG state")


def _save_tensors(value: dict, path: Path) -> None:
    import torch

    with atomic_file(path) as handle:  # a link at `path` is refused, never written through
        torch.save(value, handle)


def _fresh_folder(path: Path) -> int:
    """An empty folder at `path` made by this process, and its descriptor: whatever was there before (a
    leftover of an interrupted save, or a link) is removed first, a link as a link, never followed. Anything
    put there again in between makes mkdir fail: the save fails, the previous checkpoint is kept."""
    _remove(path)
    os.mkdir(path)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _still_made(path: Path, folder_fd: int) -> None:
    """OutputError unless `path` is still the folder `_fresh_folder` made (not moved away, not a link)."""
    try:
        now, made = os.lstat(path), os.fstat(folder_fd)
        same = (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino)
    except OSError:
        same = False
    if not same:
        raise OutputError(f"{path} was replaced during the save (moved away, or swapped for a link or another "
                          f"folder); nothing is written through it")


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise CheckpointError(f"checkpoint file {path} is over {MAX_STATE_BYTES:,} bytes")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({_first_line(err)[:120]})") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {err.strerror or err}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to the disk (a power cut after the renames keeps them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot: the renames still order the copies
        pass


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _attempt(action: Callable[[], Any], any_error: bool = False) -> str | None:
    """None if `action` succeeds, else the reason it could not write."""
    try:
        action()
    except OSError as err:
        return f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    except OutputError as err:
        return str(err)
    except Exception as err:
        if not any_error:
            raise
        return f"{type(err).__name__}: {_first_line(err)}"
    return None


def _attempt_or_raise(action: Callable[[], Any], what: str) -> None:
    error = _attempt(action)
    if error is not None:
        raise OutputError(f"{what}: {error}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
