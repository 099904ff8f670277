"""AdamW's settings (--beta1, --beta2, --eps) reach the optimizer, are checked, and resume; linear LR scaling
with AdamW is warned about. Issue 30's first slice: the Adam-aware scaling rules come with the language models."""

import pytest
import torch

from conftest import SMALL, assert_one_line_error, load_result, run_in_process
from scaling.build import build_optimizer
from scaling.config import RunConfig
from scaling.train.checkpoint import CheckpointError, check_resumable

QUICK = [*SMALL, "--num-samples", "2000", "--max-steps", "3", "--target-accuracy", "none", "--optimizer", "adamw"]


def test_adamw_steps_as_a_plain_adamw_with_the_given_settings():
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    cfg = RunConfig(optimizer="adamw", base_lr=0.01, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.1)
    tool = build_optimizer(cfg, model)
    plain = torch.optim.AdamW(reference.parameters(), lr=0.01, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)
    inputs = torch.randn(8, 5)
    for _ in range(5):
        for net, optimizer in ((model, tool), (reference, plain)):
            optimizer.zero_grad()
            net(inputs).square().mean().backward()
            optimizer.step()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert tool.param_groups[0]["betas"] == (0.8, 0.95) and tool.param_groups[0]["eps"] == 1e-3


def test_the_settings_are_recorded_and_linear_scaling_with_adamw_is_warned_about(tmp_path):
    out = tmp_path / "run"
    proc = run_in_process([*QUICK, "--beta1", "0.8", "--beta2", "0.95", "--eps", "1e-6", "--lr-scaling", "linear",
                           "--global-bs", "1024", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    config = load_result(out)["config"]
    assert (config["beta1"], config["beta2"], config["eps"]) == (0.8, 0.95, 1e-6)
    warnings = [line for line in proc.stdout.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "linear is SGD's rule" in warnings[0] and "4x" in warnings[0], proc.stdout
    proc = run_in_process([*QUICK, "--lr-scaling", "sqrt", "--global-bs", "1024", "--output-dir", str(tmp_path / "b")])
    assert proc.returncode == 0 and "warning" not in proc.stdout


@pytest.mark.parametrize("flag, value, fragment", [
    ("--beta1", "1", "--beta1 must be in [0, 1), got 1.0"),
    ("--beta2", "-0.1", "--beta2 must be in [0, 1), got -0.1"),
    ("--eps", "0", "--eps must be > 0"),
    ("--eps", "inf", "--eps expects float, got 'inf'"),
])
def test_bad_adam_settings_are_refused_in_one_line(tmp_path, flag, value, fragment):
    proc = run_in_process([*QUICK, flag, value, "--output-dir", str(tmp_path / "run")])
    assert_one_line_error(proc, fragment)


def test_a_checkpoint_from_before_the_adam_settings_resumes_with_their_defaults():
    cfg = RunConfig(optimizer="adamw")
    older = {k: v for k, v in cfg.to_dict().items() if k not in ("beta1", "beta2", "eps")}
    check_resumable(older, cfg)  # the settings it lacks had their defaults then
    with pytest.raises(CheckpointError, match="different beta2"):
        check_resumable(older, RunConfig(optimizer="adamw", beta2=0.95))
