"""Tuned studies (scaling/study/tune.py): the spec's `tune:` block, the adaptive search against the exhaustive
grid on problems whose steps to target are known in closed form (the noisy quadratic model of
benchmarks/tuning.py), the seed phase's choice, the trial cap, and a real tuned sweep stopped mid-search."""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, assert_one_line_error, child_env, run_entry, run_in_process

sys.path.insert(0, str(REPO / "benchmarks"))
from tuning import NoisyQuadratic, adaptive, exhaustive, nqm_spec  # noqa: E402

from scaling.errors import ConfigError  # noqa: E402
from scaling.study.tune import (  # noqa: E402
    Trial,
    best_trial,
    coarse_indices,
    next_index,
    pace_for,
    parse_tune,
)
from scaling.targets import Target, behind_pace  # noqa: E402

# ---- the spec ------------------------------------------------------------------------------------------


def test_the_lr_grid_is_log_spaced_at_the_resolution_and_spans_the_range():
    spec = parse_tune({"base_lr": [0.003, 3.0], "trials": 8})
    values = spec.dimensions[0].values
    assert values[0] == 0.003 and values[-1] == 3.0
    ratios = [b / a for a, b in zip(values, values[1:], strict=False)]
    assert all(r <= 2.0 + 1e-3 for r in ratios) and max(ratios) / min(ratios) < 1.01  # even, within rounding
    assert len(values) == 11  # log2(1000) = 9.97 steps of at most 2


def test_other_settings_get_a_linear_grid_of_their_type():
    spec = parse_tune(
        {"warmup_steps": [0, 100], "base_lr": [0.01, 1.0], "momentum": {"range": [0.8, 0.99], "points": 3}}
    )
    assert spec.names == ["base_lr", "warmup_steps", "momentum"]  # the LR first
    assert spec.dimensions[1].values == (0.0, 25.0, 50.0, 75.0, 100.0)
    assert spec.dimensions[2].values == (0.8, 0.895, 0.99)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"trials": 8}, "must search base_lr"),
        ({"base_lr": [1.0, 0.1]}, "low < high"),
        ({"base_lr": [0, 1.0]}, "above 0"),
        ({"base_lr": "0.1"}, "range [low, high]"),
        ({"base_lr": [0.1, 1.0], "trials": 1}, "trials"),
        ({"base_lr": [0.1, 1.0], "resolution": 1.0}, "resolution"),
        ({"base_lr": [0.1, 1.0], "global_bs": [64, 128]}, "only numeric training settings"),
        ({"base_lr": [0.1, 1.0], "optimizer": [1, 2]}, "only numeric training settings"),
        ({"base_lr": [0.1, 1.0], "lr_warmup": [1, 2]}, "unknown key"),
        ({"base_lr": [0.1, 1.0], "compare": ["cubic"]}, "compare"),
        ({"base_lr": [1e-9, 1e9], "resolution": 1.05}, "over the limit"),
    ],
)
def test_bad_tune_blocks_are_refused(section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        parse_tune(section)


def test_a_bad_tuned_spec_is_one_line_and_status_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": {"cpu": True},
                "grid": {"global_bs": [64], "lr_scaling": ["sqrt"]},
                "tune": {"base_lr": [0.01, 1.0]},
            }
        )
    )
    assert_one_line_error(run_in_process([str(spec), "--dry-run"], command="sweep"), "'lr_scaling' is tuned")
    spec.write_text(
        yaml.safe_dump({"base": {"cpu": True}, "grid": {"global_bs": [64]}, "tune": {"base_lr": [0.01, 1.0]}})
    )
    assert_one_line_error(
        run_in_process([str(spec), "--slurm", "array", "--dir", str(tmp_path / "s")], command="sweep"),
        "cannot be written as independent sbatch jobs",
    )
    shown = run_in_process([str(spec), "--dry-run"], command="sweep")
    assert shown.returncode == 0 and "base_lr: 8 values 0.01..1" in shown.stdout


# ---- the search ----------------------------------------------------------------------------------------


def test_coarse_points_include_both_ends_largest_first():
    assert coarse_indices(11, 8) == [10, 8, 4, 0]
    assert coarse_indices(3, 8) == [2, 1, 0]


@pytest.mark.parametrize("size", [5, 8, 11, 16])
def test_on_any_unimodal_objective_the_search_ends_at_the_optimum_bracketed(size):
    """Every position of the optimum on the grid, steps growing away from it (faster on the large-LR side,
    where runs diverge): the search stops with the true best and both its grid neighbours tried."""
    for optimum in range(size):
        tried: dict[int, Trial] = {}
        while (index := next_index(size, tried, budget=size)) is not None:
            distance = index - optimum
            steps = 100 + 30 * abs(distance) if distance <= 2 else None  # past 2 steps up: diverged
            tried[index] = Trial(index, float(index), "reached" if steps else "diverged", steps)
        assert best_trial(tried).index == optimum
        assert all(n in tried for n in (optimum - 1, optimum + 1) if 0 <= n < size)
        coarse = coarse_indices(size, size)
        stride = (
            coarse[-2] - coarse[-1]
        )  # after the coarse pass, bisection: at most log2(stride) more per side
        assert len(tried) <= len(coarse) + 2 * math.ceil(math.log2(stride)) if stride > 1 else len(coarse)


@pytest.mark.parametrize("problem", range(6))
def test_the_search_finds_the_grid_best_within_one_step_with_at_most_40_percent_of_its_steps(problem):
    """The noisy quadratic model's steps to target are exact (closed form): the exhaustive grid over the same
    values is the reference. Each generated problem has its own curvatures, noise and target."""
    quadratic = NoisyQuadratic.generate(problem)
    spec = nqm_spec(trials=8, resolution=2.0)
    values = spec.dimensions[0].values
    grid_total = adaptive_total = 0
    for batch in (16, 128, 1024):
        best, grid_steps = exhaustive(quadratic, values, batch)
        search = adaptive(quadratic, spec, batch, seeds=[0])
        assert best is not None and search.best is not None
        assert abs(values.index(search.best["settings"]["base_lr"]) - best) <= 1
        assert search.record()["search_trials"] <= 8
        grid_total += grid_steps
        adaptive_total += search.record()["steps_trained"]
    assert adaptive_total <= 0.4 * grid_total


def test_the_optimal_lr_rises_with_the_batch_while_noise_dominates():
    """By construction (the model's noise term lr^2 h c / B): the best LR found grows with the batch below the
    curvature limit, and never passes 2 / h_max, where every run diverges."""
    quadratic = NoisyQuadratic.generate(0)
    spec = nqm_spec(trials=8, resolution=2.0)
    found = [adaptive(quadratic, spec, batch, seeds=[0]).best["settings"]["base_lr"] for batch in (4, 16, 64)]
    assert found[0] < found[1] < found[2] < 2.0 / quadratic.curvatures.max()


@pytest.mark.parametrize("problem", range(4))
def test_the_lr_exponent_of_a_known_frontier_is_recovered_within_its_interval(problem):
    """Batches 16..256, where the model's noise term sets the best LR (it grows about linearly with the batch).
    The reference is the closed form's best on a grid 25 times finer than the search's, over a factor 4 either
    side of what the search found: it must lie inside the search's bracket, and the exponent of the fine
    optima (least squares on log-log) inside the interval the report's fit gives from the search alone."""
    from scaling.report.questions.tuned import least_squares, power_law

    quadratic = NoisyQuadratic.generate(problem)
    spec = nqm_spec(trials=8, resolution=2.0)
    batches = [16, 32, 64, 128, 256]
    found, lows, highs, exact = [], [], [], []
    for batch in batches:
        search = adaptive(quadratic, spec, batch, seeds=[0])
        best = search.best["settings"]["base_lr"]
        tried = sorted({t["settings"]["base_lr"] for t in search.record()["trials"]})
        low, high = max(v for v in tried if v < best), min(v for v in tried if v > best)
        fine = [best / 4 * 1.03 ** k for k in range(95)]  # x1.03 apart, best/4 .. about 4 x best
        outcomes = [(quadratic.outcome(lr, batch)[1], lr) for lr in fine]
        optimum = min(o for o in outcomes if o[0] is not None)[1]
        assert low < optimum < high
        found.append(best), lows.append(low), highs.append(high), exact.append(optimum)
    logs = [math.log(b) for b in batches]
    alpha = least_squares(logs, [math.log(v) for v in exact], 0.95)[0]
    assert 0.7 < alpha < 1.05  # by construction: close to linear while noise dominates
    fitted = power_law(batches, found, lows, highs, 0.95)
    assert fitted.feasible and fitted.contains(alpha)
    assert fitted.alpha == pytest.approx(alpha, abs=0.3)  # each best is off by at most one grid step (x2)


@pytest.mark.parametrize("seed", range(4))
def test_the_best_is_the_candidate_with_the_fewest_median_steps_every_seed_reached(seed):
    quadratic = NoisyQuadratic.generate(10 + seed)
    spec = nqm_spec(trials=8, resolution=2.0)
    search = adaptive(quadratic, spec, 64, seeds=[0, 1, 2], seed_spread=0.3)
    reached = [t for t in search.trials if t["phase"] == "search" and t["status"] == "reached"]
    assert len(search.candidates) == min(2, len(reached))  # a capped trial could not win: no candidate
    for candidate in search.candidates:
        assert len(candidate["steps"]) == 3
        known = candidate["steps"]
        expected = statistics.median(known) if None not in known else None
        assert candidate["median_steps"] == expected
    eligible = [c for c in search.candidates if c["median_steps"] is not None]
    assert search.best == min(eligible, key=lambda c: c["median_steps"])


def test_diverged_stalled_and_failed_trials_never_win():
    tried = {
        0: Trial(0, 0.1, "not_reached", None),
        1: Trial(1, 0.2, "reached", 500),
        2: Trial(2, 0.4, "diverged", 3),
        3: Trial(3, 0.8, "stalled", 2),
        4: Trial(4, 1.6, "failed", 1),
    }
    assert best_trial(tried).index == 1
    quadratic = NoisyQuadratic.generate(3)
    spec = nqm_spec(trials=8, resolution=2.0)
    for batch in (16, 256):
        search = adaptive(quadratic, spec, batch, seeds=[0])
        statuses = {t["settings"]["base_lr"]: t["status"] for t in search.trials}
        assert "diverged" in statuses.values()
        assert statuses[search.best["settings"]["base_lr"]] == "reached"


def test_trials_are_capped_at_the_stop_factor_of_the_best_so_far():
    quadratic = NoisyQuadratic.generate(1)
    spec = nqm_spec(trials=8, resolution=2.0)
    search = adaptive(quadratic, spec, 64, seeds=[0])
    best_so_far = None
    for trial in search.trials:
        if best_so_far is None:
            assert trial["cap_steps"] is None
        else:
            assert trial["cap_steps"] == math.ceil(spec.stop_factor * best_so_far)
            assert trial["steps_run"] <= trial["cap_steps"]
        if trial["status"] == "reached":
            best_so_far = min(best_so_far or trial["steps"], trial["steps"])


# ---- the cap in a real run ------------------------------------------------------------------------------


def test_a_capped_run_is_the_uncapped_run_cut_short(tmp_path):
    """cap_steps ends the loop, not the LR schedule: under cosine decay the capped run's evaluations are the
    uncapped run's, while a shorter budget (max_steps) changes them."""
    args = [
        "--cpu",
        "true",
        "--num-samples",
        "2000",
        "--global-bs",
        "64",
        "--lr-decay",
        "cosine",
        "--max-steps",
        "60",
        "--eval-every",
        "5",
        "--target-accuracy",
        "0.99",
        "--base-lr",
        "0.1",
        "--noise-scale",
        "false",
    ]
    histories = {}
    for name, extra in (("full", []), ("capped", ["--cap-steps", "25"]), ("short", ["--max-steps", "25"])):
        exited = run_entry([*args, *extra, "--output-dir", str(tmp_path / name)])
        assert exited.returncode == 0, exited.stderr[-2000:]
        result = json.loads((tmp_path / name / "result.json").read_text())
        histories[name] = result
    capped, full, short = (histories[k] for k in ("capped", "full", "short"))
    assert capped["status"] == "not_reached" and capped["steps"] == 25
    assert full["steps"] == 60
    upto = [h["loss"] for h in full["history"] if h["step"] <= 25]
    assert [h["loss"] for h in capped["history"]] == upto
    assert [h["loss"] for h in short["history"]] != upto  # its cosine ends at 25: a different run


# ---- the pace: milestones from the best trial's curve --------------------------------------------------


def test_pace_milestones_are_the_best_trials_levels_past_halfway_late_by_the_caps_allowance():
    # accuracy from 0.1 to the target 0.9 at step 57: halfway is 0.5; a dip (0.55 after 0.6) keeps the level
    # reached; each level is due (1.5 - 1) x 57 = 28.5 steps after the best got there
    curve = ((10, 0.1), (20, 0.3), (30, 0.6), (40, 0.55), (50, 0.8), (57, 0.9))
    tried = {0: Trial(0, 0.1, "reached", 57, "a", curve), 1: Trial(1, 0.2, "reached", 80, "b", ((80, 0.9),))}
    assert pace_for(tried, 1.5) == [59, 0.6, 69, 0.6, 79, 0.8]
    loss = ((5, 4.0), (10, 3.2), (15, 2.9), (20, 2.0))  # a loss from 4.0 to the target 2.0: halfway 3.0
    assert pace_for({0: Trial(0, 0.1, "reached", 20, "a", loss)}, 2.0) == [35, 2.9]
    assert pace_for({0: Trial(0, 0.1, "diverged", None)}, 1.5) == []  # nothing reached: no pace


def test_behind_pace_names_the_first_milestone_passed_and_not_met():
    accuracy, loss = Target("accuracy", 0.9), Target("loss", 2.0)
    history = [{"step": 10, "accuracy": 0.4, "loss": 3.0}, {"step": 20, "accuracy": 0.62, "loss": 2.5},
               {"step": 30, "accuracy": 0.58, "loss": None}]
    milestones = [(15, 0.5), (25, 0.6), (35, 0.7)]
    assert behind_pace(accuracy, milestones, history[:1], 10) is None  # no milestone passed yet
    assert behind_pace(accuracy, milestones, history[:1], 15) == (15, 0.5)
    assert behind_pace(accuracy, milestones, history, 30) is None  # its best so far (0.62) met 25's 0.6
    assert behind_pace(accuracy, milestones, history, 35) == (35, 0.7)
    assert behind_pace(loss, [(20, 2.4)], history, 30) == (20, 2.4)  # a null (diverged) loss counts as nothing
    assert behind_pace(loss, [(20, 2.6)], history, 30) is None


def test_on_generated_problems_the_pace_saves_steps_and_finds_the_same_best():
    """The same search with and without the pace, on the noisy quadratic model: the pace only stops trials
    that are stop_factor behind the best on the way, so the best stays within one grid step, for fewer steps."""
    import dataclasses

    spec = nqm_spec(trials=8, resolution=2.0)
    without = dataclasses.replace(spec, pace=False)
    values = spec.dimensions[0].values
    paced_total = plain_total = 0
    for problem in range(4):
        quadratic = NoisyQuadratic.generate(problem)
        for batch in (16, 256):
            paced, plain = (adaptive(quadratic, s, batch, seeds=[0]) for s in (spec, without))
            best, _ = exhaustive(quadratic, values, batch)
            assert abs(values.index(paced.best["settings"]["base_lr"]) - best) <= 1
            assert all(t["pace"] == 0 for t in plain.trials) and any(t["pace"] for t in paced.trials)
            paced_total += paced.record()["steps_trained"]
            plain_total += plain.record()["steps_trained"]
    assert paced_total < plain_total


def test_a_run_behind_its_pace_stops_at_that_evaluation_and_one_that_keeps_up_is_unchanged(tmp_path):
    args = ["--cpu", "true", "--num-samples", "2000", "--global-bs", "64", "--max-steps", "40", "--eval-every",
            "5", "--target-accuracy", "0.99", "--base-lr", "0.1", "--noise-scale", "false"]
    runs, said = {}, {}
    free = run_entry([*args, "--output-dir", str(tmp_path / "free")])
    assert free.returncode == 0, free.stderr[-2000:]
    runs["free"] = json.loads((tmp_path / "free" / "result.json").read_text())
    at = {h["step"]: h["accuracy"] for h in runs["free"]["history"]}
    best_by_20 = max(v for s, v in at.items() if s <= 20)  # what it has at the first evaluation past 17
    for name, pace in (("kept", f"12,{at[10] - 0.01:.6f},17,{best_by_20 - 0.01:.6f}"),
                       ("behind", f"12,{at[10] - 0.01:.6f},17,{best_by_20 + 0.005:.6f}")):
        done = run_entry([*args, "--pace", pace, "--output-dir", str(tmp_path / name)])
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "result.json").read_text())
        said[name] = done.stdout + done.stderr
    losses = {name: [h["loss"] for h in run["history"]] for name, run in runs.items()}
    assert losses["kept"] == losses["free"] and runs["kept"]["steps"] == runs["free"]["steps"] == 40
    assert "behind the pace" not in said["kept"]
    behind = runs["behind"]
    assert behind["status"] == "not_reached" and behind["steps"] == 20  # the first evaluation past step 17
    assert losses["behind"] == [h["loss"] for h in runs["free"]["history"] if h["step"] <= 20]
    assert "behind the pace at step 20" in said["behind"]


@pytest.mark.parametrize("pace, message", [
    ("10,0.5,5", "step,value pairs"),
    ("10,0.5,5,0.6", "increasing"),
    ("10,1.5", "accuracies"),
    ("2.5,0.5", "whole numbers"),
])
def test_a_bad_pace_is_one_line_and_status_2(tmp_path, pace, message):
    done = run_entry(["--cpu", "true", "--num-samples", "2000", "--max-steps", "5", "--pace", pace,
                      "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(done, "--pace", message)
    assert not (tmp_path / "out").exists()


# ---- a real tuned sweep, stopped mid-search and resumed -------------------------------------------------


@pytest.mark.slow
def test_a_tuned_sweep_resumes_after_a_kill_without_repeating_finished_trials(tmp_path):
    spec = tmp_path / "tuned.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": {
                    "cpu": True,
                    "num_samples": 3000,
                    "target_accuracy": 0.6,
                    "max_epochs": 15,
                    "eval_every": 4,
                    "noise_scale": False,
                },
                "grid": {"global_bs": [64, 256]},
                "seeds": [0, 1],
                "tune": {"base_lr": [0.02, 0.64], "resolution": 2, "trials": 5},
                "launcher": {"type": "python"},
            }
        )
    )
    study = tmp_path / "study"
    command = [sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study), "--no-progress"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    finished = []
    while time.monotonic() < deadline and proc.poll() is None:
        finished = sorted(study.glob("runs/*/result.json"))
        if len(finished) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    before = json.loads((study / "study.json").read_text())
    done_before = {
        c["id"]: (study / c["output_dir"] / "result.json").stat().st_mtime_ns
        for c in before["configs"]
        if c["status"] not in ("pending", "interrupted", "failed")
    }
    assert len(done_before) >= 2 and not all(s["done"] for s in before["tuning"])

    again = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((study / "study.json").read_text())
    assert f"{len(done_before)} already complete" in again.stdout
    for run_id, mtime in done_before.items():  # finished trials are read, not run again
        assert (study / "runs" / run_id / "result.json").stat().st_mtime_ns == mtime
    assert [s["global_bs"] for s in after["tuning"]] == [64, 256] and all(s["done"] for s in after["tuning"])
    for search in after["tuning"]:
        ids = [t["id"] for t in search["trials"]]
        assert len(ids) == len(set(ids))  # no trial twice
        assert search["best"] is not None and len(search["best"]["ids"]) == 2
        for run_id, steps in zip(search["best"]["ids"], search["best"]["steps"], strict=True):
            result = json.loads((study / "runs" / run_id / "result.json").read_text())
            assert result["status"] == "reached" and result["steps_to_target"] == steps
