"""Samples/s of the tool's training loop against a bare PyTorch loop: same model, data, batch, machine.

    python benchmarks/overhead.py                 # batch sizes 32, 256, 4096
    python benchmarks/overhead.py --batch-sizes 256 --steps 400 --repeats 5

It also runs the tool with phase timing off and with the noise-scale measurement off, and prints what each
costs (the issue targets: timing <= 2%, noise scale <= 3% of throughput).

Both loops train the default CNN on the default MNIST-1D tensors with SGD+momentum for the same number of
optimizer steps; each is timed from its first batch to its last step (evaluation disabled in the tool run:
only the training loop is compared). The loops are run in turn, in an order rotated every repeat, `repeats`
times, and the medians compared, so a slow moment of a shared machine hits all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from scaling.config import RunConfig
from scaling.data.mnist1d import load_mnist1d
from scaling.models import CNN1D
from scaling.run import run


def bare_loop(train, batch_size: int, steps: int, seed: int = 0) -> float:
    """The loop a person writes by hand: randperm, index, forward, backward, step."""
    torch.manual_seed(seed)
    model = CNN1D()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per_epoch = len(train) // batch_size
    perm = torch.randperm(len(train))
    start = time.perf_counter()
    for step in range(steps):
        if step and step % per_epoch == 0:
            perm = torch.randperm(len(train))
        idx = perm[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]
        loss = F.cross_entropy(model(train.inputs[idx]), train.labels[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - start)


def tool_loop(batch_size: int, steps: int, output_dir: str, **overrides) -> float:
    cfg = RunConfig(
        global_bs=batch_size, base_lr=0.1, base_bs=batch_size, lr_scaling="none", target_accuracy=None,
        max_steps=steps, max_epochs=None, eval_every=steps, cpu=True, progress=False, output_dir=output_dir,
        **overrides,
    )
    result = run(cfg)
    # Same measure as the bare loop: all samples over the training clock (the one final evaluation is
    # excluded by the run's own clock).
    return result["steps"] * batch_size / result["train_elapsed_s"]


VARIANTS = {
    "tool": {},  # defaults: phase timing and noise-scale measurement on
    "no_timing": {"time_phases": False},
    "no_noise": {"noise_scale": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,256,4096")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per timing (default: ~2 s of work)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", default="runs/bench-overhead")
    args = parser.parse_args()

    train, _ = load_mnist1d(RunConfig().num_samples)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default CNN on MNIST-1D "
          f"({len(train)} training samples); medians of {args.repeats} alternating runs")
    print(f"{'batch':>6} {'steps':>6} {'bare/s':>10} {'tool/s':>10} {'tool/bare':>10} "
          f"{'timing cost':>12} {'noise cost':>11}")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        steps = args.steps or max(100, int(400_000 / batch_size))
        bare_loop(train, batch_size, min(steps, 20))  # warm-up: allocator, thread pool
        rates: dict[str, list[float]] = {"bare": [], **{name: [] for name in VARIANTS}}
        order = ["bare", *VARIANTS]
        for repeat in range(args.repeats):
            # Rotate the order each repeat: whichever loop runs first after another is systematically
            # slower here (allocator and cache state), which a fixed order would charge to one variant.
            for name in order[repeat % len(order):] + order[: repeat % len(order)]:
                if name == "bare":
                    rates[name].append(bare_loop(train, batch_size, steps))
                else:
                    rates[name].append(tool_loop(batch_size, steps, args.output_dir, per_device_bs=batch_size,
                                                 **VARIANTS[name]))
        median = {name: statistics.median(values) for name, values in rates.items()}
        # Cost of a feature: throughput without it over throughput with everything on, minus 1.
        timing_cost = median["no_timing"] / median["tool"] - 1
        noise_cost = median["no_noise"] / median["tool"] - 1
        print(f"{batch_size:>6} {steps:>6} {median['bare']:>10,.0f} {median['tool']:>10,.0f} "
              f"{median['tool'] / median['bare']:>10.3f} {timing_cost:>+12.1%} {noise_cost:>+11.1%}")


if __name__ == "__main__":
    main()
