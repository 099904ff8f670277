import math

import pytest

from scaling.config import RunConfig
from scaling.lr import build_schedule, scaled_lr


def test_scaling_rules():
    assert scaled_lr(0.1, 256, 4096, "linear") == pytest.approx(1.6)
    assert scaled_lr(0.1, 256, 4096, "sqrt") == pytest.approx(0.4)
    assert scaled_lr(0.1, 256, 4096, "none") == pytest.approx(0.1)
    assert scaled_lr(0.1, 256, 64, "linear") == pytest.approx(0.025)


def test_warmup_rises_linearly_to_the_scaled_lr_then_holds():
    cfg = RunConfig(base_lr=0.1, base_bs=256, lr_scaling="linear", warmup_steps=4)
    schedule = build_schedule(cfg, global_bs=1024, steps_per_epoch=10, total_steps=100)
    assert [schedule(s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_warmup_epochs_are_converted_with_optimizer_steps_per_epoch():
    cfg = RunConfig(warmup_epochs=2.5)
    assert build_schedule(cfg, 1024, steps_per_epoch=8, total_steps=None).warmup_steps == 20


def test_cosine_decays_to_zero_at_the_last_step():
    cfg = RunConfig(base_lr=0.2, base_bs=256, lr_scaling="none", warmup_steps=10, lr_decay="cosine", max_steps=110)
    schedule = build_schedule(cfg, 256, steps_per_epoch=10, total_steps=110)
    assert schedule(9) == pytest.approx(0.2)
    assert schedule(10) == pytest.approx(0.2)
    assert schedule(60) == pytest.approx(0.1)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)


def test_step_decay_at_epoch_milestones():
    cfg = RunConfig(base_lr=1.0, base_bs=256, lr_scaling="none", lr_decay="step", lr_step_epochs=[2, 3],
                    lr_step_gamma=0.1)
    schedule = build_schedule(cfg, 256, steps_per_epoch=5, total_steps=None)
    assert schedule.milestones == (10, 15)
    assert [schedule(s) for s in (9, 10, 14, 15)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_sqrt_rule_with_warmup_matches_hand_computation():
    cfg = RunConfig(base_lr=0.05, base_bs=64, lr_scaling="sqrt", warmup_steps=3)
    schedule = build_schedule(cfg, 1024, steps_per_epoch=4, total_steps=None)
    peak = 0.05 * math.sqrt(16)
    assert [schedule(s) for s in range(4)] == pytest.approx([peak / 3, 2 * peak / 3, peak, peak])


def test_default_warmup_only_when_the_rule_raises_the_lr():
    """No warmup flag: 2 epochs of warmup when the scaled LR is above the reference one, none otherwise;
    an explicit --warmup-steps 0 turns it off."""
    from scaling.lr import DEFAULT_WARMUP_EPOCHS

    raised = build_schedule(RunConfig(lr_scaling="sqrt"), 4096, steps_per_epoch=7, total_steps=None)
    assert raised.peak == pytest.approx(0.4) and raised.warmup_steps == round(DEFAULT_WARMUP_EPOCHS * 7) == 14
    lowered = build_schedule(RunConfig(lr_scaling="sqrt"), 64, steps_per_epoch=500, total_steps=None)
    assert lowered.peak < 0.1 and lowered.warmup_steps == 0
    assert build_schedule(RunConfig(lr_scaling="none"), 4096, 7, None).warmup_steps == 0
    assert build_schedule(RunConfig(warmup_steps=0), 4096, 7, None).warmup_steps == 0
