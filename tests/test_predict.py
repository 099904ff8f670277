"""Fitting S(B) = S_min (1 + B_noise / B) and E(B) = E_min (1 + B / B_noise) (McCandlish et al. 2018,
sec. 2.3) and predicting steps and time at batch sizes not run; and whose compute `scaling predict` uses on
N devices (scaling/devices/compute.py): stated, and scaled by --compute-ratio or --target-device."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import SMALL, assert_ok, assert_one_line_error, run_entry, run_in_process
from scaling.config import ConfigError
from scaling.devices.compute import implied_device, requested_scale
from scaling.noise.fits import (
    Estimate,
    ScalingFit,
    best_batch,
    fit_tradeoff,
    predict_samples,
    predict_steps,
    predict_time,
    throughput_at,
)

S_MIN, B_NOISE = 400.0, 512.0
BATCHES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def fit_steps(batches, steps, relative: bool = True) -> ScalingFit:
    """The least-squares fit of S(B) alone (no bootstrap)."""
    return fit_tradeoff(batches, steps, relative=relative, resamples=0).fit


def true_steps(batch) -> np.ndarray:
    return S_MIN * (1 + B_NOISE / np.asarray(batch, dtype=float))


def noisy_steps(seed: int, rel: float = 0.05) -> np.ndarray:
    """5% multiplicative noise, as run-to-run spread of steps-to-target."""
    rng = np.random.default_rng(seed)
    return true_steps(BATCHES) * np.exp(rel * rng.standard_normal(len(BATCHES)))


@pytest.mark.parametrize("relative", [True, False])
def test_exact_data_is_recovered(relative):
    fit = fit_steps(BATCHES, true_steps(BATCHES), relative=relative)
    assert fit.s_min == pytest.approx(S_MIN, rel=1e-9)
    assert fit.b_noise == pytest.approx(B_NOISE, rel=1e-9)
    assert fit.e_min == pytest.approx(S_MIN * B_NOISE, rel=1e-9)
    both = fit_tradeoff(BATCHES, true_steps(BATCHES), true_steps(BATCHES) * np.array(BATCHES), relative=relative)
    assert both.fit.e_min == pytest.approx(S_MIN * B_NOISE, rel=1e-9)
    assert both.fit.b_noise == pytest.approx(B_NOISE, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_data_is_recovered_within_10_percent(seed):
    steps = noisy_steps(seed)
    fit = fit_steps(BATCHES, steps)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.1)
    assert fit.b_noise == pytest.approx(B_NOISE, rel=0.1)
    # Samples E = S B carry the same multiplicative noise; with relative residuals adding them to the fit
    # changes nothing: (S_i - S(B_i)) / S_i = (E_i - E(B_i)) / E_i.
    both = fit_tradeoff(BATCHES, steps, steps * np.array(BATCHES), resamples=0).fit
    assert both.s_min == pytest.approx(fit.s_min, rel=1e-9)
    assert both.e_min == pytest.approx(fit.e_min, rel=1e-9)


def test_tradeoff_reports_b_crit_as_e_min_over_s_min_with_uncertainty():
    steps = noisy_steps(seed=11)
    result = fit_tradeoff(BATCHES, steps)
    assert result.b_crit.value == pytest.approx(result.e_min.value / result.s_min.value)
    assert result.b_crit.value == pytest.approx(result.fit.b_noise)
    assert result.s_min.value == pytest.approx(S_MIN, rel=0.1)
    assert result.b_crit.value == pytest.approx(B_NOISE, rel=0.1)
    assert result.resamples > 450  # 500 drawn; the few with a single distinct batch size are skipped
    for estimate, truth in ((result.s_min, S_MIN), (result.e_min, S_MIN * B_NOISE), (result.b_crit, B_NOISE)):
        assert 0 < estimate.std < 0.1 * estimate.value  # 5% noise on 9 points: a few percent
        assert estimate.low < estimate.value < estimate.high
        assert estimate.low - 3 * estimate.std < truth < estimate.high + 3 * estimate.std
    # Fixed seed: the same numbers every time.
    assert fit_tradeoff(BATCHES, steps) == result


def test_tradeoff_with_samples_fits_both_curves():
    steps = true_steps(BATCHES)
    result = fit_tradeoff(BATCHES, steps, samples=steps * np.array(BATCHES))
    assert result.fit.fitted_to == "steps+samples"
    assert result.s_min.value == pytest.approx(S_MIN, rel=1e-9)
    assert result.b_crit.value == pytest.approx(B_NOISE, rel=1e-9)
    assert result.b_crit.std == pytest.approx(0.0, abs=1e-6)  # exact data: every resample agrees


def test_two_points_give_an_exact_fit_without_uncertainty():
    result = fit_tradeoff([64, 1024], true_steps([64, 1024]))
    assert result.s_min == Estimate(pytest.approx(S_MIN))
    assert result.b_crit.value == pytest.approx(B_NOISE)
    assert result.b_crit.std is None and result.b_crit.low is None and result.resamples == 0


@pytest.mark.parametrize("batches", [[], [256], [256, 256, 256]])
def test_too_few_points_raise(batches):
    with pytest.raises(ValueError, match="at least 2"):
        fit_steps(batches, [100.0] * len(batches))
    with pytest.raises(ValueError, match="at least 2"):
        fit_tradeoff(batches, [100.0] * len(batches))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="positive"):
        fit_steps([64, 128], [100.0, -1.0])
    with pytest.raises(ValueError, match="one per batch size"):
        fit_steps([64, 128], [100.0])
    with pytest.raises(ValueError, match="positive"):
        fit_steps([0, 128], [100.0, 50.0])


def test_predictions_at_unseen_batch_sizes():
    fit = fit_steps([32, 256, 2048], true_steps([32, 256, 2048]))
    for batch in (8, 100, 512, 8192, 1 << 20):
        assert predict_steps(fit, batch) == pytest.approx(float(true_steps(batch)), rel=1e-9)
        assert predict_samples(fit, batch) == pytest.approx(float(true_steps(batch)) * batch, rel=1e-9)
    # Far above B_noise the steps approach S_min; far below, the samples approach E_min.
    assert predict_steps(fit, 1 << 24) == pytest.approx(S_MIN, rel=1e-3)
    assert predict_samples(fit, 1) == pytest.approx(S_MIN * B_NOISE, rel=1e-2)
    assert np.allclose(fit.steps(np.array([64.0, 128.0])), true_steps([64, 128]))
    assert fit.physical
    # Steps that grow with the batch do not bend the right way: S_min > 0 but E_min < 0.
    assert not fit_steps([64, 256, 1024], [100.0, 120.0, 150.0]).physical


def test_throughput_interpolates_log_log_and_is_constant_outside():
    points = {64: 1000.0, 256: 4000.0, 1024: 8000.0}
    assert throughput_at(points, 128) == pytest.approx(2000.0)  # a power law between 64 and 256
    assert throughput_at(points, 512) == pytest.approx(8000.0 / np.sqrt(2))
    assert throughput_at(points, 16) == pytest.approx(1000.0)
    assert throughput_at(points, 1 << 16) == pytest.approx(8000.0)
    assert throughput_at([(256, 4000.0), (64, 1000.0)], 128) == pytest.approx(2000.0)  # pairs, any order


def test_predict_time_is_samples_over_throughput():
    fit = fit_steps(BATCHES, true_steps(BATCHES))
    points = {64: 1000.0, 1024: 16000.0}
    assert predict_time(fit, 256, points) == pytest.approx(float(true_steps(256)) * 256 / 4000.0)
    # Per-device points on 4 devices: B = 1024 is 256 per device, 4 x 4000 samples/s.
    assert predict_time(fit, 1024, points, devices=4) == pytest.approx(
        float(true_steps(1024)) * 1024 / 16000.0
    )


def test_best_batch_on_a_constructed_example():
    """Throughput grows linearly (perfect scaling) up to 256 and saturates: past 256 a bigger batch only
    costs samples, while below it fewer steps are won for free. So 256 is fastest, whatever B_noise."""
    fit = fit_steps(BATCHES, true_steps(BATCHES))
    points = {32: 320.0, 256: 2560.0}
    choice = best_batch(fit, points, [32, 64, 128, 256, 512, 1024])
    assert choice.batch == 256
    assert choice.time_s == pytest.approx(min(choice.times_s.values()))
    assert choice.steps == pytest.approx(float(true_steps(256)))
    # T(B) = S(B) B / throughput(B) = S_min (1 + B_noise / B) / 10 up to 256 (decreasing), then
    # S_min (B + B_noise) / 2560 (increasing).
    assert choice.times_s[128] > choice.times_s[256] < choice.times_s[512]


def test_best_batch_with_devices_uses_per_device_throughput():
    """Per-device throughput saturates at 128 per device: on 8 devices the best global batch is 1024."""
    fit = fit_steps(BATCHES, true_steps(BATCHES))
    per_device = {16: 160.0, 128: 1280.0}
    choice = best_batch(fit, per_device, [256, 512, 1024, 2048, 4096], devices=8)
    assert choice.batch == 1024
    assert choice.devices == 8
    with pytest.raises(ValueError, match="evenly"):
        best_batch(fit, per_device, [100], devices=8)


# ---- whose compute `scaling predict` uses (scaling/devices/compute.py) ----


@pytest.mark.parametrize("interconnect, device_type, device, implied", [
    ("nvlink4", "cpu", "cpu (x86_64, 2 cores, 1 threads)", "GPUs (H100/H200/H800)"),
    ("nvlink4", "cuda", "NVIDIA H100 80GB HBM3", None),
    ("nvlink4", "cuda", "NVIDIA A100-SXM4-80GB", "GPUs (H100/H200/H800)"),  # another generation
    ("nvlink3", "cuda", "NVIDIA A100-SXM4-80GB", None),
    ("ib-ndr", "cpu", "cpu", "GPUs"),
    ("ib-ndr", "cuda", "NVIDIA L4", None),
    ("pcie4", "cpu", "cpu", None),
    ("ethernet-10g", "cpu", "cpu", None),
    (None, "cpu", "cpu", None),  # measured or given figures imply no device
])
def test_which_interconnects_imply_another_device(interconnect, device_type, device, implied):
    assert implied_device(interconnect, device_type, device) == implied


def gpu_result(precision="tf32", peak=156e12, mfu=0.12) -> dict:
    """What an A100 run records about its compute (result.json `compute`, `environment`)."""
    return {"environment": {"device": "NVIDIA A100-SXM4-80GB", "device_type": "cuda"},
            "compute": {"flops_per_sample": 3e5, "achieved_flops_per_s": mfu * peak,
                        "achieved_flops_per_s_per_device": mfu * peak, "peak_flops_per_s_per_device": peak,
                        "peak_source": f"A100 {precision} dense (datasheet)", "precision": precision, "mfu": mfu}}


def test_target_device_ratio_is_the_ratio_of_datasheet_peaks():
    scale = requested_scale(gpu_result(), None, "h100")  # names match case-insensitively
    assert scale.source == "target_device" and scale.target_device == "H100"
    assert scale.ratio == pytest.approx(494.5 / 156.0, rel=1e-12)
    assert scale.basis["precision"] == "tf32" and scale.basis["mfu"] == 0.12
    assert requested_scale(gpu_result(), 2.5, None).ratio == 2.5
    assert requested_scale(gpu_result(), None, None).ratio == 1.0


@pytest.mark.parametrize("ratio, device, message", [
    (0.0, None, "finite number > 0"), (-1.0, None, "finite number > 0"), (math.nan, None, "finite number > 0"),
    (math.inf, None, "finite number > 0"), (2.0, "H100", "exclude each other"),
    (None, "Z9", "unknown --target-device"), (None, "T4", "no tf32 peak"),
])
def test_bad_compute_scales_are_refused(ratio, device, message):
    with pytest.raises(ConfigError, match=message):
        requested_scale(gpu_result(), ratio, device)


def test_target_device_is_refused_for_a_device_without_a_known_peak():
    cpu = {"environment": {"device": "cpu (x86_64, 2 cores, 1 threads)", "device_type": "cpu"},
           "compute": {"peak_flops_per_s_per_device": None, "precision": "fp32"}}
    with pytest.raises(ConfigError, match="has none in scaling/hardware.py's table: use --compute-ratio"):
        requested_scale(cpu, None, "H100")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A real run on this machine's CPU: global batch 256 = 64 x 2 emulated processes x 2 accumulation steps."""
    folder = tmp_path_factory.mktemp("compute") / "cpu"
    assert_ok(run_entry([*SMALL, "--global-bs", "256", "--per-device-bs", "64", "--emulate-processes", "2",
                         "--target-accuracy", "0.5", "--noise-scale", "false", "--output-dir", str(folder)]))
    return folder


def predict_json(folder, *flags) -> dict:
    proc = run_in_process([str(folder), "--processes", "2", *map(str, flags), "--json"], command="predict")
    assert_ok(proc)
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_a_cpu_run_predicted_on_nvlink_says_whose_compute_it_uses(cpu_run):
    proc = run_in_process([str(cpu_run), "--processes", "2", "--interconnect", "nvlink4"], command="predict")
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1  # still one paragraph
    assert "Compute: measured on cpu (" in lines[0]
    assert ("the interconnect nvlink4 implies GPUs (H100/H200/H800): the compute time is the CPU's unless you "
            "scale it with --compute-ratio or --target-device") in lines[0]
    compute = predict_json(cpu_run, "--interconnect", "nvlink4")["prediction"]["compute"]
    assert compute["source"] == "measured" and compute["ratio"] == 1.0
    assert compute["device"].startswith("cpu (") and compute["device_type"] == "cpu"
    assert compute["implied_device"] == "GPUs (H100/H200/H800)" and compute["interconnect"] == "nvlink4"
    assert compute["measured_samples_per_s"] > 0 and compute["samples_per_s"] == compute["measured_samples_per_s"]
    assert "implies GPUs" in compute["text"]


@pytest.mark.slow
def test_an_interconnect_that_implies_no_other_device_only_reports_the_compute(cpu_run):
    report = predict_json(cpu_run, "--interconnect", "pcie4")
    compute = report["prediction"]["compute"]
    assert compute["source"] == "measured" and compute["ratio"] == 1.0 and compute["implied_device"] is None
    assert "Compute: measured on cpu (" in report["explanation"] and "implies" not in report["explanation"]


@pytest.mark.slow
def test_compute_ratio_divides_the_compute_component_and_nothing_else(cpu_run):
    plain = predict_json(cpu_run, "--interconnect", "nvlink4")["prediction"]
    scaled_report = predict_json(cpu_run, "--interconnect", "nvlink4", "--compute-ratio", 10)
    scaled = scaled_report["prediction"]
    assert scaled["components"]["compute"] == pytest.approx(plain["components"]["compute"] / 10, rel=1e-12)
    for part in ("data", "optimizer", "other", "ddp_overhead", "window_collectives", "contention"):
        assert scaled["components"][part] == plain["components"][part]
    # The difference per step is the compute saved (the all-reduce can only lose overlap with a shorter backward).
    saved = plain["components"]["compute"] - scaled["components"]["compute"]
    exposed = scaled["components"]["allreduce"] - plain["components"]["allreduce"]
    assert scaled["delta_step_s"] == pytest.approx(plain["delta_step_s"] - saved + exposed, rel=1e-9)
    assert scaled["train_time_to_target_s"] == pytest.approx(
        plain["train_time_to_target_s"] - scaled["steps_to_target"] * (saved - exposed), rel=1e-9)
    compute = scaled["compute"]
    assert compute["source"] == "compute_ratio" and compute["ratio"] == 10.0
    assert compute["samples_per_s"] == pytest.approx(10 * compute["measured_samples_per_s"])
    assert "divided by the compute ratio 10" in scaled_report["explanation"]


@pytest.mark.slow
def test_target_device_scales_a_gpu_runs_compute_by_the_peaks(cpu_run, tmp_path):
    """The same run, as an A100 would have recorded it (no GPU here): --target-device H100 divides its compute
    by 494.5 / 156 TFLOP/s (tf32) and says it assumes the same utilisation."""
    result = json.loads((cpu_run / "result.json").read_text())
    result.update({key: value for key, value in gpu_result().items() if key == "compute"})
    result["environment"].update(gpu_result()["environment"])
    (tmp_path / "result.json").write_text(json.dumps(result))
    (tmp_path / "metrics.jsonl").write_text((cpu_run / "metrics.jsonl").read_text())
    plain = predict_json(tmp_path, "--interconnect", "nvlink3")
    assert plain["prediction"]["compute"]["implied_device"] is None  # an A100 on NVLink 3: its own link
    report = predict_json(tmp_path, "--interconnect", "nvlink4", "--target-device", "H100")
    compute = report["prediction"]["compute"]
    assert compute["source"] == "target_device" and compute["target_device"] == "H100"
    assert compute["ratio"] == pytest.approx(494.5 / 156.0)
    assert report["prediction"]["components"]["compute"] == pytest.approx(
        plain["prediction"]["components"]["compute"] / compute["ratio"], rel=1e-12)
    assert "same utilisation as measured (MFU 12%)" in report["explanation"]


@pytest.mark.slow
@pytest.mark.parametrize("flags, fragment", [
    (["--compute-ratio", "0"], "finite number > 0"),
    (["--compute-ratio", "-2"], "finite number > 0"),
    (["--compute-ratio", "nan"], "finite number > 0"),
    (["--compute-ratio", "inf"], "finite number > 0"),
    (["--compute-ratio", "fast"], "invalid float value"),
    (["--target-device", "H100"], "use --compute-ratio"),  # a CPU run: no peak to take a ratio of
    (["--target-device", "Z9"], "unknown --target-device"),
    (["--compute-ratio", "2", "--target-device", "H100"], "not allowed with"),
])
def test_bad_compute_flags_exit_2_with_one_line(cpu_run, flags, fragment):
    proc = run_in_process([str(cpu_run), "--processes", "2", "--interconnect", "nvlink4", *flags], command="predict")
    assert_one_line_error(proc, fragment)
