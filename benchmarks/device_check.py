"""The GPU device check: run configs/studies/gpu_check.yaml through `scaling study`, then print the
figures docs/gpu.md records (GPU model, throughput by batch size, MFU, peak memory, alignment verdict).

    python benchmarks/device_check.py [--out DIR] [--spec configs/studies/gpu_check.yaml]

Runs in a few minutes on one H100; writes the study and its report under runs/device-check and copies
the report and the figures into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "configs" / "studies" / "gpu_check.yaml"))
    parser.add_argument("--dir", default=str(REPO / "runs" / "device-check"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}", flush=True)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "study", args.spec, "--dir", args.dir,
                           "--no-progress"], cwd=REPO)
    print(f"study finished with exit {proc.returncode} in {time.time() - started:.0f} s", flush=True)
    study = json.loads((Path(args.dir) / "study.json").read_text())
    rows = []
    for entry in study["configs"]:
        path = Path(args.dir) / entry["output_dir"] / "result.json"
        result = json.loads(path.read_text()) if path.exists() else {"status": entry["status"]}
        compute, memory = result.get("compute") or {}, result.get("peak_memory") or {}
        rows.append({
            "global_bs": entry["overrides"].get("global_bs"), "status": result["status"],
            "samples_per_s": result.get("throughput_samples_per_s"), "mfu": compute.get("mfu"),
            "tflops_per_s": (compute.get("achieved_flops_per_s_per_device") or 0) / 1e12,
            "peak_allocated_gib": (memory.get("allocated_bytes") or 0) / 2**30,
            "data_wait": result.get("data_wait_fraction"), "device": (result.get("environment") or {}).get("device"),
            "b_simple": (result.get("noise_scale") or {}).get("b_simple"),
        })
    rows.sort(key=lambda r: r["global_bs"] or 0)
    print(f"{'batch':>6} {'status':>10} {'samples/s':>11} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'data wait':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "n/a"
        wait = f"{r['data_wait']:.1%}" if r["data_wait"] is not None else "n/a"
        rate = f"{r['samples_per_s']:,.0f}" if r["samples_per_s"] else "n/a"
        print(f"{r['global_bs']:>6} {r['status']:>10} {rate:>11} {r['tflops_per_s']:>8.1f} {mfu:>6} "
              f"{r['peak_allocated_gib']:>9.2f} {wait:>9}")
    report = (Path(args.dir) / "report.md").read_text() if (Path(args.dir) / "report.md").exists() else ""
    for line in report.splitlines():
        if "power of two" in line.lower() or "within noise" in line.lower() or "exceeds" in line.lower():
            print(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "device_check.json").write_text(json.dumps(rows, indent=2))
        for name in ("report.md", "report.html", "throughput.png"):
            if (Path(args.dir) / name).exists():
                shutil.copy(Path(args.dir) / name, out / name)


if __name__ == "__main__":
    main()
