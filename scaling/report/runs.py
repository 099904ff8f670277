"""Find the runs of a study and group them into configurations.

A study folder holds an optional `study.json` (written by the sweep runner) and one `result.json` per run
(docs/results.md), at any depth. A *run* is one training process (one seed); a *configuration* is a run's
config without `seed` and `output_dir`, so the seeds of one configuration group together.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from scaling.config import ConfigError, shown
from scaling.results import FINAL_STATUSES, STATUSES, Result, config_problem, read_result_checked
from scaling.targets import Target
from scaling.userfiles import read_text_file

UNREADABLE = "unreadable"  # a result.json the loader refuses (scaling/results.py): named, not reported on
# Keys that differ between the seeds of one configuration and say nothing about the configuration itself.
RUN_ONLY_KEYS = ("seed", "output_dir")
# Keys that set the batch and its decomposition: the x axis of every plot rather than a series of its own.
BATCH_KEYS = ("global_bs", "per_device_bs", "accumulation_steps", "emulate_processes", "max_per_device_bs",
              "memory_cap_mb")


@dataclass
class Run:
    """One training run: its result document, loaded and checked by scaling.results (empty when the run left
    none, or left one that is not finished or cannot be read), and its config."""

    id: str
    status: str
    result: Result | dict[str, Any]
    config: dict[str, Any]
    error: str | None = None
    folder: Path | None = None
    partial_config: bool = False  # config rebuilt from the sweep's overrides (the run wrote no result)
    tuned: bool = False  # a run of the best LR a tuned study's search found at its batch (report/tuning.py)

    def get(self, name: str) -> Any:
        """A top-level field of result.json, None when absent."""
        return self.result.get(name)

    @property
    def finished(self) -> bool:
        """Ended with a final status: pending, running, interrupted or torn runs say nothing yet."""
        return self.status in FINAL_STATUSES

    @property
    def reached(self) -> bool:
        return self.status == "reached" and self.get("steps_to_target") is not None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def batch(self) -> dict[str, Any]:
        return self.get("batch") or {}  # a failed run's result has one too

    @property
    def global_bs(self) -> int | None:
        return self.batch.get("global", self.config.get("global_bs"))

    @property
    def per_device_bs(self) -> int | None:
        value = self.batch.get("per_device", self.config.get("per_device_bs"))
        return value if isinstance(value, int) else None  # the config's may be "auto"

    @property
    def decomposition(self) -> str | None:
        """`per_device × num_processes × accumulation_steps`, as the runner resolved it."""
        batch = self.batch
        if not batch:
            return None
        return f"{batch['per_device']} × {batch['num_processes']} × {batch['accumulation_steps']}"

    @property
    def lr_rule(self) -> str | None:
        """The rule the run scaled its LR by; "tuned" for a tuned study's best LR at its batch (the run itself
        used lr_scaling none: its base_lr is the LR the search found)."""
        if self.tuned:
            return "tuned"
        lr = self.get("lr")
        return lr["rule"] if lr else self.config.get("lr_scaling")

    @property
    def lr_scaled(self) -> float | None:
        lr = self.get("lr")
        return lr["scaled"] if lr else None

    @property
    def target(self) -> Target | None:
        """The run's target (metric and value), or None without one."""
        target = self.get("target")
        if target:
            return Target(target["metric"], target["value"]) if target["value"] is not None else None
        value = self.config.get("target_accuracy")
        return Target("accuracy", value) if isinstance(value, (int, float)) else None

    @property
    def tokens(self) -> dict | None:
        """A next-token run's figures in tokens (result.json's `tokens`), None for a classifier."""
        return self.get("tokens")

    @property
    def train_time(self) -> float | None:
        """Train time to target (evaluation excluded): the fair clock across batch sizes (docs/clock.md)."""
        return self.get("train_time_to_target_s") if self.reached else None

    @property
    def wall_time(self) -> float | None:
        return self.get("time_to_target_s") if self.reached else None

    @property
    def steps_to_target(self) -> int | None:
        return self.get("steps_to_target") if self.reached else None

    @property
    def step_resolution(self) -> float | None:
        """How finely steps to target are known: the result's own `steps_to_target_resolution` when it records
        one (exact runs: 1), else the distance from the evaluation before the target to the one that reached
        it (the target was crossed somewhere in between); None when the run did not reach the target."""
        steps = self.steps_to_target
        if steps is None:
            return None
        recorded = self.get("steps_to_target_resolution")
        if recorded is not None and recorded > 0:
            return float(recorded)
        earlier = [h["step"] for h in self.history if h["step"] < steps]
        return float(steps - max(earlier, default=0)) or 1.0

    @property
    def steps_interval(self) -> tuple[int, int] | None:
        """(low, high): the steps that can still be the first at the target when it is not known exactly (high
        is steps_to_target); None when it is exact (resolution 1) or the run did not reach the target."""
        steps, resolution = self.steps_to_target, self.step_resolution
        if steps is None or resolution is None or resolution <= 1:
            return None
        return max(1, int(steps - resolution + 1)), int(steps)

    @property
    def target_at_first_evaluation(self) -> bool:
        """The run's first evaluation already met the target: too easy a target to tell batches apart (its
        steps are a handful at most, and its times mostly start-up and the first evaluation)."""
        first, history = self.get("first_eval_at_target"), self.history
        return bool(first) and bool(history) and first.get("step") == history[0].get("step")

    @property
    def time_resolution(self) -> float | None:
        """The train time to target is known to the same share as the steps (the time of one resolution)."""
        steps, time, resolution = self.steps_to_target, self.train_time, self.step_resolution
        if not steps or time is None or resolution is None:
            return None
        return time * resolution / steps

    @property
    def torch_threads(self) -> int | None:
        """Intra-op threads the run trained with (environment.torch_threads; absent in older results)."""
        environment = self.get("environment")
        return environment.get("torch_threads") if environment else None

    @property
    def throughput(self) -> float | None:
        return self.get("throughput_samples_per_s")

    @property
    def data_wait(self) -> float | None:
        return self.get("data_wait_fraction")

    @property
    def peak_memory(self) -> float | None:
        memory = self.get("peak_memory")
        return memory.get("allocated_bytes") if memory else None

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.get("history") or []

    @property
    def windows(self) -> list[float]:
        return list(self.get("throughput_windows") or [])


@dataclass
class Configuration:
    """The seeds of one configuration. `series` names the non-batch settings that vary in the study
    (e.g. the LR rule): one line per series in the plots."""

    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    series: str = "all"
    label: str = ""

    @property
    def global_bs(self) -> int | None:
        return self.runs[0].global_bs

    @property
    def per_device_bs(self) -> int | None:
        return self.runs[0].per_device_bs

    @property
    def lr_rule(self) -> str | None:
        return self.runs[0].lr_rule

    @property
    def reached(self) -> list[Run]:
        return [run for run in self.runs if run.reached]

    @property
    def all_reached(self) -> bool:
        return len(self.reached) == len(self.runs)


def seed_order(run: Run) -> tuple:
    """Runs by seed as a number (seed 10 after seed 2), runs without a seed last."""
    seed = run.seed
    return (seed is None, not isinstance(seed, int), seed if isinstance(seed, int) else 0, str(seed))


MAX_STUDY_FILE_BYTES = 256 << 20
# Statuses the sweep records in study.json besides a result's own (scaling/study/sweep.py).
ENTRY_STATUSES = (*STATUSES, "pending")


def read_study_file(study_dir: Path) -> dict[str, Any]:
    """`study.json` when present and valid, else an empty mapping (the report also reads bare folders)."""
    path = study_dir / "study.json"
    if not path.is_file():
        return {}
    text = read_text_file(path, "study file", MAX_STUDY_FILE_BYTES)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON ({shown(str(err), 80)}); fix or remove it (the report then "
                          f"reads the result.json files below the folder)") from None
    if not isinstance(data, dict) or not isinstance(data.get("configs", []), list):
        raise ConfigError(f"{path} must hold a JSON object with 'name' and a list 'configs'; fix or remove it")
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: the sweep never writes one


def warn_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_runs(study_dir: str | Path, warn: Callable[[str], None] = warn_stderr) -> list[Run]:
    """Every run of the study: the entries of study.json first (in its order), then any other
    `**/result.json` below the folder. A damaged result.json or study.json entry is named in one
    `scaling: warning:` line through `warn` and left out of every number (a damaged result stays listed).
    Raises ConfigError when nothing has finished, naming the damaged files when every result is damaged."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ConfigError(f"study folder {study_dir} does not exist")
    entries = read_study_file(study_dir).get("configs") or []
    runs: list[Run] = []
    left_out: list[str] = []
    seen: set[Path] = set()
    for index, entry in enumerate(entries):
        problem = entry_problem(entry)
        if problem is not None:
            left_out.append(f"study.json configs[{index}] {problem}; that entry is left out of the report")
            continue
        run = _run_from_entry(study_dir, entry)
        runs.append(run)
        if run.folder is not None:
            seen.add((run.folder / "result.json").resolve())
    for path in sorted(study_dir.glob("**/result.json")):
        if path.resolve() not in seen and not is_branch(path):
            runs.append(_run_from_file(study_dir, path))
    damaged = [run for run in runs if run.status == UNREADABLE]
    if not any(run.status in FINAL_STATUSES for run in runs):
        if damaged:
            more = f"; and {len(damaged) - 1} more" if len(damaged) > 1 else ""
            raise ConfigError(f"no finished runs under {study_dir}: its {len(damaged)} result.json file(s) cannot "
                              f"be used ({damaged[0].error}{more}); fix or remove them")
        raise ConfigError(
            f"no finished runs under {study_dir}: expected study.json or result.json files "
            f"(docs/results.md); run the sweep first or point at the folder that holds its runs"
        )
    for line in left_out:
        warn(f"scaling: warning: {line}")
    for run in damaged:  # a folder name may hold a line break: the warning stays one line
        error = str(run.error).replace("\r", "\\r").replace("\n", "\\n")
        warn(f"scaling: warning: run {shown(run.id, 80)} is left out of the report: {error}")
    _complete_partial_configs(runs)
    return runs


def is_branch(result_path: Path) -> bool:
    """A branch of `scaling branch` (RUN_DIR/branches/step-N/...): not a run of the study, read through its
    reference's branches.json instead (report/questions/over_training.py)."""
    return any(parent.name == "branches" and (parent.parent / "branch_points").is_dir()
               for parent in result_path.parents)


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one entry of study.json's `configs` (None when every field the report reads has its
    type): an entry the report cannot use is left out, not a crash."""
    if not isinstance(entry, dict):
        return "is not an object"
    run_id, overrides, out = entry.get("id"), entry.get("overrides"), entry.get("output_dir")
    if not isinstance(run_id, str | int) or isinstance(run_id, bool) or not str(run_id):
        return f"has 'id' {shown(run_id, 40)}, not a configuration id"
    if overrides is not None:
        if not isinstance(overrides, dict):
            return f"has 'overrides' {shown(overrides, 40)}, not an object"
        problem = config_problem(overrides)
        if problem:
            return f"'overrides': {problem}"
    if out is not None and not _inside(out):
        return f"has 'output_dir' {shown(out, 60)}, not a folder inside the study folder"
    if out is None and not _inside(f"runs/{run_id}"):  # the folder then follows from the id
        return f"has 'id' {shown(run_id, 40)}, not a folder name inside runs/"
    if entry.get("status") is not None and entry["status"] not in ENTRY_STATUSES:
        return f"has an unknown 'status' {shown(entry['status'], 40)}"
    if entry.get("error_tail") is not None and not isinstance(entry["error_tail"], str):
        return f"has 'error_tail' {shown(entry['error_tail'], 40)}, not text"
    return None


def _inside(out: Any) -> bool:
    """A relative path that stays inside the study folder (the sweep writes runs/<id>)."""
    if not isinstance(out, str) or not out or "\0" in out:
        return False
    parts = PurePosixPath(out).parts
    return not PurePosixPath(out).is_absolute() and ".." not in parts


def _run_from_entry(study_dir: Path, entry: dict[str, Any]) -> Run:
    run_id = str(entry.get("id"))
    folder = study_dir / (entry.get("output_dir") or f"runs/{run_id}")
    path = folder / "result.json"
    loaded, problem = read_result_checked(path) if path.exists() or path.is_symlink() else (None, None)
    if problem is not None:
        return Run(run_id, UNREADABLE, {}, dict(entry.get("overrides") or {}), _where(path, study_dir, problem),
                   folder, True)
    result = loaded if loaded is not None and loaded["status"] in FINAL_STATUSES else {}
    if "config" in result:
        config, partial = dict(result["config"]), False
    else:  # the run left no result: its overrides are all that is known of its config
        config, partial = dict(entry.get("overrides") or {}), True
    status = result.get("status") or entry.get("status") or "missing"
    error = result.get("error") or entry.get("error_tail")
    return Run(run_id, status, result, config, error, folder, partial)


def _run_from_file(study_dir: Path, path: Path) -> Run:
    folder = path.parent
    run_id = folder.relative_to(study_dir).as_posix() if folder != study_dir else study_dir.resolve().name
    result, problem = read_result_checked(path)
    if problem is not None:  # damaged: named, and left out of every number
        return Run(run_id, UNREADABLE, {}, {}, _where(path, study_dir, problem), folder, True)
    if result["status"] not in FINAL_STATUSES:  # running or interrupted: a row, without numbers
        return Run(run_id, "incomplete", {}, {}, None, folder, True)
    return Run(run_id, result["status"], result, dict(result.get("config") or {}), result.get("error"), folder)


def _where(path: Path, study_dir: Path, problem: str) -> str:
    """`runs/x/result.json holds NaN ...`: the file, as the study folder names it, and what is wrong."""
    try:
        path = path.relative_to(study_dir)
    except ValueError:
        pass
    return f"{path} {problem}"


def _complete_partial_configs(runs: list[Run]) -> None:
    """A run known only by its sweep overrides takes every other setting from the study's most common
    value, so that it joins its series (e.g. its LR rule) instead of standing alone."""
    full = [run.config for run in runs if not run.partial_config]
    if not full:
        return
    keys = {key for config in full for key in config}
    common = {}
    for key in keys:
        values = Counter(json.dumps(config.get(key), sort_keys=True) for config in full)
        common[key] = json.loads(values.most_common(1)[0][0])
    for run in runs:
        if run.partial_config and run.config:
            run.config = {**common, **run.config}


def configuration_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}, sort_keys=True, default=str)


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose value differs between configurations (seed and output_dir aside)."""
    keys = sorted({key for config in configs for key in config} - set(RUN_ONLY_KEYS))
    varying = []
    for key in keys:
        values = {json.dumps(config.get(key), sort_keys=True, default=str) for config in configs if key in config}
        if len(values) > 1:
            varying.append(key)
    return varying


def group_configurations(runs: list[Run], named: tuple[str, ...] = ()) -> list[Configuration]:
    """Runs grouped by config without seed/output_dir, each with a series name and a readable label,
    sorted by series then global batch. Keys in `named` name a series even where they do not vary (a tuned
    study's fixed rules are "sqrt" beside "tuned", not "all")."""
    groups: dict[str, Configuration] = {}
    for run in runs:
        key = configuration_key(run.config) if run.config else f"run:{run.id}"
        groups.setdefault(key, Configuration({k: v for k, v in run.config.items() if k not in RUN_ONLY_KEYS}))
        groups[key].runs.append(run)
    configurations = list(groups.values())
    series_keys = sorted({key for key in varying_keys([c.settings for c in configurations]) if key not in BATCH_KEYS}
                         | {key for key in named if any(key in c.settings for c in configurations)})
    usual = {key: Counter(_text(c.settings.get(key)) for c in configurations).most_common(1)[0][0]
             for key in series_keys}
    for configuration in configurations:
        configuration.series = series_name(configuration.settings, series_keys, usual)
    label_configurations(configurations)
    configurations.sort(key=lambda c: (c.series, c.global_bs or 0, c.per_device_bs or 0, c.label))
    return configurations


def series_name(settings: dict[str, Any], series_keys: list[str], usual: dict[str, str]) -> str:
    """`linear`; a setting other than the LR rule is named only where it departs from its most common value
    (`sqrt, max_steps=50` for a throughput probe), so the main series keep short names."""
    parts = []
    for key in series_keys:
        if key not in settings:
            continue
        value = settings[key]
        if key == "lr_scaling":
            parts.append(str(value))
        elif _text(value) != usual[key]:
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "all"


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def label_configurations(configurations: list[Configuration]) -> None:
    """`batch 256 (linear)`; the decomposition is added only where it tells two configurations apart."""
    for configuration in configurations:
        series = "" if configuration.series == "all" else f" ({configuration.series})"
        configuration.label = f"batch {configuration.global_bs}{series}"
    _disambiguate(configurations, lambda c: c.runs[0].decomposition)
    _disambiguate(configurations, lambda c: c.runs[0].id)


def _disambiguate(configurations: list[Configuration], detail) -> None:
    counts = Counter(c.label for c in configurations)
    for configuration in configurations:
        if counts[configuration.label] > 1 and detail(configuration):
            configuration.label += f" [{detail(configuration)}]"
