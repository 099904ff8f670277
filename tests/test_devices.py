"""The N-device prediction (scaling/devices/predict.py) against hand-computed values, and `scaling predict`'s
refusals."""

import json

import pytest

from conftest import assert_one_line_error, run_in_process
from scaling.config import ConfigError
from scaling.devices.comm import Interconnect, model_gradient_bytes
from scaling.devices.predict import device_counts, explain, plan_devices, predict_on_devices, profile_run
from scaling.models import build_model


def phase(seconds):
    return {"seconds": seconds, "fraction": None}


# The default CNN's per-parameter gradient bytes in backward order, as a run records them (result.json `model`).
CNN1D_GRADIENT_BYTES = model_gradient_bytes(build_model("cnn1d", (40,), 10))


def emulating_result(**changes) -> dict:
    """A run of global batch 256 = 64 x 2 emulated processes x 2 accumulation steps on one process (M = 4
    micro-steps per step). Logging windows close at steps 10, 20 and 30: the breakdown sums the last two
    (K = 20 steps, 80 micro-steps) over 1.0 s of wall time."""
    result = {
        "schema_version": 2, "status": "reached",
        "config": {"model": "cnn1d", "dataset": "mnist1d", "num_samples": 8000},
        "lr": {"rule": "sqrt", "base": 0.1, "base_bs": 256, "scaled": 0.1, "warmup_steps": 0, "decay": "constant"},
        "time_to_target_s": 1.8, "elapsed_s": 1.9, "history": [],
        "model": {"name": "cnn1d", "task": "classification", "parameters": sum(CNN1D_GRADIENT_BYTES) // 4,
                  "gradient_bytes": CNN1D_GRADIENT_BYTES, "input_shape": [40], "input_dtype": "float32",
                  "num_classes": 10},
        "target": {"metric": "accuracy", "value": 0.9},
        "batch": {"global": 256, "per_device": 64, "num_processes": 2, "accumulation_steps": 2, "world_size": 1,
                  "emulated": True, "micro_steps_per_process": 4},
        "steps": 32, "train_elapsed_s": 1.6, "steps_to_target": 30, "train_time_to_target_s": 1.5,
        "train_time_per_step_s": None, "environment": {"device": "cpu (test)"},
        # samples/s per window: step times 0.05 s (first, dropped), then 0.04, 0.05, 0.06, 0.05, 0.05 s
        "throughput_windows": [256 / 0.05, 256 / 0.04, 256 / 0.05, 256 / 0.06, 256 / 0.05, 256 / 0.05],
        "step_time_breakdown": {
            "phases": {"data_wait": phase(0.04), "h2d": phase(0.0), "forward_backward": phase(0.8),
                       "grad_sync": phase(0.0), "optimizer": phase(0.1),
                       "other": phase(0.06)},
            "measured_s": 1.0, "covered_fraction": 0.94, "windows": 2},
    }
    result.update(changes)
    return result


METRICS = [{"type": "train", "step": 10}, {"type": "eval", "step": 10}, {"type": "train", "step": 20},
           {"type": "train", "step": 30}]


def test_profile_divides_the_breakdown_into_micro_steps_and_steps():
    profile = profile_run(emulating_result(), METRICS)
    assert profile.micro_steps == 4
    assert profile.micro_compute_s == pytest.approx(0.8 / 80)  # 10 ms per micro-batch of 64
    assert profile.micro_data_s == pytest.approx(0.04 / 80)
    assert profile.optimizer_s == pytest.approx(0.1 / 20)
    assert profile.other_s == pytest.approx(0.06 / 20)
    assert profile.sync_s == 0.0
    # The breakdown's step reassembles its wall time: 1.0 s / 20 steps.
    assert profile.steady_step_s == pytest.approx(0.05)
    assert profile.step_s == pytest.approx(1.6 / 32)
    # Window step times after the first: 40, 50, 60, 50, 50 ms around a median of 50.
    low, high = profile.band()
    assert low == pytest.approx(0.8 + 0.2 * 0.64) and high == pytest.approx(1.0 + 0.2 * 0.36)


def test_prediction_on_two_devices_by_hand():
    profile = profile_run(emulating_result(), METRICS)
    link = Interconnect("test", 1e9, 100e-6, "given")
    prediction = predict_on_devices(profile, [1_000_000], 2, link)
    assert (prediction.plan.per_device_bs, prediction.plan.accumulation_steps) == (64, 2)
    # One bucket (under 1 MiB): ready only when backward ends, so all of it is exposed:
    # 100 us + 2(2-1)/2 * 1 MB / 1 GB/s = 1.1 ms.
    assert prediction.allreduce.exposed_s == pytest.approx(1.1e-3)
    # Two small collectives per logging window (3 windows over 32 steps): 2 * (100 us + 64 B / 1 GB/s) / (32/3).
    window = 2 * (100e-6 + 64e-9) / (32 / 3)
    step = 2 * 0.010 + 2 * 0.0005 + 0.005 + 0.003 + 1.1e-3 + window  # 2 micro-steps each of compute and data
    assert sum(prediction.components.values()) == pytest.approx(step)
    assert prediction.delta_step_s == pytest.approx(step - 0.05)
    assert prediction.step_s == pytest.approx(0.05 + step - 0.05)
    # The run's 1.5 s to step 30, plus 30 steps of the difference.
    assert prediction.train_time_to_target_s == pytest.approx(1.5 + 30 * (step - 0.05))
    low, high = prediction.band_s
    assert low == pytest.approx(prediction.train_time_to_target_s * 0.928)
    assert high == pytest.approx(prediction.train_time_to_target_s * 1.072)
    assert prediction.steps_to_target == 30 and prediction.measured_micro_batch


def test_one_device_reproduces_the_emulating_run():
    """On one device the emulating run's own step: same micro-steps, nothing to synchronize."""
    profile = profile_run(emulating_result(), METRICS)
    prediction = predict_on_devices(profile, [1_000_000], 1, None)
    assert prediction.plan.accumulation_steps == 4
    assert prediction.delta_step_s == pytest.approx(0.0, abs=1e-12)
    assert prediction.train_time_to_target_s == pytest.approx(1.5)


def test_a_smaller_per_device_batch_is_scaled_per_sample():
    profile = profile_run(emulating_result(), METRICS)
    prediction = predict_on_devices(profile, [1000], 4, Interconnect("free", float("inf"), 0.0, "given"))
    # 256 / 4 devices = 64 each: the run's batch, one micro-step.
    assert (prediction.plan.per_device_bs, prediction.plan.accumulation_steps) == (64, 1)
    prediction = predict_on_devices(profile, [1000], 8, Interconnect("free", float("inf"), 0.0, "given"))
    # 32 each: half the measured micro-batch, half its compute.
    assert prediction.plan.per_device_bs == 32 and not prediction.measured_micro_batch
    assert prediction.components["compute"] == pytest.approx(0.005)
    assert any("not measured" in note for note in prediction.notes)


def test_real_processes_all_reduce_is_replaced_not_added():
    """From a real 2-process run, the measured exposed all-reduce (grad_sync) leaves the step and the modelled
    one enters."""
    result = emulating_result()
    result["batch"].update(num_processes=2, world_size=2, emulated=False, micro_steps_per_process=2)
    result["step_time_breakdown"]["phases"].update(forward_backward=phase(0.4), grad_sync=phase(0.1),
                                                   data_wait=phase(0.02), other=phase(0.38))
    profile = profile_run(result, METRICS)
    assert profile.sync_s == pytest.approx(0.1 / 20)
    assert profile.micro_compute_s == pytest.approx(0.4 / 40)
    free = Interconnect("free", float("inf"), 0.0, "given")
    prediction = predict_on_devices(profile, [1000], 2, free)
    assert prediction.delta_step_s == pytest.approx(-0.005)  # only the measured all-reduce goes


def test_plan_refuses_splits_that_do_not_divide():
    profile = profile_run(emulating_result(), METRICS)
    with pytest.raises(ConfigError, match="does not split over 3"):
        plan_devices(profile, 3)
    with pytest.raises(ConfigError, match="does not divide the per-device share"):
        plan_devices(profile, 2, per_device_bs=48)
    with pytest.raises(ConfigError, match="needs an interconnect"):
        predict_on_devices(profile, [1000], 2, None)
    assert device_counts(256, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert device_counts(96, 64) == [1, 2, 4, 8, 16, 32]


def test_without_phase_timing_the_whole_step_is_compute():
    profile = profile_run(emulating_result(step_time_breakdown=None), [])
    assert profile.micro_compute_s == pytest.approx(0.05 / 4)
    assert any("no phase breakdown" in note for note in profile.notes)


def test_mismatched_metrics_estimate_the_steps_from_time():
    profile = profile_run(emulating_result(), [{"type": "train", "step": 10}])
    assert profile.micro_compute_s == pytest.approx(0.8 / (1.0 / 0.05 * 4))
    assert any("estimated" in note for note in profile.notes)


# ---- the command's refusals: one line, exit 2 ----


def predict_cli(*args):
    return run_in_process(list(map(str, args)), command="predict")


def test_cli_refuses_a_folder_without_a_result(tmp_path):
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--interconnect", "nvlink4"), "no result.json")


def test_cli_refuses_unfinished_and_failed_runs(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"status": "running", "config": {}, "started_at": 0.0}))
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--interconnect", "nvlink4"), "not a finished run")
    failed = {"schema_version": 2, "status": "oom", "config": {}, "batch": emulating_result()["batch"],
              "error": "OutOfMemory: ...", "environment": {}, "suggestion": None}
    (tmp_path / "result.json").write_text(json.dumps(failed))
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--interconnect", "nvlink4"), "measured nothing")


def test_cli_refuses_bad_options(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps(emulating_result()))
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2"), "--measure-comm", "--interconnect")
    assert_one_line_error(predict_cli(tmp_path, "--processes", "3", "--interconnect", "nvlink4"), "does not split")
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--interconnect", "warp"), "unknown interconnect")
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--bandwidth", "10"), "--latency")
    assert_one_line_error(predict_cli(tmp_path, "--processes", "2", "--interconnect", "nvlink4", "--bandwidth", "1"),
                          "not allowed with")
    assert_one_line_error(predict_cli(tmp_path, "--processes", "0", "--interconnect", "nvlink4"), "--processes")


# ---- the report section, on fabricated results ----


def write_run(folder, result):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in METRICS))


def test_report_section_table_and_a_result_without_the_models_gradient_layout(tmp_path):
    from scaling.report.findings import device_count_findings
    from scaling.report.render import Note, Table
    from scaling.report.sections import device_count_section
    from scaling.report.study import Study

    good = emulating_result(environment={"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"})
    good["config"] = {**good["config"], "global_bs": 256}
    write_run(tmp_path / "good", good)
    bad = emulating_result(environment={"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"}, schema_version=1)
    bad["config"] = {**bad["config"], "global_bs": 256, "model": "no_such_module_here:build"}
    del bad["model"]  # written before results recorded it: nothing is rebuilt to find it
    write_run(tmp_path / "bad", bad)
    study = Study.load(tmp_path, tmp_path / "report")
    (tmp_path / "report").mkdir()
    blocks = device_count_section(study)
    table = next(block for block in blocks if isinstance(block, Table))
    assert len(table.rows) == 1 and table.rows[0][1] == "64 × 2 × 2, emulated on 1 process"
    assert table.rows[0][2] == "1.5"  # the measured train time to target
    assert table.rows[0][3] == "1.5"  # one device: the emulating run itself
    assert table.rows[0][-1].endswith("*")  # 64 devices: a per-device batch of 4, not measured
    skipped = [block.text for block in blocks if isinstance(block, Note) and block.text.startswith("Not predicted")]
    assert len(skipped) == 1 and "before results recorded the model's gradient layout" in skipped[0]
    findings = device_count_findings(study)
    # An H100: NVLink 4, named wherever an answer uses more than one device (one device: no communication).
    assert all((f.numbers["interconnect"] or {}).get("name") == ("nvlink4" if f.numbers["devices"] > 1 else None)
               for f in findings)
    assert "no communication" in findings[0].statement and "nvlink4" not in findings[0].statement
    # More devices never lose here (NVLink is fast and the compute scales): the answer uses them all.
    assert [f.numbers["devices"] for f in findings] == [1, 8, 64]


def test_a_run_without_a_target_predicts_the_time_of_its_steps():
    result = emulating_result(status="not_reached", steps_to_target=None, train_time_to_target_s=None)
    profile = profile_run(result, METRICS)
    prediction = predict_on_devices(profile, [1000], 2, Interconnect("free", float("inf"), 0.0, "given"))
    assert prediction.train_time_to_target_s is None and prediction.band_s is None
    # 1.6 s for the run's 32 steps, plus 32 times the per-step difference (two of four micro-steps saved).
    assert prediction.train_time_s == pytest.approx(1.6 + 32 * -(2 * 0.0105))
    assert "did not reach a target (not_reached)" in explain(profile, prediction)


def test_a_measured_ddp_cost_replaces_the_modelled_all_reduce():
    from scaling.devices.comm import DDPCost

    profile = profile_run(emulating_result(), METRICS)
    link = Interconnect("test", 1e9, 100e-6, "given")
    ddp = DDPCost(2, (1_000_000,), sync_s=0.004, micro_overhead_s=0.0001)
    modelled = predict_on_devices(profile, [1_000_000], 2, link)
    measured = predict_on_devices(profile, [1_000_000], 2, link, ddp=ddp)
    assert measured.ddp_measured and not modelled.ddp_measured
    assert measured.components["allreduce"] == pytest.approx(0.004)  # one bucket: all of it exposed
    assert measured.components["ddp_overhead"] == pytest.approx(2 * 0.0001)  # per micro-step, 2 of them
    assert measured.delta_step_s - modelled.delta_step_s == pytest.approx(0.004 + 0.0002 - 1.1e-3)
    # Measured at another process count: not used.
    other = predict_on_devices(profile, [1_000_000], 4, link, ddp=ddp)
    assert not other.ddp_measured and other.components["ddp_overhead"] == 0.0


def test_measured_contention_slows_every_ranks_own_work_by_its_factor():
    from scaling.devices.comm import Contention

    profile = profile_run(emulating_result(), METRICS)
    link = Interconnect("test", 1e9, 100e-6, "given")
    shared = Contention(2, 64, alone_s=0.010, together_s=0.013)
    assert shared.factor == pytest.approx(1.3)
    plain = predict_on_devices(profile, [1_000_000], 2, link)
    slowed = predict_on_devices(profile, [1_000_000], 2, link, contention=shared)
    # Own work per step on 2 devices: 2 x (10 ms compute + 0.5 ms data) + 5 ms optimizer + 3 ms other = 29 ms;
    # 30% more of it, and nothing else changes.
    assert slowed.components["contention"] == pytest.approx(0.3 * 0.029)
    assert slowed.delta_step_s - plain.delta_step_s == pytest.approx(0.3 * 0.029)
    assert slowed.contention_factor == pytest.approx(1.3) and plain.contention_factor is None
    assert "2 devices computing at once on this host (measured: x1.3)" in explain(profile, slowed)
    # A ratio below 1 is the machine's noise: no speed-up is predicted from it.
    faster = Contention(2, 64, alone_s=0.010, together_s=0.009)
    assert faster.measured_factor == pytest.approx(0.9) and faster.factor == 1.0
    assert predict_on_devices(profile, [1_000_000], 2, link, contention=faster).components["contention"] == 0.0
    # Measured for another process count: not used.
    assert predict_on_devices(profile, [1_000_000], 4, link, contention=shared).contention_factor is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_device_answer_per_count_the_fastest_row_of_its_table(tmp_path, seed):
    """Generated studies (random steps per configuration, three seeds each): for every device cap the one
    answer is the fastest cell of the section's table at or below the cap, the same in the sentence and in
    findings.json; it is decided only when it beats every other configuration, and never contradicted by
    another finding about the same device count."""
    import random

    from scaling.report import write_report
    from scaling.report.questions.devices import device_analysis

    rng = random.Random(seed)
    for batch, steps in zip((128, 256, 512), rng.sample([20, 40, 80], 3), strict=True):  # one twice as fast
        for run_seed in range(3):
            result = emulating_result(steps_to_target=max(2, round(steps * rng.uniform(0.95, 1.05))),
                                      train_time_to_target_s=None)
            result["config"] = {**result["config"], "global_bs": batch, "seed": run_seed}
            result["batch"] = {**result["batch"], "global": batch, "per_device": batch // 4}
            result["train_time_to_target_s"] = result["steps_to_target"] * 0.05
            write_run(tmp_path / f"bs{batch}-s{run_seed}", result)
    # Batch 1024 in the fewest steps, but one seed missed the target: it is predicted, never the answer.
    for run_seed in range(3):
        missed = run_seed == 2
        result = emulating_result(status="not_reached" if missed else "reached", steps_to_target=None if missed else 10,
                                  train_time_to_target_s=None if missed else 0.5)
        result["config"] = {**result["config"], "global_bs": 1024, "seed": run_seed}
        result["batch"] = {**result["batch"], "global": 1024, "per_device": 256}
        write_run(tmp_path / f"bs1024-s{run_seed}", result)
    paths = write_report(tmp_path)
    document = json.loads(paths["findings.json"].read_text())
    answers = {f["numbers"]["devices_cap"]: f for f in document["findings"] if f["id"].startswith("fastest_with")}
    from scaling.report.study import Study

    analysis = device_analysis(Study.load(tmp_path, tmp_path / "again"))
    assert sorted(answers) == [1, 8, 64]
    for cap, finding in answers.items():
        cells = [(row.times[n], row.configuration.label, n) for row in analysis.rows for n in row.times
                 if n <= cap and row.configuration.all_reached]
        time, label, n = min(cells)
        numbers = finding["numbers"]
        assert (numbers["configuration"], numbers["devices"]) == (label, n)
        assert numbers["predicted_train_time_s"] == pytest.approx(time)
        assert f"on {n} device" in finding["statement"] and f"{numbers['global_batch']}" in finding["statement"]
        # Half the steps of the runner-up at a 5% spread: decided, for the table's fastest row.
        assert finding["decided"] and finding["winner"] == label, finding["statement"]
        assert numbers["runner_up"]["verdict"] == "lower" and numbers["runner_up"]["ratio"] < 0.6
    assert not any(f["id"].startswith("predicted_fastest@") for f in document["findings"])
    assert any(row.configuration.global_bs == 1024 for row in analysis.rows)  # in the table
    assert all(f["numbers"]["global_batch"] != 1024 for f in answers.values())
