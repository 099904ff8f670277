"""The run record writes result.json and every reader loads it through one loader that checks it against the
schema: a damaged file is one line naming the file and the field, and a study with one damaged result still
gets its report, with that run listed as unreadable."""

from __future__ import annotations

import json

import pytest

from conftest import a_record as record
from scaling.config import RunConfig
from scaling.report import write_report
from scaling.results import ResultError, load_result, read_result


def write(tmp_path, document, name="run"):
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(document if isinstance(document, str) else json.dumps(document))
    return folder / "result.json"


def test_a_result_is_computed_from_the_record_and_loads_back(tmp_path):
    result = record().to_result()
    assert result["steps_to_target"] == 33 and result["samples_to_target"] == 33 * 64
    assert result["epochs_to_target"] == pytest.approx(0.33)
    assert result["first_eval_at_target"]["step"] == 40 and result["steps_to_target_resolution"] == 1
    assert result["throughput_samples_per_s"] == pytest.approx(40 * 64 / 3.0)  # over the training clock
    assert result["throughput_median_window_samples_per_s"] == 1000.0  # the windows after the first
    assert result["train_time_per_step_s"] == pytest.approx(3.0 / 40)
    assert result["final"] == {"accuracy": result["history"][-1]["accuracy"], "loss": result["history"][-1]["loss"]}
    loaded = load_result(write(tmp_path, result))
    assert loaded == json.loads(json.dumps(result))


def test_the_checkpoint_state_of_a_record_restores_its_loop_state():
    saved = record(status="running").state_dict()
    fresh = record(status="running", steps=0)
    rates = fresh.window_rates
    fresh.load_state_dict(json.loads(json.dumps(saved)))
    assert fresh.step == 40 and fresh.train_loss == saved["train_loss"] and fresh.history == saved["history"]
    assert fresh.window_rates is rates and rates == [1000.0, 1100.0, 900.0]  # refilled in place
    assert (fresh.elapsed_s, fresh.eval_s) == (4.0, 1.0)


@pytest.mark.parametrize("damage, fragment", [
    (lambda r: r.update(batch=64), "field 'batch': must be an object, got a number"),
    (lambda r: r["batch"].update(per_device="16"), "field 'batch': 'per_device': must be a whole number, got text"),
    (lambda r: r.update(steps=40.5), "field 'steps': must be a whole number"),
    (lambda r: r.update(steps=True), "field 'steps': must be a whole number, got a boolean"),
    (lambda r: r["history"][1].pop("accuracy"), "field 'history': item 1: lacks 'accuracy'"),
    (lambda r: r.update(train_loss=[1.0, "x"]), "field 'train_loss': item 1: must be a number, got text"),
    (lambda r: r.pop("config"), "lacks field 'config' (status reached)"),
    (lambda r: r.update(status="finished"), "has an unknown status 'finished'"),
    (lambda r: r.update(schema_version=99), "has schema_version 99"),
    (lambda r: r.update(model={"name": "mlp"}), "field 'model': lacks 'task'"),
])
def test_a_damaged_result_is_named_in_one_line_with_its_field(tmp_path, damage, fragment):
    result = json.loads(json.dumps(record().to_result()))
    damage(result)
    path = write(tmp_path, result)
    with pytest.raises(ResultError) as err:
        load_result(path)
    message = str(err.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message
    assert read_result(path) is None  # the sweep reruns it


@pytest.mark.parametrize("text, fragment", [
    ('{"status": "reached", "steps": NaN}', "holds NaN"),
    ('{"status": "reached", "x": Infinity}', "holds Infinity"),
    ('{"status": "reach', "is not valid JSON (torn or damaged)"),
    ('[1, 2]', "is not a result of this tool (no status)"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (None, "is a folder, not a file"),
])
def test_a_file_that_is_not_a_result_is_named_in_one_line(tmp_path, text, fragment):
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "result.json"
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ResultError) as err:
        load_result(path)
    assert str(err.value).startswith(str(path)) and fragment in str(err.value)


def test_an_earlier_schema_loads_with_its_missing_fields_null(tmp_path):
    result = json.loads(json.dumps(record().to_result()))
    result["schema_version"] = 1
    for name in ("model", "compile_s", "lr_per_step"):
        del result[name]
    for name in ("emulated", "micro_steps_per_process"):
        del result["batch"][name]
    loaded = load_result(write(tmp_path, result))
    assert loaded["model"] is None and loaded["compile_s"] is None and loaded["lr_per_step"] == []
    assert loaded["batch"]["micro_steps_per_process"] == 4 and loaded["batch"]["emulated"] is False


def test_a_study_with_one_damaged_result_is_reported_with_that_run_named(tmp_path):
    study = tmp_path / "study"
    for seed in (0, 1):
        rec = record()
        rec.facts.config = RunConfig(global_bs=64, per_device_bs=16, target_accuracy=0.5, seed=seed,
                                     output_dir=f"runs/s{seed}")
        write(study / "runs", rec.to_result(), name=f"s{seed}")
    damaged = json.loads(json.dumps(record().to_result()))
    damaged["batch"] = 64
    write(study / "runs", damaged, name="broken")
    nan = write(study / "runs", "x", name="nan")
    nan.write_text(json.dumps(record().to_result()).replace('"steps": 40', '"steps": NaN'))
    paths = write_report(study)
    report = paths["report.md"].read_text()
    findings = json.loads(paths["findings.json"].read_text())
    assert "runs/broken/result.json field 'batch': must be an object, got a number" in report
    assert "runs/nan/result.json holds NaN" in report
    assert "2 reached" in report and findings["findings"]
