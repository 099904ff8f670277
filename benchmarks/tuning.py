"""The adaptive LR search of a tuned study (scaling/study/tune.py) against the exhaustive grid over the same values.

    python benchmarks/tuning.py --problem nqm            # generated problems, closed form: seconds
    python benchmarks/tuning.py --problem default        # the shipped `tuned` study's workload, real runs: minutes

For every global batch both find a best LR: the grid trains every value of the search's grid to the end (or
the target) at one seed; the adaptive search runs its coarse-then-bisect trials with caps, at the same seed.
The table gives both best LRs, how many grid steps apart they are, and the optimizer steps each trained; the
last line the total ratio adaptive / grid. The search's seed phase (the 2 best re-run with the other seeds) is
not part of the comparison: the grid would need the same re-runs to say anything about seeds.

`nqm` is the noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which batch
sizes?", NeurIPS): SGD on L(w) = 1/2 sum_i h_i w_i^2 with gradient noise covariance H/B. The expected
squared weights follow m_i(t+1) = (1 - lr h_i)^2 m_i(t) + lr^2 h_i c / B exactly, so the steps to a loss
target are known in closed form for every LR and batch: the exhaustive grid is an exact reference. Its best LR
grows about linearly with the batch while noise dominates and levels off at the curvature limit (~1/h_max)
beyond it. Each problem draws its curvatures and noise level from a seed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scaling.study.tune import BatchSearch, TuneSpec, parse_dimension, search_batch  # noqa: E402

NQM_BATCHES = (16, 64, 256, 1024, 4096)
NQM_RANGE = (1e-3, 10.0)


@dataclass(frozen=True)
class NoisyQuadratic:
    """One generated problem: curvatures h (largest 1), noise level c, a target loss, a step budget."""

    curvatures: np.ndarray
    noise: float
    target: float  # a fraction of the initial loss
    max_steps: int = 20_000
    diverge_factor: float = 5.0

    @classmethod
    def generate(cls, seed: int) -> NoisyQuadratic:
        rng = np.random.default_rng(seed)
        dims = int(rng.integers(20, 100))
        curvatures = np.sort(10.0 ** rng.uniform(-3.0, 0.0, dims))[::-1]
        curvatures[0] = 1.0
        return cls(
            curvatures, noise=float(10.0 ** rng.uniform(0.5, 2.0)), target=float(rng.uniform(0.01, 0.05))
        )

    def outcome(
        self, lr: float, batch: int, cap: int | None = None, seed: int = 0, seed_spread: float = 0.0,
        pace: list[float] | None = None,
    ) -> tuple[str, int | None, int, tuple[tuple[int, float], ...]]:
        """(status, steps to target or None, steps trained, the (step, loss / start) curve up to the target when
        reached), as a run of the tool would end: diverged when the loss passes diverge_factor x its start,
        reached at the first step at the target, not reached at the budget, the cap, or the first milestone of
        `pace` (step, value, ...: RunConfig.pace) passed with the best loss so far above its value; every step
        is an evaluation. `seed_spread` > 0 scales the steps by a seeded log-normal factor (seed noise)."""
        h, m = self.curvatures, np.ones_like(self.curvatures)
        start = 0.5 * float(h @ m)
        decay, floor = (1.0 - lr * h) ** 2, lr * lr * h * self.noise / batch
        last = self.max_steps if cap is None else min(cap, self.max_steps)
        milestones = list(zip(pace[0::2], pace[1::2], strict=True)) if pace else []
        curve, best = [], math.inf
        for step in range(1, last + 1):
            m = decay * m + floor
            loss = 0.5 * float(h @ m)
            if not math.isfinite(loss) or loss > self.diverge_factor * start:
                return "diverged", None, step, ()
            if loss <= self.target * start:
                factor = 1.0
                if seed_spread:
                    factor = math.exp(
                        seed_spread * np.random.default_rng([seed, batch, int(lr * 1e6)]).normal()
                    )
                    step = max(1, round(step * factor))
                    if step > last:
                        return "not_reached", None, last, ()
                scaled = tuple((max(1, round(s * factor)), v) for s, v in curve)
                return "reached", step, step, (*scaled, (step, self.target))
            best = min(best, loss / start)
            curve.append((step, loss / start))
            # a milestone met when it is passed stays met (the best only improves): each is checked once
            while milestones and milestones[0][0] <= step:
                if best > milestones.pop(0)[1]:
                    return "not_reached", None, step, ()
        return "not_reached", None, last, ()


def adaptive(
    problem: NoisyQuadratic, spec: TuneSpec, batch: int, seeds: list[int], seed_spread: float = 0.0
) -> BatchSearch:
    """The tool's search (search_batch) at one batch, each trial's outcome from the closed form."""
    search = BatchSearch({"global_bs": batch}, batch, spec.dimensions, seeds)

    def make(overrides: dict) -> SimpleNamespace:
        key = (f"lr={overrides['base_lr']} cap={overrides.get('cap_steps')} seed={overrides['seed']} "
               f"pace={len(overrides.get('pace', [])) // 2}")
        return SimpleNamespace(id=key, overrides=overrides)

    def outcome(config: SimpleNamespace) -> tuple:
        o = config.overrides
        return problem.outcome(o["base_lr"], batch, o.get("cap_steps"), o["seed"], seed_spread, o.get("pace"))

    for _ in search_batch(search, spec, make, outcome):
        pass
    return search


def exhaustive(problem: NoisyQuadratic, values: tuple[float, ...], batch: int) -> tuple[int | None, int]:
    """(index of the best value, steps trained): every value to the target or the budget, one seed."""
    results = [problem.outcome(lr, batch) for lr in values]
    trained = sum(r[2] for r in results)
    reached = [(r[1], -i) for i, r in enumerate(results) if r[0] == "reached"]
    return (-min(reached)[1] if reached else None), trained


def nqm_spec(trials: int, resolution: float) -> TuneSpec:
    return TuneSpec([parse_dimension("base_lr", list(NQM_RANGE), resolution)], trials=trials)


def run_nqm(problems: int, trials: int, resolution: float) -> None:
    spec = nqm_spec(trials, resolution)
    values = spec.dimensions[0].values
    print(
        f"noisy quadratic model: {problems} generated problems x batches {', '.join(map(str, NQM_BATCHES))}; "
        f"LR grid {values[0]:g}..{values[-1]:g}, {len(values)} values (x{values[1] / values[0]:.3g}); "
        f"adaptive: at most {trials} trials"
    )
    print(
        f"{'problem':>7} {'batch':>6} {'grid best':>10} {'adaptive':>10} {'apart':>5} {'grid steps':>11} "
        f"{'adaptive':>9} {'ratio':>6}"
    )
    total_grid = total_adaptive = 0
    worst = 0
    for seed in range(problems):
        problem = NoisyQuadratic.generate(seed)
        for batch in NQM_BATCHES:
            best, grid_steps = exhaustive(problem, values, batch)
            search = adaptive(problem, spec, batch, seeds=[0])
            found = search.best["settings"]["base_lr"] if search.best else None
            apart = abs(values.index(found) - best) if found is not None and best is not None else None
            steps = search.record()["steps_trained"]
            total_grid += grid_steps
            total_adaptive += steps
            worst = max(worst, apart if apart is not None else (0 if found == best else 99))
            print(
                f"{seed:>7} {batch:>6} {values[best] if best is not None else 'none':>10} "
                f"{found if found is not None else 'none':>10} {apart if apart is not None else '-':>5} "
                f"{grid_steps:>11,} {steps:>9,} {steps / grid_steps:>6.2f}"
            )
    print(
        f"total: adaptive {total_adaptive:,} steps, grid {total_grid:,}: ratio {total_adaptive / total_grid:.3f}; "
        f"largest distance between the two best LRs: {worst} grid step(s)"
    )


# ---- the default workload: real runs through the sweep ------------------------------------------------------


def run_default(folder: Path) -> None:
    """The shipped `tuned` study's searches at seed 0, and the exhaustive grid over the same LRs."""
    import yaml

    from scaling.resources import study_spec
    from scaling.results import read_result
    from scaling.study.spec import load_study
    from scaling.study.sweep import run_study

    shipped = yaml.safe_load(Path(study_spec("tuned")).read_text())
    tune = dict(shipped["tune"])
    tune.pop("compare", None)
    batches = shipped["grid"]["global_bs"]
    adaptive_spec = {**shipped, "name": "tuning-adaptive", "tune": tune, "seeds": [shipped["seeds"][0]]}
    values = list(parse_dimension("base_lr", tune["base_lr"], tune.get("resolution", 2.0)).values)
    grid_spec = {
        "name": "tuning-grid",
        "base": {**shipped["base"], "lr_scaling": "none"},
        "grid": {"global_bs": batches, "base_lr": values},
        "seeds": [shipped["seeds"][0]],
        "launcher": shipped.get("launcher", {"type": "python"}),
    }
    plans = {}
    for name, spec in (("grid", grid_spec), ("adaptive", adaptive_spec)):
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        plans[name] = run_study(load_study(path, folder / name), folder / name, progress=False)
    grid_runs: dict[int, list] = {}
    grid_steps = 0
    for entry in plans["grid"]["configs"]:
        result = read_result(folder / "grid" / entry["output_dir"] / "result.json")
        overrides = entry["overrides"]
        steps = result.get("steps") if result else 0
        grid_steps += steps or 0
        reached = result is not None and result["status"] == "reached"
        grid_runs.setdefault(overrides["global_bs"], []).append(
            (result.get("steps_to_target") if reached else None, overrides["base_lr"])
        )
    print(
        f"default workload (the shipped `tuned` study, seed {shipped['seeds'][0]}): LR grid {values[0]:g}.."
        f"{values[-1]:g}, {len(values)} values"
    )
    print(f"{'batch':>6} {'grid best':>10} {'adaptive':>10} {'apart':>5} {'grid steps':>11} {'adaptive':>9}")
    adaptive_steps = 0
    for search in plans["adaptive"]["tuning"]:
        batch = search["global_bs"]
        reached = [(steps, -values.index(lr)) for steps, lr in grid_runs.get(batch, []) if steps is not None]
        best = values[-min(reached)[1]] if reached else None
        found = search["best"]["settings"]["base_lr"] if search["best"] else None
        apart = (
            abs(values.index(found) - values.index(best)) if found is not None and best is not None else "-"
        )
        trained = sum(t["steps_run"] or 0 for t in search["trials"] if t["phase"] == "search")
        adaptive_steps += trained
        batch_grid = sum(
            s
            for e in plans["grid"]["configs"]
            if e["overrides"]["global_bs"] == batch
            for s in [
                (read_result(folder / "grid" / e["output_dir"] / "result.json") or {}).get("steps") or 0
            ]
        )
        print(
            f"{batch:>6} {best if best is not None else 'none':>10} {found if found is not None else 'none':>10} "
            f"{apart:>5} {batch_grid:>11,} {trained:>9,}"
        )
    print(
        f"total: adaptive {adaptive_steps:,} steps, grid {grid_steps:,}: ratio {adaptive_steps / grid_steps:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=("nqm", "default"), default="nqm")
    parser.add_argument("--problems", type=int, default=8, help="nqm: generated problems (default 8)")
    parser.add_argument("--trials", type=int, default=8, help="nqm: the search's trial budget (default 8)")
    parser.add_argument("--resolution", type=float, default=2.0, help="nqm: the grid step (default 2)")
    parser.add_argument("--dir", help="default: where the two studies go (default: a temporary folder)")
    args = parser.parse_args()
    if args.problem == "nqm":
        run_nqm(args.problems, args.trials, args.resolution)
    elif args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        run_default(Path(args.dir))
    else:
        with tempfile.TemporaryDirectory() as folder:
            run_default(Path(folder))


if __name__ == "__main__":
    main()
