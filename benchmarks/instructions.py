"""Instructions per training step of the tool's loop against the bare loop, counted by valgrind's callgrind.

    python benchmarks/instructions.py                  # batches 32 and 256, both data paths (~40 min)
    python benchmarks/instructions.py --paths map --batch-sizes 32

benchmarks/overhead.py times the tool's loop against a bare loop in seconds, on a machine whose other
tenants move a run's speed by 5-30%: a 1% difference takes hundreds of pairs to resolve. This counts the
work instead: the instructions each loop executes per optimizer step, which are the same whatever else the
machine is doing (two passes of the bare loop: 0.1% apart; the tool's count moved by up to 0.3% between
passes at W = 100, in the allocator and the interpreter: the heap's state, when the garbage collector runs).
It counts what the training clock counts:
- the same steps as overhead.py's in-process comparison: the tool's `Trainer.train_step` with its logging
  windows closed as `Trainer.run` closes them (everything on: phase timing, noise scale, logging), against
  the bare step (forward, backward, SGD step, zero_grad) on the same model, optimizer and data; the batches
  from the same data paths (`memory`: in-memory tensors; `map`: a plain map-style dataset, the tool's
  DataLoader path against a bare shuffling DataLoader);
- a whole logging window: each loop runs 20 steps of warm-up (not counted), then W steps are counted, W
  being what the tool's `--log-min-s 0.5` chooses at this batch here (from the bare step's time, measured
  first); the tool is given windows of exactly W steps, so the counted steps hold one window boundary;
- the noise-scale measurement's instructions are left out, as the clock leaves its time out: collection is
  switched off inside the measurement's off-clock region.
Both loops run in a child process under `valgrind --tool=callgrind`, which switches counting on and off
through callgrind's client requests (a small C helper built with the machine's C compiler against
valgrind's headers); one intra-op thread (`OMP_NUM_THREADS=1`: idle OpenMP threads spin for a time that
depends on scheduling) and a fixed hash seed. Under valgrind the CPU reports no AVX-512, so oneDNN runs its
AVX2 kernels: the compute's count is that of an AVX2 machine, the same for both loops.

The table gives each loop's instructions per step and `bare/tool`: the throughput ratio the tool would have
if time were proportional to work. Time is not exactly proportional to instructions (cache misses,
branches, the interpreter's and the kernels' different instructions per cycle), so this bounds what the
tool's extra work costs rather than replacing the timed ratio: a ratio of timed runs well below this one
points at the machine (or at memory effects), not at work the tool does.

`--cache-sim` adds callgrind's simulation of the caches and the branch predictor (a model of this CPU's
cache sizes, not its hardware counters): misses and mispredicted branches per step, and kcachegrind's cycle
estimate Ir + 10 x (L1 misses + mispredicts) + 100 x last-level misses. `--no-noise-scale` counts the tool's
step with the noise scale off (against the default: what it costs in work). `--keep DIR` keeps callgrind's
files, for `callgrind_annotate` per function.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

HELPER_C = """
#include <valgrind/valgrind.h>
#include <valgrind/callgrind.h>
int cg_running(void) { return RUNNING_ON_VALGRIND; }
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void cg_stop(void) { CALLGRIND_DUMP_STATS_AT("steps"); CALLGRIND_STOP_INSTRUMENTATION; }
"""
WARM_UP = 20  # steps before counting starts (the tool's first window boundary comes later, at step W)


class BenchmarkError(Exception):
    """What this machine lacks to count instructions: one line for the user."""


def build_helper(directory: Path) -> Path:
    """Compile the client-request helper into `directory`; a clear error when valgrind or a compiler is missing."""
    if shutil.which("valgrind") is None:
        raise BenchmarkError("valgrind is not installed (it counts the instructions): apt-get install valgrind")
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise BenchmarkError("no C compiler (cc or gcc) to build the callgrind helper")
    source, library = directory / "cg_helper.c", directory / "cg_helper.so"
    source.write_text(HELPER_C)
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
        raise BenchmarkError(f"could not build the callgrind helper (valgrind's headers missing?): {first}")
    return library


def window_steps(step_s: float) -> int:
    """The window length a run chooses for this step time with the default --log-every and --log-min-s."""
    from scaling.config import RunConfig
    from scaling.train.loop import steps_per_window

    defaults = RunConfig()
    return steps_per_window(defaults.log_every, defaults.log_min_s, step_s)


# ---- the child: one loop, counted ----

def child(loop: str, path: str, batch_size: int, window: int, output_dir: str, helper: str,
          noise_scale: bool = True) -> None:
    import torch
    from overhead import MAP_DATASET, Items, bare_batches, bare_steps, output_to_log, tool_steps

    from scaling.build import build
    from scaling.config import RunConfig
    from scaling.data.mnist1d import load_mnist1d

    cg = ctypes.CDLL(helper)
    if not cg.cg_running():
        raise BenchmarkError("--child must run under valgrind --tool=callgrind")
    train, _ = load_mnist1d(RunConfig().num_samples)
    extra = {"dataset": MAP_DATASET, "materialize": "false"} if path == "map" else {}
    cfg = RunConfig(global_bs=batch_size, per_device_bs=batch_size, base_lr=0.1, base_bs=batch_size,
                    lr_scaling="none", target_accuracy=None, max_steps=10**9, max_epochs=None, eval_every=10**9,
                    cpu=True, output_dir=output_dir, overwrite=True, progress=False, log_every=window,
                    log_min_s=0.0, noise_scale=noise_scale, **extra)
    with output_to_log(output_dir):
        trainer = build(cfg).trainer
    trainer.source.start(0)
    model, optimizer = trainer.model, trainer.step_runner.inner
    if trainer.noise is not None:  # the measurement's off-clock region is not counted either
        off_clock = trainer.noise._off_clock

        @contextlib.contextmanager
        def uncounted():
            cg.cg_toggle()
            with off_clock():
                yield
            cg.cg_toggle()

        trainer.noise._off_clock = uncounted

    torch.manual_seed(0)
    batches = bare_batches(path, batch_size, train, Items(train))
    run_steps = (lambda steps: bare_steps(model, optimizer, batches, steps)) if loop == "bare" else \
        (lambda steps: tool_steps(trainer, steps))
    run_steps(WARM_UP)
    cg.cg_start()
    run_steps(window)  # any `window` consecutive steps hold one window boundary
    cg.cg_stop()
    trainer.metrics.close()


# ---- the parent ----

CACHE_SIM = ["--cache-sim=yes", "--branch-sim=yes"]


def count(loop: str, path: str, batch_size: int, window: int, work: Path, helper: Path,
          cache_sim: bool = False, noise_scale: bool = True) -> dict[str, int]:
    """callgrind's event totals (Ir, the instructions; with `cache_sim` also the simulated cache misses and
    mispredicted branches) over the loop's `window` counted steps (one child under callgrind)."""
    name = f"{loop}-{path}-{batch_size}"
    out = work / f"callgrind.{name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    for old in work.glob(f"callgrind.{name}*"):  # a kept directory's files of an earlier pass
        old.unlink()
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         *(CACHE_SIM if cache_sim else []), sys.executable, str(Path(__file__).resolve()),
         "--child", loop, path, str(batch_size), str(window), str(work / name), str(helper),
         *([] if noise_scale else ["--no-noise-scale"])],
        capture_output=True, text=True, env=env)
    dumps = [file for file in work.glob(f"callgrind.{name}*") if "Client Request: steps" in file.read_text()]
    if done.returncode != 0 or len(dumps) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"the {name} child failed (exit {done.returncode}):\n{tail}")
    text = dumps[0].read_text()
    events = re.search(r"^events: (.+)$", text, re.M).group(1).split()
    totals = re.search(r"^(?:totals|summary): (.+)$", text, re.M).group(1).split()
    return dict(zip(events, map(int, totals), strict=False))


def misses(totals: dict[str, int]) -> dict[str, int]:
    """The simulated events grouped as the table prints them, and kcachegrind's cycle estimate
    (Ir + 10 x (L1 misses + mispredicted branches) + 100 x last-level misses)."""
    grouped = {
        "I1 miss": totals["I1mr"],
        "D1 miss": totals["D1mr"] + totals["D1mw"],
        "LL miss": totals["ILmr"] + totals["DLmr"] + totals["DLmw"],
        "mispredict": totals["Bcm"] + totals["Bim"],
    }
    grouped["est. cycles"] = (totals["Ir"] + 10 * (grouped["I1 miss"] + grouped["D1 miss"] + grouped["mispredict"])
                              + 100 * grouped["LL miss"])
    return grouped


def bare_step_seconds(path: str, batch_size: int) -> float:
    """The bare step's time here (median of 5 chunks): it sets the window length, as in a run."""
    import statistics

    from overhead import Items, bare_dataloader_loop, bare_loop

    from scaling.config import RunConfig
    from scaling.data.mnist1d import load_mnist1d

    train, _ = load_mnist1d(RunConfig().num_samples)
    loop = (lambda steps: bare_loop(train, batch_size, steps)) if path == "memory" else \
        (lambda steps: bare_dataloader_loop(Items(train), batch_size, steps))
    loop(20)
    return batch_size / statistics.median(loop(50) for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--paths", default="memory,map", help="memory, map or both")
    parser.add_argument("--window-steps", type=int, default=0,
                        help="steps per logging window (default: what --log-min-s 0.5 gives here)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="children counted at once (the counts do not depend on the machine's load)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches and branch predictor (callgrind --cache-sim/--branch-sim): "
                             "misses per step and a cycle estimate; about twice as slow")
    parser.add_argument("--no-noise-scale", action="store_true",
                        help="the tool's step with the noise scale off: with the default, what it costs in work")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep callgrind's output files in DIR (per function: callgrind_annotate DIR/callgrind.*)")
    parser.add_argument("--child", nargs=6, metavar=("LOOP", "PATH", "BATCH", "WINDOW", "OUTPUT_DIR", "HELPER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loop, path, batch, window, output_dir, helper = args.child
        child(loop, path, int(batch), int(window), output_dir, helper, noise_scale=not args.no_noise_scale)
        return
    try:
        paths = args.paths.split(",")
        if not set(paths) <= {"memory", "map"}:
            raise ValueError(f"--paths: {args.paths!r}; expected memory, map or both")
        batches = [int(b) for b in args.batch_sizes.split(",")]
        if min(batches) < 1 or args.window_steps < 0 or args.jobs < 1:
            raise ValueError("batch sizes and --jobs must be at least 1, --window-steps at least 0")
        if args.keep and Path(args.keep).exists() and not Path(args.keep).is_dir():
            raise ValueError(f"--keep: {args.keep} is not a directory")
    except ValueError as err:
        parser.error(str(err))
    cases = [(path, batch) for path in paths for batch in batches]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            helper = build_helper(work)
        except BenchmarkError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        windows = {case: args.window_steps or window_steps(bare_step_seconds(*case)) for case in cases}
        started = time.perf_counter()
        print(f"Instructions per optimizer step (callgrind; one intra-op thread; W steps counted after {WARM_UP} of "
              "warm-up, one window boundary among them; " + ("the noise scale off)" if args.no_noise_scale else
                                                              "the noise measurement's off-clock region not counted)"))
        print(f"{'path':>6} {'batch':>6} {'W':>5} {'bare/step':>12} {'tool/step':>12} {'extra/step':>11} "
              f"{'bare/tool':>9}", flush=True)
        jobs = [(loop, *case) for case in cases for loop in ("bare", "tool")]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {job: pool.submit(count, *job, windows[job[1:]], work, helper, args.cache_sim,
                                        not args.no_noise_scale) for job in jobs}
            totals = {}
            for case in cases:
                totals[case] = [futures[(loop, *case)].result() for loop in ("bare", "tool")]
                bare, tool = (loop_totals["Ir"] / windows[case] for loop_totals in totals[case])
                print(f"{case[0]:>6} {case[1]:>6} {windows[case]:>5} {bare:>12,.0f} {tool:>12,.0f} "
                      f"{tool - bare:>+11,.0f} {bare / tool:>9.4f}", flush=True)
        if args.cache_sim:
            print("Simulated per step, bare / tool (callgrind's model of this CPU's caches; kcachegrind's cycle "
                  "estimate: Ir + 10 x (L1 misses + mispredicts) + 100 x LL misses)")
            print(f"{'path':>6} {'batch':>6} " + " ".join(f"{name:>23}" for name in misses(totals[cases[0]][0]))
                  + f" {'bare/tool cycles':>16}")
            for case in cases:
                bare, tool = (misses(loop_totals) for loop_totals in totals[case])
                cells = " ".join(f"{bare[name] / windows[case]:>11,.0f} /{tool[name] / windows[case]:>10,.0f}"
                                 for name in bare)
                print(f"{case[0]:>6} {case[1]:>6} {cells} {bare['est. cycles'] / tool['est. cycles']:>16.4f}")
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
