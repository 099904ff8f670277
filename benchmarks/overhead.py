"""Samples/s of the tool's training loop against a bare PyTorch loop: same model, data, batch, machine.

    python benchmarks/overhead.py                          # batches 32 and 256, both data paths
    python benchmarks/overhead.py --batch-sizes 256 --paths memory --steps 400 --repeats 7
    python benchmarks/overhead.py --ablate --batch-sizes 32 --paths memory --pairs 30 --repeats 2

Two data paths, each against the bare loop a person would write for it:
- `memory`: in-memory tensors; the tool's whole-batch fast path against a bare loop that indexes the
  tensors with a permutation;
- `map`: a plain map-style dataset (one item per `__getitem__`); the tool's DataLoader path
  (`--materialize false`) against a bare loop over `DataLoader(dataset, batch_size, shuffle=True)` with the
  same (zero) workers.
Both train the default CNN on MNIST-1D with SGD+momentum for the same number of optimizer steps. The tool
is counted as its training clock counts (all samples over `train_elapsed_s`, window boundaries included;
evaluation only at the end and excluded), with everything on by default (phase timing, noise scale,
logging, progress bar). The noise-scale measurement runs off the training clock (docs/clock.md); its time is
printed as a share of the training time (`noise off-clock`). The tool is also run with phase timing off and
with the noise scale off, to list what each optional measurement costs on the clock. The loops run in turn,
in an order rotated every repeat; each repeat's ratio is taken between runs minutes apart at most, and the
median over repeats is printed, with the min–max as the machine's noise. Then (`--pairs`) the same loops
compared in one process, in alternating chunks a fraction of a second apart (`interleaved`), which the
machine's drift cannot swamp; `--ablate` runs that comparison with each part of the loop off in turn.
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


class Items(torch.utils.data.Dataset):
    """A plain map-style dataset: one (input, label) item per call, as most user datasets are."""

    def __init__(self, pair):
        self.inputs, self.labels = pair.inputs, pair.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.inputs[index], int(self.labels[index])


def map_style_data():
    """`--dataset benchmarks/overhead.py:map_style_data`: MNIST-1D as map-style datasets."""
    train, test = load_mnist1d(RunConfig().num_samples)
    return Items(train), Items(test)


def bare_dataloader_loop(dataset, batch_size: int, steps: int, seed: int = 0) -> float:
    """The loop a person writes over a map-style dataset: a shuffling DataLoader, forward, backward, step."""
    torch.manual_seed(seed)
    model = CNN1D()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    done, start = 0, time.perf_counter()
    while done < steps:
        for inputs, labels in loader:
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return steps * batch_size / (time.perf_counter() - start)


def tool_loop(batch_size: int, steps: int, output_dir: str, **overrides) -> tuple[float, float]:
    """(samples/s over the training clock, share of that time spent measuring the noise scale off it)."""
    cfg = RunConfig(
        global_bs=batch_size, base_lr=0.1, base_bs=batch_size, lr_scaling="none", target_accuracy=None,
        max_steps=steps, max_epochs=None, eval_every=steps, cpu=True, output_dir=output_dir, overwrite=True,
        **overrides,
    )
    result = run(cfg)
    # Same measure as the bare loop: all samples over the training clock (the one final evaluation is
    # excluded by the run's own clock).
    off_clock = (result["noise_scale"] or {}).get("measure_s", 0.0) / result["train_elapsed_s"]
    return result["steps"] * batch_size / result["train_elapsed_s"], off_clock


VARIANTS = {
    "tool": {},  # defaults: phase timing, noise scale, logging and progress bar on
    "no_timing": {"time_phases": False},
    "no_noise": {"noise_scale": False},
}
MAP_DATASET = f"{Path(__file__).resolve()}:map_style_data"
# --ablate: the in-process comparison with one part of the loop off at a time, then all of them.
ABLATIONS = {
    "everything on": {},
    "no window boundaries": {"log_every": 10**9, "log_min_s": 0.0},
    "no phase timing": {"time_phases": False},
    "no noise scale": {"noise_scale": False},
    "none of the three": {"log_every": 10**9, "log_min_s": 0.0, "time_phases": False, "noise_scale": False},
}


def measure(path: str, batch_size: int, steps: int, repeats: int, output_dir: str, train, items) -> dict:
    """Rates of the bare loop and each tool variant, `repeats` times in rotated order."""
    extra = {"per_device_bs": batch_size}
    if path == "map":
        extra.update(dataset=MAP_DATASET, materialize="false")
    rates: dict[str, list[float]] = {"bare": [], **{name: [] for name in VARIANTS}, "off_clock": []}
    order = ["bare", *VARIANTS]
    for repeat in range(repeats):
        # Rotate the order each repeat: whichever loop runs first after another is systematically slower
        # here (allocator and cache state), which a fixed order would charge to one variant.
        for name in order[repeat % len(order):] + order[: repeat % len(order)]:
            if name == "bare":
                rate = (bare_loop(train, batch_size, steps) if path == "memory"
                        else bare_dataloader_loop(items, batch_size, steps))
            else:
                rate, off_clock = tool_loop(batch_size, steps, output_dir, **extra, **VARIANTS[name])
                if name == "tool":
                    rates["off_clock"].append(off_clock)
            rates[name].append(rate)
    return rates


def interleaved(path: str, batch_size: int, pairs: int, chunk: int, output_dir: str, train, items,
                **overrides) -> list[float]:
    """tool/bare ratios of `pairs` pairs of `chunk`-step chunks in one process: the tool's Trainer, built as a
    run builds it (phase timing, noise scale, logging on), and the bare step on the same model, optimizer and
    data, alternating which goes first. A finer instrument than whole runs: the two halves of a pair are a
    fraction of a second apart, so the machine's drift cancels. It times the loop's steps as the training
    clock does (logging-window boundaries in, the noise measurement's off-clock time out), not the run's
    start-up around them, and without the progress bar. `overrides` switch parts of the loop off (ABLATIONS)."""
    from scaling.run import build

    extra = {"dataset": MAP_DATASET, "materialize": "false"} if path == "map" else {}
    cfg = RunConfig(global_bs=batch_size, per_device_bs=batch_size, base_lr=0.1, base_bs=batch_size,
                    lr_scaling="none", target_accuracy=None, max_steps=10**9, max_epochs=None, eval_every=10**9,
                    cpu=True, output_dir=output_dir, overwrite=True, progress=False, **extra, **overrides)
    trainer = build(cfg).trainer
    trainer.source.start(0)
    model, optimizer = trainer.model, trainer.step_runner.inner

    def bare_batches():
        while True:
            if path == "map":
                yield from torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, drop_last=True)
            else:
                perm = torch.randperm(len(train))
                for start in range(0, len(train) - batch_size + 1, batch_size):
                    idx = perm[start : start + batch_size]
                    yield train.inputs[idx], train.labels[idx]

    batches = bare_batches()

    def bare(steps: int) -> float:
        with trainer.clock.paused():  # the run's clock (window lengths, throughput) sees only the tool's steps
            start = time.perf_counter()
            for _ in range(steps):
                inputs, labels = next(batches)
                loss = F.cross_entropy(model(inputs), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return steps * batch_size / (time.perf_counter() - start)

    def tool(steps: int) -> float:
        off_clock = trainer.noise.measure_s if trainer.noise is not None else 0.0
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
            if trainer.step % trainer.window_steps == 0:  # as Trainer.run closes windows
                trainer.close_window()
        elapsed = time.perf_counter() - start
        if trainer.noise is not None:
            elapsed -= trainer.noise.measure_s - off_clock
        return steps * batch_size / elapsed

    bare(chunk), tool(chunk)  # warm-up
    ratios = []
    for pair in range(pairs):
        if pair % 2:
            tool_rate, bare_rate = tool(chunk), bare(chunk)
        else:
            bare_rate, tool_rate = bare(chunk), tool(chunk)
        ratios.append(tool_rate / bare_rate)
    trainer.metrics.close()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--paths", default="memory,map", help="memory, map or both")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per timing (default: ~2 s of work)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", default="runs/bench-overhead")
    parser.add_argument("--pairs", type=int, default=40,
                        help="pairs of chunks for the in-process comparison (0: whole runs only)")
    parser.add_argument("--chunk-steps", type=int, default=100, help="optimizer steps per chunk")
    parser.add_argument("--no-runs", action="store_true", help="the in-process comparison only")
    parser.add_argument("--ablate", action="store_true",
                        help="the in-process comparison with each part of the loop off in turn (no whole runs)")
    args = parser.parse_args()

    train, _ = load_mnist1d(RunConfig().num_samples)
    items = Items(train)
    if args.ablate:
        ablate(args, train, items)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default CNN on MNIST-1D "
          f"({len(train)} training samples); medians of {args.repeats} alternating runs; tool counted over its "
          f"training clock")
    print(f"{'path':>6} {'batch':>6} {'steps':>6} {'bare/s':>9} {'tool/s':>9} {'tool/bare':>9} {'min-max':>11} "
          f"{'timing cost':>12} {'noise cost':>11} {'noise off-clock':>16}")
    for path in args.paths.split(",") if not args.no_runs else []:
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            steps = args.steps or max(100, int(400_000 / batch_size))
            bare_loop(train, batch_size, min(steps, 20))  # warm-up: allocator, thread pool
            rates = measure(path, batch_size, steps, args.repeats, args.output_dir, train, items)
            median = {name: statistics.median(values) for name, values in rates.items()}
            # Each repeat's variants against that repeat's bare loop (the machine's load drifts between
            # repeats more than within one), then the median over repeats.
            ratio = {name: [rate / bare for rate, bare in zip(rates[name], rates["bare"], strict=True)]
                     for name in VARIANTS}
            tool = statistics.median(ratio["tool"])
            # Cost of a feature on the clock: throughput without it over throughput with everything on, minus 1.
            timing_cost = statistics.median(ratio["no_timing"]) / tool - 1
            noise_cost = statistics.median(ratio["no_noise"]) / tool - 1
            print(f"{path:>6} {batch_size:>6} {steps:>6} {median['bare']:>9,.0f} {median['tool']:>9,.0f} "
                  f"{tool:>9.3f} {min(ratio['tool']):>5.2f}-{max(ratio['tool']):<5.2f} "
                  f"{timing_cost:>+12.1%} {noise_cost:>+11.1%} {median['off_clock']:>16.1%}", flush=True)
    if args.pairs:
        print(f"\nIn one process, the tool's steps against bare steps on the same model: median of {args.pairs} "
              f"pairs of {args.chunk_steps}-step chunks")
        print(f"{'path':>6} {'batch':>6} {'tool/bare':>9} {'min-max':>11}")
        for path in args.paths.split(","):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                ratios = interleaved(path, batch_size, args.pairs, args.chunk_steps, args.output_dir, train, items)
                print(f"{path:>6} {batch_size:>6} {statistics.median(ratios):>9.3f} "
                      f"{min(ratios):>5.2f}-{max(ratios):<5.2f}", flush=True)


def ablate(args, train, items) -> None:
    """What each part of the loop costs, in one process: `--pairs` pairs per variant, the variants in turn,
    the whole sequence `--repeats` times (the drift between variants falls on all of them)."""
    print(f"In one process, tool / bare with parts of the loop off: median of {args.pairs} pairs of "
          f"{args.chunk_steps}-step chunks, each of {args.repeats} passes")
    for path in args.paths.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            ratios: dict[str, list[float]] = {name: [] for name in ABLATIONS}
            for _ in range(args.repeats):
                for name, overrides in ABLATIONS.items():
                    ratios[name].append(statistics.median(interleaved(
                        path, batch_size, args.pairs, args.chunk_steps, args.output_dir, train, items, **overrides)))
            for name, values in ratios.items():
                print(f"{path:>6} {batch_size:>6}  {name:<22} " + " ".join(f"{v:.3f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
