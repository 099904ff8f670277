"""What a study's runs spend outside training, with the sweep's worker (scaling/study/zygote.py) and without it.

    python benchmarks/startup.py                        # 8 short runs a sweep, 5 sweeps each way, alternating
    python benchmarks/startup.py --repeats 3 --max-steps 10

One small study (the default workload: `num_samples 2000, max_steps 20, cpu true`, global batches 32, 64,
128, 256 x seeds 0, 1: 8 runs, no target) is swept again and again into fresh folders, alternating
`SCALING_NO_ZYGOTE=1` (every run its own `python scaling/run.py` process, as before) and the worker (runs forked
from one process that imported torch once), the order of the two flipped every repeat. For every run:

- `outside` = its `wall_s` in study.json (launch to exit, as the sweep measures it) minus its `elapsed_s` in
  result.json (the training clock: steps and evaluations);
- `in-run setup`: what the run itself does outside its training clock wherever it starts (settling the folder,
  loading the data, building the model and optimizer, counting FLOPs, the probe, writing the result),
  measured once by running the same configurations in one process that has imported everything (the median
  of main() wall minus elapsed_s over the configurations, after one warm-up run);
- `start-up` = outside - in-run setup: starting Python, importing, the interpreter's exit, the sweep's launch
  and wait: what the worker is there to remove.

The first run a worker forks waits for the worker's own import (the cost every run pays without it); the
table shows the median over all runs, the median over the runs after the first of each sweep, and the mean
(the first run's import spread over the sweep). Whole sweeps: the median wall time of a sweep each way and
its ratio. The machine's cores are shared: medians and ratios, not single figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCHES = (32, 64, 128, 256)
SEEDS = (0, 1)


def base(max_steps: int) -> dict:
    return {"num_samples": 2000, "max_steps": max_steps, "cpu": True, "target_accuracy": None}


def write_spec(folder: Path, max_steps: int) -> Path:
    import yaml

    spec = folder / "startup.yaml"
    spec.write_text(yaml.safe_dump({"name": "startup", "base": base(max_steps),
                                    "grid": {"global_bs": list(BATCHES), "seed": list(SEEDS)}}, sort_keys=False))
    return spec


def env(worker: bool) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environment.get("PYTHONPATH")) if p)
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.pop("SCALING_NO_ZYGOTE", None)
    if not worker:
        environment["SCALING_NO_ZYGOTE"] = "1"
    return environment


def sweep(spec: Path, study: Path, worker: bool) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study),
                           "--no-progress"], cwd=REPO, env=env(worker), capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0 or "processes of their own" in proc.stdout:
        raise SystemExit(f"sweep failed or ran without its worker:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    record = json.loads((study / "study.json").read_text())
    outside = []
    for config in record["configs"]:
        result = json.loads((study / config["output_dir"] / "result.json").read_text())
        outside.append(config["wall_s"] - result["elapsed_s"])
    return {"wall_s": wall, "outside": outside}


def in_run_setup(max_steps: int, folder: Path) -> list[float]:
    """main() wall minus elapsed_s for each configuration, in one process that has imported everything."""
    code = f"""
import json, os, sys, time
sys.argv = ["zygote", "0"]
import scaling.study.zygote as zygote
zygote._preload()
import scaling.run
out = []
for index, (bs, seed) in enumerate([(None, 0)] + [(b, s) for b in {BATCHES!r} for s in {SEEDS!r}]):
    folder = os.path.join({str(folder)!r}, f"setup-{{index}}")
    args = ["--num-samples", "2000", "--max-steps", "{max_steps}", "--cpu", "--target-accuracy", "none",
            "--global-bs", str(bs or 32), "--seed", str(seed), "--output-dir", folder, "--overwrite",
            "--progress", "false"]
    started = time.monotonic()
    try:
        scaling.run.main(args)
    except SystemExit:
        pass
    wall = time.monotonic() - started
    elapsed = json.load(open(os.path.join(folder, "result.json")))["elapsed_s"]
    if index:
        out.append(wall - elapsed)
print("SETUP", json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(True), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SETUP ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"in-process runs failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("SETUP "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="sweeps each way (default 5)")
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        folder = Path(tmp)
        spec = write_spec(folder, args.max_steps)
        sweeps: dict[bool, list[dict]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for worker in ((False, True) if repeat % 2 == 0 else (True, False)):
                done = sweep(spec, folder / f"study-{repeat}-{'worker' if worker else 'processes'}", worker)
                sweeps[worker].append(done)
                print(f"repeat {repeat + 1}: {'worker   ' if worker else 'processes'} sweep {done['wall_s']:6.1f} s; "
                      f"outside training per run: {' '.join(f'{x:.2f}' for x in done['outside'])}", flush=True)
        setup = in_run_setup(args.max_steps, folder)
    floor = statistics.median(setup)
    print(f"\nin-run setup (one process, everything imported; median of {len(setup)}): {floor:.2f} s "
          f"(min {min(setup):.2f}, max {max(setup):.2f})")
    runs = len(BATCHES) * len(SEEDS)
    print(f"\n{'':12}{'outside training per run, s':>46}{'start-up per run, s':>26}{'sweep wall, s':>16}")
    print(f"{'':12}{'median':>12}{'after 1st':>12}{'mean':>10}{'max':>10}"
          f"{'median':>12}{'after 1st':>14}{'median':>16}")
    medians = {}
    for worker in (False, True):
        every = [x for done in sweeps[worker] for x in done["outside"]]
        later = [x for done in sweeps[worker] for x in done["outside"][1:]]
        walls = [done["wall_s"] for done in sweeps[worker]]
        medians[worker] = statistics.median(walls)
        print(f"{'worker' if worker else 'processes':12}{statistics.median(every):12.2f}{statistics.median(later):12.2f}"
              f"{statistics.mean(every):10.2f}{max(every):10.2f}{statistics.median(every) - floor:12.2f}"
              f"{statistics.median(later) - floor:14.2f}{medians[worker]:16.1f}")
    print(f"\nsweep of {runs} runs: processes / worker = {medians[False] / medians[True]:.2f}x "
          f"({args.repeats} sweeps each way, alternating)")


if __name__ == "__main__":
    main()
