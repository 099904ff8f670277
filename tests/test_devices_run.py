"""`scaling predict` against a real 2-process run: a one-process run emulating 2 devices predicts the train
time to target of `torchrun --nproc_per_node 2` (gloo, one thread per process), with the all-reduce measured
by `--measure-comm`; and the report's device-count section on the same runs.

The time bound only guards the magnitude (a factor 10: a lost term or a unit slip): the machine running the
tests is shared, and its other load lands on the two processes unevenly (CI once measured the real run 2.8x
the prediction while another test worker ran beside it). The accuracy is measured by
benchmarks/predict_validation.py, alternating repeats on an idle machine, with its figures in docs/predict.md.
Steps to target are exact.
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO, SMALL, assert_ok, child_env, load_result, run_entry, run_torchrun

pytestmark = pytest.mark.slow

# The target is one the runs reach within their first ~100 steps: one process and two sum gradients in another
# order, and that float rounding (1e-7 per step) compounds; on this machine the two trajectories part at
# about step 120 (1e-3 by step 150, 1% by step 200), and a crossing past that point may fall on different
# steps although both runs are right.
COMMON = [*SMALL, "--global-bs", "256", "--per-device-bs", "64", "--target-accuracy", "0.45", "--noise-scale",
          "false", "--max-epochs", "60"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    emulated, real = root / "emulated", root / "real"
    assert_ok(run_entry([*COMMON, "--emulate-processes", "2", "--output-dir", str(emulated)]))
    assert_ok(run_torchrun([*COMMON, "--output-dir", str(real)], nproc=2))
    return root, load_result(emulated), load_result(real)


def test_emulation_and_real_processes_reach_the_target_at_the_same_step(runs):
    _, emulated, real = runs
    assert emulated["status"] == real["status"] == "reached"
    assert emulated["batch"]["world_size"] == 1 and real["batch"]["world_size"] == 2
    assert emulated["steps_to_target"] == real["steps_to_target"]
    steps = real["steps"]  # the same trajectory up to the target, to float rounding
    assert max(abs(e - r) / abs(r) for e, r in zip(emulated["train_loss"][:steps], real["train_loss"][:steps],
                                                   strict=True)) < 1e-5


def test_prediction_from_the_emulating_run_matches_the_real_run(runs):
    root, emulated, real = runs
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "predict", str(root / "emulated"), "--processes", "2",
                           "--measure-comm", "--json"], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=child_env())
    assert_ok(proc)
    report = json.loads(proc.stdout)
    prediction = report["prediction"]
    assert prediction["steps_to_target"] == real["steps_to_target"]
    assert prediction["plan"] == {"processes": 2, "per_device_bs": 64, "accumulation_steps": 2, "global_bs": 256}
    measurement = report["comm_measurement"]
    assert measurement["backend"] == "gloo" and measurement["processes"] == 2
    assert prediction["link"]["source"] == "measured"
    assert prediction["ddp_measured"] and measurement["ddp"]["sync_s"] > 0
    assert measurement["contention"]["batch"] == 64 and measurement["contention"]["alone_s"] > 0
    assert prediction["contention_factor"] == pytest.approx(measurement["contention"]["factor"])
    assert prediction["contention_factor"] >= 1.0
    # One bucket (the CNN's gradient is 31 KiB): all of it exposed.
    assert len(prediction["allreduce"]["bucket_bytes"]) == 1
    assert prediction["allreduce"]["exposed_s"] == pytest.approx(prediction["allreduce"]["total_s"])
    predicted, measured = prediction["train_time_to_target_s"], real["train_time_to_target_s"]
    assert measured / 10 < predicted < measured * 10, (predicted, measured)
    low, high = prediction["band_s"]
    assert low <= predicted <= high
    assert "take a predicted" in report["explanation"]


def test_console_explanation_is_one_paragraph(runs):
    root, _, _ = runs
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "predict", str(root / "emulated"), "--processes", "4",
                           "--interconnect", "nvlink4"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=child_env())
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scaling: On 4 devices (per-device 64 x 4 x 1")
    assert "nvlink4" in lines[0]


def test_report_section_predicts_every_configuration(runs, tmp_path):
    from scaling.report.findings import device_count_findings
    from scaling.report.render import Bullets, Figure, Table, to_markdown
    from scaling.report.sections import device_count_section
    from scaling.report.study import Study

    root, _, _ = runs
    study = Study.load(root, tmp_path)
    blocks = device_count_section(study)
    table = next(block for block in blocks if isinstance(block, Table))
    assert table.header[3:] == ["1 device", "2 devices", "4 devices", "8 devices", "16 devices", "32 devices",
                                "64 devices"]
    assert len(table.rows) == 2  # the emulating and the real run's configurations
    assert any(isinstance(block, Figure) and block.path.is_file() for block in blocks)
    findings = device_count_findings(study)
    assert [f.numbers["devices_cap"] for f in findings] == [1, 8, 64]
    assert all(f.numbers["devices"] <= f.numbers["devices_cap"] for f in findings)
    assert "ethernet-10g" in to_markdown(blocks)  # CPU runs: the interconnect is named
    assert any(isinstance(block, Bullets) for block in blocks)
