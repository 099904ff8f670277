"""The Adam-aware scaling rules (issue 30): each rule's numbers against its paper's formula, the optimizer a real
run builds with them, the result's `lr` record, and the combinations refused in one line before training."""

import math

import pytest
import torch

from conftest import SMALL, a_result, assert_one_line_error, load_result, run_in_process
from scaling.build import lr_summary
from scaling.config import ConfigError, RunConfig
from scaling.lr import build_schedule, largest_sde_batch, scaled_hyperparameters
from scaling.results import check_result
from scaling.study.spec import load_study

KAPPAS = [0.125, 0.5, 1, 2, 4, 8]  # batch ratios global / base, below and above 1
BASE = dict(base_lr=0.002, base_bs=256, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
QUICK = [*SMALL, "--num-samples", "2000", "--max-steps", "2", "--target-accuracy", "none", "--base-bs", "256",
         "--base-lr", "0.002", "--weight-decay", "0.05"]


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_lr_rules_scale_the_lr_only(kappa, optimizer):
    batch = round(256 * kappa)
    expected = {"none": 0.002, "linear": 0.002 * kappa, "sqrt": 0.002 * math.sqrt(kappa)}
    for rule, lr in expected.items():
        used = scaled_hyperparameters(RunConfig(optimizer=optimizer, lr_scaling=rule, **BASE), batch)
        assert used.lr == pytest.approx(lr, rel=1e-12)
        assert (used.beta1, used.beta2, used.eps, used.weight_decay) == (0.9, 0.999, 1e-8, 0.05)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_adam_sde_is_malladi_et_al_s_square_root_rule(kappa):
    """lr sqrt(kappa), 1 - beta kappa times further from 1, eps / sqrt(kappa); weight decay as given."""
    used = scaled_hyperparameters(RunConfig(optimizer="adamw", lr_scaling="adam-sde", **BASE), round(256 * kappa))
    assert used.lr == pytest.approx(0.002 * math.sqrt(kappa), rel=1e-12)
    assert 1 - used.beta1 == pytest.approx(kappa * (1 - 0.9), rel=1e-9)
    assert 1 - used.beta2 == pytest.approx(kappa * (1 - 0.999), rel=1e-9)
    assert used.eps == pytest.approx(1e-8 / math.sqrt(kappa), rel=1e-12)
    assert used.weight_decay == 0.05


@pytest.mark.parametrize("kappa", KAPPAS)
def test_half_life_keeps_beta2_s_half_life_in_samples(kappa):
    """Marek et al. 2025: beta2' = beta2^kappa, so the half-life in steps times the batch stays the same."""
    cfg = RunConfig(optimizer="adamw", lr_scaling="sqrt", beta2_scaling="half-life", **BASE)
    used = scaled_hyperparameters(cfg, round(256 * kappa))
    assert used.beta2 == pytest.approx(0.999**kappa, rel=1e-12)
    half_life = math.log(0.5) / math.log(0.999) * 256  # samples
    assert math.log(0.5) / math.log(used.beta2) * 256 * kappa == pytest.approx(half_life, rel=1e-9)
    assert (used.lr, used.beta1, used.eps) == (pytest.approx(0.002 * math.sqrt(kappa)), 0.9, 1e-8)


def test_the_schedule_peaks_at_the_rule_s_lr():
    cfg = RunConfig(optimizer="adamw", lr_scaling="adam-sde", warmup_steps=0, **BASE)
    assert build_schedule(cfg, 1024, steps_per_epoch=10, total_steps=None).peak == pytest.approx(0.004)


def test_adam_sde_s_largest_batch_is_where_a_beta_reaches_0():
    """beta1 0.9 at base 256: 1 - kappa x 0.1 >= 0 up to kappa 10 (batch 2560), where beta1 is 0 (not a
    rounding residue below it); one sample more is refused, naming the ratio, the beta and the limit."""
    cfg = RunConfig(optimizer="adamw", lr_scaling="adam-sde", **BASE)
    assert largest_sde_batch(256, 0.9) == 2560 and largest_sde_batch(256, 0.999) == 256_000
    assert scaled_hyperparameters(cfg, 2560).beta1 == pytest.approx(0, abs=1e-12)
    with pytest.raises(ConfigError) as err:
        scaled_hyperparameters(cfg, 2561)
    message = str(err.value)
    assert "\n" not in message and "batch ratio 10.0039" in message and "makes beta1" in message
    assert "up to 2,560" in message
    binding_beta2 = RunConfig(optimizer="adamw", lr_scaling="adam-sde", base_bs=4, beta1=0.0, beta2=0.5)
    with pytest.raises(ConfigError, match="batch ratio 2.5 .* makes beta1 .* up to 4 at --base-bs 4"):
        scaled_hyperparameters(binding_beta2, 10)  # beta1 0 allows ratio 1, beta2 0.5 ratio 2: the lower


def test_the_lr_record_holds_what_the_optimizer_used_and_older_results_still_load():
    sgd = RunConfig(lr_scaling="sqrt", global_bs=1024, **BASE)
    record = lr_summary(sgd, build_schedule(sgd, 1024, 10, None))
    assert (record["beta1"], record["beta2"], record["eps"], record["weight_decay"]) == (None, None, None, 0.05)
    older = a_result()  # its `lr` predates the four keys
    assert "beta1" not in older["lr"] and check_result(older) is None
    assert "beta1" not in older["lr"]  # loaded as written: a reader takes the four with .get
    assert check_result(a_result(lr={**a_result()["lr"], "beta2": "0.99"})) == \
        "field 'lr': 'beta2': must be a number, got text"


@pytest.mark.slow
def test_a_run_builds_adamw_with_the_sde_settings_and_records_them(tmp_path):
    """Batch 1024 from 256 (kappa 4): the checkpoint's AdamW param_groups and result.json hold the scaled
    betas and eps; the LR line shows them."""
    out = tmp_path / "run"
    proc = run_in_process([*QUICK, "--optimizer", "adamw", "--lr-scaling", "adam-sde", "--global-bs", "1024",
                           "--checkpoint-every", "2", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    expected = {"beta1": 1 - 4 * (1 - 0.9), "beta2": 1 - 4 * (1 - 0.999), "eps": 1e-8 / 2, "weight_decay": 0.05}
    groups = torch.load(out / "checkpoint" / "optimizer.bin", weights_only=True)["param_groups"]
    for group in groups:
        assert group["betas"] == pytest.approx((expected["beta1"], expected["beta2"]), rel=1e-12)
        assert (group["eps"], group["weight_decay"]) == (pytest.approx(expected["eps"]), 0.05)
        assert group["lr"] == pytest.approx(0.004)  # the schedule's last step (2-step warmup to 0.002 x 2)
    lr = load_result(out)["lr"]
    assert {key: lr[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert lr["scaled"] == pytest.approx(0.004) and lr["rule"] == "adam-sde"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("scaling: lr adam-sde"))
    assert "beta1 0.9 -> 0.6, beta2 0.999 -> 0.996, eps 1e-08 -> 5e-09" in line, line


def test_a_run_at_a_smaller_batch_builds_adamw_with_the_half_life_beta2(tmp_path):
    out = tmp_path / "run"
    proc = run_in_process([*QUICK, "--optimizer", "adamw", "--lr-scaling", "sqrt", "--beta2-scaling", "half-life",
                           "--global-bs", "64", "--checkpoint-every", "2", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    groups = torch.load(out / "checkpoint" / "optimizer.bin", weights_only=True)["param_groups"]
    assert all(group["betas"] == (0.9, pytest.approx(0.999**0.25, rel=1e-12)) for group in groups)
    lr = load_result(out)["lr"]
    assert (lr["beta1"], lr["beta2"], lr["eps"]) == (0.9, pytest.approx(0.999**0.25, rel=1e-12), 1e-8)
    assert "beta2 0.999 -> 0.99975" in proc.stdout and "beta1 0.9 ->" not in proc.stdout


@pytest.mark.parametrize("flags, fragments", [
    (["--lr-scaling", "adam-sde"], ["--lr-scaling adam-sde is Adam's rule", "--optimizer is sgd"]),
    (["--beta2-scaling", "half-life"], ["--beta2-scaling half-life scales AdamW's beta2", "--optimizer is sgd"]),
    (["--optimizer", "adamw", "--lr-scaling", "adam-sde", "--beta2-scaling", "half-life"],
     ["--lr-scaling adam-sde and --beta2-scaling half-life both set beta2"]),
    (["--optimizer", "adamw", "--lr-scaling", "adam-sde", "--global-bs", "4096"],
     ["batch ratio 16 (--global-bs 4096 / --base-bs 256)", "makes beta1", "up to 2,560"]),
])
def test_impossible_combinations_are_refused_in_one_line_before_training(tmp_path, flags, fragments):
    proc = run_in_process([*QUICK, *flags, "--output-dir", str(tmp_path / "run")])
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_study_spec_with_a_refused_configuration_is_refused_before_anything_runs(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: sde\nbase: {optimizer: adamw, lr_scaling: adam-sde, base_bs: 256, max_steps: 2}\n"
                    "grid: {global_bs: [512, 4096]}\n")
    with pytest.raises(ConfigError) as err:
        load_study(spec, tmp_path / "study")
    assert "makes beta1" in str(err.value) and "(configuration global_bs=4096)" in str(err.value)
