"""scaling branch: the critical batch during training, from a reference run's branch points. On a problem whose
noise scale rises by construction (a linear teacher with label noise: the gradient falls towards the noise floor
as the model learns, the per-sample spread does not), the critical batch found late is larger than early; a
branch at the reference batch under a fresh data order (A/A) keeps up; the control under the reference's own
data order continues the reference exactly. Problems are generated per seed."""

import json
import sys
import textwrap

import pytest
import torch

from conftest import SMALL, assert_ok, assert_one_line_error, load_result, run_entry, run_in_process

RISING = textwrap.dedent('''
    import os

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def data():
        g = torch.Generator().manual_seed(int(os.environ["PROBLEM_SEED"]))
        x = torch.randn(8192 + 2048, 32, generator=g)
        teacher = torch.randn(32, 4, generator=g)
        y = (x @ teacher).argmax(dim=1)
        flip = torch.rand(len(y), generator=g) < 0.2  # label noise: a floor under the loss, and its gradient noise
        y = torch.where(flip, torch.randint(0, 4, (len(y),), generator=g), y)
        return TensorDataset(x[:8192], y[:8192]), TensorDataset(x[8192:], y[8192:])

    def model():
        return nn.Sequential(nn.Linear(32, 4))
''')


def reference_args(out, seed: int, *extra: str) -> list[str]:
    return ["--dataset", "rising_problem:data", "--model", "rising_problem:model", "--global-bs", "8", "--base-lr",
            "0.01", "--base-bs", "8", "--lr-scaling", "sqrt", "--momentum", "0", "--warmup-steps", "0",
            "--max-steps", "1500", "--target-accuracy", "none", "--eval-every", "100", "--cpu", "--progress", "false",
            "--seed", str(seed), "--output-dir", str(out), *extra]


@pytest.fixture
def rising(tmp_path, monkeypatch):
    def use(seed: int) -> dict[str, str]:
        sys.modules.pop("rising_problem", None)
        (tmp_path / "rising_problem.py").write_text(RISING)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PROBLEM_SEED", str(seed))
        return {"PYTHONPATH": str(tmp_path), "PROBLEM_SEED": str(seed)}
    yield use
    sys.modules.pop("rising_problem", None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_on_a_rising_noise_scale_the_critical_batch_rises_and_an_aa_branch_keeps_up(tmp_path, rising, seed):
    env = rising(seed)
    plain, reference = tmp_path / "plain", tmp_path / "reference"
    assert_ok(run_entry(reference_args(plain, seed), **env))
    assert_ok(run_entry(reference_args(reference, seed, "--branch-points", "3%,60%"), **env))
    # Keeping the points (and probing the noise there) leaves the training as it was.
    assert load_result(reference)["train_loss"] == load_result(plain)["train_loss"]
    proc = run_in_process([str(reference), "--at", "3%,60%", "--batches", "1x,2x,4x,8x,16x", "--window", "2048"],
                          command="branch", **env)
    assert_ok(proc)
    record = json.loads((reference / "branches.json").read_text())
    early, late = record["points"]
    assert (early["step"], late["step"]) == (45, 900) and record["window_samples"] == 2048
    for point in record["points"]:
        assert point["matches_reference"] == 0.0  # the control under the reference's data order is the reference
        assert len(point["control_losses"]) == 4 and point["tolerance"] > 0
        aa = next(b for b in point["branches"] if b["multiple"] == 1)
        assert aa["kept_up"], point  # the reference batch under a data order no control used
        for branch in point["branches"]:
            assert branch["kept_up"] == (branch["loss"] - point["control_mean"] <= point["tolerance"])
            result = load_result(reference / branch["run"])
            assert result["steps"] == point["step"] + 2048 // branch["batch"]
            assert result["history"][-1]["samples"] == point["samples"] + 2048
        low, high = point["bracket"]
        assert low == point["critical_batch"] and (high is None or high > low)
    assert late["critical_batch"] > early["critical_batch"], (early["bracket"], late["bracket"])
    assert late["b_simple"] > early["b_simple"] > 0  # the reference's probes at the points: the noise scale rose
    # A batch-size warmup built on the record: the reference batch, then each point's critical batch from its
    # samples on (a warmup only rises).
    derived = tmp_path / "derived"
    assert_ok(run_entry([*reference_args(derived, seed), "--per-device-bs", "8",
                         "--batch-schedule", f"from:{reference / 'branches.json'}"], **env))
    expected, batch = [(0, 8)], 8
    for point in record["points"]:
        if max(batch, point["critical_batch"]) != batch:
            batch = point["critical_batch"]
            expected.append((point["samples"], batch))
    phases = load_result(derived)["batch_schedule"]
    assert [(p["asked"], p["global"]) for p in phases] == expected and len(expected) > 1


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("branching") / "reference"
    assert_ok(run_entry([*SMALL, "--global-bs", "64", "--max-steps", "60", "--target-accuracy", "none",
                         "--eval-every", "30", "--branch-points", "10%,30", "--output-dir", str(folder)]))
    return folder


def test_a_reference_keeps_its_points_and_says_what_they_hold(short_reference):
    kept = sorted(p.name for p in (short_reference / "branch_points").iterdir())
    assert kept == ["step-30", "step-6"]
    manifest = json.loads((short_reference / "branch_points" / "step-6" / "manifest.json").read_text())
    assert manifest["step"] == 6 and "model.safetensors" in manifest["files"]
    probes = load_result(short_reference)["noise_scale"]["branch_points"]
    assert [p["step"] for p in probes] == [6, 30] and all(p["samples"] >= 4096 for p in probes)


@pytest.mark.parametrize("args, fragments", [
    (["--at", "20%"], ["--at 20% is step 12, which the run did not keep (kept: step 6, step 30)",
                       "--branch-points"]),
    (["--at", "10%", "--batches", "2,4"], ["--batches takes multiples of the reference batch"]),
    (["--at", "10%", "--batches", "2x,2x"], ["--batches takes multiples"]),
    (["--at", "10%", "--batches", "200x"], ["batch 12800 is larger than the training set (6,400 samples)"]),
    (["--at", "10%", "--window", "lots"], ["--window takes samples"]),
    (["--at", "10%", "--controls", "0"], ["--controls takes 1 to 20 runs"]),
    (["--at", "150%"], ["--at takes fractions of the step budget"]),
    (["--at", "60"], ["--at 60 is step 60, not before the run's last step 60"]),
])
def test_a_branching_that_cannot_run_is_refused_in_one_line(short_reference, args, fragments):
    proc = run_in_process([str(short_reference), *args], command="branch")
    assert_one_line_error(proc, *fragments)
    assert not (short_reference / "branches.json").exists()


def test_a_reference_that_cannot_be_branched_is_refused_in_one_line(short_reference, tmp_path):
    missing = run_in_process([str(tmp_path / "nothing"), "--at", "10%"], command="branch")
    assert_one_line_error(missing, "holds no result.json")
    running = tmp_path / "running"
    running.mkdir()
    (running / "result.json").write_text(json.dumps({"status": "running", "config": {}}))
    assert_one_line_error(run_in_process([str(running), "--at", "10%"], command="branch"),
                          "has not finished (status 'running')")
    cosine = tmp_path / "cosine"
    assert_ok(run_entry([*SMALL, "--global-bs", "64", "--max-steps", "20", "--target-accuracy", "none",
                         "--lr-decay", "cosine", "--branch-points", "10", "--output-dir", str(cosine)]))
    assert_one_line_error(run_in_process([str(cosine), "--at", "10"], command="branch"),
                          "decays its LR (cosine)", "--lr-decay constant")


@pytest.mark.parametrize("args, fragments", [
    (["--branch-points", "10%,lots"], ["--branch-points takes fractions of the step budget", "'lots'"]),
    (["--branch-points", "80"], ["--branch-points 80 is step 80, not before the run's last step 20"]),
    (["--branch-points", "10,10"], ["--branch-points names a point twice"]),
    (["--start-from", "/nonexistent/point"], ["--start-from: /nonexistent/point holds no checkpoint"]),
])
def test_bad_branch_settings_of_a_run_are_refused_in_one_line(tmp_path, args, fragments):
    proc = run_entry([*SMALL, "--global-bs", "64", "--max-steps", "20", "--target-accuracy", "none",
                      "--output-dir", str(tmp_path / "run"), *args])
    assert_one_line_error(proc, *fragments)


def test_a_run_started_from_a_point_continues_the_reference_exactly(short_reference, tmp_path):
    """--start-from at the reference's own settings is the reference from that step on."""
    proc = run_entry([*SMALL, "--global-bs", "64", "--max-steps", "60", "--target-accuracy", "none",
                      "--eval-every", "30", "--start-from", str(short_reference / "branch_points" / "step-30"),
                      "--output-dir", str(tmp_path / "continued")])
    assert_ok(proc)
    assert "started from" in proc.stdout and "at step 30" in proc.stdout
    ours, theirs = load_result(tmp_path / "continued"), load_result(short_reference)
    torch.testing.assert_close(torch.tensor(ours["train_loss"]), torch.tensor(theirs["train_loss"]), rtol=0, atol=0)
    assert ours["history"][-1] == {**theirs["history"][-1], "time_s": ours["history"][-1]["time_s"],
                                   "train_time_s": ours["history"][-1]["train_time_s"]}


def test_the_tolerance_is_the_99_percent_prediction_bound_of_the_controls():
    from scaling.branching import tolerance

    losses = [1.30, 1.34, 1.31, 1.36]
    mean, spread, tol = tolerance(losses)
    # t(0.99, 3) = 4.541 (tables), s = the sample standard deviation, sqrt(1 + 1/4)
    s = (sum((x - 1.3275) ** 2 for x in losses) / 3) ** 0.5
    assert mean == pytest.approx(1.3275) and spread == pytest.approx(s)
    assert tol == pytest.approx(4.541 * s * (1.25 ** 0.5), rel=1e-3)
    assert tolerance([2.0, 2.0])[2] == pytest.approx(2e-3)  # identical controls: the floor, 0.1% of the mean


@pytest.mark.parametrize("kept, expected", [
    ({32: True, 64: True, 128: False}, (64, 128)),
    ({32: True, 64: False, 128: True}, (32, 64)),  # a larger batch keeping up after one fell behind is not counted
    ({32: False, 64: False}, (16, 32)),
    ({32: True, 64: True}, (64, None)),
    ({16: False, 32: True}, (32, None)),  # the A/A branch (the reference's own batch) does not bound it
])
def test_the_critical_batch_is_the_last_that_kept_up_before_the_first_that_did_not(kept, expected):
    from scaling.branching import critical_batch

    branches = [{"batch": batch, "kept_up": value} for batch, value in kept.items()]
    assert critical_batch(16, branches) == expected


@pytest.mark.slow
def test_a_language_model_branches_at_its_point_in_tokens(tmp_path):
    """--batch-schedule counts tokens for a language model: a branch's second batch starts at the point's
    sequences x context, i.e. at the point's step."""
    reference = tmp_path / "reference"
    assert_ok(run_entry(["--dataset", "stories", "--cpu", "--progress", "false", "--num-samples", "1024",
                         "--global-bs", "8", "--max-steps", "60", "--target-loss", "none", "--eval-every", "30",
                         "--eval-samples", "32", "--branch-points", "20", "--output-dir", str(reference)]))
    proc = run_in_process([str(reference), "--at", "20", "--batches", "2x", "--window", "512", "--controls", "1"],
                          command="branch")
    assert_ok(proc)
    record = json.loads((reference / "branches.json").read_text())
    assert record["units_per_sample"] == 64 and record["window_samples"] == 512
    point = record["points"][0]
    assert point["samples"] == 160 and point["matches_reference"] == 0.0
    branch = load_result(reference / point["branches"][0]["run"])
    assert branch["batch_schedule"][1]["first_step"] == 20 and branch["batch_schedule"][1]["asked"] == 160
    assert branch["history"][-1]["samples"] == 160 + 512 and branch["steps"] == 20 + 512 // 16


def test_branches_take_a_tuned_studys_best_lr_at_their_batch(short_reference, tmp_path):
    study = tmp_path / "tuned"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"name": "t", "configs": [], "tuning": [
        {"global_bs": 128, "best": {"settings": {"base_lr": 0.0375}}},
        {"global_bs": 512, "best": {"settings": {"base_lr": 0.3}}}]}))
    copy = tmp_path / "reference"
    import shutil

    shutil.copytree(short_reference, copy)
    refused = run_in_process([str(copy), "--at", "10%", "--batches", "2x,4x", "--lr-from", str(study)],
                             command="branch")
    assert_one_line_error(refused, "the tuned study searched no LR at batch 256 (it searched 128, 512)")
    proc = run_in_process([str(copy), "--at", "10%", "--batches", "2x", "--controls", "1", "--lr-from", str(study)],
                          command="branch")
    assert_ok(proc)
    point = json.loads((copy / "branches.json").read_text())["points"][0]
    branch = load_result(copy / point["branches"][0]["run"])
    assert set(branch["lr_per_step"][point["step"]:]) == {0.0375} and point["branches"][0]["lr"] == 0.0375
    control = load_result(copy / "branches" / f"step-{point['step']}" / "control-0")
    assert control["lr_per_step"] == load_result(copy)["lr_per_step"][:len(control["lr_per_step"])]
