"""Issue 33 item 2: every run writes its resolved configuration (OUTPUT_DIR/config.yaml), and
`scaling run --resume --output-dir DIR` alone continues the run with it; flags given with it must be changes a
resume can make.

One real run with settings far from the defaults (batch, LR, dataset size, seed) is interrupted by SIGTERM;
each test copies its folder. The resumed run's per-step losses and LRs are an uninterrupted run's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    RUN_PY,
    assert_ok,
    assert_one_line_error,
    child_env,
    interrupt_run,
    load_result,
    run_entry,
    wait_for_metrics,
)
from scaling.results import read_result

pytestmark = pytest.mark.slow

# Not one of these is a default: a resume that forgot any of them would train something else.
ARGS = ["--num-samples", "8000", "--global-bs", "32", "--base-lr", "0.05", "--seed", "3", "--max-steps", "600",
        "--target-accuracy", "none", "--log-every", "20", "--eval-every", "500", "--progress", "false", "--cpu"]
SETTINGS = {"num_samples": 8000, "global_bs": 32, "base_lr": 0.05, "seed": 3, "max_steps": 600,
            "target_accuracy": None, "eval_every": 500, "cpu": True}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert_ok(run_entry([*ARGS, "--output-dir", str(folder)]))
    result = load_result(folder)
    assert result["status"] == "completed" and result["steps"] == 600
    saved = yaml.safe_load((folder / "config.yaml").read_text())  # a single run saves its configuration
    assert saved == result["config"] and saved["output_dir"] == str(folder)
    return result


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A folder holding a real run stopped by SIGTERM, with its checkpoint and config.yaml."""
    folder = tmp_path_factory.mktemp("interrupted") / "run"
    result = interrupt_run(folder, ARGS)
    assert 0 < result["steps"] < 600
    assert yaml.safe_load((folder / "config.yaml").read_text()) == result["config"]
    return folder


def copy_run(interrupted: Path, folder: Path) -> Path:
    shutil.copytree(interrupted, folder)
    (folder / ".run.lock").unlink(missing_ok=True)
    return folder


def stopped_at(folder: Path) -> int:
    return read_result(folder / "result.json", finished_only=False)["steps"]


def assert_continues_as_uninterrupted(folder: Path, reference: dict) -> None:
    resumed = load_result(folder)
    assert resumed["status"] == "completed" and resumed["steps"] == 600
    for key, value in SETTINGS.items():
        assert resumed["config"][key] == value, key
    assert resumed["config"]["output_dir"] == str(folder)
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    assert resumed["lr_per_step"] == pytest.approx(reference["lr_per_step"], rel=1e-9)
    assert yaml.safe_load((folder / "config.yaml").read_text()) == resumed["config"]


def test_a_resume_given_only_the_output_folder_continues_the_run_as_if_uninterrupted(interrupted, reference,
                                                                                       tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    step = stopped_at(folder)
    proc = run_entry(["--resume", "--output-dir", str(folder)])
    assert_ok(proc)
    assert f"resumed from {folder / 'checkpoint'} at step {step}" in proc.stdout
    assert_continues_as_uninterrupted(folder, reference)


def test_a_resume_of_runs_latest_with_no_flags_continues_it(interrupted, reference, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    folder = copy_run(interrupted, runs / "20260101-000000")
    os.symlink(folder.name, runs / "latest")
    # A config.yaml that names another folder (the run was moved): the folder resumed is the one given.
    assert_ok(run_entry(["--resume"], cwd=tmp_path))
    resumed = load_result(folder)
    assert resumed["config"]["output_dir"] == "runs/20260101-000000"
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)


def test_flags_given_with_a_resume_must_be_resumable_changes(interrupted, reference, tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    proc = run_entry(["--resume", "--output-dir", str(folder), "--global-bs", "64"])
    assert_one_line_error(proc, f"--resume: --global-bs gives the run in {folder} a different global_bs (32, now 64)", "leave it out",
                          str(folder / "config.yaml"))
    config = tmp_path / "more.yaml"
    config.write_text("seed: 4\n")
    proc = run_entry(["--resume", "--output-dir", str(folder), "--config", str(config)])
    assert_one_line_error(proc, f"'seed' in {config} gives the run in {folder} a different seed (3, now 4)")
    # The same value as the saved one is no change; a resumable change applies.
    proc = run_entry(["--resume", "--output-dir", str(folder), "--global-bs", "32", "--max-time", "3600",
                      "--checkpoint-every", "1000"])
    assert_ok(proc)
    resumed = load_result(folder)
    assert resumed["config"]["max_time"] == 3600 and resumed["config"]["checkpoint_every"] == 1000
    assert_continues_as_uninterrupted(folder, reference)


def test_print_config_with_resume_shows_the_run_it_would_continue(interrupted, tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    proc = run_entry(["--resume", "--output-dir", str(folder), "--print-config", "--max-time", "99"])
    assert_ok(proc)
    shown = yaml.safe_load(proc.stdout)
    assert {k: shown[k] for k in SETTINGS} == SETTINGS and shown["max_time"] == 99


@pytest.mark.parametrize("content, fragment", [
    ("global_bs: [1, 2\n", "is not valid YAML at line"),
    ("global_bs: many\n", "is damaged: 'global_bs' expects int"),
    ("global_bs: -4\n", "is damaged: --global-bs must be > 0"),
    ("", "is empty"),
])
def test_a_damaged_saved_config_is_named_in_one_line(interrupted, tmp_path, content, fragment):
    folder = copy_run(interrupted, tmp_path / "run")
    (folder / "config.yaml").write_text(content)
    proc = run_entry(["--resume", "--output-dir", str(folder)])
    assert_one_line_error(proc, "--resume: ", str(folder / "config.yaml"), fragment)


def test_a_folder_without_a_saved_config_resumes_as_before(interrupted, reference, tmp_path):
    """A run of an earlier version wrote no config.yaml: the flags are checked against the checkpoint alone,
    as before; given again in full, the run continues."""
    folder = copy_run(interrupted, tmp_path / "run")
    (folder / "config.yaml").unlink()
    proc = run_entry(["--resume", "--output-dir", str(folder), "--num-samples", "8000", "--cpu"])
    assert_one_line_error(proc, "--resume: the checkpoint was written with a different global_bs (32, now 256)")
    assert not (folder / "config.yaml").exists()  # a refused resume writes nothing
    assert_ok(run_entry([*ARGS, "--resume", "--output-dir", str(folder)]))
    assert_continues_as_uninterrupted(folder, reference)


def test_a_refused_resume_leaves_the_saved_config_as_it_was(interrupted, tmp_path):
    """The checkpoint's own check (here: settings edited into config.yaml) refuses before anything is written."""
    folder = copy_run(interrupted, tmp_path / "run")
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["base_lr"] = 0.2
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    before = (folder / "config.yaml").read_bytes(), (folder / "result.json").read_bytes()
    proc = run_entry(["--resume", "--output-dir", str(folder)])
    assert_one_line_error(proc, "--resume: the checkpoint was written with a different base_lr (0.05, now 0.2)")
    assert ((folder / "config.yaml").read_bytes(), (folder / "result.json").read_bytes()) == before
    assert json.loads((folder / "result.json").read_text())["status"] == "interrupted"


def test_two_processes_resume_with_only_the_output_folder(tmp_path):
    """Every process reads the saved configuration before the process group forms: all of them continue
    the run (each checks the checkpoint against its own configuration)."""
    from conftest import _free_port, run_torchrun

    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), str(RUN_PY), *ARGS, "--output-dir", str(folder)],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_metrics(folder, 3)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to its workers, which checkpoint and stop
    _, stderr = proc.communicate(timeout=120)
    result = read_result(folder / "result.json", finished_only=False)
    assert result["status"] == "interrupted", stderr[-2000:]
    step = result["steps"]
    resumed_proc = run_torchrun(["--resume", "--output-dir", str(folder)])
    assert_ok(resumed_proc)
    assert f"resumed from {folder / 'checkpoint'} at step {step}" in resumed_proc.stdout
    resumed = load_result(folder)
    assert resumed["status"] == "completed" and resumed["steps"] == 600
    assert resumed["batch"]["world_size"] == 2 and resumed["batch"]["per_device"] == 16
    assert {k: resumed["config"][k] for k in SETTINGS} == SETTINGS
