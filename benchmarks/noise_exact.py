"""The noise-scale probe against the exact B_simple from per-example gradients at the same weights.

    python benchmarks/noise_exact.py --steps 20,100,400 --seeds 0,1,2

Trains the MLP on MNIST-1D (batch 128) for each number of steps and seed with `--save-model`, then computes
B_simple = tr(Sigma) / |G|^2 over all training samples at the saved weights (one gradient per example,
torch.func) and prints the run's probe, the exact value and their ratio (docs/noise.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_exact_numbers import exact_b_simple  # noqa: E402

from scaling.data.mnist1d import load_mnist1d  # noqa: E402
from scaling.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="20,100,400")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-samples", type=int, default=8000)
    args = parser.parse_args()
    train, _ = load_mnist1d(args.num_samples)
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (int(s) for s in args.steps.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                out = Path(tmp) / f"{steps}-{seed}"
                subprocess.run([sys.executable, str(REPO / "scaling" / "run.py"), "--num-samples",
                                str(args.num_samples), "--progress", "false", "--cpu", "--model", "mlp",
                                "--global-bs", "128", "--max-steps", str(steps), "--target-accuracy", "none",
                                "--save-model", "true", "--seed", str(seed), "--output-dir", str(out)],
                               check=True, capture_output=True)
                noise = json.loads((out / "result.json").read_text())["noise_scale"]
                model = build_model("mlp", (40,), 10)
                model.load_state_dict(torch.load(out / "model.pt"))
                exact = exact_b_simple(model, train.inputs, train.labels)
                probe = noise["final"]["b_simple"]
                running = noise["series"][-1]["b_simple"] if noise["series"] else None
                print(f"steps {steps:5d} seed {seed}: probe {probe:8.1f}  exact {exact:8.1f}  probe/exact "
                      f"{probe / exact:5.2f}  running estimate/exact "
                      f"{running / exact if running else float('nan'):5.2f}", flush=True)


if __name__ == "__main__":
    main()
