"""The gradient noise scale measured in real runs, in each topology, and kept across a resume."""

import pytest

from conftest import SMALL, assert_ok, load_result, run_entry, run_torchrun
from scaling.files import read_metrics

pytestmark = pytest.mark.slow

COMMON = [*SMALL, "--global-bs", "256", "--noise-every", "5", "--target-accuracy", "0.8"]


@pytest.mark.parametrize("extra, nproc, method, small", [
    (["--per-device-bs", "256"], 1, "half_batch", 128),
    (["--per-device-bs", "64"], 1, "micro_batches", 64),
    (["--per-device-bs", "64", "--emulate-processes", "2"], 1, "micro_batches", 64),
    (["--per-device-bs", "128"], 2, "ranks", 128),
    (["--per-device-bs", "32"], 2, "ranks", 128),  # a rank's local batch: 32 x 4 micro-steps
])
def test_noise_scale_in_every_topology(tmp_path, extra, nproc, method, small):
    args = [*COMMON, *extra, "--output-dir", str(tmp_path)]
    assert_ok(run_torchrun(args, nproc=nproc) if nproc > 1 else run_entry(args))
    result = load_result(tmp_path)
    noise = result["noise_scale"]
    assert noise["method"] == method and noise["small_batch"] == small
    assert noise["big_batch"] == 256  # the global batch (half_batch runs one micro-batch: the global batch too)
    assert result["status"] == "reached"
    steps = [point["step"] for point in noise["series"]]
    # Measured every 5 steps of training, up to the evaluation that saw the target.
    assert steps == list(range(1, result["first_eval_at_target"]["step"] + 1, 5))
    values = [point["b_simple"] for point in noise["series"] if point["b_simple"] is not None]
    assert len(values) >= len(steps) // 2
    # The probe at the target: 16 global batches at the weights of the first step at the target.
    at_target = noise["at_target"]
    assert at_target["batches"] == 16 and at_target["first_step"] == result["steps_to_target"] + 1
    assert noise["b_simple_at_target"] == at_target["b_simple"] == noise["b_simple"]
    # A plausible noise scale for this workload: above the per-device share, far below the dataset.
    assert 5 < noise["b_simple_at_target"] < 8000
    logged = [m for m in read_metrics(tmp_path / "metrics.jsonl") if m["type"] == "noise"]
    assert [m["step"] for m in logged] == steps


def test_noise_scale_can_be_turned_off(tmp_path):
    assert_ok(run_entry([*SMALL, "--noise-scale", "false", "--max-steps", "10", "--target-accuracy", "none",
                         "--output-dir", str(tmp_path)]))
    result = load_result(tmp_path)
    assert result["noise_scale"] is None
