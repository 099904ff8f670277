"""The output folder of a run: which folder, what it holds from earlier runs, and what a run may write over.

`prepare_output_dir` is what the main process does before any data is loaded (docs/reliability.md): resolve
the default folder to a fresh one, check the folder can be written, take its lock, and refuse to write over
an earlier run unless told (`--resume` continues it, `--overwrite` replaces it).

Every run writes its resolved configuration to OUTPUT_DIR/config.yaml (`SAVED_CONFIG`) when training starts;
`resumed_config` makes it the base of a `--resume`, with only the settings the user gave over it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling import distributed
from scaling.config import FIELDS, ConfigError, RunConfig, apply_overrides, make_config
from scaling.errors import shown
from scaling.files import refuse_link
from scaling.lock import RUN_LOCK, RunLock
from scaling.results import FINAL_STATUSES, read_result_checked
from scaling.userfiles import load_yaml

LATEST = "latest"  # runs/latest links to the newest run folder that a run without --output-dir made
DEFAULT_PARENT = Path("runs")
# What a run writes into its folder; --overwrite removes these (a sweep's config.yaml and logs stay).
RUN_FILES = ("result.json", "metrics.jsonl", "checkpoint", "checkpoint.tmp", "checkpoint.old", "model.pt",
             "model.pt.tmp", "trackers")
# The resolved configuration every run writes when training starts (a sweep writes the same file before it
# launches the run): the base of a --resume. Not in RUN_FILES: --overwrite keeps it (a sweep's run reads it
# with --config) and the new run writes its own.
SAVED_CONFIG = "config.yaml"


@dataclass
class RunFolder:
    """What an output folder holds from earlier runs."""

    path: Path
    result: dict[str, Any] | None = None
    result_problem: str | None = None  # result.json exists but cannot be used
    checkpoint_step: int | None = None  # the newest copy that claims to be complete
    files: list[str] = field(default_factory=list)  # RUN_FILES present

    @property
    def status(self) -> str | None:
        return self.result["status"] if self.result else None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def resumable(self) -> bool:
        return self.checkpoint_step is not None and not self.finished

    def describe(self) -> str | None:
        """What is there, in words (None when nothing of a run is)."""
        if self.result_problem:
            return f"{self.path / 'result.json'} {self.result_problem}"
        if self.finished:
            return f"a finished run (status {self.status})"
        if self.checkpoint_step is not None:
            return (f"an {'interrupted' if self.status == 'interrupted' else 'unfinished'} run with a checkpoint "
                    f"at step {self.checkpoint_step}")
        if self.status == "running":
            return "a run that was killed while running (result.json says running, no checkpoint)"
        if self.status is not None:
            return f"a run with status {self.status}"
        if self.files:
            return f"files of an earlier run ({', '.join(self.files)})"
        return None


def inspect_run_folder(path: str | Path) -> RunFolder:
    from scaling.train.checkpoint import candidates

    path = Path(path)
    folder = RunFolder(path)
    folder.files = [name for name in RUN_FILES if _present(path / name)]
    if "metrics.jsonl" in folder.files and _empty_file(path / "metrics.jsonl"):
        folder.files.remove("metrics.jsonl")
    if "result.json" in folder.files:
        folder.result, folder.result_problem = read_result_checked(path / "result.json")
    found = candidates(path / "checkpoint")
    folder.checkpoint_step = found[0][0] if found else None
    return folder


@dataclass
class Given:
    """The settings a user gave explicitly: `--config` YAML keys (typed) and command-line flags (strings as
    typed), without the defaults filled in around them."""

    cli: dict[str, Any] = field(default_factory=dict)
    yaml: dict[str, Any] = field(default_factory=dict)
    yaml_source: str = "the config file"

    def keys(self) -> set[str]:
        return set(self.cli) | set(self.yaml)

    def where(self, key: str) -> str:
        return f"--{key.replace('_', '-')}" if key in self.cli else f"'{key}' in {self.yaml_source}"


@dataclass
class Resumed:
    """A --resume whose folder holds a saved configuration: where it is, what it says, what was given over it."""

    path: Path
    saved: dict[str, Any]  # the saved configuration, validated (RunConfig.to_dict())
    given: Given


def resumed_config(cfg: RunConfig, given: Given) -> tuple[RunConfig, Resumed | None]:
    """--resume: the configuration the run in the folder was started with (OUTPUT_DIR/config.yaml), with
    only the settings the user gave (flags, `--config` keys) over it; prepare_output_dir then refuses those
    that a resume cannot change. A folder without a saved configuration (a run of an earlier version, or no
    run at all) leaves `cfg` as parsed, and what it holds is judged as before. Every process calls this
    before the process group exists, so each starts with the resumed configuration (--cpu included)."""
    if cfg.overwrite:
        return cfg, None  # refused together with --resume by prepare_output_dir
    if cfg.output_dir is None:
        try:
            folder = _latest_run(DEFAULT_PARENT / LATEST)
        except ConfigError:
            return cfg, None  # prepare_output_dir says so
    else:
        folder = Path(cfg.output_dir)
    path = folder / SAVED_CONFIG
    if not (path.is_file() or path.is_symlink()):
        return cfg, None
    fix = "repair or remove it (and give the run's flags), or pass --overwrite to start over"
    try:
        refuse_link(path)
        values = load_yaml(path, "the run's saved config")
    except ConfigError as err:
        raise ConfigError(f"--resume: {err}; {fix}") from None
    unknown = sorted(str(k) for k in values if k not in FIELDS or FIELDS[k].metadata.get("action"))
    if unknown and distributed.is_main_process():  # a setting a later version has, or one removed since:
        # the checkpoint's check ignores them too
        print(f"scaling: note: {path} has keys this version does not know ({', '.join(unknown[:5])}); "
              f"ignored", file=sys.stderr)
    known = {k: v for k, v in values.items() if k not in unknown}
    try:
        saved = make_config(known, source=str(path)).to_dict()
    except ConfigError as err:
        raise ConfigError(f"--resume: the run's saved config {path} is damaged: {err}; {fix}") from None
    merged = apply_overrides(saved, given.yaml, from_cli=False, source=given.yaml_source)
    merged = apply_overrides(merged, given.cli, from_cli=True, source="the command line")
    merged["output_dir"] = str(folder)  # the folder resumed, wherever the saved run was written from
    return make_config(merged), Resumed(path, saved, given)


def check_resumed_changes(cfg: RunConfig, resumed: Resumed) -> None:
    """The settings given with --resume may change only what a resume can change (the checkpoint checks the
    same when it loads, after the data; this says so before any data is loaded, naming the flag)."""
    from scaling.train.checkpoint import RESUMABLE_CHANGES

    new = cfg.to_dict()
    for key in sorted(resumed.given.keys(), key=list(FIELDS).index):
        if key in RESUMABLE_CHANGES or key not in new or new[key] == resumed.saved.get(key):
            continue
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUMABLE_CHANGES))
        raise ConfigError(f"--resume: {resumed.given.where(key)} gives the run in {resumed.path.parent} a different "
                          f"{key} ({shown(resumed.saved.get(key))}, now {shown(new[key])}); "
                          f"a resume may change only {allowed}: leave it out to continue the run "
                          f"({resumed.path} holds its settings), or pass --overwrite to start over")


def prepare_output_dir(cfg: RunConfig, resume: bool, resumed: Resumed | None = None) -> tuple[RunConfig, RunLock]:
    """Before any data is loaded, on the main process only: resolve the default folder (no --output-dir: a
    fresh runs/<time>, or with --resume the run runs/latest points at), make sure the folder can be written,
    take its lock, and check what it holds against --resume / --overwrite (ConfigError, one line,
    otherwise), and the settings given with --resume against the run's saved ones (`resumed`, from
    resumed_config). Returns the config with the folder it will write and the held lock."""
    if resume and cfg.overwrite:
        raise ConfigError("give at most one of --resume and --overwrite")
    if cfg.output_dir is None:
        out = _latest_run(DEFAULT_PARENT / LATEST) if resume else _fresh_run_folder(DEFAULT_PARENT)
        cfg = dataclasses.replace(cfg, output_dir=str(out))
    out = Path(cfg.output_dir)
    make_writable_folder(out)
    for name in (RUN_LOCK, *RUN_FILES, SAVED_CONFIG):  # nothing the run writes goes through a link planted in its folder
        refuse_link(out / name)
    lock = RunLock(out).acquire()
    try:
        folder = inspect_run_folder(out)
        if resume:
            if folder.finished:
                raise ConfigError(f"--resume: {out} holds a finished run (status {folder.status}); nothing to "
                                  f"resume (--overwrite runs it again)")
            if folder.checkpoint_step is None:
                partial = " (only an incomplete checkpoint.tmp: a save was interrupted)" if _present(
                    out / "checkpoint.tmp") else ""
                raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoint'}{partial}; run without "
                                  f"--resume (with --overwrite) to start over")
            if resumed is not None:
                check_resumed_changes(cfg, resumed)
        elif cfg.overwrite:
            clear_run_files(out)
        else:
            what = folder.describe()
            if what is not None:
                hint = ("pass --resume to continue it, --overwrite to start over"
                        if folder.resumable else "pass --overwrite to replace it")
                raise ConfigError(f"output folder {out} holds {what}; {hint}, or choose another --output-dir")
    except BaseException:
        lock.release()
        raise
    return cfg, lock


def make_writable_folder(out: Path) -> None:
    """Create `out` if needed and prove a file can be created in it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a folder; choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"--output-dir {out} is not writable ({err.strerror or err}); choose another "
                          f"--output-dir") from None


def clear_run_files(out: Path) -> None:
    """--overwrite: remove what an earlier run wrote (under the run lock)."""
    for name in RUN_FILES:
        path = out / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif _present(path):
                path.unlink()
        except OSError as err:
            raise ConfigError(f"--overwrite: cannot remove {path} ({err.strerror or err})") from None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _empty_file(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _fresh_run_folder(parent: Path) -> Path:
    """runs/YYYYmmdd-HHMMSS (or -2, -3 ... when taken), with runs/latest pointing at it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for number in range(1, 1000):
            folder = parent / (stamp if number == 1 else f"{stamp}-{number}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise ConfigError(f"cannot find a free folder name {parent / stamp}-N; give --output-dir")
    except OSError as err:
        raise ConfigError(f"cannot create a run folder under {parent} ({err.strerror or err}); give a writable "
                          f"--output-dir") from None
    latest = parent / LATEST
    link = parent / f".latest.{os.getpid()}"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder.name)
        os.replace(link, latest)
    except OSError:
        link.unlink(missing_ok=True)
        print(f"scaling: note: {latest} is not a link (a folder from an earlier version?) and was left as it "
              f"is; this run writes {folder}", file=sys.stderr)
    return folder


def _latest_run(latest: Path) -> Path:
    """--resume with the default folder: the run runs/latest points at."""
    if latest.is_symlink():
        target = latest.parent / os.readlink(latest)  # relative links stay relative, as the run was named
        if target.is_dir():
            return target
    elif latest.is_dir():
        return latest  # a plain folder, from before runs/latest became a link
    raise ConfigError(f"--resume: {latest} does not point at a run; give the run's folder with --output-dir")
