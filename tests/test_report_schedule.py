"""A branching study end to end (scaling study with a `branch:` section): the reference run, `scaling branch` on it,
the derived warmup under three seeds beside fixed batches, and what the report makes of them: the critical batch
over training beside B_simple (from branches.json), the schedule against the best fixed batch (recomputed here
from the result files), and one critical-batch fit per target level. The branch runs are not runs of the study."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from conftest import assert_ok, run_in_process
from scaling.noise.fits import fit_tradeoff

pytestmark = pytest.mark.slow

SPEC = {
    "name": "schedule_check",
    "base": {"num_samples": 8000, "cpu": True, "target_accuracy": 0.6, "target_levels": [0.4, 0.5],
             "eval_every": 20, "base_lr": 0.1, "base_bs": 64, "lr_scaling": "sqrt"},
    "branch": {"reference": {"global_bs": 64, "max_steps": 200}, "at": "10%,50%", "batches": "2x,4x",
               "window": "10%", "controls": 2, "derived": {"per_device_bs": 64}},
    "grid": {"global_bs": [64, 128, 256]},
    "seeds": [0, 1],
    "launcher": {"type": "python"},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule_study")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = run_in_process([str(spec), "--dir", str(root / "study"), "--no-progress"], command="study")
    assert_ok(proc)
    assert "branching the reference run" in proc.stdout
    return root / "study", proc


def results(folder):
    out = []
    for path in sorted((folder / "runs").glob("*/result.json")):
        out.append(json.loads(path.read_text()))
    return out


def test_the_study_runs_the_reference_branches_it_and_trains_the_warmup(study):
    folder, _ = study
    record_path = next((folder / "runs").glob("*/branches.json"))
    record = json.loads(record_path.read_text())
    assert [p["step"] for p in record["points"]] == [20, 100]
    scheduled = [r for r in results(folder) if r["config"]["batch_schedule"]]
    assert sorted(r["config"]["seed"] for r in scheduled) == [0, 1]
    expected, batch = [(0, 64)], 64
    for point in record["points"]:
        if point["critical_batch"] > batch:
            batch = point["critical_batch"]
            expected.append((point["samples"], batch))
    for result in scheduled:
        got = [(p["asked"], p["global"]) for p in result["batch_schedule"]] if result["batch_schedule"] else [(0, 64)]
        assert got == expected
    report = (folder / "report.md").read_text()
    for result in scheduled:
        if result["batch_schedule"]:  # the runs table names the batches and where each started
            batches = "→".join(f"{p['global']:,}" for p in result["batch_schedule"])
            starts = ", ".join(f"{p['global']} from step {p['first_step']:,}" for p in result["batch_schedule"])
            assert f"| {batches} |" in report and f"batch schedule: {starts}" in report
    study_record = json.loads((folder / "study.json").read_text())
    assert len(study_record["configs"]) == 1 + 6 + 2  # reference, the grid, the derived seeds


def test_the_report_compares_the_schedule_with_the_best_fixed_batch_on_each_measure(study):
    folder, _ = study
    findings = {f["id"]: f for f in json.loads((folder / "findings.json").read_text())["findings"]}
    everything = results(folder)
    fixed = [r for r in everything if not r["config"]["batch_schedule"] and r["config"]["target_accuracy"] == 0.6]
    scheduled = [r for r in everything if r["config"]["batch_schedule"]]
    if not all(r["status"] == "reached" for r in fixed + scheduled):
        pytest.skip("a run missed the target: the comparison then leaves it out (tested elsewhere)")

    def geo(values):
        return math.exp(statistics.fmean(math.log(v) for v in values))

    for measure, key in (("steps", "steps_to_target"), ("samples", "samples_to_target")):
        by_batch = {}
        for r in fixed:
            by_batch.setdefault(r["config"]["global_bs"], []).append(r[key])
        best = min(by_batch, key=lambda b: geo(by_batch[b]))
        ours = geo([r[key] for r in scheduled])
        finding = next(f for fid, f in findings.items() if fid.startswith(f"schedule_{measure}["))
        assert finding["numbers"]["fixed_batch"] == best
        assert finding["numbers"]["saved"] == pytest.approx(1 - ours / geo(by_batch[best]), rel=1e-9)
    report = (folder / "report.md").read_text()
    assert "## Does a batch-size schedule beat the best fixed batch?" in report
    assert "Merrill et al. 2025: 43% fewer gradient steps" in report


def test_the_report_shows_the_critical_batch_over_training_from_the_branching_record(study):
    folder, _ = study
    record = json.loads(next((folder / "runs").glob("*/branches.json")).read_text())
    report = (folder / "report.md").read_text()
    assert "## How does the critical batch change during training?" in report
    for point in record["points"]:
        low, high = point["bracket"]
        bracket = f"≥ {low}" if high is None else f"< {high}" if low == record["batch"] else f"{low}–{high}"
        assert f"| {point['step']:,} | {point['samples']:,} |" in report and bracket in report
    assert (folder / "critical_batch_over_training.png").stat().st_size > 10_000
    # The branches are read through branches.json, not as runs of the study.
    assert "branches/" not in report and "control-" not in report


def test_each_target_level_gets_its_own_fit(study):
    folder, _ = study
    findings = {f["id"]: f for f in json.loads((folder / "findings.json").read_text())["findings"]}
    level = findings.get("critical_batch_by_level")
    assert level is not None, sorted(findings)
    values = [entry["value"] for entry in level["numbers"]["levels"]]
    fixed = [r for r in results(folder) if not r["config"]["batch_schedule"] and r["config"]["target_accuracy"] == 0.6]
    for entry in level["numbers"]["levels"]:
        steps, samples = {}, {}
        for r in fixed:
            if entry["value"] == 0.6:
                found = (r["steps_to_target"], r["samples_to_target"]) if r["status"] == "reached" else None
            else:
                at = next(x for x in r["target_levels"] if x["value"] == entry["value"])
                found = (at["steps_to_target"], at["samples_to_target"]) if at["steps_to_target"] else None
            if found:
                steps.setdefault(r["config"]["global_bs"], []).append(found[0])
                samples.setdefault(r["config"]["global_bs"], []).append(found[1])
        batches = sorted(b for b in steps if len(steps[b]) == 2)
        fit = fit_tradeoff(batches, [statistics.fmean(steps[b]) for b in batches],
                           [statistics.fmean(samples[b]) for b in batches], resamples=0)
        assert entry["b_crit"] == pytest.approx(fit.b_crit.value, rel=1e-6), entry
    assert values == sorted(values) and values[-1] == 0.6 and len(values) == 3
    assert (folder / "critical_batch_by_level.png").is_file()


def test_a_branching_study_is_refused_as_sbatch_jobs_and_a_bad_section_in_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = run_in_process([str(spec), "--dir", str(tmp_path / "s"), "--slurm", "array"], command="sweep")
    assert proc.returncode == 2 and "a branching study derives its schedules" in proc.stderr
    bad = {**SPEC, "branch": {**SPEC["branch"], "at": "lots"}}
    spec.write_text(yaml.safe_dump(bad))
    proc = run_in_process([str(spec), "--dir", str(tmp_path / "s"), "--dry-run"], command="sweep")
    assert proc.returncode == 2 and "takes fractions of the step budget" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
