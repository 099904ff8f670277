"""The tuned frontier in the report (scaling/report/questions/tuned.py, report/tuning.py): the power law through
the best LRs and its interval against a brute-force check, the decisions against linear and square-root
scaling, the rise-then-fall flag, and a real tuned sweep reported end to end (its best LR per batch recomputed
here from the runs' result files)."""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, child_env
from scaling.report import write_report
from scaling.report.questions.tuned import bracket_slopes, least_squares, peaks, power_law

GRID = [1e-4 * 2 ** k for k in range(30)]  # a log grid of LRs a factor 2 apart, wider than any frontier below


def on_grid(value: float) -> int:
    return min(range(len(GRID)), key=lambda i: abs(math.log(GRID[i] / value)))


def best_and_bracket(value: float) -> tuple[float, float, float]:
    """The grid LR nearest `value` and the grid LRs either side of it: what a search bracketed at the grid
    resolution reports."""
    i = on_grid(value)
    assert 0 < i < len(GRID) - 1
    return GRID[i], GRID[i - 1], GRID[i + 1]


def frontier(alpha: float, batches=(64, 256, 1024, 4096), lr_at_64: float = 0.05):
    best, low, high = zip(*(best_and_bracket(lr_at_64 * (b / 64) ** alpha) for b in batches), strict=True)
    return list(batches), list(best), list(low), list(high)


# ---- the power law through the best LRs --------------------------------------------------------------------


def test_least_squares_recovers_a_known_slope_and_its_interval_covers_it():
    rng = random.Random(0)
    xs = [math.log(b) for b in (32, 64, 128, 256, 512, 1024)]
    exact = least_squares(xs, [0.7 * x - 3.0 for x in xs], 0.95)
    assert exact[0] == pytest.approx(0.7) and exact[1] == pytest.approx(-3.0)
    assert exact[2] == pytest.approx(0.7) and exact[3] == pytest.approx(0.7)  # no residual: a point interval
    covered = 0
    for _ in range(200):
        slope, _, low, high = least_squares(xs, [0.7 * x - 3.0 + rng.gauss(0, 0.3) for x in xs], 0.95)
        covered += low <= 0.7 <= high
        assert low < slope < high
    assert 180 <= covered <= 200  # a 95% interval covers the true slope about 95% of the time
    assert least_squares(xs[:2], [0.0, 1.0], 0.95)[2:] == (None, None)  # 2 points: no interval


def feasible_by_brute_force(xs, lows, highs, slopes):
    """The slopes (of those given) for which some intercept puts the line inside every bracket."""
    return [a for a in slopes
            if max(lo - a * x for x, lo in zip(xs, lows, strict=True))
            <= min(hi - a * x for x, hi in zip(xs, highs, strict=True)) + 1e-12]


@pytest.mark.parametrize("seed", range(40))
def test_the_bracket_feasible_slopes_match_a_brute_force_search(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    xs = sorted(rng.sample(range(3, 14), n))
    xs = [x * math.log(2) for x in xs]
    centres = [rng.uniform(0.0, 1.0) * x + rng.gauss(0, 0.3) for x in xs]
    lows = [c - rng.uniform(0.1, 1.2) for c in centres]
    highs = [c + rng.uniform(0.1, 1.2) for c in centres]
    step = 0.002  # every slope a line through these brackets can have lies within ±30
    slopes = [-30 + step * k for k in range(int(60 / step) + 1)]
    brute = feasible_by_brute_force(xs, lows, highs, slopes)
    found = bracket_slopes(xs, lows, highs)
    if not brute:
        assert found is None or found[1] - found[0] < step  # empty, or narrower than the brute force's grid
        return
    assert found is not None
    assert found[0] == pytest.approx(brute[0], abs=step) and found[1] == pytest.approx(brute[-1], abs=step)


def test_an_open_bracket_leaves_that_side_of_the_slope_unbounded():
    xs = [math.log(128), math.log(512)]
    # the best LR at the larger batch is at the top of the searched range: no upper end to its bracket
    found = bracket_slopes(xs, [math.log(0.05), math.log(0.2)], [math.log(0.2), math.inf])
    assert found[1] == math.inf and found[0] == pytest.approx(0.0)


@pytest.mark.parametrize("alpha, winner", [(1.0, "linear"), (0.5, "sqrt"), (0.0, "neither"), (1.6, "neither")])
def test_the_exponent_is_recovered_and_decided_against_linear_and_sqrt(alpha, winner):
    batches, best, low, high = frontier(alpha, batches=(16, 64, 256, 1024, 4096, 16384))
    e = power_law(batches, best, low, high, 0.95)
    assert e.alpha == pytest.approx(alpha, abs=0.08)  # the grid rounds each best LR by at most a factor √2
    assert e.feasible and e.low <= alpha <= e.high
    assert e.winner == winner


def test_two_batches_one_grid_step_apart_decide_nothing():
    batches, best, low, high = frontier(0.75, batches=(128, 512))
    e = power_law(batches, best, low, high, 0.95)
    assert e.fit_low is None  # 2 batches: only the brackets bound the slope
    assert e.contains(1.0) and e.contains(0.5) and e.winner is None


def test_brackets_that_no_line_passes_through_are_reported_as_such():
    batches = [64, 256, 1024]
    best = [0.04, 0.64, 0.04]  # up sixteen-fold, then down again, brackets one grid step each side
    e = power_law(batches, best, [b / 2 for b in best], [b * 2 for b in best], 0.95)
    assert not e.feasible
    assert (e.low, e.high) == (e.fit_low, e.fit_high)  # the interval is the least-squares one alone


def test_fewer_than_two_batches_give_no_exponent():
    assert power_law([128], [0.1], [0.05], [0.2], 0.95) is None


# ---- rise then fall -----------------------------------------------------------------------------------------


def test_a_rise_then_fall_is_flagged_only_where_the_brackets_separate():
    lrs = [0.04, 0.16, 0.64, 0.16, 0.04]  # a peak at the middle batch, brackets one grid step (x2) each side
    low, high = [v / 2 for v in lrs], [v * 2 for v in lrs]
    assert peaks(lrs, low, high) == [1, 2, 3]  # every batch on the hump lies above the two ends (lr_peak names 2)
    monotone = [0.04, 0.08, 0.16, 0.32]
    assert peaks(monotone, [v / 2 for v in monotone], [v * 2 for v in monotone]) == []
    one_step = [0.08, 0.16, 0.08]  # up one grid step and down again: the brackets overlap, the order is unknown
    assert peaks(one_step, [v / 2 for v in one_step], [v * 2 for v in one_step]) == []
    two_steps = [0.04, 0.16, 0.04]  # two grid steps: the brackets touch at one tried LR, the optima are ordered
    assert peaks(two_steps, [v / 2 for v in two_steps], [v * 2 for v in two_steps]) == [1]
    # an open top at the larger batch (its best at the edge of the range) never lies below the peak
    assert peaks(two_steps, [0.02, 0.08, 0.02], [0.08, 0.32, None]) == []


# ---- a real tuned sweep, reported ---------------------------------------------------------------------------

SPEC = {
    "name": "tiny_tuned", "launcher": {"type": "python"},
    "base": {"cpu": True, "num_samples": 8000, "target_accuracy": 0.8, "max_epochs": 20, "warmup_epochs": 0.5,
             "base_lr": 0.05, "base_bs": 256},
    "grid": {"global_bs": [128, 512]}, "seeds": [0, 1],
    # up to LR 2, where this workload diverges or stalls: the search must rank such trials below every reached one
    "tune": {"base_lr": [0.03, 2.0], "trials": 4, "compare": ["sqrt"]},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    study = root / "study"
    done = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study), "--no-progress"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = write_report(study, root / "report")
    findings = json.loads(paths["findings.json"].read_text())
    return study, paths, {f["id"]: f for f in findings["findings"]}, findings


def result(study, run_id):
    path = study / "runs" / run_id / "result.json"
    return json.loads(path.read_text()) if path.exists() else {}


def best_from_results(study, search):
    """The candidate with the fewest median steps among those whose every seed reached the target, from the
    result files alone."""
    scored = []
    for candidate in search["candidates"]:
        results = [result(study, i) for i in candidate["ids"]]
        if all(r.get("status") == "reached" for r in results):
            scored.append((statistics.median(r["steps_to_target"] for r in results), candidate))
    return min(scored, key=lambda s: s[0]) if scored else None


@pytest.mark.slow
def test_optimal_lr_is_the_candidate_with_the_fewest_median_steps_in_the_result_files(tuned):
    study, _, by_id, _ = tuned
    searches = json.loads((study / "study.json").read_text())["tuning"]
    assert [s["global_bs"] for s in searches] == [128, 512]
    for search in searches:
        finding = by_id[f"optimal_lr@{search['global_bs']}"]
        numbers = finding["numbers"]
        expected = best_from_results(study, search)
        assert expected is not None  # this workload reaches 80% at both batches
        steps, candidate = expected
        assert numbers["lr"] == numbers["best_trial_lr"] == candidate["settings"]["base_lr"]
        assert numbers["best_trial_steps"] == steps
        assert numbers["trials"] == len([t for t in search["trials"] if t["phase"] == "search"])
        assert numbers["seeds"] == 2
        tried = sorted({t["settings"]["base_lr"] for t in search["trials"] if t["phase"] == "search"})
        below = [v for v in tried if v < numbers["lr"]]
        above = [v for v in tried if v > numbers["lr"]]
        assert numbers["low"] == (max(below) if below else None)
        assert numbers["high"] == (min(above) if above else None)
        assert search["best"]["settings"] == candidate["settings"]  # the sweep's record agrees


@pytest.mark.slow
def test_trials_not_chosen_leave_the_tuned_series_and_stay_in_the_runs_table(tuned):
    study, paths, by_id, _ = tuned
    record = json.loads((study / "study.json").read_text())
    markdown = paths["report.md"].read_text()
    table = markdown.split("## Configurations", 1)[1].split("\n## ", 1)[0]
    chosen = {i for s in record["tuning"] for i in s["best"]["ids"]}
    others = {t["id"] for s in record["tuning"] for t in s["trials"]} - chosen
    assert others
    for run_id in others:
        row = next(line for line in table.splitlines() if line.startswith(f"| {run_id} |"))
        assert "tuning trial, not the best LR" in row and "| none |" in row
    for run_id in chosen:
        row = next(line for line in table.splitlines() if line.startswith(f"| {run_id} |"))
        assert "tuned: the best LR at its batch" in row and "| tuned |" in row
    # the steps of the tuned series are the best's alone: its regimes finding rests on their median steps
    doubling = by_id["largest_useful_batch[tuned]"]["numbers"]["doublings"][0]
    means = {s["global_bs"]: statistics.fmean(result(study, i)["steps_to_target"] for i in s["best"]["ids"])
             for s in record["tuning"]}
    assert (doubling["small"], doubling["large"]) == (128, 512)
    assert doubling["steps_small"] == pytest.approx(means[128]) and doubling["steps_large"] == pytest.approx(means[512])


@pytest.mark.slow
def test_a_diverged_or_stalled_trial_never_wins(tuned):
    study, _, by_id, _ = tuned
    record = json.loads((study / "study.json").read_text())
    failed = [t for s in record["tuning"] for t in s["trials"] if t["status"] in ("diverged", "stalled")]
    assert failed  # LR 2 breaks this workload: the test has something to rank
    for search in record["tuning"]:
        lr = by_id[f"optimal_lr@{search['global_bs']}"]["numbers"]["lr"]
        broken = {t["settings"]["base_lr"] for t in search["trials"] if t["status"] in ("diverged", "stalled")}
        assert lr not in broken
        assert all(result(study, i)["status"] == "reached" for i in search["best"]["ids"])


@pytest.mark.slow
def test_the_exponent_rule_costs_and_critical_batch_agree_with_the_per_batch_findings(tuned):
    _, paths, by_id, document = tuned
    lrs = {b: by_id[f"optimal_lr@{b}"]["numbers"]["lr"] for b in (128, 512)}
    exponent = by_id["lr_exponent"]["numbers"]
    assert exponent["batches"] == [128, 512]
    assert exponent["alpha"] == pytest.approx(math.log(lrs[512] / lrs[128]) / math.log(4))
    low_end = exponent["low"] if exponent["low"] is not None else -math.inf
    high_end = exponent["high"] if exponent["high"] is not None else math.inf
    assert low_end <= exponent["alpha"] <= high_end
    assert by_id["lr_exponent"]["decided"] == ((low_end <= 1 <= high_end) != (low_end <= 0.5 <= high_end))
    for batch in (128, 512):
        cost = by_id[f"rule_cost@{batch}[sqrt]"]
        tuned_steps = by_id[f"optimal_lr@{batch}"]["numbers"]["best_trial_steps"]
        assert cost["numbers"]["tuned_steps"] == tuned_steps
        if cost["numbers"]["reached"]:
            assert "the tuned steps" in cost["statement"] and cost["numbers"]["ratio"] > 0
        else:
            assert f"tuned needs {tuned_steps:,.0f} steps" in cost["statement"]
    assert "rule_cost[sqrt]" in by_id
    critical = by_id["tuned_critical_batch"]
    assert critical["numbers"]["series"] == "tuned" and "critical_batch[tuned]" in by_id
    assert critical["numbers"]["b_crit"] == by_id["critical_batch[tuned]"]["numbers"].get("b_crit")
    assert "tuned_lr" in paths  # the best-LR plot
    assert "Which learning rate is best at each batch" in paths["report.md"].read_text()
    assert any("Tuned LR:" in line for line in document["recommendation"]["lines"])


@pytest.mark.slow
def test_the_result_files_win_over_a_study_json_best_that_disagrees(tuned, tmp_path):
    study, _, by_id, _ = tuned
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    record = json.loads((copy / "study.json").read_text())
    search = record["tuning"][0]
    loser = next(c for c in search["candidates"] if c["settings"] != search["best"]["settings"])
    search["best"] = loser  # a record that names the wrong candidate
    (copy / "study.json").write_text(json.dumps(record))
    done = subprocess.run([sys.executable, "-m", "scaling.cli", "report", str(copy), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the report follows the result files" in done.stderr
    again = {f["id"]: f for f in json.loads((tmp_path / "out" / "findings.json").read_text())["findings"]}
    batch = search["global_bs"]
    assert again[f"optimal_lr@{batch}"]["numbers"]["lr"] == by_id[f"optimal_lr@{batch}"]["numbers"]["lr"]


@pytest.mark.slow
def test_a_rule_that_gives_the_tuned_lr_itself_is_said_so_not_left_undecided(tuned, tmp_path):
    # At batch 128, make the sqrt rule's runs the training the tuned best did (its LR and steps, seed by
    # seed): the two cannot differ, and the report says the rule gives the tuned LR there, where a
    # comparison of equal runs would only say "not decided".
    study, _, by_id, _ = tuned
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    record = json.loads((copy / "study.json").read_text())
    search = next(s for s in record["tuning"] if s["global_bs"] == 128)
    best = {result(copy, i)["config"]["seed"]: result(copy, i) for i in search["best"]["ids"]}
    rule_runs = [c for c in record["configs"] if c["overrides"].get("lr_scaling") == "sqrt"
                 and c["overrides"]["global_bs"] == 128]
    assert len(rule_runs) == 2
    for entry in rule_runs:
        path = copy / entry["output_dir"] / "result.json"
        own = json.loads(path.read_text())
        same = best[own["config"]["seed"]]
        own.update({key: same[key] for key in ("status", "steps", "steps_to_target", "history")})
        own["lr"]["scaled"] = same["lr"]["scaled"]
        path.write_text(json.dumps(own))
    done = subprocess.run([sys.executable, "-m", "scaling.cli", "report", str(copy), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    again = {f["id"]: f for f in json.loads((tmp_path / "out" / "findings.json").read_text())["findings"]}
    cost = again["rule_cost@128[sqrt]"]
    assert cost["numbers"]["ratio"] == pytest.approx(1.0)
    assert "the rule gives the tuned best LR itself" in cost["statement"]
    summary = again["rule_cost[sqrt]"]
    assert summary["numbers"]["same_lr_at"] == [128]
    assert "gives the tuned best LR itself at batch 128" in summary["statement"]
    # the other batch is as before: its own comparison decides the summary alone
    assert summary["decided"] == again["rule_cost@512[sqrt]"]["decided"] == by_id["rule_cost@512[sqrt]"]["decided"]
    assert by_id["rule_cost[sqrt]"]["numbers"]["same_lr_at"] == []


@pytest.mark.slow
def test_a_damaged_tuning_entry_is_named_and_left_out(tuned, tmp_path):
    study, _, _, _ = tuned
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    record = json.loads((copy / "study.json").read_text())
    record["tuning"][0]["candidates"] = "lost"
    (copy / "study.json").write_text(json.dumps(record))
    done = subprocess.run([sys.executable, "-m", "scaling.cli", "report", str(copy), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "study.json tuning[0] has 'trials' or 'candidates' that are not lists" in done.stderr
    ids = {f["id"] for f in json.loads((tmp_path / "out" / "findings.json").read_text())["findings"]}
    assert "optimal_lr@512" in ids and "optimal_lr@128" not in ids


def test_a_study_without_tuning_says_so_in_its_section(tmp_path):
    from test_report import fabricate_study

    fabricate_study(tmp_path, seeds=2)
    paths = write_report(tmp_path, tmp_path / "out")
    markdown = paths["report.md"].read_text()
    section = markdown.split("## Which learning rate is best at each batch, and how should it scale?", 1)[1]
    assert section.split("\n## ", 1)[0].strip().startswith("_This study did not tune the LR")
    ids = [f["id"] for f in json.loads(paths["findings.json"].read_text())["findings"]]
    assert not [i for i in ids if i.startswith(("optimal_lr", "lr_exponent", "rule_cost", "tuned_critical"))]
