"""Validate `scaling predict` against real multi-process runs on this machine (docs/predict.md).

    python benchmarks/predict_validation.py                        # every configuration, 2 processes, 4 repeats
    python benchmarks/predict_validation.py --configs cnn1d --processes 2,4 --repeats 2

For each configuration and process count N: a one-process run that emulates N devices
(`--emulate-processes N`, one thread: OMP_NUM_THREADS=1) and a real `torchrun --nproc_per_node N` run (one
thread per process), alternately (the order flips every repeat), `--repeats` times; the all-reduce of the
model's DDP buckets is measured across N local gloo processes (what `scaling predict --measure-comm` does),
once per configuration and N, before the runs. Each emulating run gives a prediction of the real run's train
time to target; the table compares the median prediction with the median measurement, and checks that every
run, emulated or real, reached the target at the same optimizer step.

The configurations differ in model size, so that both ends of the all-reduce model are exercised: a 31 KiB
gradient (latency-bound), a 308 KiB one, and a 4.2 MiB one (bandwidth-bound). The wide MLP is defined here
(`wide_mlp`) and passed to the runs as `--model benchmarks/predict_validation.py:wide_mlp`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = {
    # name: (run flags, what it exercises)
    "cnn1d": (["--model", "cnn1d", "--target-accuracy", "0.9"], "default CNN, 31 KiB of gradients: latency-bound"),
    "mlp": (["--model", "mlp", "--target-accuracy", "0.7"], "MLP 40-256-256-10, 308 KiB: one bucket"),
    "wide_mlp": (["--model", "benchmarks/predict_validation.py:wide_mlp", "--target-accuracy", "0.65"],
                 "MLP 40-1024-1024-10, 4.2 MiB in 2 buckets: bandwidth-bound"),
}
COMMON = ["--cpu", "--progress", "false", "--global-bs", "256", "--per-device-bs", "64", "--noise-scale", "false",
          "--seed", "0"]


def wide_mlp():
    """The bandwidth-bound configuration's model (1.1 M parameters)."""
    from scaling.models import MLP

    return MLP(40, hidden=1024)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # one thread per (emulated or real) device
    return env


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_emulated(flags: list[str], processes: int, out: Path) -> dict:
    cmd = [sys.executable, "scaling/run.py", *COMMON, *flags, "--emulate-processes", str(processes),
           "--output-dir", str(out)]
    return _run(cmd, out, 1)


def run_real(flags: list[str], processes: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
           str(_port()), "scaling/run.py", *COMMON, *flags, "--output-dir", str(out)]
    return _run(cmd, out, processes)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], out: Path, processes: int) -> dict:
    """Run to the end; the result, with `cpu_share` added: the CPU time the run's processes got over their
    wall time x their number (1.0: each had a core to itself throughout; start-up and evaluation included)."""
    result_path = out / "result.json"
    if result_path.is_file():  # rerunning the script reuses finished runs
        result = json.loads(result_path.read_text())
        share = result_path.with_name("cpu_share.json")
        if result.get("status") == "reached" and share.is_file():
            record = json.loads(share.read_text())
            result["cpu_share"] = record["cpu_s"] / (record["wall_s"] * record["processes"])
            return result
    for attempt in range(2):  # one retry for gloo's rare teardown abort (tests/conftest.py)
        cpu, wall = _cpu_seconds(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
        if proc.returncode == 0:
            break
        finished = result_path.is_file() and json.loads(result_path.read_text()).get("status") == "reached"
        if finished and "terminate called without an active exception" in proc.stderr:
            break  # gloo's teardown abort (tests/conftest.py) came after the result was written
        if attempt or "terminate called without an active exception" not in proc.stderr:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    result["cpu_share"] = cpu / (wall * processes)
    result_path.with_name("cpu_share.json").write_text(json.dumps({"cpu_s": cpu, "wall_s": wall,
                                                                   "processes": processes}))
    return result


def main() -> None:
    from scaling.devices import comm, measure
    from scaling.devices.predict import compute_load, gradient_bytes, predict_on_devices, profile_run
    from scaling.files import read_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--processes", default="2")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="runs/predict-validation")
    args = parser.parse_args()
    os.chdir(REPO)  # the wide MLP is named by a path relative to the repository
    root = REPO / args.out
    rows = []
    for name in args.configs.split(","):
        flags, what = CONFIGS[name]
        for processes in [int(n) for n in args.processes.split(",")]:
            emulated, real, measurements, loads = [], [], [], []
            for repeat in range(args.repeats):
                folder = root / name / f"n{processes}"
                order = ("emulated", "real") if repeat % 2 == 0 else ("real", "emulated")
                for kind in order:
                    out = folder / f"{kind}-{repeat}"
                    started = time.perf_counter()
                    load_before = os.getloadavg()[0]
                    if kind == "emulated":
                        emulated.append((run_emulated(flags, processes, out), out))
                    else:
                        real.append(run_real(flags, processes, out))
                    loads.append((kind, load_before, os.getloadavg()[0]))
                    print(f"{name} N={processes} {kind} #{repeat}: {time.perf_counter() - started:.0f} s, load "
                          f"average {load_before:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
                gradient = gradient_bytes(emulated[0][0])
                buckets = comm.ddp_buckets(gradient)
                # The all-reduce is measured between the repeats too: the machine's load changes.
                load = compute_load(emulated[0][0], emulated[0][0]["batch"]["per_device"])
                measurements.append(measure.measure_allreduce(processes, measure.measurement_sizes(buckets),
                                                           parameter_bytes=list(reversed(gradient)), compute=load))
            link = measurements[-1].interconnect()
            predictions, uncontended, alpha_beta, ideal = [], [], [], []
            for (result, out), measurement in zip(emulated, measurements, strict=True):
                profile = profile_run(result, read_metrics(out / "metrics.jsonl"))
                predictions.append(predict_on_devices(profile, gradient, processes, measurement.interconnect(),
                                                      ddp=measurement.ddp, contention=measurement.contention))
                uncontended.append(predict_on_devices(profile, gradient, processes, measurement.interconnect(),
                                                      ddp=measurement.ddp))
                alpha_beta.append(predict_on_devices(profile, gradient, processes, measurement.interconnect()))
                free = comm.Interconnect("free", float("inf"), 0.0, "given")
                ideal.append(predict_on_devices(profile, gradient, processes, free).train_time_to_target_s)
            measured = [r["train_time_to_target_s"] for r in real]
            predicted = [p.train_time_to_target_s for p in predictions]
            steps = {r["steps_to_target"] for r in real} | {r["steps_to_target"] for r, _ in emulated}
            real_sync = [((r.get("step_time_breakdown") or {}).get("phases") or {}).get("grad_sync", {}).get("seconds")
                         for r in real]
            rows.append({
                "config": name, "what": what, "processes": processes, "gradient_bytes": sum(gradient),
                "buckets": buckets, "steps_to_target": sorted(steps),
                "emulated_s": [r["train_time_to_target_s"] for r, _ in emulated], "predicted_s": predicted,
                "measured_s": measured, "perfect_scaling_s": ideal,
                "pair_ratio": [p / m for p, m in zip(predicted, measured, strict=True)],
                "pair_order": ["emulated first" if i % 2 == 0 else "real first" for i in range(args.repeats)],
                "contention_factor": [m.contention.measured_factor for m in measurements],
                "uncontended_s": [p.train_time_to_target_s for p in uncontended],
                "predicted_allreduce_ms": [p.allreduce.exposed_s * 1e3 for p in predictions],
                "alpha_beta_s": [p.train_time_to_target_s for p in alpha_beta],
                "alpha_beta_allreduce_ms": [p.allreduce.exposed_s * 1e3 for p in alpha_beta],
                "ddp_sync_ms": [m.ddp.sync_s * 1e3 for m in measurements],
                "ddp_micro_overhead_ms": [m.ddp.micro_overhead_s * 1e3 for m in measurements],
                "real_grad_sync_s": real_sync,
                "latency_us": [m.fit.latency * 1e6 for m in measurements],
                "bandwidth_gb_s": [m.fit.bus_bandwidth / 1e9 for m in measurements],
                "link": link.describe(),
                "cpu_share_emulated": [r.get("cpu_share") for r, _ in emulated],
                "cpu_share_real": [r.get("cpu_share") for r in real],
                "load_average": loads,  # (kind, 1-minute load before, after) per run: other work on the machine
            })
            (root / "validation.json").write_text(json.dumps(rows, indent=2))
    print()
    print("| configuration | gradient | N | steps to target (all runs) | emulated (s) | predicted (s) | measured (s) | "
          "predicted / measured (pairs) | without contention | alpha-beta only | no-comm | contention | "
          "all-reduce fit | DDP sync, wrapper per micro-step | CPU share emulated / real |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        med = {key: statistics.median(row[key]) for key in ("emulated_s", "predicted_s", "measured_s", "ddp_sync_ms",
                                                           "ddp_micro_overhead_ms", "contention_factor")}
        ratio = {key: _pair_mean(row[key], row["measured_s"]) for key in ("predicted_s", "uncontended_s",
                                                                         "alpha_beta_s", "perfect_scaling_s")}
        same = "identical: " if len(row["steps_to_target"]) == 1 else "DIFFER: "
        print(f"| {row['config']} | {row['gradient_bytes'] / 2**10:,.0f} KiB in {len(row['buckets'])} bucket(s) | "
              f"{row['processes']} | {same}{', '.join(map(str, row['steps_to_target']))} | {med['emulated_s']:.2f} | "
              f"{med['predicted_s']:.2f} | {med['measured_s']:.2f} | **{ratio['predicted_s']:.2f}** "
              f"({min(row['pair_ratio']):.2f}–{max(row['pair_ratio']):.2f}) | {ratio['uncontended_s']:.2f} | "
              f"{ratio['alpha_beta_s']:.2f} | {ratio['perfect_scaling_s']:.2f} | x{med['contention_factor']:.2f} | "
              f"{statistics.median(row['latency_us']):.0f} us, {statistics.median(row['bandwidth_gb_s']):.2f} GB/s | "
              f"{med['ddp_sync_ms']:.2f} ms, {med['ddp_micro_overhead_ms']:.2f} ms | "
              f"{statistics.median(row['cpu_share_emulated']):.0%} / {statistics.median(row['cpu_share_real']):.0%} |")
    print(f"\n(ratios: geometric mean over the {args.repeats} pairs of predicted / measured, each pair an emulated and a "
          f"real run back to back, the order flipping every pair, so that with an even number of repeats the machine's "
          f"drift from the first run of a pair to the second falls on both sides equally; in brackets the pairs' "
          f"range. Times: medians. Every value: {root / 'validation.json'})")


def _pair_mean(predicted: list[float], measured: list[float]) -> float:
    """Geometric mean of predicted / measured over the pairs."""
    return math.exp(statistics.fmean(math.log(p / m) for p, m in zip(predicted, measured, strict=True)))

if __name__ == "__main__":
    main()
