"""--batch-schedule: the global batch changing during a run, against a plain PyTorch loop written here from the
documented rule (docs/batch-schedule.md): a batch asked from sample s starts at the first step boundary at which
s samples have been trained; each batch takes the next positions of the epoch's permutation (seeded
seed * 1_000_003 + epoch) in steps of its own size, the rest of an epoch too short for it dropped; the LR is
--lr-scaling's at each batch. Every decomposition (accumulation, 2 real gloo processes, emulation) must give the
plain loop's per-step losses, through every change of batch and through a resume at one. Problems are generated
per seed."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    LINEAR_PROBLEM,
    SMALL,
    assert_ok,
    assert_one_line_error,
    load_result,
    run_entry,
    run_torchrun,
)

PROBLEM = LINEAR_PROBLEM  # the generated 4-class problem of tests/test_plain_loop.py
# Batch 32 from sample 0, 64 from 200, 128 from 600, over 512 training samples: the changes fall mid-epoch and an
# epoch's rest too short for the batch is dropped (worked through in plain_loop's comments).
SCHEDULE = [(0, 32), (200, 64), (600, 128)]
STEPS, LR, MOMENTUM = 24, 0.1, 0.9


def schedule_flag(pairs=SCHEDULE) -> str:
    return ",".join(f"{start}:{batch}" for start, batch in pairs)


def plain_batches(n: int, seed: int, steps: int, pairs=SCHEDULE) -> list[torch.Tensor]:
    """The index batch of each step, by the documented rule, written without the tool's code."""
    batches, trained, epoch, position = [], 0, 0, 0
    order = None
    for _ in range(steps):
        size = [batch for start, batch in pairs if trained >= start][-1]  # the latest batch whose start has passed
        if position + size > n:  # the rest of the epoch is too short for this batch: dropped
            epoch, position = epoch + 1, 0
            order = None
        if order is None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batches.append(order[position:position + size])
        position += size
        trained += size
    return batches


def plain_loop(seed: int, steps: int = STEPS, pairs=SCHEDULE) -> tuple[list[float], list[float], list[int]]:
    """SGD with momentum, the LR x sqrt(batch / first batch) at each batch (--lr-scaling sqrt); the mean loss,
    the LR and the batch of each step."""
    import importlib

    import problem_module

    importlib.reload(problem_module)
    x, y = problem_module.data()[0].tensors
    torch.manual_seed(seed)
    model = problem_module.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses, lrs, sizes = [], [], []
    for batch in plain_batches(len(x), seed, steps, pairs):
        lr = LR * math.sqrt(len(batch) / pairs[0][1])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        lrs.append(lr)
        sizes.append(len(batch))
    return losses, lrs, sizes


def tool_args(out, seed: int, *extra: str, steps: int = STEPS, pairs=SCHEDULE) -> list[str]:
    return ["--dataset", "problem_module:data", "--model", "problem_module:model",
            "--batch-schedule", schedule_flag(pairs), "--base-lr", str(LR), "--base-bs", str(pairs[0][1]),
            "--lr-scaling", "sqrt", "--warmup-steps", "0", "--momentum", str(MOMENTUM), "--max-steps", str(steps),
            "--seed", str(seed), "--target-accuracy", "none", "--eval-every", "6", "--cpu", "--progress", "false",
            "--output-dir", str(out), *extra]


@pytest.fixture
def problem(tmp_path, monkeypatch):
    def use(seed: int) -> dict[str, str]:
        sys.modules.pop("problem_module", None)  # another test's, imported under the same name
        (tmp_path / "problem_module.py").write_text(PROBLEM)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PROBLEM_SEED", str(100 + seed))
        return {"PYTHONPATH": str(tmp_path), "PROBLEM_SEED": str(100 + seed)}
    yield use
    # The plain loop imported this test's problem: the next test (another file's problem_module) must not get it.
    sys.modules.pop("problem_module", None)


def test_the_documented_rule_is_what_the_plain_batches_follow():
    """The plain loop's batches themselves, worked by hand: 7 steps of 32 (224 samples, >= 200), then 64 at
    positions 224..448 of epoch 0 (4 steps; 32 samples left, dropped) and 0, 64 of epoch 1 (608 >= 600), then 128
    at 128, 256, 384 of epoch 1 and on in epoch 2."""
    batches = plain_batches(512, seed=0, steps=STEPS)
    assert [len(b) for b in batches] == [32] * 7 + [64] * 6 + [128] * 11
    first_epoch = torch.cat(batches[:11])
    assert len(set(first_epoch.tolist())) == 480  # no sample twice within an epoch
    epoch1 = torch.randperm(512, generator=torch.Generator().manual_seed(1))
    assert torch.equal(batches[11], epoch1[:64]) and torch.equal(batches[13], epoch1[128:256])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_scheduled_run_is_the_plain_loop_in_every_decomposition(tmp_path, problem, seed):
    env = problem(seed)
    losses, lrs, sizes = plain_loop(seed)
    expected = torch.tensor(losses)
    runs = {
        "one process, accumulation 2, 4, 8": lambda out: run_entry(tool_args(out, seed, "--per-device-bs", "16"), **env),
        "4 emulated processes": lambda out: run_entry(tool_args(out, seed, "--per-device-bs", "8",
                                                                "--emulate-processes", "4"), **env),
        "2 real processes, accumulation 1, 2, 4": lambda out: run_torchrun(tool_args(out, seed, "--per-device-bs",
                                                                                     "16"), **env),
    }
    for name, launch in runs.items():
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        assert_ok(launch(out))
        result = load_result(out)
        got = torch.tensor(result["train_loss"])
        assert len(got) == STEPS, name
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{name}, seed {seed}")
        torch.testing.assert_close(torch.tensor(result["lr_per_step"]), torch.tensor(lrs), rtol=1e-12, atol=0)
        assert [p["global"] for p in result["batch_schedule"]] == [32, 64, 128]
        assert [p["first_step"] for p in result["batch_schedule"]] == [0, 7, 13]
        assert [p["first_sample"] for p in result["batch_schedule"]] == [0, 224, 608]
        assert result["history"][-1]["samples"] == sum(sizes)
    assert losses[6] != losses[7]  # the batches differ: not a trivially equal trajectory


@pytest.mark.slow
@pytest.mark.parametrize("every", [13, 10])  # a checkpoint at the change to batch 128 (step 13), one inside a batch
def test_a_resume_in_the_middle_of_a_schedule_continues_the_uninterrupted_run(tmp_path, problem, every):
    env = problem(3)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert_ok(run_entry(tool_args(whole, 3, "--per-device-bs", "16"), **env))
    # Checkpoints are taken at logging-window boundaries: one every `every` steps, exactly.
    assert_ok(run_entry(tool_args(resumed, 3, "--per-device-bs", "16", "--checkpoint-every", str(every),
                                  "--log-every", str(every), "--log-min-s", "0"), **env))
    # A run killed after its last checkpoint (at step 13, or 20 of every 10): result.json as a killed run leaves it.
    # result.json as a killed run leaves it, the checkpoint on disk.
    manifest = json.loads((resumed / "checkpoint" / "manifest.json").read_text())
    assert manifest["step"] == (13 if every == 13 else 20)
    config = load_result(resumed)["config"]
    (resumed / "result.json").write_text(json.dumps({"status": "running", "config": config}))
    proc = run_entry(["--output-dir", str(resumed), "--resume"], **env)
    assert_ok(proc)
    assert f"resumed from {resumed / 'checkpoint'} at step {manifest['step']}" in proc.stdout
    before, after = load_result(whole), load_result(resumed)
    assert after["steps"] == STEPS
    torch.testing.assert_close(torch.tensor(after["train_loss"]), torch.tensor(before["train_loss"]), rtol=1e-6,
                               atol=0)
    assert after["history"][-1]["samples"] == before["history"][-1]["samples"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steps_and_samples_to_target_are_exact_against_evaluating_every_step(tmp_path, problem, seed):
    """The exact first step at the target under a schedule, against a run that evaluates after every step: the
    step, and the samples trained by it (sum of the batches up to it, not steps x one batch)."""
    env = problem(seed)
    target = ["--target-accuracy", "0.85", "--max-steps", "200", "--eval-every"]
    exact, every = tmp_path / "exact", tmp_path / "every"
    assert_ok(run_entry([*tool_args(exact, seed, "--per-device-bs", "16", steps=200), *target, "25"], **env))
    assert_ok(run_entry([*tool_args(every, seed, "--per-device-bs", "16", steps=200), *target, "1",
                         "--exact-target", "false"], **env))
    found, reference = load_result(exact), load_result(every)
    assert reference["status"] == found["status"] == "reached"
    step = reference["steps_to_target"]
    assert step > 13, "the target must be met after the last change of batch for the test to mean something"
    assert found["steps_to_target"] == step and found["steps_to_target_resolution"] == 1
    at = next(entry for entry in reference["history"] if entry["step"] == step)
    assert found["samples_to_target"] == reference["samples_to_target"] == at["samples"]
    assert at["samples"] == 608 + (step - 13) * 128


@pytest.mark.parametrize("args, fragments", [
    (["--batch-schedule", "0:64,100"], ["--batch-schedule takes START:BATCH pairs", "'100'"]),
    (["--batch-schedule", "10:64"], ["the first batch starts at 0, got 10"]),
    (["--batch-schedule", "0:64,500:128,300:256"], ["the starts must rise, got 300 after 500"]),
    (["--batch-schedule", "0:64,500:64"], ["batch 64 at 500 is the batch already training"]),
    (["--batch-schedule", "0:64,500:0"], ["--batch-schedule takes START:BATCH pairs"]),
    (["--batch-schedule", "0:64,500:128", "--global-bs", "128"], ["--global-bs 128 and --batch-schedule",
                                                                  "drop --global-bs"]),
    (["--batch-schedule", "0:64,500:128", "--accumulation-steps", "2"], ["accumulation steps follow the batch"]),
    (["--batch-schedule", "0:64,500:96", "--per-device-bs", "64"], ["must be a multiple of 64; 96 is not"]),
    (["--batch-schedule", "0:64,500:128", "--optimizer", "adamw", "--lr-scaling", "adam-sde"],
     ["--lr-scaling adam-sde scales AdamW's betas"]),
    (["--batch-schedule-lr", "seesaw"], ["--batch-schedule-lr seesaw sets the LR", "add --batch-schedule"]),
    (["--batch-schedule", "0:64,500:8192"], ["global batch 8192 is larger than the training set (6400 samples)"]),
])
def test_a_schedule_that_cannot_run_is_refused_in_one_line(tmp_path, args, fragments):
    proc = run_entry([*SMALL, "--max-steps", "5", "--output-dir", str(tmp_path / "run"), *args])
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run" / "result.json").exists()


def test_the_lr_rules_at_each_batch():
    from scaling.config import make_config
    from scaling.lr import build_schedule

    for rule, factors in {"rule": (math.sqrt(2), 2.0), "seesaw": (1 / math.sqrt(2), 0.5), "constant": (1.0, 1.0)}.items():
        cfg = make_config({"batch_schedule": "0:64,640:128,1920:256", "batch_schedule_lr": rule, "base_lr": 0.1,
                           "base_bs": 64, "lr_scaling": "sqrt", "warmup_steps": 4, "max_steps": 40})
        schedule = build_schedule(cfg, 64, steps_per_epoch=100, total_steps=40, batches=[(0, 64), (10, 128), (20, 256)])
        assert schedule(0) == pytest.approx(0.1 / 4) and schedule(9) == pytest.approx(0.1)
        assert schedule(10) == pytest.approx(0.1 * factors[0]) and schedule(19) == pytest.approx(0.1 * factors[0])
        assert schedule(25) == pytest.approx(0.1 * factors[1])


def test_a_language_models_schedule_starts_count_tokens(tmp_path):
    """--dataset stories (64-token sequences): a batch asked from 10,000 tokens starts once 157 sequences
    (10,048 tokens) have been trained, at the step boundary at or after them."""
    proc = run_entry(["--dataset", "stories", "--cpu", "--progress", "false", "--num-samples", "1024",
                      "--batch-schedule", "0:16,10000:32", "--per-device-bs", "16", "--max-steps", "12",
                      "--target-loss", "none", "--eval-every", "12", "--output-dir", str(tmp_path / "lm")])
    assert_ok(proc)
    result = load_result(tmp_path / "lm")
    assert [(p["asked"], p["first_step"], p["first_sample"]) for p in result["batch_schedule"]] == [
        (0, 0, 0), (157, 10, 160)]
    assert [p["accumulation_steps"] for p in result["batch_schedule"]] == [1, 2]
    assert result["tokens"]["trained"] == (10 * 16 + 2 * 32) * 64


def test_the_dataloader_path_follows_the_same_scheduled_batches(tmp_path):
    """A schedule through the DataLoader (--fast-path false: the batch sampler's slices per step) trains on the
    same samples as the in-memory path, through the change of batch."""
    common = [*SMALL, "--batch-schedule", "0:64,1000:128", "--per-device-bs", "32", "--max-steps", "24",
              "--target-accuracy", "none", "--eval-every", "24", "--noise-scale", "false"]
    assert_ok(run_entry([*common, "--output-dir", str(tmp_path / "memory")]))
    assert_ok(run_entry([*common, "--fast-path", "false", "--output-dir", str(tmp_path / "loader")]))
    memory, loader = load_result(tmp_path / "memory"), load_result(tmp_path / "loader")
    assert [p["first_step"] for p in loader["batch_schedule"]] == [0, 16]
    torch.testing.assert_close(torch.tensor(loader["train_loss"]), torch.tensor(memory["train_loss"]), rtol=1e-6,
                               atol=0)
