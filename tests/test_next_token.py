"""Next-token tasks from a `module:callable` factory: (LongTensor[T] inputs, LongTensor[T] targets) samples and a
model returning [batch, T, vocab] logits, on sequence problems this test generates per seed (a random Markov
chain; padded targets, IGNORE_INDEX -100, of random length per sequence).

- The tool's per-step losses are a plain AdamW loop's, written here, whose loss is the global batch's token
  sum over its token count: for one micro-batch, 4 accumulation steps, 4 emulated processes and 2 real
  processes (torchrun, gloo). Padding makes micro-batches hold different numbers of target tokens, so the
  mean of their means differs from the token mean: the test checks that it does, so it can tell them apart.
- `--target-loss`: steps to target equal those of a run evaluating after every step.
- Refusals, one line and exit 2.
"""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_ok, run_entry, run_in_process, run_torchrun

PROBLEM = textwrap.dedent('''
    import os

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    V, T = 11, 12

    def data():
        """Sequences from a random Markov chain over V tokens; with PAD set, each sequence's targets past a
        random length are -100 (padding)."""
        g = torch.Generator().manual_seed(int(os.environ["PROBLEM_SEED"]))
        transition = torch.softmax(2.5 * torch.randn(V, V, generator=g), dim=1)
        n = 384 + 128
        seqs = torch.empty(n, T + 1, dtype=torch.long)
        seqs[:, 0] = torch.randint(0, V, (n,), generator=g)
        for t in range(T):
            seqs[:, t + 1] = torch.multinomial(transition[seqs[:, t]], 1, generator=g).squeeze(1)
        inputs, targets = seqs[:, :-1].clone(), seqs[:, 1:].clone()
        if os.environ.get("PAD") == "1":
            lengths = torch.randint(1, T + 1, (n,), generator=g)
            targets[torch.arange(T)[None, :] >= lengths[:, None]] = -100
        return TensorDataset(inputs[:384], targets[:384]), TensorDataset(inputs[384:], targets[384:])

    class TinyLM(nn.Module):
        """Embedding, one causal self-attention layer, a linear head: [batch, T] ids -> [batch, T, V] logits."""

        def __init__(self, width=16):
            super().__init__()
            self.embed = nn.Embedding(V, width)
            self.position = nn.Parameter(0.02 * torch.randn(T, width))
            self.qkv = nn.Linear(width, 3 * width)
            self.head = nn.Linear(width, V)

        def forward(self, idx):
            x = self.embed(idx) + self.position[: idx.shape[1]]
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.head(x)

    def model():
        return TinyLM()

    def classifier():
        """A classification model: one score per class for each sequence, [batch, V]."""
        return nn.Sequential(nn.Embedding(V, 4), nn.Flatten(), nn.Linear(4 * T, V))
''')
GLOBAL_BS, STEPS, LR = 32, 12, 0.01


def plain_loop(seed: int) -> tuple[list[float], list[float]]:
    """What a person writes: AdamW over the global batch, the loss the mean over its target tokens. Also the
    mean of the 4 micro-batches' own means, which differs from it when padding is uneven."""
    import importlib

    import problem_module

    importlib.reload(problem_module)
    train, _ = problem_module.data()
    x, y = train.tensors
    torch.manual_seed(seed)  # the tool seeds the initial weights the same way (accelerate's set_seed)
    model = problem_module.model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)  # the tool's default
    steps_per_epoch = len(x) // GLOBAL_BS
    losses, means_of_means = [], []
    for step in range(STEPS):
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batch = order[index * GLOBAL_BS:(index + 1) * GLOBAL_BS]
        logits = model(x[batch])
        loss = F.cross_entropy(logits.flatten(0, 1), y[batch].flatten(), ignore_index=-100)
        with torch.no_grad():
            micro = [F.cross_entropy(logits[i:i + 8].flatten(0, 1), y[batch][i:i + 8].flatten(), ignore_index=-100)
                     for i in range(0, GLOBAL_BS, 8)]
            means_of_means.append(float(torch.stack(micro).mean()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, means_of_means


def tool_args(out, seed: int, *extra: str) -> list[str]:
    return ["--dataset", "problem_module:data", "--model", "problem_module:model", "--global-bs", str(GLOBAL_BS),
            "--optimizer", "adamw", "--base-lr", str(LR), "--base-bs", str(GLOBAL_BS), "--lr-scaling", "none",
            "--warmup-steps", "0", "--seed", str(seed), "--noise-scale", "false", "--cpu", "--progress", "false",
            "--output-dir", str(out), *extra]


def fixed_steps(out, seed: int, *decomposition: str) -> list[str]:
    return tool_args(out, seed, "--max-steps", str(STEPS), "--target-accuracy", "none", "--eval-every", str(STEPS),
                     *decomposition)


def losses_of(out) -> torch.Tensor:
    return torch.tensor(json.loads((out / "result.json").read_text())["train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_padded_lm_batches_step_as_a_plain_loop_for_every_decomposition(tmp_path, monkeypatch, seed):
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {"PYTHONPATH": str(tmp_path), "PROBLEM_SEED": str(100 + seed), "PAD": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected, means_of_means = (torch.tensor(values) for values in plain_loop(seed))
    # The padding makes the two weightings differ: a tool that averaged micro-batch means would fail here.
    assert (expected - means_of_means).abs().max() > 1e-3
    runs = {
        "one micro-batch": (),
        "4 accumulation steps": ("--per-device-bs", "8"),
        "4 emulated processes": ("--emulate-processes", "4"),
    }
    for name, decomposition in runs.items():
        out = tmp_path / name.replace(" ", "_")
        assert_ok(run_entry(fixed_steps(out, seed, *decomposition), **env))
        torch.testing.assert_close(losses_of(out), expected, rtol=1e-5, atol=1e-6, msg=f"{name}, seed {seed}")
    # Two real processes over gloo, each with 2 accumulation steps: the token count is summed over both.
    out = tmp_path / "two_processes"
    assert_ok(run_torchrun(fixed_steps(out, seed, "--per-device-bs", "8"), **env))
    torch.testing.assert_close(losses_of(out), expected, rtol=1e-5, atol=1e-6, msg=f"2 processes, seed {seed}")
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["task"] == "next-token" and result["batch"]["world_size"] == 2
    assert result["tokens"]["per_step"] == GLOBAL_BS * 12 and result["tokens"]["trained"] == STEPS * GLOBAL_BS * 12


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_target_steps_equal_evaluating_after_every_step(tmp_path, seed):
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    env = {"PYTHONPATH": str(tmp_path), "PROBLEM_SEED": str(200 + seed)}
    checked = replayed = 0
    for batch in (8, 32, 128):
        runs = {}
        for name, extra in (("every-step", ("--eval-every", "1")), ("scheduled", ())):
            out = tmp_path / f"{batch}-{name}"
            args = tool_args(out, seed, "--target-loss", "1.45", "--max-epochs", "30", "--global-bs", str(batch),
                             "--base-bs", "32", "--lr-scaling", "sqrt", *extra)
            assert_ok(run_entry(args, **env))
            runs[name] = json.loads((out / "result.json").read_text())
        reference, result = runs["every-step"], runs["scheduled"]
        if reference["status"] != "reached":
            continue
        checked += 1
        assert result["status"] == "reached" and result["target"] == {"metric": "loss", "value": 1.45,
                                                                       "direction": "min"}
        search = result["target_search"]
        assert search["metric"] == "loss" and search["exact"], search
        assert result["steps_to_target"] == reference["steps_to_target"], (batch, seed)
        assert result["tokens"]["to_target"] == result["samples_to_target"] * 12
        if search["method"] == "replay":  # (not when the first scheduled evaluation is the first step at it)
            replayed += 1
            # The reported step's evaluation is at or below the target, every earlier replayed one above it.
            values = search["values"][str(search["window"][0])]
            assert values[-1] is not None and values[-1] <= 1.45
            assert all(value is None or value > 1.45 for value in values[:-1])
    assert checked >= 2 and replayed >= 1


def test_loss_target_replaces_the_default_accuracy_target_and_reads_in_the_summary(tmp_path):
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    out = tmp_path / "run"
    proc = run_in_process(tool_args(out, 0, "--target-loss", "1.7", "--max-epochs", "10", "--global-bs", "16"),
                          PYTHONPATH=str(tmp_path), PROBLEM_SEED="7")
    assert_ok(proc)
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["target_accuracy"] is None and result["config"]["target_loss"] == 1.7
    assert result["status"] == "reached" and result["final"]["loss"] is not None
    line = proc.stdout.strip().splitlines()[-1]
    assert "reached loss 1.7 (perplexity 5.47)" in line and "tokens)" in line and "tokens/s" in line


def test_a_loss_target_not_reached_reads_its_final_loss_in_the_report(tmp_path):
    """The report's note on a run short of its loss target gives the last evaluation's loss, the metric the
    target is in, not the token accuracy a language model also records."""
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    out = tmp_path / "runs" / "short"
    assert_ok(run_in_process(tool_args(out, 0, "--target-loss", "0.01", "--max-steps", "6", "--eval-every", "3"),
                             PYTHONPATH=str(tmp_path), PROBLEM_SEED="7"))
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "not_reached"
    assert_ok(run_in_process([str(tmp_path / "runs"), "--out", str(tmp_path / "report")], command="report"))
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("|") and "not_reached" in line)
    assert f"final loss {result['final']['loss']:.3g} after 6 steps" in row and "final accuracy" not in row

@pytest.mark.parametrize("args, message", [
    (["--target-loss", "0"], "--target-loss must be > 0"),
    (["--target-loss", "1.5", "--target-accuracy", "0.5"], "give one target"),
    (["--task", "classification", "--target-loss", "1.5"], "takes one class label per sample"),
    (["--model", "problem_module:classifier", "--target-loss", "1.5"],
     "must return next-token logits of shape [batch, T, vocab] for a next-token task; for 2 sequences of 12 tokens "
     "it returned shape (2, 11)"),
])
def test_bad_next_token_input_is_one_line(tmp_path, args, message):
    (tmp_path / "problem_module.py").write_text(PROBLEM)
    proc = run_in_process([*tool_args(tmp_path / "out", 0, "--max-steps", "2"), *args], PYTHONPATH=str(tmp_path),
                          PROBLEM_SEED="1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_next_token_task_refused_for_class_labels(tmp_path):
    (tmp_path / "classes.py").write_text(textwrap.dedent('''
        import torch
        from torch.utils.data import TensorDataset

        def data():
            x = torch.randint(0, 5, (64, 8))
            return TensorDataset(x, x[:, 0]), TensorDataset(x, x[:, 0])
    '''))
    proc = run_in_process(["--dataset", "classes:data", "--task", "next-token", "--max-steps", "2", "--cpu",
                           "--progress", "false", "--output-dir", str(tmp_path / "out")], PYTHONPATH=str(tmp_path))
    assert proc.returncode == 2
    assert "--task next-token needs (LongTensor[T] inputs, LongTensor[T] targets)" in proc.stderr


@pytest.mark.slow
def test_gpt_on_stories_steps_alike_for_every_decomposition(tmp_path):
    """The built-in GPT on the embedded stories: one micro-batch, accumulation, emulated processes and 2 real
    processes give the same per-step losses to 1e-5."""
    common = ["--dataset", "stories", "--num-samples", "400", "--context", "32", "--global-bs", "16",
              "--max-steps", "8", "--target-loss", "none", "--eval-every", "8", "--noise-scale", "false", "--cpu",
              "--progress", "false"]
    decompositions = {"one": [], "accumulation": ["--per-device-bs", "4"],
                      "emulated": ["--emulate-processes", "2", "--per-device-bs", "4"]}
    losses = {}
    for name, extra in decompositions.items():
        assert_ok(run_entry([*common, *extra, "--output-dir", str(tmp_path / name)]))
        losses[name] = losses_of(tmp_path / name)
    assert_ok(run_torchrun([*common, "--per-device-bs", "4", "--output-dir", str(tmp_path / "real")]))
    losses["2 processes"] = losses_of(tmp_path / "real")
    reference = losses.pop("one")
    assert len(reference) == 8 and reference[-1] < reference[0]
    for name, values in losses.items():
        torch.testing.assert_close(values, reference, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("given, accuracy, loss", [
    ({}, None, "workload"),
    ({"target_loss": None}, None, None),
    ({"target_accuracy": 0.5}, 0.5, None),
    ({"target_loss": 2.0}, None, 2.0),
])
def test_stories_bring_their_defaults_and_a_given_target_replaces_theirs(given, accuracy, loss):
    from scaling.config import WORKLOAD_DEFAULTS, make_config

    cfg = make_config({"dataset": "stories", **given})
    defaults = WORKLOAD_DEFAULTS["stories"]
    assert cfg.model == "gpt" and cfg.optimizer == "adamw" and cfg.global_bs == defaults["global_bs"]
    assert cfg.target_accuracy == accuracy
    assert cfg.target_loss == (defaults["target_loss"] if loss == "workload" else loss)
    # Elsewhere a loss target replaces the default accuracy target, and a key the user sets is theirs.
    assert make_config({"target_loss": 2.0}).target_accuracy is None
    assert make_config({"dataset": "stories", "model": "mlp"}).model == "mlp"
