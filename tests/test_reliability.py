"""Preemption, kills, out-of-memory: real subprocesses and real signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, RUN_PY, SMALL, assert_ok, child_env, load_result, run_entry, wait_for_metrics
from scaling.files import read_metrics
from scaling.results import read_result

pytestmark = pytest.mark.slow

# Small batches so the run lasts long enough to be interrupted (hundreds of steps to the target).
LONG = [*SMALL, "--global-bs", "32", "--base-lr", "0.02", "--lr-scaling", "none", "--target-accuracy", "0.85",
        "--eval-every", "50"]


def start(args, **popen):
    return subprocess.Popen([sys.executable, str(RUN_PY), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=child_env(), **popen)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    assert_ok(run_entry([*LONG, "--output-dir", str(folder)]))
    result = load_result(folder)
    assert result["status"] == "reached" and result["steps_to_target"] > 100
    return result


def forget_the_start(checkpoint: Path) -> None:
    """Make the checkpoint one written without the training state at the start (an earlier version's)."""
    (checkpoint / "start_0.pt").unlink()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    del manifest["files"]["start_0.pt"]
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_checkpoints_and_resume_reaches_the_target_at_the_same_step(tmp_path, reference, signum, code):
    """The resumed run replays from the state at the start its checkpoint holds: the same exact step. (With
    SIGINT the checkpoint is made one without that state: the step is then an interval holding the truth.)"""
    first_start = time.time()
    proc = start([*LONG, "--output-dir", str(tmp_path)])
    wait_for_metrics(tmp_path, 3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    interrupted = read_result(tmp_path / "result.json", finished_only=False)
    assert interrupted["status"] == "interrupted" and interrupted["stop_signal"] == signum.name
    assert read_result(tmp_path / "result.json") is None  # unfinished: a sweep resumes it
    assert (tmp_path / "checkpoint" / "trainer_state.json").is_file()
    stopped_at = interrupted["steps"]
    assert 0 < stopped_at < reference["steps_to_target"]

    with_start = signum == signal.SIGTERM
    if not with_start:
        forget_the_start(tmp_path / "checkpoint")
    downtime = 3.0
    time.sleep(downtime)
    resumed_proc = run_entry([*LONG, "--output-dir", str(tmp_path), "--resume"])
    assert_ok(resumed_proc)
    assert f"resumed from {tmp_path / 'checkpoint'} at step {stopped_at}" in resumed_proc.stdout
    resumed = load_result(tmp_path)
    assert resumed["status"] == "reached"
    search, truth = resumed["target_search"], reference["steps_to_target"]
    assert reference["target_search"]["exact"]
    if with_start:
        assert search["exact"] and resumed["steps_to_target"] == truth
    else:
        assert not search["exact"] and "resumed at step" in search["reason"]
        low, high = search["interval"]
        assert low <= truth <= high == resumed["steps_to_target"]
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    # The clock excludes the downtime (and both start-ups): it is well under the wall time of it all.
    assert resumed["time_to_target_s"] < time.time() - first_start - downtime
    steps = [m["step"] for m in read_metrics(tmp_path / "metrics.jsonl") if m["type"] == "train"]
    assert steps == sorted(steps) and steps[-1] == resumed["steps"]  # one continuous stream


def test_resume_refuses_a_changed_configuration_or_a_missing_checkpoint(tmp_path):
    from conftest import assert_one_line_error

    proc = run_entry([*LONG, "--output-dir", str(tmp_path), "--resume"])
    assert_one_line_error(proc, "--resume: no checkpoint in")
    args = [*SMALL, "--global-bs", "64", "--max-steps", "3000", "--checkpoint-every", "10", "--target-accuracy",
            "none", "--output-dir", str(tmp_path)]
    proc = start(args)
    wait_for_metrics(tmp_path, 3)
    proc.kill()  # killed outright: `running`, with the periodic checkpoint
    proc.communicate()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "running"
    assert (tmp_path / "checkpoint" / "trainer_state.json").is_file()
    changed = [a if a != "64" else "128" for a in args]
    assert_one_line_error(run_entry([*changed, "--resume"]), "different global_bs (64, now 128)")


def test_sigkill_leaves_readable_metrics_and_the_sweep_reruns_the_configuration(tmp_path):
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "killed", "base": {
        "num_samples": 8000, "global_bs": 32, "base_lr": 0.02, "lr_scaling": "none", "target_accuracy": 0.85,
        "eval_every": 50, "cpu": True}}))
    study_dir = tmp_path / "study"
    sweep = subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir),
                              "--no-progress"], cwd=REPO, env=child_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(study_dir.glob("runs/*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    (run_dir,) = [p.parent for p in study_dir.glob("runs/*/metrics.jsonl")]
    wait_for_metrics(run_dir, 4)
    run_pid = int((run_dir / ".run.lock").read_text().split()[1])
    os.kill(run_pid, signal.SIGKILL)  # the run first (killed with its sweep it would checkpoint), no cleanup
    sweep.kill()
    sweep.wait()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    parsed = read_metrics(run_dir / "metrics.jsonl")
    assert len(parsed) >= 4 and len(parsed) >= len(lines) - 1  # at most a torn last line
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"
    assert read_result(run_dir / "result.json") is None

    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir),
                           "--no-progress"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert_ok(proc)  # the locks of the killed sweep and run did not survive them
    assert read_result(run_dir / "result.json")["status"] == "reached"
    assert read_metrics(run_dir / "metrics.jsonl")[0]["step"] <= parsed[0]["step"]  # started again from scratch


def test_out_of_memory_is_a_result_naming_the_decomposition(tmp_path):
    proc = run_entry([*SMALL, "--global-bs", "4096", "--per-device-bs", "4096", "--memory-cap-mb", "5",
                      "--output-dir", str(tmp_path)])
    assert proc.returncode == 1
    assert "scaling: out of memory: global batch 4096 = per-device 4096 x 1 process x 1 accumulation step" in proc.stderr
    result = read_result(tmp_path / "result.json")
    assert result["status"] == "oom"
    assert result["batch"]["per_device"] == 4096
    assert "--per-device-bs 2048 (x2 accumulation steps)" in result["suggestion"]
    assert "over --memory-cap-mb 5" in result["error"]
