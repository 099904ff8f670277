"""Bad input to `scaling report` and `scaling sweep --slurm`, through the real commands on real files: a damaged
result.json or study.json entry is named in one line and left out (the rest reported, findings.json from the
same study), SLURM fields and every configuration a grid expands to are refused before a script is written,
and user text reaches report.md without markup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_report import fabricate_result

from conftest import assert_one_line_error, run_in_process

SEEDS = (0, 1)


def slow(*values):
    """A case of a parametrized test in the slow tier: each runs a whole report (about a second); the fast
    tier keeps one of each kind."""
    return pytest.param(*values, marks=pytest.mark.slow)
BATCHES = (64, 128)


def good_study(root: Path, name: str = "faults") -> dict:
    """A study folder as the sweep leaves it: 2 batches x 2 seeds, every run reached."""
    entries = []
    for batch in BATCHES:
        for seed in SEEDS:
            run_id = f"bs{batch}-s{seed}"
            overrides = {"global_bs": batch, "seed": seed}
            folder = root / "runs" / run_id
            folder.mkdir(parents=True)
            steps = 400 if batch == 64 else 220 + 10 * seed
            (folder / "result.json").write_text(json.dumps(fabricate_result(overrides, "reached", steps, 1000.0 * batch)))
            entries.append({"id": run_id, "overrides": overrides, "status": "reached", "output_dir": f"runs/{run_id}"})
    study = {"name": name, "spec": {}, "configs": entries}
    (root / "study.json").write_text(json.dumps(study))
    return study


def report(root: Path):
    return run_in_process([str(root)], command="report")


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_reported_without(root: Path, proc, run_id: str, *fragments: str) -> None:
    """Exit 0, one warning line naming the damaged run (and what is wrong), the other runs reported, and
    findings.json written with the report from the same runs."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = warnings(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scaling: warning: ") and run_id in lines[0] and "left out" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    markdown = (root / "report.md").read_text()
    findings = json.loads((root / "findings.json").read_text())
    assert findings["study"] == "faults" and findings["seeds_per_configuration"] == {"min": 1, "max": 2}
    assert "(3 reached, 1 unreadable)" in markdown
    assert f"| {run_id} | 128 | — |" in markdown and "left out: runs/" in markdown  # listed, without numbers
    # findings.json is the report's own: the same runs counted, the same sentences
    counted = [f["statement"] for f in findings["findings"] if "3 finished runs" in f["statement"]]
    assert counted and all(statement in markdown for statement in counted)


def damage_result(root: Path, run_id: str, change) -> None:
    path = root / "runs" / run_id / "result.json"
    text = path.read_text()
    path.write_text(change(text) if callable(change) else change)


# --- items 5 and 6: a damaged result.json -----------------------------------------------------------------


def _set(**fields):
    def change(text: str) -> str:
        data = json.loads(text)
        for dotted, value in fields.items():
            *parents, last = dotted.split("__")
            target = data
            for parent in parents:
                target = target[parent]
            target[last] = value
        return json.dumps(data)
    return change


@pytest.mark.parametrize("change, fragment", [
    (lambda text: text.replace('"elapsed_s": 1.0', '"elapsed_s": NaN'), "holds NaN"),
    ('{"status": "reached", "steps": 4', "not valid JSON"),
    slow("[1, 2, 3]", "not a result of this tool"),
    (_set(batch=64), "'batch': must be an object, got a number"),
    slow(_set(steps_to_target="220"), "'steps_to_target': must be a whole number"),
    slow(_set(config__seed=[1]), "'seed': must be a whole number, got a list"),
    slow(_set(config__global_bs="128"), "'global_bs': must be a whole number, got text"),
    slow(_set(config__lr_scaling={"a": 1}), "'lr_scaling': must be text, got an object"),
    slow(_set(status="x" * 10_000), "unknown status"),
    # numbers of the right type that no run writes: each crashed a question (ZeroDivisionError, IndexError,
    # OverflowError) before it was refused where results are loaded
    slow(_set(batch__per_device=0), "'per_device' is 0, not a size"),
    slow(_set(batch__accumulation_steps=0), "'accumulation_steps' is 0, not a size"),
    slow(_set(batch__global=256), "'global' 256 is not per_device x num_processes x accumulation_steps"),
    (_set(train_time_to_target_s=1e308), "'train_time_to_target_s' is 1e+308, out of range"),
    slow(_set(throughput_windows=[-1.0]), "'throughput_windows' item 0 is -1.0, out of range"),
    # fields of records the schema left open that a question reads: a device that is a list (unhashable in
    # the set of devices), a breakdown without its phases (KeyError in the device prediction)
    (_set(environment__device=["a"]), "'environment': 'device': must be text, got a list"),
    slow(_set(environment={"device": "x", "torch_threads": [4]}), "'torch_threads': must be a whole number"),
    slow(_set(step_time_breakdown={"phases": [1, "x"], "data_wait_s": "a"}), "'step_time_breakdown': 'phases'"),
])
def test_a_damaged_result_is_named_in_one_line_and_left_out(tmp_path, change, fragment):
    good_study(tmp_path)
    damage_result(tmp_path, "bs128-s1", change)
    proc = report(tmp_path)
    assert_reported_without(tmp_path, proc, "bs128-s1", "runs/bs128-s1/result.json", fragment)
    assert len(warnings(proc.stderr)[0]) < 400  # a huge value is never written out whole


@pytest.mark.parametrize("entry, fragment", [
    (5, "is not an object"),
    slow({"id": "bs128-s1", "output_dir": 5}, "'output_dir'"),
    ({"id": "bs128-s1", "output_dir": "../../elsewhere"}, "'output_dir'"),
    slow({"id": "bs128-s1", "overrides": [1, 2]}, "'overrides'"),
    slow({"id": ["bs128-s1"]}, "'id'"),
    slow({"id": "../../elsewhere"}, "'id'"),  # its folder would be runs/../../elsewhere
])
def test_a_damaged_study_json_entry_is_named_and_left_out(tmp_path, entry, fragment):
    study = good_study(tmp_path)
    study["configs"][-1] = entry
    (tmp_path / "study.json").write_text(json.dumps(study))
    (tmp_path / "runs" / "bs128-s1" / "result.json").unlink()
    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = warnings(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("scaling: warning: ") and "study.json" in lines[0], proc.stderr
    assert "configs[3]" in lines[0] and fragment in lines[0] and "left out" in lines[0], lines[0]
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert findings["seeds_per_configuration"] == {"min": 1, "max": 2}


def test_a_study_whose_every_result_is_damaged_is_one_error(tmp_path):
    good_study(tmp_path)
    for path in (tmp_path / "runs").glob("*/result.json"):
        path.write_text('{"status": NaN}')
    proc = report(tmp_path)
    assert_one_line_error(proc, "no finished runs", "its 4 result.json file(s) cannot be used", "holds NaN")
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "findings.json").exists()


# --- item 20: user text in report.md -------------------------------------------------------------------------


def test_user_text_reaches_report_md_without_markup(tmp_path):
    study = good_study(tmp_path)
    study["name"] = "<script>alert(1)</script> [click](javascript:alert(2)) ![x](http://tracker.example/p.png)"
    # a failed configuration that left no result: its id and its stderr tail come from study.json as they are
    study["configs"].append({"id": "<img src=x onerror=alert(3)>", "overrides": {"global_bs": 256, "seed": 0},
                             "status": "failed", "output_dir": "runs/failed",
                             "error_tail": "Traceback ...\nValueError: <iframe src=//evil.example></iframe>"})
    (tmp_path / "study.json").write_text(json.dumps(study))
    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (tmp_path / "report.md").read_text()
    title = markdown.splitlines()[0]
    assert title.startswith("# Scaling report: ")
    for raw in ("<script", "<img", "<iframe"):
        assert raw not in markdown, raw
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", markdown)  # every link or image the Markdown makes
    assert targets and all(re.fullmatch(r"[a-z_]+\.png", target) for target in targets), targets
    assert "&lt;script>alert(1)&lt;/script>" in title  # shown as text, not dropped
    assert "&lt;img src=x onerror=alert(3)>" in markdown and "&lt;iframe src=//evil.example>" in markdown
    assert "\\](javascript:alert(2))" in title
    # the report's own Markdown is untouched: its plots stay linked, its code spans and comparisons as written
    assert "](time_to_target.png)" in markdown and " < r < " in markdown


@pytest.mark.slow  # a whole report, about a second
def test_a_study_name_with_a_newline_stays_in_the_title(tmp_path):
    study = good_study(tmp_path)
    study["name"] = "study\n\n# Injected heading\n<b>bold</b>"
    (tmp_path / "study.json").write_text(json.dumps(study))
    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.splitlines()[0] == "# Scaling report: study # Injected heading &lt;b>bold&lt;/b>"
    assert "\n# Injected" not in markdown


# --- item 18: SLURM fields ---------------------------------------------------------------------------------


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    import yaml

    path = folder / name
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def slurm_sweep(spec: Path, study_dir: Path, *flags: str):
    return run_in_process([str(spec), "--dir", str(study_dir), "--slurm", "array", *flags], command="sweep")


@pytest.mark.parametrize("slurm, fragment", [
    ({"time": "١٢:٠٠:٠٠"}, "slurm time must be a SLURM time"),  # Arabic-Indic digits: \d matches them
    ({"time": "１２:００:００"}, "slurm time must be a SLURM time"),  # fullwidth digits
    ({"time": "1-24:00:00"}, "slurm time must be a SLURM time"),
    ({"time": "02:75:00"}, "slurm time must be a SLURM time"),
    ({"time": "0"}, "slurm time must be a SLURM time"),
    ({"time": "999-00:00:00"}, "slurm time must be a SLURM time"),
    ({"cpus_per_task": 99999999999999999999}, "slurm cpus_per_task must be a whole number from 1 to 4096"),
    ({"cpus_per_task": 0}, "slurm cpus_per_task must be a whole number from 1 to 4096"),
    ({"gpus_per_node": 0}, "slurm gpus_per_node must be a whole number from 1 to 64"),
    ({"gpus_per_node": 10**6}, "slurm gpus_per_node must be a whole number from 1 to 64"),
])
def test_a_slurm_field_out_of_bounds_is_refused_before_a_script_is_written(tmp_path, slurm, fragment):
    spec = write_spec(tmp_path, {"name": "alloc", "base": {"global_bs": 64, "num_samples": 4000},
                                 "grid": {"seed": [0, 1]}, "slurm": slurm})
    proc = slurm_sweep(spec, tmp_path / "study")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "study" / "slurm").exists() and not (tmp_path / "study" / "runs").exists()


@pytest.mark.parametrize("time", ["02:00:00", "1-12:00:00", "90", "30:00", "2-06", "365-00:00:00", "48:00:00"])
def test_every_slurm_time_format_within_bounds_is_written(tmp_path, time):
    spec = write_spec(tmp_path, {"name": "alloc", "base": {"global_bs": 64, "num_samples": 4000},
                                 "slurm": {"time": time, "cpus_per_task": 4096, "gpus_per_node": 64}})
    proc = slurm_sweep(spec, tmp_path / "study")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "study" / "slurm" / "array.sbatch").read_text().splitlines()
    assert f"#SBATCH --time={time}" in lines and "#SBATCH --cpus-per-task=4096" in lines


# --- item 19: every configuration checked before a script is written -----------------------------------------


@pytest.mark.parametrize("spec, fragment", [
    # refused by a run only once it starts (on the cluster): here before any file is written
    ({"base": {"num_samples": 4000}, "grid": {"global_bs": [64, 99999999999999999999999999999]}},
     "is over the limit"),
    ({"base": {"num_samples": 4000}, "grid": {"global_bs": [64, 8192]}}, "--num-samples 4000 is too small"),
    ({"base": {"num_samples": 4000, "dataset": "synthetic_images"}, "grid": {"global_bs": [64, 4096]}},
     "--num-samples 4000 is too small for --dataset synthetic_images"),
    ({"base": {"num_samples": 4000, "max_steps": 10**30}}, "'max_steps' 1000000"),
    ({"base": {"num_samples": 4000}, "launcher": {"type": "torchrun", "nproc": 10**12}}, "launcher 'nproc'"),
    # keys the sweep sets itself for every configuration: an axis over one would collapse silently
    ({"base": {"num_samples": 4000}, "grid": {"output_dir": ["a", "b"]}}, "'output_dir' is set by the sweep"),
    ({"base": {"num_samples": 4000}, "zip": {"output_dir": ["a", "b"], "seed": [0, 1]}},
     "'output_dir' is set by the sweep"),
    ({"base": {"num_samples": 4000}, "grid": {"progress": [True, False]}}, "'progress' is set by the sweep"),
    ({"base": {"num_samples": 4000, "output_dir": "elsewhere"}}, "'output_dir' is set by the sweep"),
])
def test_every_configuration_is_checked_before_a_slurm_script_is_written(tmp_path, spec, fragment):
    path = write_spec(tmp_path, {"name": "checked", **spec})
    proc = slurm_sweep(path, tmp_path / "study")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "study").exists()  # no script, no config.yaml, not even the folder
    dry = run_in_process([str(path), "--dir", str(tmp_path / "study"), "--dry-run"], command="sweep")
    assert_one_line_error(dry, fragment)  # the same check when only listing the configurations


def test_the_size_check_names_the_configuration_and_a_spec_within_it_is_written(tmp_path):
    path = write_spec(tmp_path, {"name": "checked", "base": {"num_samples": 4000},
                                 "grid": {"global_bs": [64, 3200], "seed": [0, 1]}})
    proc = slurm_sweep(path, tmp_path / "study")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "study" / "slurm" / "commands.txt").read_text().splitlines()) == 4
    path = write_spec(tmp_path, {"name": "checked", "base": {"num_samples": 4000},
                                 "grid": {"global_bs": [64, 3201]}})
    assert_one_line_error(slurm_sweep(path, tmp_path / "other"), "(configuration global_bs=3201)",
                          "use --num-samples 4010 or more")


def test_slurm_files_are_not_written_through_a_planted_link(tmp_path):
    path = write_spec(tmp_path, {"name": "linked", "base": {"num_samples": 4000, "global_bs": 64}})
    study_dir = tmp_path / "study"
    (study_dir / "slurm").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (study_dir / "slurm" / "array.sbatch").symlink_to(outside)
    proc = slurm_sweep(path, study_dir)
    assert_one_line_error(proc, "array.sbatch is a symbolic link")
    assert outside.read_text() == "keep me\n"
    (study_dir / "slurm" / "array.sbatch").unlink()
    (study_dir / "slurm" / "commands.txt").symlink_to(tmp_path / "missing.txt")
    assert_one_line_error(slurm_sweep(path, study_dir), "commands.txt is a symbolic link")
    assert not (tmp_path / "missing.txt").exists()


@pytest.mark.slow  # a whole report, about a second
def test_a_damaged_result_in_a_folder_named_with_a_line_break_is_named_in_one_line(tmp_path):
    good_study(tmp_path)
    folder = tmp_path / "extra\nscaling: error: forged"
    folder.mkdir()
    (folder / "result.json").write_text("{ torn")
    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = warnings(proc.stderr)
    assert line.startswith("scaling: warning: run ") and "extra\\nscaling: error: forged" in line
