"""What each part of the tool's training step costs, in microseconds, on a model too small to hide it.

    python benchmarks/step_cost.py                  # a 40->10 linear model at batch 32
    python benchmarks/step_cost.py --model cnn1d    # the default CNN

The tool's step is built up from a bare step one part at a time, on the same model, optimizer and data, in
one process; each variant runs `--steps` steps in turn (the order reversed every round), `--rounds` rounds.
Each line prints the variant's median time per step and its median extra time over the bare step of the same
round, with the 95% confidence interval of that median (scaling.stats.median_interval):
- `bare`: index a whole batch with a permutation, forward, cross-entropy, backward, step, zero_grad;
- `+ batch generator`: the batch from `BatchSource.micro_batches` (the in-memory fast path);
- `+ step runner`: `StepRunner` (the micro-step loop, the loss kept for the logging window);
- `+ phase marks`: the same with the phase timer on;
- `Trainer.train_step`: the whole step with everything on (the LR set, the noise-scale bookkeeping; its
  measurements run off the training clock and are taken out here as there), the logging-window boundaries
  included as `Trainer.run` closes them (each boundary's time is printed after the table).
Then what one redraw of the run's progress bar costs (tqdm, to stderr), which `Trainer.run` does at most every
`PROGRESS_REFRESH_S`.
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
from tqdm.auto import tqdm

from scaling.build import build
from scaling.config import RunConfig
from scaling.stats import median_interval
from scaling.train.loop import PROGRESS_REFRESH_S


def linear() -> torch.nn.Module:
    """`--model benchmarks/step_cost.py:linear`: 40 inputs to 10 classes, 410 parameters."""
    return torch.nn.Linear(40, 10)


def variants(trainer, batch_size: int, boundaries: list) -> dict:
    """name -> function running n steps; returns the seconds to leave out (the noise measurements'). The
    whole step's variant appends (seconds, steps per window) of each window boundary to `boundaries`."""
    source, runner, model, optimizer = trainer.source, trainer.step_runner, trainer.model, trainer.step_runner.inner
    data = source._tensors
    step = [0]

    def indices():
        while True:
            permutation = torch.randperm(len(data))
            for start in range(0, len(data) - batch_size + 1, batch_size):
                yield permutation[start : start + batch_size]

    next_indices = indices()

    def bare(n: int) -> float:
        for _ in range(n):
            batch = next(next_indices)
            loss = F.cross_entropy(model(data.inputs[batch]), data.labels[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return 0.0

    def generator(n: int) -> float:
        for _ in range(n):
            for inputs, labels in source.micro_batches(step[0]):
                loss = F.cross_entropy(model(inputs), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step[0] += 1
        return 0.0

    def step_runner(n: int, timer=None) -> float:
        for _ in range(n):
            runner(source.micro_batches(step[0]), timer)
            step[0] += 1
        return 0.0

    def train_step(n: int) -> float:
        off_clock = trainer.noise.measure_s if trainer.noise is not None else 0.0
        for _ in range(n):
            trainer.train_step()
            if trainer.step % trainer.window_steps == 0:  # as Trainer.run closes windows
                start = time.perf_counter()
                trainer.close_window()
                boundaries.append((time.perf_counter() - start, trainer.window_steps))
        return trainer.noise.measure_s - off_clock if trainer.noise is not None else 0.0

    return {"bare": bare, "+ batch generator": generator, "+ step runner": step_runner,
            "+ phase marks": lambda n: step_runner(n, trainer.timer), "Trainer.train_step": train_step}


def progress_redraw_s(redraws: int = 20) -> float:
    """Seconds per redraw of a bar set up as the run's, the redraws 50 ms apart as a run's windows are."""
    bar = tqdm(total=10**6, unit="step", dynamic_ncols=True, leave=False)
    spent = 0.0
    for _ in range(redraws):
        time.sleep(0.05)
        start = time.perf_counter()
        bar.n += 100
        bar.refresh()
        spent += time.perf_counter() - start
    bar.close()
    return spent / redraws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=f"{Path(__file__).resolve()}:linear")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--log-min-s", type=float, default=RunConfig.log_min_s)
    parser.add_argument("--output-dir", default="runs/bench-step-cost")
    args = parser.parse_args()
    cfg = RunConfig(global_bs=args.batch_size, per_device_bs=args.batch_size, base_lr=0.1, base_bs=args.batch_size,
                    lr_scaling="none", target_accuracy=None, max_steps=10**9, max_epochs=None, eval_every=10**9,
                    cpu=True, output_dir=args.output_dir, overwrite=True, progress=False, model=args.model,
                    log_min_s=args.log_min_s)
    trainer = build(cfg).trainer
    trainer.source.start(0)
    boundaries: list[tuple[float, int]] = []
    steps = variants(trainer, args.batch_size, boundaries)
    for run in steps.values():
        run(20)  # warm-up
    per_step: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name in list(steps)[:: 1 if round_index % 2 == 0 else -1]:
            start = time.perf_counter()
            off_clock = steps[name](args.steps)
            per_step[name].append((time.perf_counter() - start - off_clock) / args.steps * 1e6)
    trainer.metrics.close()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model.rsplit(':', 1)[-1]} at batch "
          f"{args.batch_size}; {args.rounds} rounds of {args.steps} steps per variant")
    print(f"{'variant':<20} {'us/step':>8} {'extra over bare':>16} {'95% CI':>15}")
    for name, times in per_step.items():
        extra = [t - bare for t, bare in zip(times, per_step["bare"], strict=True)]
        interval = median_interval(extra)
        shown = f"{interval[0]:+.1f}..{interval[1]:+.1f}" if interval else ""
        print(f"{name:<20} {statistics.median(times):>8.1f} {statistics.median(extra):>+16.1f} {shown:>15}")
    boundaries = boundaries[2:]  # the warm-up's and the first timed boundary set the windows' length
    if boundaries:
        each = statistics.median(seconds for seconds, _ in boundaries)
        print(f"\nlogging-window boundaries (included above): {len(boundaries)}, {each * 1e6:,.0f} us each, windows "
              f"of {boundaries[-1][1]} steps (--log-min-s {trainer.cfg.log_min_s}): "
              f"{each / boundaries[-1][1] * 1e6:.1f} us per step")
    redraw = progress_redraw_s()
    print(f"\nprogress bar: {redraw * 1e6:,.0f} us per redraw, at most one per {PROGRESS_REFRESH_S} s: "
          f"{redraw / PROGRESS_REFRESH_S:.2%} of the clock at most (tqdm's default 0.1 s: {redraw / 0.1:.2%})")


if __name__ == "__main__":
    main()
