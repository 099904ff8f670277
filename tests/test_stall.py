"""A run that sits at the chance loss without progress ends early as `stalled` (scaling/train/evaluation.py,
StallRule): real collapsed and learning runs on the embedded MNIST-1D workload, the rule on given histories,
the flag's checks, the schema and the report."""

from __future__ import annotations

import math

import pytest

from conftest import SMALL, a_result, assert_ok, assert_one_line_error, load_result, run_entry, run_in_process
from scaling.config import ConfigError, parse_args
from scaling.results import FINAL_STATUSES, check_result
from scaling.train.evaluation import StallRule

CHANCE = math.log(10)
# SGD at LR 1.5 without warmup, batch 512: the net learns for a few steps, then its ReLUs die and it sits at
# the chance loss ln(10) with accuracy ~10% (the default study's linear rule at batch 4096 does the same).
COLLAPSE = [*SMALL, "--global-bs", "512", "--base-lr", "1.5", "--lr-scaling", "none", "--warmup-steps", "0",
            "--eval-every", "4", "--exact-target", "false"]


def history(*points: tuple[int, float, float | None]) -> list[dict]:
    return [{"step": step, "samples": step, "epoch": step / 10, "time_s": 0.0, "train_time_s": 0.0,
             "accuracy": accuracy, "loss": loss} for step, accuracy, loss in points]


# ---- real runs ----
def test_a_collapsed_run_ends_early_as_stalled(tmp_path):
    proc = run_entry([*COLLAPSE, "--max-steps", "600", "--output-dir", str(tmp_path)])
    assert_ok(proc)  # a stalled run is a finding, as a diverged one: exit status 0
    result = load_result(tmp_path)
    assert result["status"] == "stalled" and result["status"] in FINAL_STATUSES
    assert result["steps"] == result["stalled_at_step"] <= 60  # of a 600-step budget
    assert result["steps_to_target"] is None and result["time_to_target_s"] is None
    assert result["diverged_at_step"] is None
    stall = result["stall"]
    assert stall["chance_loss"] == pytest.approx(CHANCE)
    assert stall["evaluations"] >= 5 and stall["steps"][-1] == result["steps"]
    assert stall["steps"][-1] - stall["steps"][0] >= stall["min_steps"] == result["steps_per_epoch"]
    assert all(loss >= 0.98 * CHANCE for loss in stall["losses"])  # sat at ln(10)
    assert all(accuracy < 0.15 for accuracy in stall["accuracies"])  # and at chance accuracy
    assert stall["last_progress"]["step"] < stall["steps"][0]
    assert check_result(result) is None
    assert proc.stdout.splitlines()[-1].startswith("scaling: stalled after")
    from scaling.report.finding import status_words
    from scaling.report.runs import load_runs
    from scaling.report.sections import _note

    (run,) = load_runs(tmp_path)
    assert run.finished and not run.reached and run.steps_to_target is None
    assert _note(run, None).startswith(f"stalled at step {result['steps']} ({stall['evaluations']} evaluations "
                                       "at the chance loss 2.30)")
    assert status_words("stalled") == "stalled"


def test_stall_evals_0_turns_the_rule_off(tmp_path):
    proc = run_entry([*COLLAPSE, "--max-steps", "60", "--stall-evals", "0", "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "not_reached" and result["steps"] == 60
    assert result["stalled_at_step"] is None and result["stall"] is None
    assert result["final"]["loss"] >= 0.98 * CHANCE  # it did sit at chance: the rule would have ended it


def test_a_run_that_learns_is_not_stopped_even_at_chance_during_a_long_warmup(tmp_path):
    """Evaluated after every step through a 40-step warmup (at chance for its first evaluations): reaches."""
    proc = run_entry([*SMALL, "--global-bs", "256", "--warmup-steps", "40", "--eval-every", "1",
                      "--target-accuracy", "0.5", "--max-steps", "300", "--exact-target", "false",
                      "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "reached" and result["stall"] is None
    assert result["history"][0]["loss"] >= 0.98 * CHANCE  # it started at chance


# ---- the rule ----
RULE = StallRule(evaluations=5, chance_loss=CHANCE, warmup_steps=4, min_steps=7)
# The default study's linear rule at batch 4096, seed 0 (7 steps/epoch, warmup 4 steps, an evaluation every
# 2 steps): 20% at step 8, then at chance; it ran its whole 210-step budget before this rule.
DEFAULT_STUDY_COLLAPSE = history((2, 0.0727, 2.2987), (4, 0.116, 2.2684), (6, 0.1356, 2.1767), (8, 0.2054, 1.9813),
                                 (10, 0.1026, 8.6323), (12, 0.1029, 2.4373), (14, 0.1052, 3.7419),
                                 (16, 0.0981, 2.6092), (18, 0.0981, 2.6395), (20, 0.1001, 2.6062))


def first_stall(rule: StallRule, entries: list[dict]) -> tuple[int, dict] | None:
    """The step of the first evaluation at which `rule` stops the run, with its evidence."""
    for end in range(1, len(entries) + 1):
        evidence = rule.check(entries[:end])
        if evidence is not None:
            return entries[end - 1]["step"], evidence
    return None


def test_the_default_study_collapse_stalls_five_evaluations_after_its_last_progress():
    step, evidence = first_stall(RULE, DEFAULT_STUDY_COLLAPSE)
    assert step == 18 and evidence["steps"] == [10, 12, 14, 16, 18]
    assert evidence["last_progress"] == {"step": 8, "accuracy": 0.2054, "loss": 1.9813}


def test_the_rule_is_off_at_0_and_without_a_chance_level():
    assert first_stall(StallRule(0, CHANCE, 4, 7), DEFAULT_STUDY_COLLAPSE) is None
    assert first_stall(StallRule(5, 0.0, 4, 7), DEFAULT_STUDY_COLLAPSE) is None  # one class: no chance level


def test_evaluations_during_warmup_do_not_count():
    at_chance = history(*((step, 0.1, CHANCE) for step in range(2, 42, 2)))
    step, evidence = first_stall(StallRule(5, CHANCE, warmup_steps=30, min_steps=7), at_chance)
    assert step == 40 and evidence["steps"][0] == 32


def test_the_window_spans_at_least_an_epoch():
    every_step = history(*((step, 0.1, CHANCE) for step in range(1, 40)))
    step, evidence = first_stall(StallRule(5, CHANCE, warmup_steps=0, min_steps=20), every_step)
    assert step == 22 and evidence["evaluations"] == 21


def test_a_plateau_above_chance_never_stalls():
    plateau = history(*((step, 0.6, 1.2) for step in range(10, 1000, 10)))
    assert first_stall(RULE, plateau) is None


def test_slow_progress_at_the_chance_loss_is_progress():
    """Accuracy creeping up 0.4 points per evaluation while the loss stays near ln(10) (small scores early in
    training): progress is counted from the last evaluation that made some, so it accumulates."""
    creeping = history(*((step, 0.1 + 0.004 * i, CHANCE - 0.001 * i) for i, step in enumerate(range(10, 410, 10))))
    assert first_stall(RULE, creeping) is None
    # Overconfident scores coming back: the loss falls from above ln(10) by 0.008 per evaluation, 1% of
    # ln(10) every 3, while the accuracy stays at chance.
    falling = history(*((step, 0.1, CHANCE + 0.3 - 0.008 * i) for i, step in enumerate(range(10, 410, 10))))
    assert first_stall(RULE, falling) is None


def test_a_collapse_after_learning_stalls_and_a_non_finite_loss_is_at_chance():
    collapse = history((10, 0.5, 1.5), (20, 0.7, 0.9), (30, 0.1, None), (40, 0.1, 2.4), (50, 0.1, 2.31),
                       (60, 0.1, None), (70, 0.1, 2.303))
    step, evidence = first_stall(RULE, collapse)
    assert step == 70 and evidence["losses"] == [None, 2.4, 2.31, None, 2.303]
    recovered = collapse[:5] + history((60, 0.3, 2.0)) + collapse[6:]  # one evaluation below chance
    assert first_stall(RULE, recovered) is None


# ---- the flag ----
@pytest.mark.parametrize("value, message", [("-1", "--stall-evals must be >= 0, got -1"),
                                            ("2.5", "--stall-evals expects int, got '2.5'"),
                                            ("five", "--stall-evals expects int")])
def test_bad_stall_evals_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--stall-evals", value])


@pytest.mark.parametrize("text, message", [("stall_evals: 2.5\n", "'stall_evals' expects int"),
                                           ("stall_evals: true\n", "'stall_evals' expects int")])
def test_bad_stall_evals_in_yaml_are_refused(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_args(["--config", str(path)])


def test_a_bad_stall_evals_exits_2_with_one_line(tmp_path):
    proc = run_in_process(["--stall-evals", "-3", "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "--stall-evals must be >= 0")
    assert not (tmp_path / "out" / "result.json").exists()


def test_stall_evals_defaults_to_5_and_reads_from_flags_and_yaml(tmp_path):
    assert parse_args([])[0].stall_evals == 5
    assert parse_args(["--stall-evals", "0"])[0].stall_evals == 0
    path = tmp_path / "run.yaml"
    path.write_text("stall_evals: 8\n")
    assert parse_args(["--config", str(path)])[0].stall_evals == 8


# ---- the schema ----
def test_the_loader_checks_a_stalled_result():
    evidence = RULE.check(DEFAULT_STUDY_COLLAPSE[:9])
    stalled = {**a_result("not_reached"), "status": "stalled", "stalled_at_step": 18, "stall": evidence}
    assert check_result(stalled) is None
    broken = {**stalled, "stall": {**evidence, "steps": "10-18"}}
    assert check_result(broken) == "field 'stall': 'steps': must be a list, got text"
    older = {k: v for k, v in a_result("diverged").items() if k not in ("stall", "stalled_at_step")}
    assert check_result(older) is None and older["stall"] is None and older["stalled_at_step"] is None
