"""Issue 13: signals and kills around sweeps and runs, one writer per run folder, what a run may write over,
and files that cannot be written. Real processes, real signals, real kernel limits."""

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    RUN_PY,
    SMALL,
    assert_ok,
    assert_one_line_error,
    child_env,
    run_entry,
    run_in_process,
    run_torchrun,
)
from scaling.files import read_metrics
from scaling.results import read_result

# About 4 ms a step; logging windows of 200 steps (close to a second) unless an evaluation closes one.
LONG = {"num_samples": 8000, "global_bs": 32, "max_steps": 800, "target_accuracy": None, "log_every": 200,
        "eval_every": 400, "cpu": True}
QUICK = [*SMALL, "--max-steps", "4", "--target-accuracy", "none"]


def write_spec(tmp_path, name="faults", launcher=None, seeds=(0,), **base) -> Path:
    spec = {"name": name, "base": {**LONG, **base}, "grid": {"seed": list(seeds)}}
    if launcher:
        spec["launcher"] = launcher
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_sweep(spec: Path, study_dir: Path) -> subprocess.Popen:
    # Its own process group, as a terminal gives a foreground job.
    return subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir),
                             "--no-progress"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def sweep(spec: Path, study_dir: Path, timeout=300):
    return subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir),
                           "--no-progress"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def wait_for_training(study_dir: Path, lines: int = 1, timeout: float = 120) -> Path:
    """The run folder of the first configuration once it has written `lines` metrics records."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [p.parent for p in study_dir.glob("runs/*/metrics.jsonl")]
        if runs and len(read_metrics(runs[0] / "metrics.jsonl")) >= lines:
            return runs[0]
        time.sleep(0.02)
    raise AssertionError(f"no training in {study_dir} after {timeout} s")


def lock_holder(run_dir: Path) -> int:
    return int((run_dir / ".run.lock").read_text().split()[1])


def wait_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {alive} still alive after {timeout} s")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def descendants(pid: int) -> list[int]:
    from scaling.study.sweep import _descendants

    return _descendants(pid)


def assert_continuous(run_dir: Path, last: int) -> None:
    steps = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl") if m["type"] == "train"]
    assert steps == sorted(steps) and steps[-1] == last


# ---------------------------------------------------------------- item 2: Ctrl-C and SIGTERM on a sweep


@pytest.mark.slow
@pytest.mark.parametrize("how, code", [("SIGINT to the group", 130), ("SIGTERM to the sweep", 143)])
def test_a_stopped_sweep_lets_its_run_checkpoint_records_the_study_and_exits_in_one_line(tmp_path, how, code):
    """Before: the sweep SIGKILLed its run 0.25 s after Ctrl-C (no checkpoint: `running`, progress lost),
    printed a KeyboardInterrupt traceback and wrote no study.json."""
    spec = write_spec(tmp_path, seeds=(0, 1))
    study_dir = tmp_path / "study"
    proc = start_sweep(spec, study_dir)
    run_dir = wait_for_training(study_dir)
    if how.startswith("SIGINT"):
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    signame = "SIGINT" if code == 130 else "SIGTERM"
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"scaling: study faults stopped by {signame} after 1 of 2 configurations")
    assert "run the same command again to continue" in lines[0]
    record = json.loads((study_dir / "study.json").read_text())
    assert [c["status"] for c in record["configs"]] == ["interrupted", "pending"]
    result = read_result(run_dir / "result.json", finished_only=False)
    assert result["status"] == "interrupted" and result["stop_signal"] == signame
    assert (run_dir / "checkpoint" / "manifest.json").is_file()
    if code == 130:
        again = sweep(spec, study_dir)
        assert_ok(again)
        record = json.loads((study_dir / "study.json").read_text())
        assert [c["status"] for c in record["configs"]] == ["completed", "completed"]
        assert record["configs"][0]["resumed"] is True
        assert_continuous(run_dir, LONG["max_steps"])


HANGS = '''
import signal, time


def hangs():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("loading", flush=True)
    time.sleep(600)
'''


@pytest.mark.slow
def test_a_run_that_does_not_stop_is_killed_after_the_grace_period(tmp_path):
    (tmp_path / "hanging.py").write_text(HANGS)
    spec = write_spec(tmp_path, dataset="hanging:hangs", launcher={"grace_s": 3})
    study_dir = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir),
                             "--no-progress"], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and "loading" not in "".join(
            p.read_text() for p in study_dir.glob("runs/*/stdout.log")):
        time.sleep(0.05)
    run_pid = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    started = time.time()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and time.time() - started < 60, stderr  # 3 s of grace, not the 600 s sleep
    wait_gone(run_pid, timeout=30)
    (entry,) = json.loads((study_dir / "study.json").read_text())["configs"]
    assert entry["status"] == "interrupted"


# ---------------------------------------------------------------- item 3: no run outlives its sweep


@pytest.mark.slow
def test_killing_the_sweep_stops_its_run_with_a_checkpoint_and_the_next_sweep_resumes_it(tmp_path):
    """Before: kill -9 of the sweep left the run alive (parent 1) and the next sweep started a second writer
    into the same folder."""
    spec = write_spec(tmp_path)
    study_dir = tmp_path / "study"
    proc = start_sweep(spec, study_dir)
    run_dir = wait_for_training(study_dir)
    run_pid = lock_holder(run_dir)
    proc.kill()
    proc.communicate()
    wait_gone([run_pid], timeout=60)
    result = read_result(run_dir / "result.json", finished_only=False)
    assert result["status"] == "interrupted" and result["stop_signal"] == "SIGTERM"
    again = sweep(spec, study_dir)
    assert_ok(again)
    (entry,) = json.loads((study_dir / "study.json").read_text())["configs"]
    assert entry["status"] == "completed" and entry["resumed"] is True
    assert_continuous(run_dir, LONG["max_steps"])


@pytest.mark.slow
def test_killing_the_sweep_stops_torchrun_and_its_workers(tmp_path):
    spec = write_spec(tmp_path, launcher={"type": "torchrun", "nproc": 2}, global_bs=64)
    study_dir = tmp_path / "study"
    proc = start_sweep(spec, study_dir)
    run_dir = wait_for_training(study_dir)
    tree = descendants(proc.pid)
    assert len(tree) >= 3  # torchrun and its two workers
    proc.kill()
    proc.communicate()
    wait_gone(tree, timeout=90)
    assert read_result(run_dir / "result.json", finished_only=False)["status"] == "interrupted"


@pytest.mark.slow
def test_no_two_processes_write_one_run_folder(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(RUN_PY), *SMALL, "--global-bs", "32", "--max-steps", "3000",
                              "--target-accuracy", "none", "--output-dir", str(out)], cwd=REPO, env=child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not read_metrics(out / "metrics.jsonl") and time.time() < deadline:
            time.sleep(0.05)
        for flag in ("--overwrite", "--resume"):
            proc = run_entry([*SMALL, "--global-bs", "32", "--max-steps", "3000", "--target-accuracy", "none",
                              "--output-dir", str(out), flag], timeout=120)
            assert_one_line_error(proc, f"output folder {out} is in use by another run (pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    assert read_result(out / "result.json", finished_only=False)["status"] == "interrupted"


# ---------------------------------------------------------------- item 5: what a run writes over


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path):
    out = tmp_path / "run"
    assert_ok(run_entry([*QUICK, "--global-bs", "64", "--output-dir", str(out), "--checkpoint-every", "2"]))
    before = (out / "result.json").read_bytes()
    proc = run_entry([*QUICK, "--global-bs", "128", "--output-dir", str(out)], timeout=120)
    assert_one_line_error(proc, f"output folder {out} holds a finished run (status completed)", "--overwrite")
    assert (out / "result.json").read_bytes() == before
    proc = run_entry([*QUICK, "--global-bs", "64", "--output-dir", str(out), "--resume"], timeout=120)
    assert_one_line_error(proc, "--resume: ", "holds a finished run", "nothing to resume")
    assert_one_line_error(run_in_process([*QUICK, "--output-dir", str(out), "--resume", "--overwrite"]),
                          "give at most one of --resume and --overwrite")
    assert_ok(run_entry([*QUICK, "--global-bs", "128", "--output-dir", str(out), "--overwrite"]))
    assert read_result(out / "result.json")["config"]["global_bs"] == 128
    assert not (out / "checkpoint").exists()  # the other configuration's checkpoint went with it
    assert len([m for m in read_metrics(out / "metrics.jsonl") if m["type"] == "train"]) == 1  # not appended


@pytest.mark.slow
def test_an_interrupted_or_killed_run_is_not_overwritten_without_a_flag(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "--global-bs", "32", "--max-steps", "3000", "--target-accuracy", "none", "--output-dir",
            str(out)]
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(read_metrics(out / "metrics.jsonl")) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    step = read_result(out / "result.json", finished_only=False)["steps"]
    proc = run_entry(args, timeout=120)
    assert_one_line_error(proc, f"holds an interrupted run with a checkpoint at step {step}", "--resume", "--overwrite")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args[:-1], str(killed)], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(read_metrics(killed / "metrics.jsonl")) < 2 and time.time() < deadline + 60:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    lines = (killed / "metrics.jsonl").read_bytes()
    proc = run_entry([*args[:-1], str(killed)], timeout=120)
    assert_one_line_error(proc, "holds a run that was killed while running", "pass --overwrite")
    assert (killed / "metrics.jsonl").read_bytes() == lines  # kept


@pytest.mark.parametrize("content, problem", [
    ('{"status": "reach', "is not valid JSON (torn or damaged)"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    ("dir", "is a folder, not a file"),
    ('{"steps": 3}', "is not a result of this tool (no status)"),
])
@pytest.mark.slow
def test_an_unreadable_result_in_the_folder_is_named_and_kept(tmp_path, content, problem):
    out = tmp_path / "run"
    out.mkdir()
    if content == "dir":
        (out / "result.json").mkdir()
    elif isinstance(content, bytes):
        (out / "result.json").write_bytes(content)
    else:
        (out / "result.json").write_text(content)
    proc = run_entry([*QUICK, "--output-dir", str(out)], timeout=60)
    assert_one_line_error(proc, f"output folder {out} holds {out / 'result.json'} {problem}", "--overwrite")
    assert proc.stdout == ""
    assert_ok(run_entry([*QUICK, "--output-dir", str(out), "--overwrite"]))
    assert read_result(out / "result.json")["status"] == "completed"


@pytest.mark.slow
def test_the_default_output_folder_is_fresh_per_run_and_runs_latest_points_at_it(tmp_path):
    assert_ok(run_entry([*QUICK, "--global-bs", "64"], cwd=tmp_path))
    assert_ok(run_entry([*QUICK, "--global-bs", "64"], cwd=tmp_path))
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink())
    assert len(folders) == 2 and all((p / "result.json").is_file() for p in folders)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == folders[1].resolve()
    assert read_result(folders[1] / "result.json")["config"]["output_dir"] == str(Path("runs") / folders[1].name)
    # --resume without --output-dir means the latest run
    proc = run_entry([*QUICK, "--global-bs", "64", "--resume"], cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, f"--resume: runs/{folders[1].name} holds a finished run")
    # An explicit --output-dir runs/latest is a folder like any other (the newest run, through the link): not
    # the default, so it is not replaced by a fresh folder but refused, as any folder holding a run is.
    proc = run_entry([*QUICK, "--global-bs", "64", "--output-dir", "runs/latest"], cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, "output folder runs/latest holds a finished run", "--overwrite")


@pytest.mark.slow
def test_two_processes_with_the_default_folder_write_one_fresh_folder_together(tmp_path):
    """Every process settles the same folder before training: one run folder, both ranks' checkpoint parts in
    it (each process saves its RNG state), one result."""
    proc = run_torchrun([*QUICK, "--global-bs", "64", "--checkpoint-every", "2"], cwd=tmp_path)
    assert_ok(proc)
    folders = [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    assert len(folders) == 1, folders
    checkpoint = folders[0] / "checkpoint"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert read_result(folders[0] / "result.json")["batch"]["world_size"] == 2


# ---------------------------------------------------------------- item 10: files the run writes


def test_an_output_folder_that_cannot_be_written_is_refused_before_loading_data(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    proc = run_in_process([*QUICK, "--output-dir", str(a_file)])
    assert_one_line_error(proc, f"--output-dir {a_file} is a file, not a folder")
    assert proc.stdout == ""  # nothing announced: refused before the data and model are built
    if os.geteuid() == 0:
        locked = Path("/proc/self")  # root writes anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
    proc = run_in_process([*QUICK, "--output-dir", str(locked)])
    assert_one_line_error(proc, f"--output-dir {locked} is not writable")
    assert proc.stdout == ""


def small_files():  # a 20 kB file-size limit on the child: writes past it fail with EFBIG, as a full disk fails
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
def test_a_write_that_fails_mid_run_ends_failed_with_the_reason_in_one_line(tmp_path):
    # Logged every step, metrics.jsonl grows about 200 bytes a step: past 20 kB near step 100, while the
    # failed result.json fits.
    # (A link to /dev/full in its place, the old way to fill a disk, is now refused before the run starts.)
    assert_ok(run_entry([*QUICK, "--output-dir", str(tmp_path / "warm")]))  # the dataset cache exists
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(RUN_PY), *QUICK, "--max-steps", "300", "--log-every", "1",
                           "--log-min-s", "0", "--output-dir", str(out)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=small_files)
    assert_one_line_error(proc, f"cannot write {out / 'metrics.jsonl'}: File too large")
    result = read_result(out / "result.json")
    assert result["status"] == "failed" and "File too large" in result["error"]
    assert 50 < len(read_metrics(out / "metrics.jsonl")) < 300  # what was written before the failure is kept


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_ends_failed_and_keeps_what_was_written(tmp_path):
    assert_ok(run_entry([*QUICK, "--output-dir", str(tmp_path / "warm")]))  # the dataset cache exists
    out = tmp_path / "run"  # checkpoints (about 80 kB) cannot be written under small_files' limit
    proc = subprocess.run([sys.executable, str(RUN_PY), *QUICK, "--max-steps", "40", "--checkpoint-every", "10",
                           "--output-dir", str(out)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=small_files)
    assert_one_line_error(proc, f"cannot write checkpoint {out / 'checkpoint'}", "File too large")
    result = read_result(out / "result.json")
    assert result["status"] == "failed" and "File too large" in result["error"]
    assert read_metrics(out / "metrics.jsonl")  # kept


@pytest.mark.slow
def test_results_and_study_records_are_readable_by_others(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    out = tmp_path / "run"
    assert_ok(run_entry([*QUICK, "--output-dir", str(out)]))
    assert stat.S_IMODE((out / "result.json").stat().st_mode) == expected
    spec = write_spec(tmp_path, max_steps=4, eval_every=4)
    assert_ok(sweep(spec, tmp_path / "study"))
    assert stat.S_IMODE((tmp_path / "study" / "study.json").stat().st_mode) == expected
