"""Study specs: a YAML spec expands to configurations, each validated before anything runs.

Spec (docs/studies.md):

    name: batch_size_scaling
    base: {target_accuracy: 0.9, max_epochs: 30}     # any run-config keys
    grid: {global_bs: [32, 64, 128], lr_scaling: [linear, sqrt]}   # cartesian product
    zip:  {per_device_bs: [32, 64], accumulation_steps: [4, 2]}    # varied together (or a list of such groups)
    seeds: [0, 1, 2]                                  # shorthand for a grid axis over `seed`
    branch: {reference: {global_bs: 16, max_steps: 2000}, at: "5%,25%,50%", batches: "2x,4x,8x",
             window: "10%", controls: 3, derived: {per_device_bs: 16}}
            # a reference run kept at --branch-points `at`, `scaling branch` on it, then one configuration per
            # seed under the warmup it suggests (--batch-schedule from:.../branches.json; docs/branching.md)
    launcher: {type: python | torchrun | accelerate, nproc: 1, config_file: launch/multi_gpu.yaml,
               nnodes: 1, master_addr: 127.0.0.1, local_nodes: false, timeout_s: null}

`nproc` may also be an axis (in grid or zip). Every configuration is validated (keys, types, batch
arithmetic for its process count) before anything runs. A configuration's id is a hash of its resolved
config and process count, so rerunning a spec finds the finished ones and skips them. scaling/study/sweep.py
runs the configurations here; scaling/study/slurm.py writes them as sbatch jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.batching import plan_batch, plan_unit
from scaling.config import FIELDS, ConfigError, RunConfig, load_yaml, make_config, shown
from scaling.lr import scaled_hyperparameters, scaled_lr
from scaling.study.tune import TuneSpec, groups_without_seed, parse_tune

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"
LAUNCHER_TYPES = ("python", "torchrun", "accelerate")
SPEC_KEYS = {"name", "description", "base", "grid", "zip", "seeds", "launcher", "slurm", "tune", "branch"}
BRANCH_KEYS = {"reference", "at", "batches", "window", "controls", "derived"}
LAUNCHER_KEYS = {"type", "nproc", "config_file", "nnodes", "master_addr", "master_port", "local_nodes", "timeout_s",
                 "grace_s"}
LAUNCH_AXES = {"nproc"}  # axis keys that belong to the launcher, not the run config
# Run-config keys the sweep sets itself for every configuration (scaling/study/sweep.py, _make_config): its own
# folder runs/<id>, no progress bar. Neither is part of a configuration's id, so an axis over one would collapse
# into a single configuration without a word; `overwrite` is decided per configuration (resume or restart).
SWEEP_OWNED = {"output_dir": "each configuration gets its own folder, STUDY_DIR/runs/<id> (choose the study folder "
                             "with --dir)",
               "progress": "a sweep's runs print no progress bar (the sweep shows one per configuration)"}
# A whole-number setting past this is a typo, not a plan (2**53: the largest integer a float holds exactly, and
# the LR rules and schedules compute in floats); a run would only fail with it on the cluster, or never end.
MAX_SETTING = 2**53
MAX_NPROC = 1024  # processes per node
MAX_NNODES = 4096
MAX_CONFIGS = 10_000  # configurations one spec may expand to (counted before expanding)
# A study name becomes a folder name (runs/study-NAME) and a SLURM job name: a plain file name only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
    tuning: Tuning | None = None  # a tuned study's searches (scaling/study/tune.py); configs holds its fixed rules
    branching: Branching | None = None  # a reference run, its branching, the derived schedules (`branch:`)


@dataclass
class Branching:
    """A study's `branch:` section: the reference configuration (kept at its branch points), what `scaling branch`
    is asked, and `derive(seed, record)`, the configuration of one seed under the schedule the record suggests
    (built once the record exists: the schedule is read from it)."""

    reference: StudyConfig
    at: str
    batches: str
    window: str
    controls: int
    seeds: list[int]
    derive: Callable[[Any, Path], StudyConfig]

    @property
    def record(self) -> Path:
        return Path(self.reference.config.output_dir) / "branches.json"

    def command(self) -> list[str]:
        return ["branch", self.reference.config.output_dir, "--at", self.at, "--batches", self.batches, "--window",
                self.window, "--controls", str(self.controls)]

    def describe(self) -> str:
        return (f"a reference run kept at {self.at}, branched at {self.batches} (window {self.window}, "
                f"{self.controls} controls), then seeds {', '.join(map(str, self.seeds))} under the warmup it suggests")


@dataclass
class Tuning:
    """What a tuned study searches: one search per group (a grid point without the seed) and tuned setting;
    `make(overrides)` builds a trial's configuration (validated like every other)."""

    spec: TuneSpec
    groups: list[dict[str, Any]]
    seeds: list[int]
    make: Callable[[dict[str, Any]], StudyConfig]

    def describe(self) -> str:
        grids = "; ".join(d.describe() for d in self.spec.dimensions)
        seeds = ", ".join(map(str, self.seeds))
        return (f"tuned at each of {len(self.groups)} grid points: {grids}; at most {self.spec.trials} trials per "
                f"setting, capped at {self.spec.stop_factor:g}x the best steps so far; the 2 best re-run with seeds "
                f"{seeds}")


@dataclass
class SlurmSettings:
    """The allocation each generated sbatch job asks for: the spec's `slurm:` section, then the flags of
    `scaling sweep --slurm`. `gpus_per_node` defaults to the largest process count of the study's GPU
    configurations (none for a study whose every configuration has `cpu: true`). `setup` holds the shell lines
    that set up the job's environment (`module load ...`, `source VENV/bin/activate`), written into the script
    as they are, before anything runs."""

    gpus_per_node: int | None = None
    cpus_per_task: int = 8
    time: str = "02:00:00"
    partition: str | None = None
    account: str | None = None
    setup: list[str] = field(default_factory=list)


# Values that go into #SBATCH lines unquoted: SLURM's own time formats, and names of letters, digits, . _ -. ASCII
# digits only ([0-9], never \d, which also matches Arabic-Indic and other digits SLURM does not read).
_SLURM_TIME = re.compile(r"(?:(?P<days>[0-9]{1,3})-(?P<dh>[0-9]{1,2})(?::(?P<dm>[0-9]{2})(?::(?P<ds>[0-9]{2}))?)?"
                         r"|(?P<h>[0-9]{1,4}):(?P<hm>[0-9]{2}):(?P<hs>[0-9]{2})"
                         r"|(?P<m>[0-9]{1,6})(?::(?P<ms>[0-9]{2}))?)")
_SLURM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_SLURM_DAYS = 365  # a job time limit past a year is a typo, not a plan
# Bounds of the allocation's numbers: larger is a typo (and SLURM would refuse the job only once queued).
SLURM_BOUNDS = {"gpus_per_node": (1, 64), "cpus_per_task": (1, 4096)}
MAX_SETUP_LINES, MAX_SETUP_CHARS = 100, 4096  # more is a pasted file, not set-up lines


def slurm_time_seconds(text: str) -> int | None:
    """Seconds of a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS), or None when it is
    not one, has a field out of range (minutes or seconds past 59, hours past 23 after days) or is 0 or over
    MAX_SLURM_DAYS."""
    match = _SLURM_TIME.fullmatch(text)
    if match is None:
        return None
    field = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "days" in field:
        parts, limits = [field["days"], field["dh"], field.get("dm", 0), field.get("ds", 0)], [None, 23, 59, 59]
        seconds = ((parts[0] * 24 + parts[1]) * 60 + parts[2]) * 60 + parts[3]
    elif "h" in field:
        parts, limits = [field["h"], field["hm"], field["hs"]], [None, 59, 59]
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    else:
        parts, limits = [field["m"], field.get("ms", 0)], [None, 59]
        seconds = parts[0] * 60 + parts[1]
    if any(limit is not None and part > limit for part, limit in zip(parts, limits, strict=True)):
        return None
    return seconds if 0 < seconds <= MAX_SLURM_DAYS * 86400 else None


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
    for key, (low, high) in SLURM_BOUNDS.items():
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
            raise ConfigError(f"slurm {key} must be a whole number from {low} to {high}, got {shown(value)}")
    if not isinstance(settings.time, str) or slurm_time_seconds(settings.time) is None:
        raise ConfigError(f"slurm time must be a SLURM time such as 02:00:00 or 1-12:00:00 (ASCII digits, minutes "
                          f"and seconds 0-59, at most {MAX_SLURM_DAYS} days), got {shown(settings.time)}")
    for key in ("partition", "account"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, str) or not _SLURM_NAME.fullmatch(value)):
            raise ConfigError(f"slurm {key} must be a name of letters, digits, '.', '_' or '-', got {shown(value)}")
    settings.setup = _setup_lines(settings.setup)
    return settings


def _setup_lines(lines: Any) -> list[str]:
    """The `slurm: setup:` lines: a list of at most MAX_SETUP_LINES strings, each one shell line (no newline,
    carriage return or NUL, which would split it or cut the script), written into the script verbatim."""
    if lines is None:
        return []
    if not isinstance(lines, list):
        raise ConfigError(f"slurm setup must be a list of shell lines (e.g. [\"module load cuda\", \"source "
                          f"~/venv/bin/activate\"]), got {shown(lines)}")
    if len(lines) > MAX_SETUP_LINES:
        raise ConfigError(f"slurm setup has {len(lines)} lines, over the limit of {MAX_SETUP_LINES}: source a file "
                          f"of your own instead")
    for number, line in enumerate(lines, 1):
        if not isinstance(line, str) or not line.strip():
            raise ConfigError(f"slurm setup line {number} must be a non-empty string (one shell line), got "
                              f"{shown(line)}")
        if any(char in line for char in "\n\r\0"):
            raise ConfigError(f"slurm setup line {number} must be one line (no newline, carriage return or NUL), "
                              f"got {shown(line)}")
        if len(line) > MAX_SETUP_CHARS:
            raise ConfigError(f"slurm setup line {number} is {len(line):,} characters, over the limit of "
                              f"{MAX_SETUP_CHARS:,}")
    return list(lines)


def _axes(section: Any, where: str) -> dict[str, list]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"study spec: '{where}' must map config keys to lists of values")
    for key, values in section.items():
        if not isinstance(key, str) or (key not in FIELDS and key not in LAUNCH_AXES):
            raise ConfigError(f"study spec: unknown key {shown(key, 40)} in '{where}' (not a run-config key)")
        if key in SWEEP_OWNED:
            raise ConfigError(f"study spec: '{key}' is set by the sweep, not an axis of '{where}': {SWEEP_OWNED[key]}")
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
        high = MAX_NPROC if key == "nproc" else MAX_NNODES
        if value > high:
            raise ConfigError(f"study spec: launcher '{key}' {shown(value, 30)} is over the limit of {high} "
                              f"({'processes per node' if key == 'nproc' else 'nodes'}): a typo?")
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
    if "output_dir" in base:
        raise ConfigError(f"study spec {path}: 'output_dir' is set by the sweep, not in 'base': "
                          f"{SWEEP_OWNED['output_dir']}")
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
    tune = parse_tune(spec.get("tune"))
    if tune is not None:
        grid_points = _tuned_points(study, tune, grid_points, zip_points, base, launcher, Path(study_dir), path)
    if spec.get("branch") is not None:
        study.branching = _branching(spec["branch"], base, launcher, Path(study_dir), path,
                                     list(dict.fromkeys(point.get("seed", base.get("seed", 0)) for point in grid_points)))
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


def _branching(section: Any, base: dict, launcher: Launcher, study_dir: Path, path: Any, seeds: list) -> Branching:
    """The `branch:` section, every part checked before anything runs (the derived schedule itself is read from
    the branching record once it exists)."""
    from scaling.branching import DEFAULT_CONTROLS, DEFAULT_WINDOW, parse_multiples, parse_points

    if not isinstance(section, dict) or set(section) - BRANCH_KEYS or "at" not in section:
        raise ConfigError(f"study spec {path}: 'branch' is a mapping of {', '.join(sorted(BRANCH_KEYS))} ('at' "
                          f"required); got {shown(section, 60)}")
    if launcher.type != "python":
        raise ConfigError(f"study spec {path}: 'branch' runs its reference and branches in one process: use the "
                          f"python launcher (emulate processes with emulate_processes)")
    reference, derived = section.get("reference") or {}, section.get("derived") or {}
    if not isinstance(reference, dict) or not isinstance(derived, dict):
        raise ConfigError(f"study spec {path}: 'branch: reference' and 'derived' are mappings of run-config keys")
    at, batches = str(section["at"]), str(section.get("batches", "2x,4x,8x"))
    parse_points(at, "study spec branch: at")
    parse_multiples(batches)
    controls = section.get("controls", DEFAULT_CONTROLS)
    if not isinstance(controls, int) or isinstance(controls, bool) or controls < 1:
        raise ConfigError(f"study spec {path}: 'branch: controls' is a whole number of runs >= 1; got {shown(controls)}")
    ref = _make_config(base, {**reference, "branch_points": at, "target_accuracy": None, "target_loss": None,
                              "target_levels": [], "pace": [],
                              "lr_decay": "constant"}, launcher, study_dir, path)
    if ref.config.max_steps is None and ref.config.max_epochs is None:
        raise ConfigError(f"study spec {path}: the branching reference needs a step budget (max_steps or max_epochs)")

    def derive(seed: Any, record: Path) -> StudyConfig:
        return _make_config(base, {**derived, "batch_schedule": f"from:{record}", "seed": seed}, launcher,
                            study_dir, path)

    return Branching(ref, at, batches, str(section.get("window", DEFAULT_WINDOW)), controls, seeds, derive)


def _tuned_points(study: StudyPlan, tune: TuneSpec, grid_points: list[dict], zip_points: list[list[dict]],
                  base: dict, launcher: Launcher, study_dir: Path, path: Any) -> list[dict]:
    """Set up a tuned study's searches (study.tuning) and return the grid points of its fixed-rule configurations
    (`tune: compare:`, each rule at every point; none without it)."""
    for key in ("lr_scaling", *tune.names):
        if any(key in point for point in grid_points) or any(key in part for group in zip_points for part in group):
            raise ConfigError(f"study spec {path}: '{key}' is tuned or set by the search at every batch, not an axis "
                              f"(name the LR rules to compare in tune: compare: [linear, sqrt])")
    points = []
    for point in grid_points:
        for combo in itertools.product(*zip_points) if zip_points else [()]:
            merged = dict(point)
            for part in combo:
                merged.update(part)
            points.append(merged)
    seeds = list(dict.fromkeys(point["seed"] for point in points if "seed" in point)) or [base.get("seed", 0)]
    groups = groups_without_seed(points)
    if not any("global_bs" in group for group in groups):
        raise ConfigError(f"study spec {path}: a tuned study compares batch sizes: give 'global_bs' as a grid axis")

    def make(overrides: dict[str, Any]) -> StudyConfig:
        return _make_config(base, overrides, launcher, study_dir, path)

    for group in groups:  # every search's ends validated now, before anything runs
        for dimension in tune.dimensions:
            for value in (dimension.values[0], dimension.values[-1]):
                make({**group, dimension.name: value, "lr_scaling": "none", "seed": seeds[0]})
    study.tuning = Tuning(tune, groups, seeds, make)
    return [{**point, "lr_scaling": rule} for point in grid_points for rule in tune.compare]


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
        check_settings(config)
        plan = plan_batch(config, this_launcher.nproc * this_launcher.nnodes)
        plan_unit(config, this_launcher.nproc * this_launcher.nnodes)  # every batch of a --batch-schedule
        check_dataset_size(config, plan.global_bs)
        scaled_hyperparameters(config, plan.global_bs)  # the LR, beta and eps rules' refusals (scaling/lr.py)
    except ConfigError as err:
        axes = ", ".join(f"{k}={shown(v, 30)}" for k, v in overrides.items())
        raise ConfigError(f"{err} (configuration {axes})") from None
    return StudyConfig(config_key, overrides, config, this_launcher)


def check_settings(config: RunConfig) -> None:
    """Every whole-number setting within MAX_SETTING (the seed aside: any 64-bit seed is one)."""
    for name, value in config.to_dict().items():
        if name != "seed" and isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SETTING:
            raise ConfigError(f"'{name}' {shown(value, 30)} is over the limit of {MAX_SETTING:,} (2**53): a typo?")


def check_dataset_size(config: RunConfig, global_bs: int) -> None:
    """The check a run makes on a built-in dataset before generating it, made here for each configuration:
    one global batch of training samples and a test split. Other datasets are measured only when the run
    loads them."""
    from scaling.data import check_builtin_size

    check_builtin_size(config.dataset, config.num_samples, global_bs)
