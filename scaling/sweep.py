"""Studies: a YAML spec expands to configurations; each runs as its own launched process.

Spec (docs/studies.md):

    name: batch_size_scaling
    base: {target_accuracy: 0.9, max_epochs: 30}     # any run-config keys
    grid: {global_bs: [32, 64, 128], lr_scaling: [linear, sqrt]}   # cartesian product
    zip:  {per_device_bs: [32, 64], accumulation_steps: [4, 2]}    # varied together (or a list of such groups)
    seeds: [0, 1, 2]                                  # shorthand for a grid axis over `seed`
    launcher: {type: python | torchrun | accelerate, nproc: 1, config_file: launch/multi_gpu.yaml,
               nnodes: 1, master_addr: 127.0.0.1, local_nodes: false, timeout_s: null}

`nproc` may also be an axis (in grid or zip). Every configuration is validated (keys, types, batch
arithmetic for its process count) before anything runs. A configuration's id is a hash of its resolved
config and process count, so rerunning a spec finds the finished ones and skips them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling.batching import plan_batch
from scaling.config import FIELDS, ConfigError, RunConfig, load_yaml, make_config, read_text_file, shown
from scaling.lock import (
    DIE_WITH_PARENT_ENV,
    die_with_parent,
    die_with_parent_available,
    inspect_run_folder,
    read_result_checked,
    wait_for_run_lock,
)
from scaling.lr import scaled_lr
from scaling.resources import resource
from scaling.results import read_result, write_json_atomic

RUN_PY = Path(__file__).resolve().parent / "run.py"
LAUNCHER_TYPES = ("python", "torchrun", "accelerate")
SPEC_KEYS = {"name", "description", "base", "grid", "zip", "seeds", "launcher", "slurm"}
LAUNCHER_KEYS = {"type", "nproc", "config_file", "nnodes", "master_addr", "master_port", "local_nodes", "timeout_s",
                 "grace_s"}
LAUNCH_AXES = {"nproc"}  # axis keys that belong to the launcher, not the run config
STDERR_TAIL_LINES = 30
MAX_CONFIGS = 10_000  # configurations one spec may expand to (counted before expanding)
# A study name becomes a folder name (runs/study-NAME) and a SLURM job name: a plain file name only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_STUDY_FILE_BYTES = 256 << 20


@dataclass
class Launcher:
    type: str = "python"
    nproc: int = 1
    config_file: str | None = None
    nnodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    local_nodes: bool = False  # start every node's torchrun here (tests; one-machine rehearsal)
    timeout_s: float | None = None
    grace_s: float = 120.0  # on SIGINT/SIGTERM, how long a run gets to checkpoint and stop before it is killed


@dataclass
class StudyConfig:
    id: str
    overrides: dict[str, Any]
    config: RunConfig
    launcher: Launcher

    def label(self) -> str:
        """`global_bs=256 lr_scaling=sqrt seed=0`: what varies, for progress bars (the id when nothing does)."""
        return " ".join(f"{k}={v}" for k, v in self.overrides.items()) or self.id

    def describe(self) -> str:
        plan = plan_batch(self.config, self.launcher.nproc * self.launcher.nnodes)
        lr = scaled_lr(self.config.base_lr, self.config.base_bs, plan.global_bs, self.config.lr_scaling)
        axes = " ".join(f"{k}={v}" for k, v in self.overrides.items())
        return (f"{self.id}  {axes}\n    {plan.describe()}; lr {self.config.lr_scaling} "
                f"{self.config.base_lr:g}@{self.config.base_bs} -> {lr:g}; {self.launcher.type}")


@dataclass
class StudyPlan:
    """A study spec expanded into its configurations."""

    name: str
    spec: dict[str, Any]
    configs: list[StudyConfig] = field(default_factory=list)


@dataclass
class SlurmSettings:
    """The allocation each generated sbatch job asks for: the spec's `slurm:` section, then the flags of
    `scaling sweep --slurm`. `gpus_per_node` defaults to the largest process count of the study."""

    gpus_per_node: int | None = None
    cpus_per_task: int = 8
    time: str = "02:00:00"
    partition: str | None = None
    account: str | None = None


# Values that go into #SBATCH lines unquoted: SLURM's own time formats, and names of letters, digits, . _ -
_SLURM_TIME = re.compile(r"(\d+-)?\d{1,3}(:\d{2}){0,2}")
_SLURM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def slurm_settings(section: Any, overrides: dict[str, Any] | None = None) -> SlurmSettings:
    """Validate the spec's `slurm:` section (a mapping) and the command line's overrides, in one line each."""
    if section is not None and not isinstance(section, dict):
        raise ConfigError("study spec: 'slurm' must be a mapping")
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(SlurmSettings)}
    unknown = [k for k in section if k not in known]
    if unknown:
        raise ConfigError(f"study spec: unknown slurm key {shown(str(unknown[0]), 40)}; known: {', '.join(sorted(known))}")
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = SlurmSettings(**section)
    for key in ("gpus_per_node", "cpus_per_task"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (key != "gpus_per_node")):
            raise ConfigError(f"slurm {key} must be a whole number >= {int(key != 'gpus_per_node')}, got {shown(value)}")
    if not isinstance(settings.time, str) or not _SLURM_TIME.fullmatch(settings.time):
        raise ConfigError(f"slurm time must be a SLURM time such as 02:00:00 or 1-12:00:00, got {shown(settings.time)}")
    for key in ("partition", "account"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, str) or not _SLURM_NAME.fullmatch(value)):
            raise ConfigError(f"slurm {key} must be a name of letters, digits, '.', '_' or '-', got {shown(value)}")
    return settings


def _axes(section: Any, where: str) -> dict[str, list]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"study spec: '{where}' must map config keys to lists of values")
    for key, values in section.items():
        if not isinstance(key, str) or (key not in FIELDS and key not in LAUNCH_AXES):
            raise ConfigError(f"study spec: unknown key {shown(key, 40)} in '{where}' (not a run-config key)")
        if not isinstance(values, list):
            raise ConfigError(f"study spec: axis '{key}' in '{where}' must be a list, got {type(values).__name__}")
        if not values:
            raise ConfigError(f"study spec: axis '{key}' in '{where}' is empty")
    return section


def _zip_groups(section: Any) -> list[dict[str, list]]:
    groups = section if isinstance(section, list) else ([section] if section is not None else [])
    checked = []
    for index, group in enumerate(groups):
        group = _axes(group, "zip")
        lengths = {key: len(values) for key, values in group.items()}
        if len(set(lengths.values())) > 1:
            shown_lengths = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ConfigError(f"study spec: zipped axes must have equal lengths (group {index + 1}: {shown_lengths})")
        if group:
            checked.append(group)
    return checked


def _check_launcher_value(key: str, value: Any) -> Any:
    """One launcher field, typed and in range (a value goes into a command line: nothing is taken on trust)."""
    def whole(low: int, high: int | None = None) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low and (
            high is None or value <= high)

    if key == "type":
        if value not in LAUNCHER_TYPES:
            raise ConfigError(f"study spec: launcher type must be one of {', '.join(LAUNCHER_TYPES)}, got {shown(value)}")
    elif key in ("nproc", "nnodes"):
        if not whole(1):
            raise ConfigError(f"study spec: launcher '{key}' must be a whole number >= 1, got {shown(value)}")
    elif key == "master_port":
        if value is not None and not whole(1, 65535):
            raise ConfigError(f"study spec: launcher 'master_port' must be a port number (1-65535), got {shown(value)}")
    elif key == "master_addr":
        if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._:\[\]-]{1,255}", value)):
            raise ConfigError(f"study spec: launcher 'master_addr' must be a host name or address, got {shown(value)}")
    elif key == "config_file":
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"study spec: launcher 'config_file' must be a file path, got {shown(value)}")
    elif key == "local_nodes":
        if not isinstance(value, bool):
            raise ConfigError(f"study spec: launcher 'local_nodes' must be true or false, got {shown(value)}")
    elif key in ("timeout_s", "grace_s"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (value is None and key == "timeout_s") or (number and math.isfinite(value) and value > 0):
            return float(value) if value is not None else None
        raise ConfigError(f"study spec: launcher '{key}' must be a number of seconds > 0, got {shown(value)}")
    return value


def _launcher(section: Any) -> Launcher:
    section = section or {}
    if not isinstance(section, dict):
        raise ConfigError("study spec: 'launcher' must be a mapping")
    unknown = [k for k in section if k not in LAUNCHER_KEYS]
    if unknown:
        raise ConfigError(f"study spec: unknown launcher key {shown(sorted(map(str, unknown))[0], 40)}; known: "
                          f"{', '.join(sorted(LAUNCHER_KEYS))}")
    launcher = Launcher(**{key: _check_launcher_value(key, value) for key, value in section.items()})
    if launcher.type == "python" and (launcher.nproc != 1 or launcher.nnodes != 1):
        raise ConfigError("study spec: the python launcher runs one process; use torchrun or accelerate for more")
    if launcher.type == "accelerate" and launcher.config_file and not Path(launcher.config_file).is_file():
        raise ConfigError(f"study spec: accelerate config file {launcher.config_file} does not exist")
    return launcher


_DEFAULTS = dataclasses.asdict(RunConfig())


def config_id(config: RunConfig, launcher: Launcher) -> str:
    """Stable id: the settings that differ from the defaults (so a new field with a default does not
    change existing ids) and the process topology. The output folder and progress bar are not settings."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("output_dir", "progress") and v != _DEFAULTS[k]}
    settings["_processes"] = [launcher.type, launcher.nproc, launcher.nnodes]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def study_name(spec: dict, path: str | Path) -> str:
    """The spec's `name` (default: the file name), refused unless it is a plain file name: it becomes a
    folder (runs/study-NAME) and a SLURM job name."""
    name = spec.get("name")
    source = "'name'"
    if name is None or name == "":
        name, source = Path(path).stem, "the file name (set 'name' in the spec)"
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"study spec {path}: the study name {shown(name, 40)} from {source} must be a plain file "
                          f"name: letters, digits, '.', '_' and '-', at most 100 characters")
    return name


def default_study_dir(path: str | Path) -> Path:
    """runs/study-NAME for a spec (the spec is read with the same bounds as load_study)."""
    return Path(f"runs/study-{study_name(load_yaml(path, what='study spec'), path)}")


def load_study(path: str | Path, study_dir: str | Path) -> StudyPlan:
    """Parse, expand and validate a spec; every configuration is checked before anything runs."""
    spec = load_yaml(path, what="study spec")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"study spec {path}: unknown section {shown(str(unknown[0]), 40)}; sections: "
                          f"{', '.join(sorted(SPEC_KEYS))}")
    name = study_name(spec, path)
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"study spec {path}: 'base' must be a mapping of run-config keys")
    grid = dict(_axes(spec.get("grid"), "grid"))
    if spec.get("seeds") is not None:
        grid["seed"] = _axes({"seed": spec["seeds"]}, "seeds")["seed"]
    groups = _zip_groups(spec.get("zip"))
    launcher = _launcher(spec.get("launcher"))
    clash = set(grid) & {k for g in groups for k in g}
    if clash:
        raise ConfigError(f"study spec {path}: key '{sorted(clash)[0]}' is both a grid and a zip axis")
    sizes = [len(values) for values in grid.values()] + [len(next(iter(g.values()))) for g in groups]
    count = math.prod(sizes)
    if count > MAX_CONFIGS:
        raise ConfigError(f"study spec {path}: {count:,} configurations ({' x '.join(map(str, sizes))}) are over the "
                          f"limit of {MAX_CONFIGS:,}; split the study into several specs")

    grid_points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    zip_points = [[dict(zip(g, values, strict=True)) for values in zip(*g.values(), strict=True)] for g in groups]
    slurm_settings(spec.get("slurm"))  # checked with the rest of the spec, --dry-run included
    study = StudyPlan(name=name, spec=spec)
    seen: set[str] = set()
    for point in grid_points:
        for combo in itertools.product(*zip_points) if zip_points else [()]:
            overrides = dict(point)
            for part in combo:
                overrides.update(part)
            study_config = _make_config(base, overrides, launcher, Path(study_dir), path)
            if study_config.id not in seen:
                seen.add(study_config.id)
                study.configs.append(study_config)
    return study


def _make_config(base: dict, overrides: dict, launcher: Launcher, study_dir: Path, path: Any) -> StudyConfig:
    run_keys = {k: v for k, v in overrides.items() if k not in LAUNCH_AXES}
    launch_keys = {k: _check_launcher_value(k, v) for k, v in overrides.items() if k in LAUNCH_AXES}
    this_launcher = dataclasses.replace(launcher, **launch_keys)
    if this_launcher.type == "python" and this_launcher.nproc != 1:
        raise ConfigError("study spec: the python launcher runs one process; an 'nproc' axis needs torchrun "
                          "or accelerate")
    values = {**base, **run_keys, "progress": False}
    try:
        config = make_config(values, source=f"study spec {path}")
        if config.overwrite:
            raise ConfigError("'overwrite' is not a setting of a study: a sweep decides per configuration")
        config_key = config_id(config, this_launcher)
        config = dataclasses.replace(config, output_dir=str(study_dir / "runs" / config_key))
        plan_batch(config, this_launcher.nproc * this_launcher.nnodes)
    except ConfigError as err:
        axes = ", ".join(f"{k}={shown(v, 30)}" for k, v in overrides.items())
        raise ConfigError(f"{err} (configuration {axes})") from None
    return StudyConfig(config_key, overrides, config, this_launcher)


# ---------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_commands(study_config: StudyConfig, config_path: Path, mode: str | None = None) -> list[list[str]]:
    """The command line(s) that run one configuration: one per node when nodes are started here. `mode` is
    "resume" or "overwrite" (what to do with the configuration's folder), or None."""
    launcher = study_config.launcher
    run_args = [str(RUN_PY), "--config", str(config_path), *([f"--{mode}"] if mode else [])]
    if launcher.type == "python":
        return [[sys.executable, *run_args]]
    if launcher.type == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                   str(launcher.nproc * launcher.nnodes)]
        if launcher.config_file:
            command += ["--config_file", launcher.config_file]
        return [[*command, *run_args]]
    port = str(launcher.master_port or _free_port())
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launcher.nproc)]
    if launcher.nnodes == 1:
        return [[*base, "--master_port", port, *run_args]]
    nodes = range(launcher.nnodes) if launcher.local_nodes else [int(os.environ.get("NODE_RANK", "0"))]
    return [[*base, "--nnodes", str(launcher.nnodes), "--node_rank", str(rank), "--master_addr",
             launcher.master_addr, "--master_port", port, *run_args] for rank in nodes]


class SweepSignals:
    """While a sweep runs, SIGINT and SIGTERM do not kill it: the first is forwarded to the running
    configuration's processes (which checkpoint and stop at their next logging window), the sweep waits up
    to the launcher's `grace_s` for them, records the study and exits 128 + the signal number. A second
    signal kills the configuration's processes at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.force = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SweepSignals:
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.force = True

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class SweepInterrupted(SystemExit):
    """The sweep was stopped by a signal after recording the study: exit status 128 + signal number (as a
    shell reports a process stopped by that signal). A SystemExit, so the entry needs no handler for it."""


def run_config(study_config: StudyConfig, signals: SweepSignals | None = None, say=print) -> dict[str, Any]:
    """Launch one configuration, wait, and say how it ended (from its result.json, else from stderr).

    The folder decides the launch: a checkpoint of an unfinished run is resumed (`--resume`), anything else
    starts from scratch (`--overwrite`: the sweep owns the folder). A resume that fails before training (a
    corrupt checkpoint, say) starts the configuration again from scratch, once, and says so."""
    signals = signals or SweepSignals()  # not entered: no handlers, never set
    launcher = study_config.launcher
    out = Path(study_config.config.output_dir)
    config_path = out / "config.yaml"
    try:
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
    except OSError as err:
        raise ConfigError(f"cannot write {config_path}: {err.strerror or err}") from None
    holder = wait_for_run_lock(out, launcher.grace_s)  # a run of a killed sweep may still be checkpointing
    if holder is not None:
        return {"status": "failed", "returncode": None, "wall_s": 0.0, "resumed": False,
                "error_tail": f"output folder {out} is in use by another run ({holder}); not started"}
    folder = inspect_run_folder(out)
    if folder.result_problem:
        say(f"scaling: configuration {study_config.id}: its result.json {folder.result_problem}; starting it "
            f"again from scratch")
    resume = folder.resumable
    before = _snapshot(out / "result.json")
    entry = _launch(study_config, config_path, "resume" if resume else "overwrite", signals)
    entry["resumed"] = resume
    if resume and entry["returncode"] != 0 and not signals.signum and _snapshot(out / "result.json") == before:
        reason = _error_line(out / "stderr.log") or f"exit status {entry['returncode']}"
        say(f"scaling: configuration {study_config.id} could not resume ({reason}); starting it again from scratch")
        entry = _launch(study_config, config_path, "overwrite", signals)
        entry.update(resumed=False, restarted=reason)
    return entry


def _launch(study_config: StudyConfig, config_path: Path, mode: str, signals: SweepSignals) -> dict[str, Any]:
    launcher = study_config.launcher
    out = config_path.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(RUN_PY.parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env[DIE_WITH_PARENT_ENV] = "1"  # every process of the run, through any launcher, dies with its parent
    parent = os.getpid()
    die_with_parent_available()  # resolve prctl here, not in the forked child
    started = time.time()
    processes: list[subprocess.Popen] = []
    logs = []
    codes: list[int] = []
    timed_out = False
    try:
        for node, command in enumerate(launch_commands(study_config, config_path, mode)):
            suffix = f".node{node}" if node else ""
            stdout = open(out / f"stdout{suffix}.log", "w")  # closed below
            stderr = open(out / f"stderr{suffix}.log", "w")
            logs += [stdout, stderr]
            # Its own session: a terminal's Ctrl-C reaches the sweep alone, which forwards it (SweepSignals);
            # and the launcher dies with the sweep (SIGTERM, so the run checkpoints), even by SIGKILL.
            processes.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=os.getcwd(),
                                              start_new_session=True,
                                              preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent)))
        timed_out = _wait(processes, launcher, signals)
        codes = [process.returncode for process in processes]
    finally:
        for process in processes:  # never leave a node behind
            if process.poll() is None:
                _kill_tree(process)
                process.wait()
        for handle in logs:
            handle.close()
    # A run can outlive its launcher for a moment (accelerate's single-process launch exits on Ctrl-C at once):
    # its lock says when it is done writing.
    holder = wait_for_run_lock(out, launcher.grace_s)
    if holder is not None:
        _kill_holder(holder)
    result, _ = read_result_checked(out / "result.json") if (out / "result.json").is_file() else (None, None)
    entry: dict[str, Any] = {"returncode": max(codes, key=abs) if codes else None, "wall_s": time.time() - started}
    if timed_out:
        entry["timed_out"] = True
    if result is not None and result["status"] != "running":
        entry["status"] = result["status"]
    elif signals.signum:
        entry["status"] = "interrupted"  # stopped before it could write an outcome; rerun continues it
    else:
        entry["status"] = "failed"
        entry["error_tail"] = _tail(out / "stderr.log")
    return entry


def _wait(processes: list[subprocess.Popen], launcher: Launcher, signals: SweepSignals) -> bool:
    """Wait for every process; forward a stop request, kill after the grace period or the timeout.
    True if the timeout killed them."""
    start = time.monotonic()
    forwarded_at = None
    timed_out = False
    while any(process.poll() is None for process in processes):
        now = time.monotonic()
        if signals.signum and forwarded_at is None:
            forwarded_at = now
            for process in processes:
                _signal_group(process, signals.signum)
        late = forwarded_at is not None and now - forwarded_at >= launcher.grace_s
        timed_out = timed_out or (launcher.timeout_s is not None and now - start >= launcher.timeout_s)
        if signals.force or late or timed_out:
            for process in processes:
                _kill_tree(process)
        time.sleep(0.05)
    return timed_out


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # the launcher's session: torchrun and accelerate forward it on
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process below it (torchrun starts its workers in sessions of their own,
    so killing the launcher's group alone would orphan them)."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_group(process, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_holder(holder: str) -> None:
    """The process still holding a run's lock after the grace period (its launcher gone), if it is here."""
    match = re.fullmatch(r"pid (\d+) on (.+)", holder)
    if match and match.group(2) == socket.gethostname():
        try:
            os.kill(int(match.group(1)), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _snapshot(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.stat().st_size <= 64 << 20 else str(path.stat().st_mtime_ns).encode()
    except OSError:
        return None


def _error_line(path: Path) -> str | None:
    """The run's own one-line error (`scaling: error: ...`), if its stderr ends with one."""
    lines = [line for line in _tail(path, 5).splitlines() if line.startswith("scaling: error: ")]
    return lines[-1].removeprefix("scaling: error: ") if lines else None


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def study_record(study: StudyPlan, entries: dict[str, dict]) -> dict:
    return {
        "name": study.name,
        "spec": study.spec,
        "configs": [
            {"id": c.id, "overrides": c.overrides, "output_dir": f"runs/{c.id}",
             "launcher": dataclasses.asdict(c.launcher), **entries.get(c.id, {"status": "pending"})}
            for c in study.configs
        ],
    }


def check_runnable_here(study: StudyPlan) -> None:
    """Multi-node configurations started from this machine need one rendezvous address for all nodes."""
    for study_config in study.configs:
        launcher = study_config.launcher
        if launcher.nnodes > 1 and not launcher.local_nodes and launcher.master_port is None:
            raise ConfigError("study spec: running a multi-node launcher from here needs 'master_port' (and "
                              "'master_addr', the head node) so every node meets at the same address; or use "
                              "--slurm, whose scripts rendezvous on the allocation's first node")


def run_study(study: StudyPlan, study_dir: Path, progress: bool = True, say=print) -> dict:
    """Run every configuration not yet complete, one after another; failures are recorded, not fatal.

    SIGINT/SIGTERM (SweepSignals): the running configuration checkpoints and stops, study.json is written,
    one line goes to stderr and SweepInterrupted exits 128 + the signal number."""
    from tqdm.auto import tqdm

    check_runnable_here(study)
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create study folder {study_dir}: {err.strerror or err}") from None
    previous = _previous_entries(study_dir / "study.json")
    entries: dict[str, dict] = {}
    current = None
    with SweepSignals() as signals:
        bar = tqdm(study.configs, unit="config", disable=not progress, dynamic_ncols=True)
        for study_config in bar:
            if signals.signum:
                break
            bar.set_description(study_config.label())
            result = read_result(Path(study_config.config.output_dir) / "result.json")
            if result is not None:
                entries[study_config.id] = {**previous.get(study_config.id, {}), "status": result["status"],
                                            "skipped": True}
                continue
            current = study_config
            entries[study_config.id] = run_config(study_config, signals, say=bar.write)
            write_json_atomic(study_dir / "study.json", study_record(study, entries))
            if entries[study_config.id]["status"] == "failed" and not signals.signum:
                bar.write(f"scaling: configuration {study_config.id} failed; tail of its stderr:\n"
                          f"{entries[study_config.id].get('error_tail', '')[-1500:]}")
        bar.close()
        record = study_record(study, entries)
        write_json_atomic(study_dir / "study.json", record)
    counts: dict[str, int] = {}
    for entry in entries.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    skipped = sum(1 for e in entries.values() if e.get("skipped"))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if signals.signum:
        where = ""
        if current is not None and current.id in entries:
            where = f"; configuration {current.id} {entries[current.id]['status']}"
        print(f"scaling: study {study.name} stopped by {signals.name} after {len(entries)} of {len(study.configs)} "
              f"configurations ({summary or 'none run'}){where}; run the same command again to continue -> "
              f"{study_dir}", file=sys.stderr, flush=True)
        raise SweepInterrupted(128 + signals.signum)
    say(f"scaling: study {study.name}: {len(entries)} configurations ({summary}; {skipped} already complete) "
        f"-> {study_dir}")
    return record


def _previous_entries(path: Path) -> dict[str, dict]:
    """What the last sweep recorded (returncode, wall_s) for configurations it finished. A study.json that
    exists but cannot be read is refused, naming the file: it is rebuilt from the runs when deleted."""
    if not (path.exists() or path.is_symlink()):
        return {}
    text = read_text_file(path, "study file", MAX_STUDY_FILE_BYTES)
    try:
        data = json.loads(text)
        return {c["id"]: {k: v for k, v in c.items() if k in ("returncode", "wall_s")} for c in data["configs"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"study file {path} is not a study record of this tool (damaged?); delete it and run "
                          f"again: it is rebuilt from the configurations' result files") from None


# ---------------------------------------------------------------- clusters: SLURM

SLURM_TEMPLATE = resource("slurm.sbatch")  # package data; launch/slurm.sbatch is the repository's copy
# `#SBATCH --output=STUDY_DIR/...` cannot be quoted: the study folder must be a plain path.
SLURM_SAFE_PATH = re.compile(r"[A-Za-z0-9._/+,@=:-]+")


class _Shell(str):
    """A word the shell must expand (a variable), written as is; every other word is quoted."""


def _shell_join(words: list[str]) -> str:
    return " ".join(word if isinstance(word, _Shell) else shlex.quote(word) for word in words)


def slurm_words(study_config: StudyConfig, config_path: Path) -> list[str]:
    """The command one SLURM job runs: torchrun on every node (srun starts one task per node)."""
    launcher = study_config.launcher
    run = [str(RUN_PY), "--config", str(config_path)]
    if launcher.type == "python":
        return ["python", *run]
    return ["srun", "torchrun", "--nnodes", str(launcher.nnodes), "--nproc_per_node", str(launcher.nproc),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", _Shell('"$HEAD_NODE:29500"'), "--rdzv_id",
            _Shell('"$SLURM_JOB_ID"'), *run]


def slurm_command(study_config: StudyConfig, config_path: Path) -> str:
    return _shell_join(slurm_words(study_config, config_path))


def launch_mode(out: str | Path) -> str:
    """What a (re)submitted job does with a configuration's folder: "done" (a final result), "resume" (a
    checkpoint of an unfinished run) or "overwrite" (start from scratch)."""
    folder = inspect_run_folder(Path(out))
    return "done" if folder.finished else "resume" if folder.resumable else "overwrite"


def write_slurm(study: StudyPlan, study_dir: Path, array: bool = True,
                settings: SlurmSettings | None = None) -> list[Path]:
    """Write sbatch scripts: one array job over every configuration, or one script per configuration.

    Configurations that already have a complete result are left out, so resubmitting resumes the study; each
    job asks `launch_mode` whether to resume its configuration or start it from scratch. Every word taken from
    the spec or a path is shell-quoted, and nothing is `eval`ed.
    """
    root = study_dir.resolve()
    if not SLURM_SAFE_PATH.fullmatch(str(root)):
        raise ConfigError(f"--slurm: the study folder {shown(str(root), 80)} holds characters a SLURM script cannot "
                          f"carry safely (its #SBATCH lines are not quoted); use a path of letters, digits and "
                          f"'._-/' (--dir)")
    settings = settings or slurm_settings(study.spec.get("slurm"))
    template = SLURM_TEMPLATE.read_text()
    folder = study_dir / "slurm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pending = [c for c in study.configs if read_result(Path(c.config.output_dir) / "result.json") is None]
        jobs = []
        for study_config in pending:
            out = Path(study_config.config.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            config_path = out / "config.yaml"
            config_path.write_text(yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
            jobs.append((study_config, out.resolve(), slurm_words(study_config, config_path.resolve())))
        nodes = max((c.launcher.nnodes for c in study.configs), default=1)
        gpus = settings.gpus_per_node
        if gpus is None:
            gpus = max((c.launcher.nproc for c in study.configs), default=1)
        written = []
        if array:
            (folder / "commands.txt").write_text("".join(_shell_join(words) + "\n" for _, _, words in jobs))
            branches = "".join(f"  {index}) OUT={shlex.quote(str(out))}; CMD=({_shell_join(words)}) ;;\n"
                               for index, (_, out, words) in enumerate(jobs))
            body = (f'case "$SLURM_ARRAY_TASK_ID" in\n{branches}'
                    f'  *) echo "scaling: no configuration for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;\nesac\n'
                    + _RUN_BODY)
            script = _fill(template, study.name, nodes, gpus, f"#SBATCH --array=0-{max(0, len(jobs) - 1)}", root,
                           body, settings)
            written.append(folder / "array.sbatch")
            written[-1].write_text(script)
        else:
            for study_config, out, words in jobs:
                body = f"OUT={shlex.quote(str(out))}\nCMD=({_shell_join(words)})\n" + _RUN_BODY
                per_config = study_config.launcher.nproc if settings.gpus_per_node is None else settings.gpus_per_node
                script = _fill(template, f"{study.name}-{study_config.id}", study_config.launcher.nnodes, per_config,
                               "", root, body, settings)
                written.append(folder / f"{study_config.id}.sbatch")
                written[-1].write_text(script)
    except OSError as err:
        raise ConfigError(f"cannot write the SLURM scripts under {folder}: {err.strerror or err}") from None
    return written


# Resume an unfinished configuration, skip a finished one, start any other from scratch.
_RUN_BODY = (
    f"MODE=$(PYTHONPATH={shlex.quote(str(RUN_PY.parent.parent))} python -m scaling.sweep --launch-mode \"$OUT\")\n"
    'if [ "$MODE" = done ]; then echo "scaling: $OUT is complete"; exit 0; fi\n'
    '"${CMD[@]}" "--$MODE"\n'
)


def _fill(template: str, name: str, nodes: int, gpus: int, array_line: str, study_dir: Path, body: str,
          settings: SlurmSettings) -> str:
    extra = "".join(f"#SBATCH --{key}={value}\n" for key, value in (("partition", settings.partition),
                                                                   ("account", settings.account)) if value)
    return (template.replace("{{NAME}}", name).replace("{{NODES}}", str(nodes)).replace("{{GPUS}}", str(gpus))
            .replace("{{CPUS}}", str(settings.cpus_per_task)).replace("{{TIME}}", settings.time)
            .replace("{{ALLOCATION}}\n", extra)
            .replace("{{ARRAY}}", array_line).replace("{{STUDY_DIR_QUOTED}}", shlex.quote(str(study_dir)))
            .replace("{{STUDY_DIR}}", str(study_dir)).replace("{{COMMAND}}", body))


def _main(argv: list[str]) -> int:
    """`python -m scaling.sweep --launch-mode RUN_DIR` (used by the SLURM scripts)."""
    if len(argv) == 2 and argv[0] == "--launch-mode":
        print(launch_mode(argv[1]))
        return 0
    print("usage: python -m scaling.sweep --launch-mode RUN_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
