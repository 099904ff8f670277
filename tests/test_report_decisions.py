"""The report decides only what the data decide (issue 12): every verdict against run-to-run noise, in
findings.json, stable when the same study is run again.

Studies here are fabricated results whose noise is known: each configuration has a true train time, steps to
target and throughput, and each seed multiplies them by exp(N(0, noise)) from a seeded generator. Evaluations
run every step near the target unless a test coarsens them, so only the seeds' spread is in question.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from test_report import fabricate_result

from scaling import stats
from scaling.report import write_report
from scaling.report.command import main as report_main
from scaling.report.questions.critical_batch import noise_of
from scaling.report.study import Study
from scaling.report.writer import findings_document


def write_run(root: Path, run_id: str, overrides: dict, *, steps: int | None, time_s: float | None,
              rate: float, status: str = "reached", eval_every: int = 1) -> dict:
    """One result.json: `steps` and `time_s` to the target (None: not reached), evaluated every `eval_every`
    steps (the step resolution), `rate` samples/s."""
    result = fabricate_result(overrides, status, steps if status == "reached" else None, rate, extras=False)
    if status == "reached":
        batch = result["batch"]["global"]
        result["train_time_to_target_s"] = time_s
        result["time_to_target_s"] = 1.1 * time_s
        every = max(1, eval_every)
        marks = sorted({*range(every, steps, every), steps})
        result["history"] = [{"step": s, "samples": s * batch, "epoch": s / 100, "time_s": 1.1 * time_s * s / steps,
                              "train_time_s": time_s * s / steps, "accuracy": 0.5 + 0.4 * s / steps, "loss": 1.0}
                             for s in marks]
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result))
    return result


def fabricate(root: Path, configs: dict[tuple, dict], seeds: int, noise: float, rng: random.Random,
              time_noise: float | None = None) -> Path:
    """configs: (global_bs, lr_scaling) -> {"time": s, "steps": n, "rate": samples/s, optional "status",
    "eval_every", "overrides"}; each seed's values are the true ones times exp(N(0, noise)) (the train time's
    times exp(N(0, time_noise)) when given: machine load moves time, not steps)."""
    for (batch, rule), truth in configs.items():
        for seed in range(seeds):
            jitter = [math.exp(rng.gauss(0.0, noise)) for _ in range(3)]
            if time_noise is not None:
                jitter[1] = math.exp(rng.gauss(0.0, time_noise))
            status = truth.get("status", "reached")
            if callable(status):
                status = status(seed)
            overrides = {"global_bs": batch, "lr_scaling": rule, "seed": seed, **truth.get("overrides", {})}
            write_run(root, f"bs{batch}-{rule}-s{seed}", overrides, status=status,
                      steps=max(1, round(truth["steps"] * jitter[0])), time_s=truth["time"] * jitter[1],
                      rate=truth["rate"] * jitter[2], eval_every=truth.get("eval_every", 1))
    return root


def quick_findings(root: Path) -> dict[str, dict]:
    """findings.json's findings by id, without drawing the plots (the same objects the writer records)."""
    document = findings_document(Study.load(root, root))
    ids = [f["id"] for f in document["findings"]]
    assert len(ids) == len(set(ids)), "finding ids must be unique"
    return {f["id"]: f for f in document["findings"]}


def findings(paths: dict) -> dict[str, dict]:
    document = json.loads(paths["findings.json"].read_text())
    ids = [f["id"] for f in document["findings"]]
    assert len(ids) == len(set(ids)), "finding ids must be unique"
    return {f["id"]: f for f in document["findings"]}


# A ladder where sqrt is truly 20% faster than linear at 1024 and 2048, the two rules equal at 512, and time
# flat from 1024 on (1024 and 2048 equal); batch 256 is the reference batch, where both rules give one LR.
LADDER = {
    (256, "sqrt"): {"time": 4.0, "steps": 400, "rate": 20_000},
    (256, "linear"): {"time": 4.0, "steps": 400, "rate": 20_000},
    (512, "sqrt"): {"time": 3.0, "steps": 300, "rate": 50_000},
    (512, "linear"): {"time": 3.0, "steps": 300, "rate": 50_000},
    (1024, "sqrt"): {"time": 2.0, "steps": 120, "rate": 60_000},
    (1024, "linear"): {"time": 2.5, "steps": 150, "rate": 60_000},
    (2048, "sqrt"): {"time": 2.0, "steps": 60, "rate": 60_000},
    (2048, "linear"): {"time": 2.5, "steps": 75, "rate": 60_000},
}


def test_a_real_difference_is_decided_with_the_right_winner(tmp_path):
    fabricate(tmp_path, LADDER, seeds=4, noise=0.02, rng=random.Random(1))
    found = quick_findings(tmp_path)
    for batch in (1024, 2048):
        rule = found[f"lr_rule@{batch}"]
        assert rule["decided"] and rule["winner"] == "sqrt", rule["statement"]
        (against,) = rule["numbers"]["against"].values()
        assert against["ci_high"] < 1 / 1.05  # sqrt's time over linear's: the whole interval beyond 5%
    equal = found["lr_rule@512"]
    assert not equal["decided"] and equal["winner"] is None
    assert found["lr_rule"]["decided"] and found["lr_rule"]["winner"] == "sqrt"
    # Fastest: sqrt at 1024 and at 2048 are truly equal, so neither is the decided fastest.
    fastest = found["fastest"]
    assert not fastest["decided"] and fastest["winner"] is None
    assert "the data do not separate it from" in fastest["statement"]


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_the_lr_rule_is_decided_on_steps_while_time_stays_open_under_load(tmp_path, seed):
    """Steps to target do not move with machine load, train time does (±25% here): the LR-rule question is
    decided on steps, says so, and the time questions stay undecided."""
    configs = {key: {**truth, "time": 3.0} for key, truth in LADDER.items()}  # one true time everywhere
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(seed), time_noise=0.25)
    found = quick_findings(tmp_path)
    for batch in (1024, 2048):
        rule = found[f"lr_rule@{batch}"]
        assert rule["decided"] and rule["winner"] == "sqrt", rule["statement"]
        assert rule["numbers"]["decided_on"] == "steps to target"
        assert "decided on steps to target" in rule["statement"] and "train time" not in rule["statement"]
    assert found["lr_rule"]["decided"] and "on steps to target" in found["lr_rule"]["statement"]
    assert not found["fastest"]["decided"], found["fastest"]["statement"]
    assert "train time" in found["fastest"]["statement"]


def test_a_clearly_fastest_configuration_is_decided_and_starred(tmp_path):
    configs = {**LADDER, (1024, "sqrt"): {"time": 1.4, "steps": 80, "rate": 60_000}}  # 30% ahead of the rest
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(11))
    paths = write_report(tmp_path)
    fastest = findings(paths)["fastest"]
    assert fastest["decided"] and fastest["winner"] == "batch 1024 (sqrt)", fastest["statement"]
    assert all(c["verdict"] == "lower" and c["ci_high"] < 1 / 1.05 for c in fastest["numbers"]["against"])
    starred = [line for line in paths["report.md"].read_text().splitlines() if line.startswith("| ") and "★" in line]
    assert len(starred) == 3 and all(line.startswith("| bs1024-sqrt-s") for line in starred)


def test_identical_lr_rules_are_not_ranked(tmp_path):
    """At the reference batch linear and sqrt give the same LR schedule: the same training, whatever the
    timing noise says, so neither wins there and the fastest-configuration question counts them once."""
    configs = {key: value for key, value in LADDER.items() if key[0] == 256}
    configs[(256, "linear")] = {**configs[(256, "linear")], "time": 3.0}  # timing noise that looks like 25%
    fabricate(tmp_path, configs, seeds=3, noise=0.01, rng=random.Random(2))
    paths = write_report(tmp_path)
    found = findings(paths)
    rule = found["lr_rule@256"]
    assert not rule["decided"] and rule["winner"] is None
    assert rule["numbers"]["identical"] == [["linear", "sqrt"]]
    assert "train identically: not ranked" in rule["statement"]
    fastest = found["fastest"]
    assert fastest["numbers"]["against"] == []  # its twin is not a rival
    assert fastest["numbers"]["identical_training"]
    assert "trains identically" in fastest["statement"]
    assert "not ranked" in paths["report.md"].read_text()


def test_one_seed_decides_nothing_and_says_so_once(tmp_path):
    configs = {**LADDER, (1024, "linear"): {"time": 10.0, "steps": 600, "rate": 15_000}}  # 5x slower
    fabricate(tmp_path, configs, seeds=1, noise=0.02, rng=random.Random(3))
    paths = write_report(tmp_path)
    document = json.loads(paths["findings.json"].read_text())
    assert document["seeds_per_configuration"] == {"min": 1, "max": 1}
    assert document["findings"] and not any(f["decided"] for f in document["findings"])
    assert all(f["winner"] is None for f in document["findings"])
    md = paths["report.md"].read_text()
    assert md.count("Every configuration ran with one seed") == 1
    assert "`seeds: [0, 1, 2]`" in md
    assert "mean ± std over" not in md  # plot titles and captions claim no spread


def test_a_configuration_that_missed_the_target_is_never_recommended(tmp_path):
    """The fastest mean belongs to a configuration where one seed diverged: it is not the fastest."""
    configs = {**LADDER,
               (4096, "sqrt"): {"time": 1.0, "steps": 40, "rate": 70_000,
                                "status": lambda seed: "diverged" if seed == 1 else "reached"}}
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(4))
    paths = write_report(tmp_path)
    found = findings(paths)
    fastest = found["fastest"]
    assert "batch 4096" not in fastest["numbers"]["configuration"]
    assert any("batch 4096" in label for label in fastest["numbers"]["not_every_seed_reached"])
    best_rows = [line for line in paths["report.md"].read_text().splitlines()
                 if line.startswith("| bs4096") and ("★" in line or "☆" in line)]
    assert not best_rows
    # Nor is it a useful batch: the steps of the seeds that happened to reach the target are no ladder rung.
    useful = found["largest_useful_batch[sqrt]"]
    assert int(useful["numbers"]["batch"]) < 4096 and "4096" in useful["numbers"]["not_reached"]
    assert "4096: 2 of 3 seeds reached it" in useful["statement"]


def test_predicted_fastest_batch_never_recommends_a_batch_that_failed(tmp_path):
    """With the noise-scale fit, candidates stop below the first batch where no seed reached the target."""
    from test_report_noise import fabricate_study

    fabricate_study(tmp_path, rules=("linear",), batches=[64, 128, 256, 512, 1024, 2048],
                    reached=lambda _, batch: batch < 1024)
    found = quick_findings(tmp_path)
    (fit,) = noise_of(Study.load(tmp_path, tmp_path)).fits
    assert {c.devices for c in fit.fastest} == {1, 8, 64}
    for c in fit.fastest:
        assert all(batch < 1024 for batch in fit.eligible(c.devices)) and c.choice.batch < 1024
    suggested = [f for key, f in found.items() if key.startswith("fit_suggests@")]
    for f in suggested:  # a batch not run: what to run next, never a decided answer
        assert not f["decided"] and f["numbers"]["batch"] not in (64, 128, 256, 512, 1024, 2048)
        assert all(batch < 1024 for batch in f["numbers"]["candidates"]), f["numbers"]


def test_step_claims_within_the_step_resolution_are_not_decided(tmp_path):
    """12 -> 10 steps, evaluated every 2 steps: the "gain" is one evaluation, not a decided regime."""
    configs = {(512, "sqrt"): {"time": 1.0, "steps": 24, "rate": 50_000, "eval_every": 2},
               (1024, "sqrt"): {"time": 0.8, "steps": 12, "rate": 60_000, "eval_every": 2},
               (2048, "sqrt"): {"time": 0.7, "steps": 10, "rate": 65_000, "eval_every": 2}}
    fabricate(tmp_path, configs, seeds=2, noise=0.0, rng=random.Random(5))
    found = quick_findings(tmp_path)
    useful = found["largest_useful_batch"]
    assert not useful["decided"], useful["statement"]
    last = useful["numbers"]["doublings"][-1]
    assert (last["steps_small"], last["steps_large"]) == (12, 10)
    assert last["resolution_large"] == 2 and last["ci_low"] < analysis_no_gain() <= last["ci_high"]
    assert "known to 2 steps" in useful["statement"]


def analysis_no_gain() -> float:
    from scaling.report.questions.largest import NO_GAIN_MIN_RATIO

    return NO_GAIN_MIN_RATIO


@pytest.mark.parametrize(("every", "cause"), [(25, "evaluation granularity"), (1, "the steps are exact")])
def test_super_linear_steps_are_flagged_not_called_perfect(tmp_path, every, cause):
    """r below 0.5 is never called perfect scaling; it is blamed on granularity only where the steps are known
    to an interval (exact steps: the LR rule's doing)."""
    configs = {(32, "sqrt"): {"time": 3.0, "steps": 100, "rate": 5_000, "eval_every": every},
               (64, "sqrt"): {"time": 1.0, "steps": 31, "rate": 10_000, "eval_every": every}}  # r = 0.31
    fabricate(tmp_path, configs, seeds=2, noise=0.0, rng=random.Random(6))
    found = quick_findings(tmp_path)
    perfect = found["perfect_scaling"]
    assert perfect["numbers"]["doublings"][0]["super_linear"]
    assert not perfect["decided"] and cause in perfect["statement"], perfect["statement"]
    other = {"evaluation granularity", "the steps are exact"} - {cause}
    assert other.pop() not in perfect["statement"]


def _decided_winners(root: Path) -> dict[str, str]:
    """findings.json's decided findings, without drawing the plots (the same objects the writer records)."""
    document = findings_document(Study.load(root, root))
    return {f["id"]: f["winner"] for f in document["findings"] if f["decided"]}


@pytest.mark.slow  # seconds of real subprocesses or repeated studies: the full suite runs it
def test_repeating_a_study_never_contradicts_a_decided_finding(tmp_path):
    """A/A: the same study, its seeds drawn again 12 times with 3% run-to-run noise. Truly equal alternatives
    (sqrt 1024 vs 2048, linear vs sqrt at 512, 127/128/129) must never be decided one way in one repetition
    and the other way in another; the real differences must be decided the same way every time they are."""
    configs = dict(LADDER)
    for batch in (127, 128, 129):
        configs[(batch, "sqrt")] = {"time": 3.0, "steps": 300, "rate": 40_000,
                                    "overrides": {"per_device_bs": batch, "target_accuracy": None, "max_steps": 50},
                                    "status": "completed"}
    winners: dict[str, set] = {}
    rng = random.Random(7)
    for repetition in range(12):
        root = fabricate(tmp_path / f"rep{repetition}", configs, seeds=3, noise=0.03, rng=rng)
        for key, winner in _decided_winners(root).items():
            winners.setdefault(key, set()).add(winner)
    contradictions = {key: values for key, values in winners.items() if len(values) > 1}
    assert not contradictions
    assert winners.get("lr_rule@1024") == {"sqrt"}  # the real 20% difference is found, and always one way
    assert "lr_rule@512" not in winners and "powers_of_two@128" not in winners


def test_a_single_repetition_with_one_seed_used_to_flip(tmp_path):
    """The old failure: 127/128/129 of identical throughput, one run each, called "beyond 2x noise" from
    the spread of logging windows. One seed now decides nothing, whatever the windows say."""
    for batch in (127, 128, 129):
        overrides = {"global_bs": batch, "per_device_bs": batch, "target_accuracy": None, "max_steps": 50, "seed": 0}
        result = fabricate_result(overrides, "completed", None, 40_000 * (1.3 if batch == 128 else 1.0),
                                  windows_jitter=0.001, extras=False)
        (tmp_path / f"bs{batch}").mkdir()
        (tmp_path / f"bs{batch}" / "result.json").write_text(json.dumps(result))
    found = quick_findings(tmp_path)
    power = found["powers_of_two@128"]
    assert not power["decided"] and power["n_seeds"] == 1


def test_findings_json_matches_the_report(tmp_path):
    fabricate(tmp_path, LADDER, seeds=2, noise=0.02, rng=random.Random(8))
    paths = write_report(tmp_path)
    document = json.loads(paths["findings.json"].read_text())
    assert document["rules"]["threshold"] == stats.DEFAULT_THRESHOLD
    assert document["rules"]["confidence"] == stats.DEFAULT_CONFIDENCE
    md = paths["report.md"].read_text()
    for finding in document["findings"]:
        assert set(finding) == {"id", "kind", "statement", "decided", "winner", "n_seeds", "numbers"}
        assert isinstance(finding["decided"], bool)
        assert finding["winner"] is None or finding["decided"]
        assert finding["statement"] in md, finding["id"]


def test_threshold_and_confidence_are_settable_and_checked(tmp_path, capsys):
    fabricate(tmp_path, LADDER, seeds=3, noise=0.02, rng=random.Random(9))
    # sqrt is 20% faster at 1024: decided at a 5% threshold, not at a 30% one.
    assert quick_findings(tmp_path)["lr_rule@1024"]["decided"]
    assert report_main([str(tmp_path), "--threshold", "0.3"]) == 0
    loose = json.loads((tmp_path / "findings.json").read_text())
    assert loose["rules"]["threshold"] == 0.3
    assert not {f["id"]: f for f in loose["findings"]}["lr_rule@1024"]["decided"]
    for flag, value in (("--threshold", "1.5"), ("--confidence", "0.2"), ("--confidence", "x")):
        capsys.readouterr()
        assert report_main([str(tmp_path), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scaling: error: ")


def test_runs_with_different_thread_counts_get_one_note(tmp_path):
    fabricate(tmp_path, LADDER, seeds=2, noise=0.02, rng=random.Random(10))
    for i, path in enumerate(sorted(tmp_path.glob("*/result.json"))):
        result = json.loads(path.read_text())
        result["environment"]["torch_threads"] = 1 if i % 2 else 2
        path.write_text(json.dumps(result))
    paths = write_report(tmp_path)
    assert paths["report.md"].read_text().count("different numbers of torch threads (1, 2") == 1
    assert any("torch threads" in note for note in json.loads(paths["findings.json"].read_text())["notes"])


# --- the statistics themselves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "df", "t"), [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 10, 2.2281),
                                            (0.995, 5, 4.0321), (0.95, 30, 1.6973), (0.975, 1e6, 1.9600)])
def test_t_quantile_matches_the_tables(p, df, t):
    assert stats.t_quantile(p, df) == pytest.approx(t, abs=1e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-t, abs=1e-4)


def test_comparison_is_the_same_whichever_side_comes_first():
    a, b = [10.0, 10.4, 9.8], [12.0, 12.5, 11.7]
    ab, ba = stats.compare(a, b), stats.compare(b, a)
    assert ab.verdict == stats.LOWER and ba.verdict == stats.HIGHER
    assert ab.ratio * ba.ratio == pytest.approx(1.0)
    assert ab.low * ba.high == pytest.approx(1.0)


def test_comparison_verdicts_follow_interval_and_threshold():
    tight, same = [10.0, 10.1, 9.9, 10.05], [10.02, 9.97, 10.08, 9.95]
    assert stats.compare(tight, same).verdict == stats.EQUIVALENT
    assert stats.compare([10.0], [20.0]).verdict == stats.UNDECIDED  # one seed
    near = stats.compare([10.0, 10.1, 9.9], [10.5, 10.6, 10.4])  # ~5% apart: on the threshold
    assert near.verdict == stats.UNDECIDED
    noisy = stats.compare([8.0, 12.0, 10.0], [14.0, 11.0, 16.0])
    # A 20% per-seed spread: 3 seeds resolve only differences of about 90%, and the 5% threshold needs more
    # than 100 seeds; a 3% spread needs a few dozen.
    assert noisy.verdict == stats.UNDECIDED and noisy.seeds_needed is None and noisy.resolvable > 0.5
    moderate = stats.compare([10.0, 10.3, 9.7], [10.6, 10.2, 10.9])
    assert moderate.verdict == stats.UNDECIDED and 3 < moderate.seeds_needed <= 100
    # The more candidates the best is picked from, the wider each interval (Bonferroni).
    one, many = stats.compare(tight, [11.0, 11.2, 10.9]), stats.compare(tight, [11.0, 11.2, 10.9], comparisons=10)
    assert many.high - many.low > one.high - one.low


def test_resolution_keeps_differences_within_it_undecided():
    exact = stats.compare([12.0, 12.0], [10.0, 10.0])
    assert exact.verdict == stats.HIGHER
    coarse = stats.compare([12.0, 12.0], [10.0, 10.0], resolution_a=[2.0, 2.0], resolution_b=[2.0, 2.0])
    assert coarse.verdict == stats.UNDECIDED


# --- what the plots claim ------------------------------------------------------------------------------------


def test_plot_titles_claim_a_spread_only_over_several_seeds():
    from scaling.report.plots import seeds_phrase

    assert seeds_phrase([1, 1, 1]) == ""
    assert seeds_phrase([3, 3]) == " (mean ± std over 3 seeds)"
    assert seeds_phrase([2, 3, 1]) == " (mean ± std over 1–3 seeds)"


@pytest.mark.parametrize(("low", "high"), [(0.9, 6.0), (1.1, 1.9), (90.0, 5e5), (2e-3, 40.0), (300.0, 4500.0)])
def test_log_axis_labels_do_not_crowd_and_share_one_style(low, high):
    from scaling.report.plots import MAX_LOG_TICKS, log_ticks, plain_number

    ticks = log_ticks(low, high)
    assert 2 <= len(ticks) <= MAX_LOG_TICKS
    assert all(low <= t <= high * (1 + 1e-9) for t in ticks) and ticks == sorted(ticks)
    labels = [plain_number(t) for t in ticks]
    assert len(set(labels)) == len(labels) and not any("e" in label for label in labels)


def test_median_interval_takes_the_sign_test_order_statistics_and_covers_the_median():
    values = [float(v) for v in range(1, 101)]
    assert stats.median_interval(values[:10]) == (2.0, 9.0)  # the published ranks for n = 10 at 95%: 2 and 9
    assert stats.median_interval(values) == (40.0, 61.0)  # n = 100: 40 and 61
    assert stats.median_interval(values[:6]) == (1.0, 6.0)  # the smallest n at 95%: min-max, coverage 31/32
    assert stats.median_interval(values[:5]) is None  # min-max covers only 15/16 < 95%
    assert stats.median_interval([3.0, None, 1.0, 2.0, -6.0, 5.0, 4.0]) == (-6.0, 5.0)  # None dropped; any sign
    # Coverage on a skewed distribution (exponential, true median ln 2): at least 95%, as promised.
    rng = random.Random(0)
    trials = 2000
    covered = 0
    for _ in range(trials):
        low, high = stats.median_interval([rng.expovariate(1.0) for _ in range(15)])
        covered += low <= math.log(2) <= high
    assert 0.95 <= covered / trials <= 0.995  # exact coverage for n = 15: 1 - 2 * P(B <= 3) = 0.965


@pytest.mark.slow  # 2,400 simulated comparisons
@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_what_the_seeds_can_resolve_holds_in_simulated_studies(sigma):
    """The two figures an open comparison states, checked by simulation rather than by their formula: with
    `seeds_needed` seeds per side, A/A studies (no true difference) come out equivalent about 80% of the time;
    with 3 seeds, a true difference of `resolvable` is decided about 70% of the time (the power is computed
    for a pooled-variance interval at 2(n - 1) degrees of freedom; Welch's, which decides, has fewer at 3
    seeds: docs/report.md says so)."""
    rules, rng = stats.DEFAULT_RULES, random.Random(7)
    variance = sigma * sigma

    def draw(n, shift=0.0):
        return [math.exp(shift + rng.gauss(0.0, sigma)) for _ in range(n)]

    needed = stats.seeds_needed(variance, rules, rules.confidence, current=3)
    equivalent = [stats.compare(draw(needed), draw(needed), rules).verdict == stats.EQUIVALENT for _ in range(600)]
    assert 0.72 <= sum(equivalent) / len(equivalent) <= 0.9, (needed, sum(equivalent))
    resolvable = stats.resolvable_difference(variance, 3, rules, rules.confidence)
    decided = [stats.compare(draw(3, math.log1p(resolvable)), draw(3), rules).decided for _ in range(600)]
    assert 0.62 <= sum(decided) / len(decided) <= 0.9, (resolvable, sum(decided))


@pytest.mark.slow  # three reports with plots
def test_an_a_a_study_says_what_it_could_resolve_not_that_more_seeds_would_resolve_it(tmp_path):
    """Identical configurations (seeds 0-2 against 3-5 of one configuration, as issue 28's A/A study): never
    decided, and the sentence states the difference its seeds resolve and the seeds the threshold needs,
    without treating the observed (noise) difference as an effect."""
    for trial in range(3):
        root = tmp_path / str(trial)
        truth = {"time": 2.0, "steps": 200, "rate": 50_000}
        fabricate(root, {(512, "sqrt"): truth, (512, "linear"): truth}, seeds=3, noise=0.15,
                  rng=random.Random(100 + trial))
        rule = quick_findings(root)["lr_rule@512"]
        assert not rule["decided"], rule["statement"]
        assert "would likely resolve" not in rule["statement"]
        (against,) = rule["numbers"]["against"].values()
        if against["verdict"] == stats.UNDECIDED:
            assert "with 3 seeds the study resolves differences beyond ±" in rule["statement"]
            assert "seeds per configuration would resolve the ±5% threshold" in rule["statement"] or (
                "more than 100 seeds" in rule["statement"])
            assert against["resolvable"] > 0.05


def test_runs_chasing_another_target_are_left_out_of_the_target_questions(tmp_path):
    """Two runs to 70% (far fewer steps) beside a study to 90%: said once, compared nowhere."""
    fabricate(tmp_path, LADDER, seeds=3, noise=0.02, rng=random.Random(8))
    for seed in range(2):
        write_run(tmp_path, f"easy-s{seed}", {"global_bs": 4096, "lr_scaling": "sqrt", "seed": seed,
                                               "target_accuracy": 0.7}, steps=5, time_s=0.1, rate=60_000)
    paths = write_report(tmp_path)
    document = json.loads(paths["findings.json"].read_text())
    assert any("chase another target (70% accuracy)" in note for note in document["notes"])
    found = findings(paths)
    assert "4096" not in found["fastest"]["statement"] and found["fastest"]["numbers"]["global_batch"] != 4096
    assert all("4096" not in f["statement"] for key, f in found.items() if key.startswith(("largest", "lr_rule")))
    assert "| easy-s0 |" in paths["report.md"].read_text()  # still in the table


def test_configurations_that_train_identically_to_the_best_share_its_star(tmp_path):
    """At the reference batch linear and sqrt are one training: both are starred when it is the best."""
    configs = {**LADDER, (256, "sqrt"): {"time": 0.8, "steps": 80, "rate": 20_000},
               (256, "linear"): {"time": 0.8, "steps": 80, "rate": 20_000}}
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(9))
    paths = write_report(tmp_path)
    starred = [line for line in paths["report.md"].read_text().splitlines() if line.startswith("| bs256-")]
    assert len(starred) == 6 and all("★" in line for line in starred)
