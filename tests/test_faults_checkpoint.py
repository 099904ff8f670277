"""Issue 13: checkpoints after interrupted saves, torn or corrupt files, and the sweep never looping on one.

One real run is interrupted (SIGTERM) to make a real checkpoint; each test copies it and damages the copy.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    REPO,
    RUN_PY,
    SMALL,
    assert_ok,
    assert_one_line_error,
    child_env,
    interrupt_run,
    run_entry,
    wait_for_metrics,
)
from scaling.results import read_result
from scaling.train.checkpoint import CheckpointError, select, verify

pytestmark = pytest.mark.slow

# About 4 ms a step here: long enough to be interrupted, short enough to finish after a resume.
ARGS = [*SMALL, "--global-bs", "32", "--max-steps", "600", "--target-accuracy", "none", "--log-every", "20",
        "--eval-every", "500"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run folder holding a real interrupted run and its checkpoint."""
    folder = tmp_path_factory.mktemp("interrupted") / "run"
    interrupt_run(folder, ARGS)
    return folder


def copy_run(interrupted: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(interrupted, folder)
    (folder / ".run.lock").unlink(missing_ok=True)
    return folder


def step_of(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["step"]


# ---------------------------------------------------------------- item 1: leftovers of interrupted saves


def test_a_save_succeeds_whatever_earlier_interrupted_saves_left(interrupted, tmp_path):
    """Before: a leftover non-empty checkpoint.old made the next save fail (Directory not empty) and the run
    end as `failed`."""
    run = copy_run(interrupted, tmp_path)
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")  # a kill between the two renames
    (run / "checkpoint.tmp").mkdir()  # a kill while writing
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"torn")
    proc = run_entry([*ARGS, "--output-dir", str(run), "--resume", "--checkpoint-every", "100"])
    assert_ok(proc)
    assert read_result(run / "result.json")["status"] == "completed"
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()
    assert step_of(run / "checkpoint") >= 500  # saved again and again after the resume
    verify(run / "checkpoint")


def _torn(folder: Path, name: str = "model.safetensors") -> None:
    with open(folder / name, "r+b") as handle:
        handle.truncate(100)


def test_loading_takes_the_newest_copy_that_verifies(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path)
    current, tmp, old = run / "checkpoint", run / "checkpoint.tmp", run / "checkpoint.old"
    step = step_of(current)
    assert select(current)[0] == current
    # A complete checkpoint.tmp (killed after its manifest, before the renames) is newer than checkpoint.
    shutil.copytree(current, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "step": step + 1}))
    assert select(current)[0] == tmp
    # An incomplete one (no manifest) is not a candidate.
    (tmp / "manifest.json").unlink()
    (tmp / "trainer_state.json").unlink()
    assert select(current)[0] == current
    # Killed between the renames: only checkpoint.old holds a complete copy.
    current.rename(old)
    chosen, state, skipped = select(current)
    assert chosen == old and state["step"] == step and skipped is None
    # A torn newest copy is skipped for an older complete one, and the skip is said.
    shutil.copytree(old, current)
    _torn(current)
    chosen, _, skipped = select(current)
    assert chosen == old and f"{current / 'model.safetensors'} is 100 bytes" in skipped


def test_a_resume_from_the_previous_copy_says_so_and_makes_it_current(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path)
    (run / "checkpoint").rename(run / "checkpoint.old")
    proc = run_entry([*ARGS, "--output-dir", str(run), "--resume"])
    assert_ok(proc)
    assert "scaling: note: resuming from checkpoint.old" in proc.stdout
    assert (run / "checkpoint").is_dir() and not (run / "checkpoint.old").exists()


# ---------------------------------------------------------------- items 4 and 9: torn or corrupt files


@pytest.mark.parametrize("damage, fragment", [
    ("model.safetensors", "model.safetensors is 100 bytes, 32,688 were written"),
    ("random_states_0.pkl", "random_states_0.pkl is 100 bytes"),
])
def test_a_standalone_resume_names_the_damaged_file_in_one_line(interrupted, tmp_path, damage, fragment):
    run = copy_run(interrupted, tmp_path)
    _torn(run / "checkpoint", damage)
    proc = run_entry([*ARGS, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint file {run / 'checkpoint'}/{fragment}", "--overwrite")
    assert read_result(run / "result.json", finished_only=False)["status"] == "interrupted"  # left as it was


def _damage(folder: Path, how: str) -> None:
    if how == "missing optimizer":
        (folder / "optimizer.bin").unlink()
    elif how == "state not UTF-8":
        (folder / "trainer_state.json").write_bytes(b"\xff\xfe")
    elif how == "model is a folder":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").mkdir()
    elif how == "manifest torn":
        (folder / "manifest.json").write_text('{"files": {')
    elif how == "manifest not ours":
        (folder / "manifest.json").write_text("[1, 2]")
    elif how == "bit flip":
        data = bytearray((folder / "optimizer.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "optimizer.bin").write_bytes(bytes(data))
    elif how == "rng not a pickle, no manifest":
        (folder / "manifest.json").unlink()
        (folder / "random_states_0.pkl").write_bytes(b"not a pickle at all")
    elif how == "model torn, no manifest":
        (folder / "manifest.json").unlink()
        _torn(folder)


@pytest.mark.parametrize("how, fragment", [
    ("missing optimizer", "optimizer.bin is missing"),
    ("state not UTF-8", "trainer_state.json is 2 bytes"),
    ("model is a folder", "model.safetensors is "),
    ("manifest torn", "manifest.json is not valid JSON"),
    ("manifest not ours", "manifest.json is not a checkpoint manifest"),
    ("bit flip", "optimizer.bin is corrupt (its SHA-256 differs"),
    ("rng not a pickle, no manifest", "random_states_0.pkl cannot be read"),
    ("model torn, no manifest", "model.safetensors cannot be read"),
])
def test_every_file_a_resume_reads_is_verified(interrupted, tmp_path, how, fragment):
    run = copy_run(interrupted, tmp_path)
    _damage(run / "checkpoint", how)
    with pytest.raises(CheckpointError) as err:
        select(run / "checkpoint")
    assert str(err.value).startswith("--resume: ") and fragment in str(err.value)
    assert str(run / "checkpoint") in str(err.value) and len(str(err.value).splitlines()) == 1


def test_a_missing_checkpoint_or_a_finished_run_is_refused_in_one_line(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path)
    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint.tmp").mkdir()
    assert_one_line_error(run_entry([*ARGS, "--output-dir", str(run), "--resume"], timeout=120),
                          f"--resume: no checkpoint in {run / 'checkpoint'} (only an incomplete checkpoint.tmp")


# ---------------------------------------------------------------- item 4: the sweep does not loop


def test_the_sweep_restarts_a_configuration_whose_checkpoint_cannot_be_loaded(tmp_path):
    """Before: the sweep relaunched it with --resume on every rerun, it crashed each time, and stayed
    `interrupted` with exit 0."""
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "corrupt", "base": {
        "num_samples": 8000, "global_bs": 32, "max_steps": 400, "target_accuracy": None, "log_every": 20,
        "log_min_s": 0, "eval_every": 500, "cpu": True}}))  # a window of 20 steps: the stop lands in time
    study_dir = tmp_path / "study"
    command = [sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study_dir), "--no-progress"]
    sweep = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not list(study_dir.glob("runs/*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    (run,) = [p.parent for p in study_dir.glob("runs/*/metrics.jsonl")]
    wait_for_metrics(run, 3)
    sweep.send_signal(signal.SIGTERM)
    sweep.communicate(timeout=120)
    assert sweep.returncode == 143
    assert read_result(run / "result.json", finished_only=False)["status"] == "interrupted"
    _torn(run / "checkpoint")

    proc = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    assert f"could not resume (--resume: checkpoint file {run / 'checkpoint' / 'model.safetensors'} is 100 bytes" \
           in proc.stdout and "starting it again from scratch" in proc.stdout
    (entry,) = json.loads((study_dir / "study.json").read_text())["configs"]
    assert entry["status"] == "completed" and entry["resumed"] is False and "is 100 bytes" in entry["restarted"]
    again = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert_ok(again)
    assert "1 already complete" in again.stdout


# ---------------------------------------------------------------- issue 29, item 14: every field validated

# A short real run that saves a checkpoint every 20 steps and finishes (at step 40) in a few seconds.
SHORT = [*SMALL, "--num-samples", "2000", "--global-bs", "32", "--max-steps", "40", "--target-accuracy", "none",
         "--log-every", "10", "--eval-every", "20", "--checkpoint-every", "20"]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A run folder holding a real finished short run and its last checkpoint (step 40)."""
    folder = tmp_path_factory.mktemp("checkpointed") / "run"
    assert_ok(run_entry([*SHORT, "--output-dir", str(folder)]))
    assert step_of(folder / "checkpoint") == 40
    return folder


def forge(folder: Path, **fields) -> Path:
    """Rewrite trainer_state.json's `fields` and recompute the manifest (its step too), so that every file
    verifies: what someone who can write the folder can make. result.json says running, as a killed run
    leaves it, so that --resume takes the checkpoint."""
    import hashlib

    checkpoint = folder / "checkpoint"
    result = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps({"status": "running", "config": result["config"]}))
    state_path = checkpoint / "trainer_state.json"
    state = {**json.loads(state_path.read_text()), **fields}
    state_path.write_text(json.dumps(state))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["step"] = state["step"]
    manifest["files"]["trainer_state.json"] = {"size": state_path.stat().st_size,
                                               "sha256": hashlib.sha256(state_path.read_bytes()).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return state_path


@pytest.mark.parametrize("fields, fragment", [
    ({"step": 10**30}, "step is 1000000000000000000000000000000, not a whole number from 0 to 1,000,000,000"),
    ({"step": -7}, "step is -7, not a whole number from 0"),
    ({"step": True}, "step is True"),
    ({"step": 20}, "train_loss holds 40 values for 20 steps"),
    ({"elapsed_s": -1.0}, "elapsed_s is -1.0"),
    ({"eval_s": 1e300}, "eval_s is 1e+300"),
    ({"first_loss": "2.3"}, "first_loss is '2.3'"),
    ({"lr": None}, "lr is None"),
    ({"history": [{"step": 10**30}]}, "history[0] is not an evaluation at a step from 0 to 40"),
    ({"history": [{"step": 20}]}, "history[0] has the keys ['step'], not an evaluation's"),
    ({"window_rates": [1.0, -5.0]}, "window_rates[1] is -5.0"),
    ({"phase_windows": ["x"]}, "phase_windows[0] is 'x'"),
    ({"noise": {"estimator": {"window": 10**30, "count": 1, "values": []}, "series": []}},
     "noise.estimator.window is 1000000000000000000000000000000"),
    ({"config": [1]}, "config is [1]"),
])
def test_a_forged_trainer_state_is_refused_in_one_line_naming_the_file(checkpointed, tmp_path, fields, fragment):
    """Before: step 10**30 ended in `ValueError: Overflow when unpacking long long` (the sampler's seed), -7 in
    `ZeroDivisionError` (the LR warmup), exit 1, where a bad checkpoint is exit 2 naming the file."""
    run = copy_run(checkpointed, tmp_path)
    state_path = forge(run, **fields)
    proc = run_entry([*SHORT, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint file {state_path} is not a usable trainer state: ", fragment,
                          "--overwrite")
    assert read_result(run / "result.json", finished_only=False)["status"] == "running"  # left as it was


def test_a_checkpoint_past_the_step_budget_is_refused(checkpointed, tmp_path):
    run = copy_run(checkpointed, tmp_path)
    losses = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["train_loss"]
    state_path = forge(run, step=41, train_loss=[*losses, 2.0], lr=[0.03] * 41)
    proc = run_entry([*SHORT, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint file {state_path} is at step 41, past this run's "
                                f"--max-steps 40")



def _rewrite_manifest(checkpoint: Path, change) -> None:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    change(manifest)
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how, fragment", [
    ("size a string", "is not a checkpoint manifest (its entry 'model.safetensors': {'sha256'"),
    ("a name outside the folder", "is not a checkpoint manifest (its entry '../result.json'"),
    ("num_processes a huge string", "was written by 'xxxxxxxx"),
])
def test_every_field_of_the_manifest_is_checked(checkpointed, tmp_path, how, fragment):
    """Before: a manifest size that is not a number ended in `ValueError: Cannot specify ',' with 's'` (a
    traceback, exit 1) while formatting the message; a huge num_processes was printed whole."""
    run = copy_run(checkpointed, tmp_path)
    checkpoint = run / "checkpoint"
    forge(run)
    if how == "size a string":
        _rewrite_manifest(checkpoint, lambda m: m["files"]["model.safetensors"].update(size="x"))
    elif how == "a name outside the folder":
        _rewrite_manifest(checkpoint, lambda m: m["files"].update({"../result.json": m["files"]["optimizer.bin"]}))
    else:
        _rewrite_manifest(checkpoint, lambda m: m.update(num_processes="x" * 100_000))
    proc = run_entry([*SHORT, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint {'file ' if how != 'num_processes a huge string' else ''}"
                                f"{checkpoint}", fragment)
    assert len(proc.stderr) < 1000


def test_a_forged_start_state_is_refused_in_one_line(tmp_path):
    """The training state at the start (start_0.pt, for the exact-step replay) is checked as well: before, a
    step past the checkpoint's own was taken as the replay's start."""
    import hashlib

    import torch

    run = tmp_path / "run"
    flags = [*SHORT, "--target-accuracy", "0.99"]  # a target (never reached): the start state is saved
    assert_ok(run_entry([*flags, "--output-dir", str(run)]))
    start_path = run / "checkpoint" / "start_0.pt"
    start = torch.load(start_path, weights_only=True)
    torch.save({**start, "step": 10**30}, start_path)
    forge(run)
    _rewrite_manifest(run / "checkpoint", lambda m: m["files"].update({"start_0.pt": {
        "size": start_path.stat().st_size, "sha256": hashlib.sha256(start_path.read_bytes()).hexdigest()}}))
    proc = run_entry([*flags, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint file {start_path} is not a usable start state: step is "
                                f"1000000000000000000000000000000, not a whole number from 0 to the checkpoint's "
                                f"step 40")


# ---------------------------------------------------------------- issue 29, item 15: the file refused is named


class _Planted:
    """Pickles as a call of print: harmless if it ever ran, and seen on stdout if it did."""

    def __reduce__(self):
        return print, ("planted code ran",)


def test_a_pre_manifest_checkpoint_with_a_malicious_optimizer_names_optimizer_bin(interrupted, tmp_path):
    """Before: refused (torch's weights_only loader), but the message named model.safetensors."""
    import pickle

    run = copy_run(interrupted, tmp_path)
    checkpoint = run / "checkpoint"
    (checkpoint / "manifest.json").unlink()  # written before manifests: every file is opened to be checked
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps({"state": _Planted()}))
    with pytest.raises(CheckpointError) as err:
        select(checkpoint)
    assert f"checkpoint file {checkpoint / 'optimizer.bin'} cannot be read (UnpicklingError" in str(err.value)
    assert "model.safetensors" not in str(err.value)
    proc = run_entry([*ARGS, "--output-dir", str(run), "--resume"])
    assert_one_line_error(proc, f"--resume: checkpoint file {checkpoint / 'optimizer.bin'} cannot be read")
    assert "planted code ran" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- issue 29, item 1: no save through a link


def test_a_save_never_writes_through_a_link_planted_at_checkpoint_tmp(tmp_path):
    """Links planted during a real run at checkpoint.tmp (to a folder outside) and checkpoint.old (to a
    missing path outside) are removed, never followed: nothing is written outside the run folder and the
    later saves succeed."""
    folder, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *ARGS, "--checkpoint-every", "40", "--output-dir",
                             str(folder)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, planted, planted_at = time.time() + 120, set(), None
    while proc.poll() is None and time.time() < deadline and len(planted) < 2:
        if (folder / "checkpoint" / "manifest.json").exists():
            for name, target in (("checkpoint.tmp", outside), ("checkpoint.old", outside / "created")):
                try:  # fails while a save has its own copy there: tried again
                    if name not in planted:
                        (folder / name).symlink_to(target)
                        planted.add(name)
                except FileExistsError:
                    pass
            try:
                planted_at = step_of(folder / "checkpoint")
            except (FileNotFoundError, ValueError):  # between a save's two renames
                pass
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=120)
    assert len(planted) == 2 and planted_at is not None, "the run ended before the links could be planted"
    assert proc.returncode == 0, stderr[-2000:]
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]  # nothing written or created outside
    assert (outside / "keep.txt").read_text() == "mine"
    assert not (folder / "checkpoint.tmp").is_symlink() and not (folder / "checkpoint.old").is_symlink()
    assert step_of(folder / "checkpoint") > planted_at  # saved again after the links were planted
    verify(folder / "checkpoint")
