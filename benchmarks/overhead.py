"""Samples/s of the tool's training loop against a bare PyTorch loop: same model, data, batch, machine.

    python benchmarks/overhead.py                          # batches 32 and 256, both data paths (~20 min)
    python benchmarks/overhead.py --batch-sizes 256 --paths memory --repeats 11 --pairs 60
    python benchmarks/overhead.py --ablate --batch-sizes 32 --paths memory --pairs 60 --repeats 2
    python benchmarks/overhead.py --paths gpt --batch-sizes 32,256 --repeats 5 --pairs 60   # the language model

Three data paths, each against the bare loop a person would write for it:
- `memory`: in-memory tensors; the tool's whole-batch fast path against a bare loop that indexes the
  tensors with a permutation;
- `map`: a plain map-style dataset (one item per `__getitem__`); the tool's DataLoader path
  (`--materialize false`) against a bare loop over `DataLoader(dataset, batch_size, shuffle=True)` with the
  same (zero) workers.
- `gpt`: the language-model workload (`--dataset stories --model gpt`: the tool's GPT, AdamW at the
  workload's LR, 1.6e-3 at batch 256 under the sqrt rule, in memory) against a nanoGPT-style loop over the
  same training tensors: randperm index, `logits = model(x)`, `F.cross_entropy(logits.flatten(0, 1),
  y.flatten())`, backward, step, zero_grad; its rates are in tokens/s (sequences/s x the context).
The first two train the default CNN on MNIST-1D with SGD+momentum. Two instruments:
- whole runs: the tool's `run()` counted as its training clock counts (all samples over `train_elapsed_s`,
  window boundaries and progress bar included; the one evaluation at the end and the noise-scale
  measurement off the clock, the latter's share printed as `noise off-clock`), with everything on by
  default (phase timing, noise scale, logging, progress bar), against the bare loops run right before and
  after it, `--repeats` such runs;
- in one process (`--pairs`): chunks of the tool's steps against chunks of bare steps on the same model,
  optimizer and data, alternating which goes first; the two halves of a pair are a fraction of a second
  apart, so the machine's drift cancels. `--ablate` runs it with each part of the loop off in turn: what
  each optional measurement costs.
Each instrument prints the median of its per-pair ratios (tool / bare), the median's 95% confidence
interval (distribution-free: scaling.stats.median_interval) and the min-max: the machine's noise. Whole runs
also print the tool's fastest run over the bare loop's fastest (`fastest/fastest`, the bare loops after
each tool run: as many of each): other tenants' work only ever slows a run down, so each loop's fastest run
is the nearest to its speed on a quiet machine (as `timeit` reports the minimum).

The tool's own output in whole runs (its lines, its progress bar: still drawn, still on the clock) goes to
`<output-dir>/runs.log`, so the tables stay readable. `--save FILE` writes every per-pair ratio as JSON, and
`--pool FILE...` prints the tables for the ratios of several saved passes together: on a shared machine
one pass of 20 whole runs cannot tell 0.95 from 1.0, the pooled runs of several passes can.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from scaling.config import WORKLOAD_DEFAULTS, RunConfig
from scaling.data.mnist1d import load_mnist1d
from scaling.lr import scaled_hyperparameters
from scaling.models import CNN1D, GPT, GPTConfig
from scaling.run import run
from scaling.stats import median_interval

PATHS = ("memory", "map", "gpt")


def tool_settings(path: str, batch_size: int) -> dict:
    """The RunConfig values of the tool's side of `path` at `batch_size` (besides the length and output folder).
    MNIST-1D: the bare loop's SGD at LR 0.1 (no scaling rule). gpt: the stories workload's own defaults
    (WORKLOAD_DEFAULTS, which a RunConfig built directly does not get), set here explicitly, without a target."""
    settings = {"global_bs": batch_size, "per_device_bs": batch_size, "target_accuracy": None, "max_epochs": None,
                "cpu": True, "overwrite": True}
    if path == "gpt":
        stories = WORKLOAD_DEFAULTS["stories"]
        return {**settings, "dataset": "stories", "model": "gpt", "optimizer": stories["optimizer"],
                "base_lr": stories["base_lr"], "base_bs": stories["base_bs"], "lr_scaling": "sqrt",
                "num_samples": stories["num_samples"], "target_loss": None}
    settings.update(base_lr=0.1, base_bs=batch_size, lr_scaling="none")
    if path == "map":
        settings.update(dataset=MAP_DATASET, materialize="false")
    return settings


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """nanoGPT's loss: the mean cross-entropy over every token of the batch."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def bare_setup(path: str, batch_size: int, train, seed: int = 0):
    """(model, optimizer, loss function) of the bare loop for `path`, built as a person writes them: the
    default CNN with SGD+momentum at LR 0.1, or the GPT sized for the stories tensors with AdamW at the LR,
    betas, eps and weight decay the tool's run uses at this batch."""
    torch.manual_seed(seed)
    if path != "gpt":
        model = CNN1D()
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), F.cross_entropy
    model = GPT(GPTConfig(vocab_size=train.vocab_size, context=train.context))
    used = scaled_hyperparameters(RunConfig(**tool_settings(path, batch_size)), batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=used.lr, betas=(used.beta1, used.beta2), eps=used.eps,
                                  weight_decay=used.weight_decay)
    return model, optimizer, next_token_loss


def bare_loop(train, batch_size: int, steps: int, seed: int = 0, path: str = "memory") -> float:
    """The loop a person writes by hand: randperm, index, forward, backward, step."""
    model, optimizer, loss_fn = bare_setup(path, batch_size, train, seed)
    per_epoch = len(train) // batch_size
    perm = torch.randperm(len(train))
    start = time.perf_counter()
    for step in range(steps):
        if step and step % per_epoch == 0:
            perm = torch.randperm(len(train))
        idx = perm[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]
        loss = loss_fn(model(train.inputs[idx]), train.labels[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - start)


class Stories:
    """The stories workload's training sequences, loaded as the tool loads them for `--dataset stories`
    (identical tensors), with the vocabulary the tool sizes its GPT for."""

    def __init__(self):
        from scaling.data import load_workload

        workload = load_workload(RunConfig(**tool_settings("gpt", 256), progress=False))
        self.inputs, self.labels = workload.train.inputs, workload.train.labels
        self.vocab_size = workload.num_classes
        self.context = self.inputs.shape[-1]

    def __len__(self) -> int:
        return len(self.labels)


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


def tool_loop(batch_size: int, steps: int, output_dir: str, path: str = "memory") -> tuple[float, float]:
    """(samples/s over the training clock, share of that time spent measuring the noise scale off it)."""
    cfg = RunConfig(**tool_settings(path, batch_size), max_steps=steps, eval_every=steps, output_dir=output_dir)
    result = run(cfg)
    # Same measure as the bare loop: all samples over the training clock (the one final evaluation is
    # excluded by the run's own clock).
    off_clock = (result["noise_scale"] or {}).get("measure_s", 0.0) / result["train_elapsed_s"]
    return result["steps"] * batch_size / result["train_elapsed_s"], off_clock


MAP_DATASET = f"{Path(__file__).resolve()}:map_style_data"
# --ablate: the in-process comparison with one part of the loop off at a time, then all of them.
ABLATIONS = {
    "everything on": {},
    "no window boundaries": {"log_every": 10**9, "log_min_s": 0.0},
    "no phase timing": {"time_phases": False},
    "no noise scale": {"noise_scale": False},
    "none of the three": {"log_every": 10**9, "log_min_s": 0.0, "time_phases": False, "noise_scale": False},
}


@contextlib.contextmanager
def output_to_log(output_dir: str):
    """The tool's own lines and progress bar (still drawn, still on its clock) into <output-dir>/runs.log."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(output_dir) / "runs.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield


def whole_runs(path: str, batch_size: int, steps: int, repeats: int, output_dir: str, train, items) -> dict:
    """`repeats` whole tool runs, each bracketed by bare loops (bare, tool, bare, tool, ..., bare): each tool
    run is compared with the geometric mean of the bare loops just before and after it, which cancels the
    machine's drift across the pair and puts every tool run in the same position (after a bare loop, before
    one). Returns the per-run ratios, both rates (samples/s) and the noise measurement's off-clock share."""

    def bare() -> float:
        return (bare_dataloader_loop(items, batch_size, steps) if path == "map"
                else bare_loop(train, batch_size, steps, path=path))

    rates: dict[str, list[float]] = {"bare": [bare()], "tool": [], "off_clock": []}
    for _ in range(repeats):
        with output_to_log(output_dir):
            rate, off_clock = tool_loop(batch_size, steps, output_dir, path)
        rates["tool"].append(rate)
        rates["off_clock"].append(off_clock)
        rates["bare"].append(bare())
    rates["ratio"] = [tool / math.sqrt(before * after)
                      for tool, before, after in zip(rates["tool"], rates["bare"], rates["bare"][1:], strict=False)]
    return rates


CHUNK_S = 0.2  # seconds of bare steps per in-process chunk
RUN_S = 4.0  # seconds of bare steps per whole run: long enough that a burst of the machine's other work averages out


def summary(ratios: list[float]) -> str:
    """median [95% CI of the median] min-max, as the tables print it."""
    interval = median_interval(ratios)
    shown = f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "(too few)"
    return f"{statistics.median(ratios):>9.3f} {shown:>13} {min(ratios):>5.2f}-{max(ratios):<5.2f}"


def bare_batches(path: str, batch_size: int, train, items):
    """The bare loop's batches, without end: a shuffling DataLoader over the map-style items, or the
    in-memory tensors indexed with a fresh permutation each epoch."""
    while True:
        if path == "map":
            yield from torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, drop_last=True)
        else:
            perm = torch.randperm(len(train))
            for start in range(0, len(train) - batch_size + 1, batch_size):
                idx = perm[start : start + batch_size]
                yield train.inputs[idx], train.labels[idx]


def bare_steps(model, optimizer, batches, steps: int, loss_fn=F.cross_entropy) -> None:
    """`steps` bare steps: forward, loss, backward, optimizer step, zero_grad."""
    for _ in range(steps):
        inputs, labels = next(batches)
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def tool_steps(trainer, steps: int) -> None:
    """`steps` of the tool's steps, its logging windows closed as `Trainer.run` closes them."""
    for _ in range(steps):
        trainer.train_step()
        if trainer.step % trainer.window_steps == 0:
            trainer.close_window()


def interleaved(path: str, batch_size: int, pairs: int, chunk: int, output_dir: str, train, items,
                **overrides) -> list[float]:
    """tool/bare ratios of `pairs` pairs of `chunk`-step chunks (0: about CHUNK_S of bare steps) in one process:
    the tool's Trainer, built as a run builds it (phase timing, noise scale, logging on), and the bare step on
    the same model, optimizer and data, alternating which goes first. A finer instrument than whole runs: the
    two halves of a pair are a fraction of a second apart, so the machine's drift cancels. It times the loop's
    steps as the training clock does (logging-window boundaries in, the noise measurement's off-clock time
    out), not the run's start-up around them, and without the progress bar. `overrides` switch parts of the
    loop off (ABLATIONS)."""
    from scaling.build import build

    cfg = RunConfig(**tool_settings(path, batch_size), max_steps=10**9, eval_every=10**9, output_dir=output_dir,
                    progress=False, **overrides)
    with output_to_log(output_dir):
        trainer = build(cfg).trainer
    trainer.source.start(0)
    model, optimizer = trainer.model, trainer.step_runner.inner
    loss_fn = next_token_loss if path == "gpt" else F.cross_entropy

    batches = bare_batches(path, batch_size, train, items)

    def bare(steps: int) -> float:
        with trainer.clock.paused():  # the run's clock (window lengths, throughput) sees only the tool's steps
            start = time.perf_counter()
            bare_steps(model, optimizer, batches, steps, loss_fn)
            return steps * batch_size / (time.perf_counter() - start)

    def tool(steps: int) -> float:
        off_clock = trainer.noise.measure_s if trainer.noise is not None else 0.0
        start = time.perf_counter()
        tool_steps(trainer, steps)
        elapsed = time.perf_counter() - start
        if trainer.noise is not None:
            elapsed -= trainer.noise.measure_s - off_clock
        return steps * batch_size / elapsed

    warm_up = 20
    bare(warm_up), tool(warm_up)
    if not chunk:  # steps of about CHUNK_S: long enough to time, short enough that the drift within a pair is small
        chunk = max(10, round(CHUNK_S * bare(warm_up) / batch_size))
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
    parser.add_argument("--paths", default="memory,map", help="memory, map, gpt (the language model), comma-separated")
    parser.add_argument("--steps", type=int, default=0,
                        help="optimizer steps per whole run (default: about 4 s of bare steps)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="whole tool runs, each between two bare loops (0: in one process only)")
    parser.add_argument("--output-dir", default="runs/bench-overhead")
    parser.add_argument("--pairs", type=int, default=100,
                        help="pairs of chunks for the in-process comparison (0: whole runs only)")
    parser.add_argument("--chunk-steps", type=int, default=0,
                        help=f"optimizer steps per chunk (default: about {CHUNK_S} s of bare steps)")
    parser.add_argument("--ablate", action="store_true",
                        help="the in-process comparison with each part of the loop off in turn (no whole runs)")
    parser.add_argument("--save", metavar="FILE", help="write every per-pair ratio of this pass to FILE (JSON)")
    parser.add_argument("--pool", nargs="+", metavar="FILE",
                        help="print the tables for the ratios of saved passes together (runs nothing)")
    args = parser.parse_args()
    if args.pool:
        passes = []
        for file in args.pool:
            try:
                one = json.loads(Path(file).read_text())
                cases = [case for key in ("whole_runs", "in_process") for case in one[key]]
                if not all(isinstance(case["ratio"], list) and {"path", "batch"} <= case.keys() for case in cases):
                    raise ValueError("a case without its path, batch and ratios")
            except (OSError, ValueError, KeyError, TypeError) as err:
                parser.error(f"--pool: {file} is not a pass saved by --save ({type(err).__name__}: {err})")
            passes.append(one)
        pool(passes)
        return

    paths = args.paths.split(",")
    if unknown := [path for path in paths if path not in PATHS]:
        parser.error(f"--paths: {unknown[0]!r} is none of {', '.join(PATHS)}")
    cases = [(path, int(batch)) for path in paths for batch in args.batch_sizes.split(",")]
    data, described = {}, []  # each path's training data: MNIST-1D (and its items), the stories sequences
    if {"memory", "map"} & set(paths):
        train, _ = load_mnist1d(RunConfig().num_samples)
        data.update(memory=(train, None), map=(train, Items(train)))
        described.append(f"default CNN on MNIST-1D ({len(train)} training samples)")
    if "gpt" in paths:
        stories = Stories()
        data["gpt"] = (stories, None)
        described.append(f"GPT on stories ({len(stories)} training sequences of {stories.context} tokens, "
                         f"AdamW; its rates in tokens/s)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {'; '.join(described)}; "
          f"tool / bare: median [its 95% confidence interval] min-max")
    if args.ablate:
        ablate(args, cases, data)
        return
    saved: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                   "whole_runs": [], "in_process": []}
    if args.repeats:
        print(f"\nWhole runs: {args.repeats} tool runs, each against the bare loops before and after it; the tool over "
              f"its training clock (its own output: {Path(args.output_dir) / 'runs.log'})")
        if "gpt" in paths:
            print("(bare/s and tool/s: samples/s; for gpt tokens/s, sequences/s x "
                  f"{data['gpt'][0].context} tokens)")
        print(f"{'path':>6} {'batch':>6} {'steps':>6} {'bare/s':>9} {'tool/s':>9} {'tool/bare':>9} {'95% CI':>13} {'min-max':>11} "
              f"{'fastest/fastest':>16} {'noise off-clock':>16}")
        for path, batch_size in cases:
            train, items = data[path]
            warm_up = bare_loop(train, batch_size, 50, path=path)  # also the allocator's and thread pool's warm-up
            steps = args.steps or max(100, round(RUN_S * warm_up / batch_size))
            rates = whole_runs(path, batch_size, steps, args.repeats, args.output_dir, train, items)
            unit = {"unit": "samples/s"}
            if path == "gpt":  # tokens/s: every sequence holds `context` target tokens (no padding)
                unit = {"unit": "tokens/s"}
                for key in ("bare", "tool"):
                    rates[key] = [rate * train.context for rate in rates[key]]
            print(f"{path:>6} {batch_size:>6} {steps:>6} {statistics.median(rates['bare']):>9,.0f} "
                  f"{statistics.median(rates['tool']):>9,.0f} {summary(rates['ratio'])} "
                  f"{max(rates['tool']) / max(rates['bare'][1:]):>16.3f} {statistics.median(rates['off_clock']):>16.1%}",
                  flush=True)
            saved["whole_runs"].append({"path": path, "batch": batch_size, "steps": steps, **rates, **unit})
            save(args.save, saved)
    if args.pairs:
        print(f"\nIn one process: {args.pairs} pairs of chunks of the tool's steps and bare steps on the same model")
        print(f"{'path':>6} {'batch':>6} {'tool/bare':>9} {'95% CI':>13} {'min-max':>11}")
        for path, batch_size in cases:
            ratios = interleaved(path, batch_size, args.pairs, args.chunk_steps, args.output_dir, *data[path])
            print(f"{path:>6} {batch_size:>6} {summary(ratios)}", flush=True)
            saved["in_process"].append({"path": path, "batch": batch_size, "ratio": ratios})
            save(args.save, saved)


def save(file: str | None, saved: dict) -> None:
    """Write the pass so far (after each case: an interrupted pass keeps what it measured)."""
    if file:
        Path(file).write_text(json.dumps(saved, indent=1) + "\n")


def pool(passes: list[dict]) -> None:
    """Each case's per-pair ratios from all the saved passes together, with each pass's median beside them."""
    print(f"{len(passes)} saved passes, started " + ", ".join(one.get("started", "?") for one in passes))
    for key, title in (("whole_runs", "Whole runs"), ("in_process", "In one process")):
        cases: dict[tuple[str, int], list[list[float]]] = {}
        for one in passes:
            for case in one[key]:
                cases.setdefault((case["path"], case["batch"]), []).append(case["ratio"])
        if not cases:
            continue
        print(f"\n{title}, pooled")
        print(f"{'path':>6} {'batch':>6} {'pairs':>6} {'tool/bare':>9} {'95% CI':>13} {'min-max':>11}  per pass")
        for (path, batch_size), per_pass in cases.items():
            pooled = [ratio for one in per_pass for ratio in one]
            print(f"{path:>6} {batch_size:>6} {len(pooled):>6} {summary(pooled)}  "
                  + " ".join(f"{statistics.median(one):.3f}" for one in per_pass))


def ablate(args, cases, data: dict) -> None:
    """What each part of the loop costs, in one process: `--pairs` pairs per variant, the variants in turn,
    the whole sequence `--repeats` times (the drift between variants falls on all of them); each variant's
    pairs pooled over the passes."""
    print(f"\nIn one process, with parts of the loop off: {args.pairs} pairs per variant and pass, "
          f"{args.repeats} passes")
    print(f"{'path':>6} {'batch':>6}  {'':<22} {'tool/bare':>9} {'95% CI':>13} {'min-max':>11}  per pass")
    for path, batch_size in cases:
        ratios: dict[str, list[list[float]]] = {name: [] for name in ABLATIONS}
        for _ in range(max(1, args.repeats)):
            for name, overrides in ABLATIONS.items():
                ratios[name].append(interleaved(path, batch_size, args.pairs, args.chunk_steps, args.output_dir,
                                                *data[path], **overrides))
        for name, passes in ratios.items():
            pooled = [ratio for one in passes for ratio in one]
            print(f"{path:>6} {batch_size:>6}  {name:<22} {summary(pooled)}  "
                  + " ".join(f"{statistics.median(one):.3f}" for one in passes), flush=True)


if __name__ == "__main__":
    main()
