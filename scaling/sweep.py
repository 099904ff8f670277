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
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling.batching import plan_batch
from scaling.config import FIELDS, ConfigError, RunConfig, load_yaml, make_config
from scaling.lr import scaled_lr
from scaling.results import read_result, write_json_atomic

RUN_PY = Path(__file__).resolve().parent / "run.py"
LAUNCHER_TYPES = ("python", "torchrun", "accelerate")
SPEC_KEYS = {"name", "description", "base", "grid", "zip", "seeds", "launcher"}
LAUNCHER_KEYS = {"type", "nproc", "config_file", "nnodes", "master_addr", "master_port", "local_nodes", "timeout_s"}
LAUNCH_AXES = {"nproc"}  # axis keys that belong to the launcher, not the run config
STDERR_TAIL_LINES = 30


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


@dataclass
class StudyConfig:
    id: str
    overrides: dict[str, Any]
    config: RunConfig
    launcher: Launcher

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


def _axes(section: Any, where: str) -> dict[str, list]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"study spec: '{where}' must map config keys to lists of values")
    for key, values in section.items():
        if key not in FIELDS and key not in LAUNCH_AXES:
            raise ConfigError(f"study spec: unknown key '{key}' in '{where}' (not a run-config key)")
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
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ConfigError(f"study spec: zipped axes must have equal lengths (group {index + 1}: {shown})")
        checked.append(group)
    return checked


def _launcher(section: Any) -> Launcher:
    section = section or {}
    if not isinstance(section, dict):
        raise ConfigError("study spec: 'launcher' must be a mapping")
    unknown = set(section) - LAUNCHER_KEYS
    if unknown:
        raise ConfigError(f"study spec: unknown launcher key '{sorted(unknown)[0]}'; known: {', '.join(sorted(LAUNCHER_KEYS))}")
    launcher = Launcher(**section)
    if launcher.type not in LAUNCHER_TYPES:
        raise ConfigError(f"study spec: launcher type must be one of {', '.join(LAUNCHER_TYPES)}, got {launcher.type!r}")
    if launcher.type == "python" and (launcher.nproc != 1 or launcher.nnodes != 1):
        raise ConfigError("study spec: the python launcher runs one process; use torchrun or accelerate for more")
    if launcher.type == "accelerate" and launcher.config_file and not Path(launcher.config_file).is_file():
        raise ConfigError(f"study spec: accelerate config file {launcher.config_file} does not exist")
    return launcher


_DEFAULTS = dataclasses.asdict(RunConfig())


def config_id(config: RunConfig, launcher: Launcher) -> str:
    """Stable id: the settings that differ from the defaults (so a new field with a default does not
    change existing ids) and the process topology. The output folder and progress bar are not settings."""
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("output_dir", "progress") and v != _DEFAULTS[k]}
    settings["_processes"] = [launcher.type, launcher.nproc, launcher.nnodes]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def load_study(path: str | Path, study_dir: str | Path) -> StudyPlan:
    """Parse, expand and validate a spec; every configuration is checked before anything runs."""
    spec = load_yaml(path)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"study spec {path}: unknown section '{sorted(unknown)[0]}'; sections: {', '.join(sorted(SPEC_KEYS))}")
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

    grid_points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    zip_points = [[dict(zip(g, values, strict=True)) for values in zip(*g.values(), strict=True)] for g in groups]
    study = StudyPlan(name=str(spec.get("name") or Path(path).stem), spec=spec)
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
    this_launcher = dataclasses.replace(launcher, **{k: v for k, v in overrides.items() if k in LAUNCH_AXES})
    if this_launcher.type == "python" and this_launcher.nproc != 1:
        raise ConfigError("study spec: the python launcher runs one process; an 'nproc' axis needs torchrun "
                          "or accelerate")
    values = {**base, **run_keys, "progress": False}
    try:
        config = make_config(values, source=f"study spec {path}")
        config_key = config_id(config, this_launcher)
        config = dataclasses.replace(config, output_dir=str(study_dir / "runs" / config_key))
        plan_batch(config, this_launcher.nproc * this_launcher.nnodes)
    except ConfigError as err:
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
        raise ConfigError(f"{err} (configuration {shown})") from None
    return StudyConfig(config_key, overrides, config, this_launcher)


# ---------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_commands(study_config: StudyConfig, config_path: Path, resume: bool = False) -> list[list[str]]:
    """The command line(s) that run one configuration: one per node when nodes are started here."""
    launcher = study_config.launcher
    run_args = [str(RUN_PY), "--config", str(config_path), *(["--resume"] if resume else [])]
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


def run_config(study_config: StudyConfig) -> dict[str, Any]:
    """Launch one configuration, wait, and say how it ended (from its result.json, else from stderr)."""
    out = Path(study_config.config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(RUN_PY.parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    # An interrupted run (preempted, Ctrl-C) continues from its checkpoint instead of starting over.
    previous = read_result(out / "result.json", finished_only=False)
    resume = bool(previous and previous["status"] == "interrupted" and (out / "checkpoint").is_dir())
    started = time.time()
    processes = []
    logs = []
    for node, command in enumerate(launch_commands(study_config, config_path, resume)):
        suffix = f".node{node}" if node else ""
        stdout = open(out / f"stdout{suffix}.log", "w")  # closed below
        stderr = open(out / f"stderr{suffix}.log", "w")
        logs += [stdout, stderr]
        processes.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=os.getcwd()))
    codes = []
    try:
        for process in processes:
            try:
                codes.append(process.wait(timeout=study_config.launcher.timeout_s))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
    finally:
        for process in processes:  # never leave a node behind
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in logs:
            handle.close()
    result = read_result(out / "result.json", finished_only=False)
    if result is not None and result["status"] == "running":
        result = None  # killed before it could write an outcome
    entry = {"returncode": max(codes, key=abs), "wall_s": time.time() - started, "resumed": resume}
    if result is not None:
        entry["status"] = result["status"]
    else:
        entry["status"] = "failed"
        entry["error_tail"] = _tail(out / "stderr.log")
    return entry


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
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
    """Run every configuration not yet complete, one after another; failures are recorded, not fatal."""
    from tqdm.auto import tqdm

    check_runnable_here(study)

    study_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_entries(study_dir / "study.json")
    entries: dict[str, dict] = {}
    bar = tqdm(study.configs, unit="config", disable=not progress, dynamic_ncols=True)
    for study_config in bar:
        bar.set_description(study_config.id)
        result = read_result(Path(study_config.config.output_dir) / "result.json")
        if result is not None:
            entries[study_config.id] = {**previous.get(study_config.id, {}), "status": result["status"], "skipped": True}
            continue
        entries[study_config.id] = run_config(study_config)
        write_json_atomic(study_dir / "study.json", study_record(study, entries))
        if entries[study_config.id]["status"] == "failed":
            bar.write(f"scaling: configuration {study_config.id} failed; tail of its stderr:\n"
                      f"{entries[study_config.id].get('error_tail', '')[-1500:]}")
    record = study_record(study, entries)
    write_json_atomic(study_dir / "study.json", record)
    counts: dict[str, int] = {}
    for entry in entries.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    skipped = sum(1 for e in entries.values() if e.get("skipped"))
    say(f"scaling: study {study.name}: {len(entries)} configurations ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; {skipped} already complete) -> {study_dir}")
    return record


def _previous_entries(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        return {c["id"]: {k: v for k, v in c.items() if k in ("returncode", "wall_s")} for c in data["configs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# ---------------------------------------------------------------- clusters: SLURM

SLURM_TEMPLATE = Path(__file__).resolve().parent.parent / "launch" / "slurm.sbatch"


def slurm_command(study_config: StudyConfig, config_path: Path) -> str:
    """The command one SLURM job runs: torchrun on every node (srun starts one task per node)."""
    launcher = study_config.launcher
    run = f"{RUN_PY} --config {config_path}"
    if launcher.type == "python":
        return f"python {run}"
    return (f"srun torchrun --nnodes {launcher.nnodes} --nproc_per_node {launcher.nproc} "
            f"--rdzv_backend c10d --rdzv_endpoint \"$HEAD_NODE:29500\" --rdzv_id \"$SLURM_JOB_ID\" {run}")


def write_slurm(study: StudyPlan, study_dir: Path, array: bool = True) -> list[Path]:
    """Write sbatch scripts: one array job over every configuration, or one script per configuration.

    Configurations that already have a complete result are left out, so resubmitting resumes the study.
    """
    template = SLURM_TEMPLATE.read_text()
    folder = study_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    pending = [c for c in study.configs if read_result(Path(c.config.output_dir) / "result.json") is None]
    commands = []
    for study_config in pending:
        out = Path(study_config.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "config.yaml"
        config_path.write_text(yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
        commands.append((study_config, slurm_command(study_config, config_path.resolve())))
    nodes = max((c.launcher.nnodes for c in study.configs), default=1)
    gpus = max((c.launcher.nproc for c in study.configs), default=1)
    written = []
    if array:
        (folder / "commands.txt").write_text("".join(cmd + "\n" for _, cmd in commands))
        body = 'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$STUDY_DIR/slurm/commands.txt")"'
        script = _fill(template, f"{study.name}", nodes, gpus, f"#SBATCH --array=0-{max(0, len(commands) - 1)}",
                       study_dir, body)
        written.append(folder / "array.sbatch")
        written[-1].write_text(script)
    else:
        for study_config, command in commands:
            script = _fill(template, f"{study.name}-{study_config.id}", study_config.launcher.nnodes,
                           study_config.launcher.nproc, "", study_dir, command)
            written.append(folder / f"{study_config.id}.sbatch")
            written[-1].write_text(script)
    return written


def _fill(template: str, name: str, nodes: int, gpus: int, array_line: str, study_dir: Path, body: str) -> str:
    return (template.replace("{{NAME}}", name).replace("{{NODES}}", str(nodes)).replace("{{GPUS}}", str(gpus))
            .replace("{{ARRAY}}", array_line).replace("{{STUDY_DIR}}", str(study_dir.resolve()))
            .replace("{{COMMAND}}", body))
