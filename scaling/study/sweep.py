"""The sweep runner: every configuration of a study (scaling/study/spec.py) as its own launched process, one after
another; resumable, with signals forwarded to the run and failures recorded (docs/studies.md). Runs of the
`python` launcher are forked by one worker per sweep that has imported torch once (scaling/study/zygote.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from scaling.errors import ConfigError
from scaling.files import open_for_writing, refuse_link, write_json_atomic, write_text_atomic
from scaling.lock import wait_for_run_lock
from scaling.output import inspect_run_folder
from scaling.parent import DIE_WITH_PARENT_ENV, die_with_parent, die_with_parent_available
from scaling.results import ended_without_result, read_result, read_result_checked
from scaling.study.spec import RUN_PY, Branching, Launcher, StudyConfig, StudyPlan
from scaling.study.tune import BatchSearch, search_batch
from scaling.study.zygote import Worker
from scaling.userfiles import read_text_file

STDERR_TAIL_LINES = 30
MAX_STUDY_FILE_BYTES = 256 << 20

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


def run_config(study_config: StudyConfig, signals: SweepSignals | None = None, say=print,
               worker: Worker | None = None) -> dict[str, Any]:
    """Launch one configuration, wait, and say how it ended (from its result.json, else from stderr).

    The folder decides the launch: a checkpoint of an unfinished run is resumed (`--resume`), anything else
    starts from scratch (`--overwrite`: the sweep owns the folder). A resume that fails before training (a
    corrupt checkpoint, say) starts the configuration again from scratch, once, and says so. With `worker`, a
    `python` launcher's run is forked by it rather than started as a new interpreter."""
    signals = signals or SweepSignals()  # not entered: no handlers, never set
    launcher = study_config.launcher
    out = Path(study_config.config.output_dir)
    config_path = out / "config.yaml"
    refuse_link(out.parent)  # runs/ and runs/<configuration> planted as links would lead the run elsewhere
    refuse_link(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write {config_path}: {err.strerror or err}") from None
    write_text_atomic(config_path, yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
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
    entry = _launch(study_config, config_path, "resume" if resume else "overwrite", signals, worker)
    entry["resumed"] = resume
    if resume and entry["returncode"] != 0 and not signals.signum and _snapshot(out / "result.json") == before:
        reason = _error_line(out / "stderr.log") or f"exit status {entry['returncode']}"
        say(f"scaling: configuration {study_config.id} could not resume ({reason}); starting it again from scratch")
        entry = _launch(study_config, config_path, "overwrite", signals, worker)
        entry.update(resumed=False, restarted=reason)
    return entry


def _launch(study_config: StudyConfig, config_path: Path, mode: str, signals: SweepSignals,
            worker: Worker | None = None) -> dict[str, Any]:
    launcher = study_config.launcher
    out = config_path.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(RUN_PY.parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env[DIE_WITH_PARENT_ENV] = "1"  # every process of the run, through any launcher, dies with its parent
    parent = os.getpid()
    die_with_parent_available()  # resolve prctl here, not in the forked child
    started = time.time()
    processes: list = []  # subprocess.Popen, or ForkedRun (the same interface) for a run the worker forked
    logs = []
    codes: list[int] = []
    timed_out = False
    try:
        for node, command in enumerate(launch_commands(study_config, config_path, mode)):
            suffix = f".node{node}" if node else ""
            stdout = open_for_writing(out / f"stdout{suffix}.log")  # closed below
            logs.append(stdout)
            stderr = open_for_writing(out / f"stderr{suffix}.log")
            logs.append(stderr)
            # Its own session: a terminal's Ctrl-C reaches the sweep alone, which forwards it (SweepSignals);
            # and the launcher dies with the sweep (SIGTERM, so the run checkpoints), even by SIGKILL. A forked
            # run has the same: its session, and it dies with the worker, which dies with the sweep.
            forked = None
            if worker is not None and launcher.type == "python":
                forked = worker.spawn(command[2:], env, stdout, stderr, abort=lambda: signals.signum is not None)
            processes.append(forked or subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env,
                                                        cwd=os.getcwd(), start_new_session=True,
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
        if result["status"] == "failed":  # the run caught its own error and recorded it: say what it was
            entry["error_tail"] = _tail(out / "stderr.log")
    elif signals.signum:
        entry["status"] = "interrupted"  # stopped before it could write an outcome; rerun continues it
    else:  # a run that ends without its result failed, whatever its exit status says (os._exit(0), say)
        entry["status"] = "failed"
        tail = _tail(out / "stderr.log")
        if entry["returncode"] == 0 or not tail:
            tail = f"{ended_without_result(entry['returncode'], out / 'result.json')}\n{tail}".strip()
        entry["error_tail"] = tail
    return entry


def _wait(processes: list, launcher: Launcher, signals: SweepSignals) -> bool:
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


def study_record(study: StudyPlan, entries: dict[str, dict], trials: list[StudyConfig] | None = None,
                 searches: list[BatchSearch] | None = None) -> dict:
    """study.json: the spec, every configuration (a tuned study's trials so far, then its fixed rules) with how
    it ended, and a tuned study's searches (`tuning`, docs/results.md)."""
    configs = list({c.id: c for c in [*(trials or []), *study.configs]}.values())
    record = {
        "name": study.name,
        "spec": study.spec,
        "configs": [
            {"id": c.id, "overrides": c.overrides, "output_dir": f"runs/{c.id}",
             "launcher": dataclasses.asdict(c.launcher), **entries.get(c.id, {"status": "pending"})}
            for c in configs
        ],
    }
    if study.tuning is not None:
        record["tuning"] = [search.record() for search in searches or []]
    return record


def planned_configs(study: StudyPlan, searches: list[BatchSearch], say=print) -> Iterator[StudyConfig]:
    """The configurations in the order they run: a tuned study's searches first, each trial decided from the
    results of the trials before it (scaling/study/tune.py), then the fixed configurations. The caller runs
    (or skips) each before asking for the next; `searches` fills in as they go."""
    if study.tuning is not None:
        for group in study.tuning.groups:
            search = BatchSearch(group, group["global_bs"], study.tuning.spec.dimensions, study.tuning.seeds)
            searches.append(search)
            yield from search_batch(search, study.tuning.spec, study.tuning.make, trial_outcome)
    branching = study.branching
    if branching is not None:
        yield branching.reference
    yield from study.configs
    if branching is not None and read_result(Path(branching.reference.config.output_dir) / "result.json"):
        if not branching.record.is_file():
            run_branching(branching, say)
        if branching.record.is_file():
            for seed in branching.seeds:
                yield branching.derive(seed, branching.record)


def run_branching(branching: Branching, say=print) -> None:
    """`scaling branch` on the study's reference run, in a process of its own (its output shown as it goes); a
    failure is said, and the study goes on without the derived schedules."""
    say(f"scaling: branching the reference run: scaling {' '.join(branching.command())}")
    env = {**os.environ, "PYTHONPATH": str(RUN_PY.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.run([sys.executable, str(RUN_PY.parent / "cli.py"), *branching.command()],
                             capture_output=True, text=True, env=env)
    write_text_atomic(branching.record.with_name("branch.log"), process.stdout + process.stderr)
    for line in process.stdout.splitlines():
        if line.startswith("scaling branch:") and ("critical batch" in line or "wrote" in line or "point(s)" in line):
            say(line)
    if process.returncode != 0:
        tail = "\n".join(process.stderr.strip().splitlines()[-5:])
        say(f"scaling: branching failed (exit {process.returncode}): {tail}; the derived schedules are not run")


def trial_outcome(study_config: StudyConfig) -> tuple[str, int | None, int | None, tuple[tuple[int, float], ...]]:
    """How a configuration ended, from its result file: (status, steps to target when reached, steps run, and
    when reached its (step, target metric) at each evaluation before the target and at the target)."""
    result = read_result(Path(study_config.config.output_dir) / "result.json")
    if result is None:
        return "failed", None, None, ()
    if result["status"] != "reached":
        return result["status"], None, result.get("steps"), ()
    steps, target = result["steps_to_target"], result["target"]
    curve = [(entry["step"], entry[target["metric"]]) for entry in result.get("history") or []
             if entry["step"] < steps and isinstance(entry.get(target["metric"]), int | float)]
    return "reached", steps, result.get("steps"), (*curve, (steps, target["value"]))


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
    searches: list[BatchSearch] = []
    trials: list[StudyConfig] = []  # every configuration met so far, in order
    total = None if study.tuning is not None else len(study.configs)  # a search decides its own length
    with SweepSignals() as signals, Worker(say=lambda line: bar.write(line)) as worker:
        bar = tqdm(total=total, unit="config", disable=not progress, dynamic_ncols=True)
        for study_config in planned_configs(study, searches, say=lambda line: bar.write(line)):
            if signals.signum:
                break
            trials.append(study_config)
            bar.set_description(study_config.label())
            result = read_result(Path(study_config.config.output_dir) / "result.json")
            if result is not None:
                entries[study_config.id] = {**previous.get(study_config.id, {}), "status": result["status"],
                                            "skipped": True}
                bar.update()
                continue
            current = study_config
            entries[study_config.id] = run_config(study_config, signals, say=bar.write, worker=worker)
            bar.update()
            write_json_atomic(study_dir / "study.json", study_record(study, entries, trials, searches))
            if entries[study_config.id]["status"] == "failed" and not signals.signum:
                bar.write(f"scaling: configuration {study_config.id} failed; tail of its stderr:\n"
                          f"{entries[study_config.id].get('error_tail', '')[-1500:]}")
        bar.close()
        record = study_record(study, entries, trials, searches)
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
        of = f" of {len(study.configs)}" if study.tuning is None else ""
        print(f"scaling: study {study.name} stopped by {signals.name} after {len(entries)}{of} "
              f"configurations ({summary or 'none run'}){where}; run the same command again to continue -> "
              f"{study_dir}", file=sys.stderr, flush=True)
        raise SweepInterrupted(128 + signals.signum)
    planned = f"{len(entries)} configurations" if study.tuning is None else f"{len(entries)} configurations and trials"
    say(f"scaling: study {study.name}: {planned} ({summary}; {skipped} already complete) -> {study_dir}")
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
