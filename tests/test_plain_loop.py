"""The tool's training against a plain PyTorch loop written here, not by the tool: same data, model, data order
(the documented rule of docs/emulation.md: epoch e's permutation from a generator seeded with
seed * 1_000_003 + e, the incomplete last batch dropped) and global batch, so the per-step losses must agree,
whatever the decomposition the tool splits the global batch into. Problems are generated per seed."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import LINEAR_PROBLEM, assert_ok, run_entry, run_torchrun

pytestmark = pytest.mark.slow

PROBLEM = LINEAR_PROBLEM
GLOBAL_BS, STEPS, LR, MOMENTUM = 64, 24, 0.2, 0.9


def plain_loop(seed: int, problem_seed: int) -> list[float]:
    """What a person writes: SGD with momentum at a fixed LR over the global batch, the mean loss per step."""
    import importlib

    import problem_module

    importlib.reload(problem_module)
    train, _ = problem_module.data()
    x, y = train.tensors
    torch.manual_seed(seed)  # the tool seeds the initial weights the same way (accelerate's set_seed)
    model = problem_module.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    steps_per_epoch = len(x) // GLOBAL_BS
    losses = []
    for step in range(STEPS):
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batch = order[index * GLOBAL_BS:(index + 1) * GLOBAL_BS]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def tool_args(out, seed: int, *decomposition: str) -> list[str]:
    return ["--dataset", "problem_module:data", "--model", "problem_module:model", "--global-bs", str(GLOBAL_BS),
            *decomposition, "--base-lr", str(LR), "--base-bs", str(GLOBAL_BS), "--lr-scaling", "none",
            "--warmup-steps", "0", "--momentum", str(MOMENTUM), "--max-steps", str(STEPS), "--seed", str(seed),
            "--target-accuracy", "none", "--eval-every", str(STEPS), "--noise-scale", "false", "--cpu",
            "--progress", "false", "--output-dir", str(out)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_tools_losses_are_a_plain_loops_for_every_decomposition(tmp_path, monkeypatch, seed):
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    monkeypatch.syspath_prepend(str(tmp_path))
    problem_seed = 100 + seed
    monkeypatch.setenv("PROBLEM_SEED", str(problem_seed))
    expected = torch.tensor(plain_loop(seed, problem_seed))
    env = {"PYTHONPATH": str(tmp_path), "PROBLEM_SEED": str(problem_seed)}
    runs = {
        "one micro-batch": lambda out: run_entry(tool_args(out, seed), **env),
        "4 accumulation steps": lambda out: run_entry(tool_args(out, seed, "--per-device-bs", "16"), **env),
        "4 emulated processes": lambda out: run_entry(tool_args(out, seed, "--emulate-processes", "4"), **env),
    }
    for name, launch in runs.items():
        out = tmp_path / name.replace(" ", "_")
        assert_ok(launch(out))
        losses = torch.tensor(json.loads((out / "result.json").read_text())["train_loss"])
        assert len(losses) == STEPS, name
        torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6, msg=f"{name}, seed {seed}")
    # Two real processes over gloo, each holding half of every global batch.
    out = tmp_path / "two_processes"
    assert_ok(run_torchrun(tool_args(out, seed), **env))
    losses = torch.tensor(json.loads((out / "result.json").read_text())["train_loss"])
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6, msg=f"2 processes, seed {seed}")
