"""`scaling branch RUN_DIR`: the critical batch size during training, measured by branching (Merrill et al.
2025, arXiv 2505.23971). From the checkpoints a reference run kept (`--branch-points`), training continues at
larger batches for a window of samples, and at the reference batch under other data orders (the controls);
a branch keeps up when its evaluation loss at the end of the window is within the tolerance the controls
give of theirs. The critical batch at a point is the largest batch that keeps up, every smaller one keeping
up too, bracketed by the first that does not. docs/branching.md has the method, the tolerance and the cost.

Each branch is a run of its own (`--start-from` the point, `--batch-schedule 0:B,SAMPLES:kB`), in this
process one after another, with its result.json in RUN_DIR/branches/step-N/; the record is
RUN_DIR/branches.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from scaling.distributions import t_quantile
from scaling.errors import ConfigError, shown

POINT_FORM = "fractions of the step budget (10%,25%,50%) or step numbers (100,250)"
BRANCHES_FILE = "branches.json"
POINTS_FOLDER = "branch_points"
SCHEMA = 1
DEFAULT_CONTROLS = 3
DEFAULT_WINDOW = "10%"
# The tolerance is the one-sided 99% upper prediction bound of one more run at the reference batch from the
# controls' mean and spread, so that a branch at the reference batch under yet another data order (an A/A
# branch) falls behind once in a hundred.
CONFIDENCE = 0.99
MAX_CONTROLS = 20
# The tolerance is never below this share of the controls' mean loss: controls that agree to float rounding
# (a problem without sampling noise) would otherwise make any difference a failure.
TOLERANCE_FLOOR = 1e-3


def parse_points(text: Any, flag: str) -> list[str]:
    """`10%,25%` or `100,250`: the points as given (resolved to steps by resolve_points)."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else []
    good = [p for p in parts if _percent(p) is not None or (p.isdigit() and int(p) > 0)]
    if not parts or len(good) != len(parts):
        bad = next((p for p in parts if p not in good), text)
        raise ConfigError(f"{flag} takes {POINT_FORM}; got {shown(bad)}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{flag} names a point twice: {shown(text)}")
    return parts


def _percent(part: str) -> float | None:
    if not part.endswith("%"):
        return None
    try:
        value = float(part[:-1])
    except ValueError:
        return None
    return value if 0 < value < 100 else None


def resolve_points(parts: list[str], budget: int | None, flag: str) -> list[tuple[str, int]]:
    """(as given, step) of each point, by step: a fraction of `budget` (the run's step budget, --max-steps or
    --max-epochs) rounded to a step, or the step given; each from 1 to below the budget."""
    out = []
    for part in parts:
        fraction = _percent(part)
        if fraction is not None:
            if budget is None:
                raise ConfigError(f"{flag} {part} is a fraction of the step budget, and the run has none "
                                  f"(--max-steps or --max-epochs); give step numbers")
            step = max(1, round(fraction / 100 * budget))
        else:
            step = int(part)
        if budget is not None and step >= budget:
            raise ConfigError(f"{flag} {part} is step {step:,}, not before the run's last step {budget:,}")
        out.append((part, step))
    steps = [step for _, step in out]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"{flag} {','.join(parts)}: two points fall on one step ({shown(steps)})")
    return sorted(out, key=lambda item: item[1])


def branch_steps(cfg, budget: int | None) -> set[int]:
    """The steps of cfg.branch_points (empty without it)."""
    if cfg.branch_points is None:
        return set()
    return {step for _, step in resolve_points(parse_points(cfg.branch_points, "--branch-points"), budget,
                                               "--branch-points")}


def branch_point_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / POINTS_FOLDER / f"step-{step}"


def saved_points(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / POINTS_FOLDER
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.iterdir():
        name = path.name.removeprefix("step-")
        if path.is_dir() and name.isdigit() and (path / "manifest.json").is_file():
            steps.append(int(name))
    return sorted(steps)


def parse_multiples(text: str) -> list[int]:
    """`2x,4x,8x`: the batch multiples of the reference's (1x: an A/A branch, the reference batch under a data
    order no control used)."""
    parts = [p.strip().lower() for p in text.split(",")]
    values = [int(p[:-1]) if p.endswith("x") and p[:-1].isdigit() else 0 for p in parts]
    if not parts or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--batches takes multiples of the reference batch, e.g. 2x,4x,8x; got {shown(text)}")
    return sorted(values)


# ---------------------------------------------------------------- deciding from the losses


def tolerance(control_losses: list[float]) -> tuple[float, float, float]:
    """(mean, spread, tolerance) of the controls' losses at the end of the window: the tolerance is the
    one-sided 99% prediction bound of one more run at the reference batch, t(CONFIDENCE, n-1) x s x sqrt(1 + 1/n),
    at least TOLERANCE_FLOOR of the mean."""
    n = len(control_losses)
    mean = statistics.fmean(control_losses)
    spread = statistics.stdev(control_losses) if n > 1 else 0.0
    bound = t_quantile(CONFIDENCE, n - 1) * spread * math.sqrt(1 + 1 / n) if n > 1 else 0.0
    return mean, spread, max(bound, TOLERANCE_FLOOR * abs(mean))


def critical_batch(reference_batch: int, branches: list[dict]) -> tuple[int, int | None]:
    """The largest batch that kept up with every smaller one keeping up too (the reference's own batch
    when the smallest branch did not), and the first batch that did not (None: all kept up)."""
    critical = reference_batch
    for branch in sorted((b for b in branches if b["batch"] > reference_batch), key=lambda b: b["batch"]):
        if not branch["kept_up"]:
            return critical, branch["batch"]
        critical = branch["batch"]
    return critical, None


def schedule_from_record(path: str) -> str:
    """`--batch-schedule from:RUN_DIR/branches.json`: a batch-size warmup built on the critical batch measured
    at each point (Merrill et al. 2025): the reference batch from the start, then from each point's samples on
    the critical batch there (never below a batch already reached: a warmup only rises). Starts are in the
    units the schedule counts (tokens for a language model)."""
    file = Path(path)
    try:
        record = json.loads(file.read_text())
        units = int(record.get("units_per_sample", 1))
        pairs = [(0, int(record["batch"]))]
        for point in sorted(record["points"], key=lambda p: p["samples"]):
            batch = max(pairs[-1][1], int(point["critical_batch"]))
            if batch != pairs[-1][1]:
                pairs.append((int(point["samples"]) * units, batch))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"--batch-schedule from:{path}: not a branching record (scaling branch writes "
                          f"RUN_DIR/{BRANCHES_FILE}): {type(err).__name__}: {err}") from None
    return ",".join(f"{start}:{batch}" for start, batch in pairs)


# ---------------------------------------------------------------- the command


@dataclasses.dataclass
class Reference:
    run_dir: Path
    result: dict
    config: dict
    batch: int
    per_device: int
    budget: int | None
    train_samples: int

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def units_per_sample(self) -> int:
        """What a --batch-schedule start counts per sample: tokens per sequence for a language model, else 1."""
        return int((self.result.get("tokens") or {}).get("per_sequence") or 1)


def load_reference(run_dir: str) -> Reference:
    from scaling.batching import BatchPlan, GlobalBatchSampler
    from scaling.config import make_config
    from scaling.train.loop import total_steps

    folder = Path(run_dir)
    path = folder / "result.json"
    if not path.is_file():
        raise ConfigError(f"scaling branch: {folder} holds no result.json (the reference run's output folder?)")
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"scaling branch: {path} cannot be read: {err}") from None
    status = result.get("status")
    if status in ("running", None) or "batch" not in result:
        raise ConfigError(f"scaling branch: the run in {folder} has not finished (status {shown(status)}); branch "
                          f"a finished reference run")
    config = result["config"]
    if config.get("batch_schedule"):
        raise ConfigError(f"scaling branch: the run in {folder} trains under --batch-schedule; branch a fixed-batch "
                          f"reference run")
    batch = result["batch"]
    if batch["world_size"] != 1:
        raise ConfigError(f"scaling branch: the run in {folder} trained on {batch['world_size']} processes; branches "
                          f"run in one process: train the reference on one (with --emulate-processes N for N)")
    if config.get("lr_decay", "constant") != "constant":
        raise ConfigError(f"scaling branch: the run in {folder} decays its LR ({config['lr_decay']}) over its step "
                          f"budget, which a branch at a larger batch would not follow in samples; branch a "
                          f"reference run with --lr-decay constant")
    cfg = make_config({k: v for k, v in config.items() if k != "output_dir"})
    plan = BatchPlan(batch["global"], batch["per_device"], batch["num_processes"], batch["accumulation_steps"], 1)
    budget = total_steps(cfg, GlobalBatchSampler(result["train_samples"], plan, cfg.seed))
    return Reference(folder, result, config, batch["global"], batch["per_device"], budget, result["train_samples"])


# Evaluations in the second half of a window, at least: the loss a branch is judged by is their mean.
MIN_EVALUATIONS = 4


def resolve_window(text: str, reference: Reference, batches: list[int]) -> tuple[int, int]:
    """(window, evaluation interval) in samples: the window N, or N% of the budget's samples, rounded up to a
    multiple of the interval with at least 2 x MIN_EVALUATIONS intervals; the interval is the least common
    multiple of the batches, so that every branch is evaluated at the same sample counts."""
    fraction = _percent(text.strip()) if isinstance(text, str) else None
    if fraction is not None:
        if reference.budget is None:
            raise ConfigError(f"--window {text} is a fraction of the reference's step budget, and it has none: "
                              f"give samples")
        samples = fraction / 100 * reference.budget * reference.batch
    elif isinstance(text, str) and text.strip().isdigit() and int(text) > 0:
        samples = int(text)
    else:
        raise ConfigError(f"--window takes samples (e.g. 20000) or a fraction of the budget (10%); got {shown(text)}")
    unit = math.lcm(*batches)
    return max(2 * MIN_EVALUATIONS * unit, math.ceil(samples / unit) * unit), unit


def tuned_lrs(study_dir: str) -> dict[int, float]:
    """--lr-from STUDY_DIR: the best LR a tuned study found at each global batch it searched (study.json's
    `tuning`: each search's `best` trial, whose `base_lr` is the LR at that batch under lr_scaling none)."""
    path = Path(study_dir) / "study.json"
    try:
        searches = json.loads(path.read_text())["tuning"]
        found = {int(s["global_bs"]): float(s["best"]["settings"]["base_lr"]) for s in searches if s.get("best")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"--lr-from {study_dir}: {path} is not the record of a tuned study (scaling study with a "
                          f"tune: section)") from None
    if not found:
        raise ConfigError(f"--lr-from {study_dir}: its searches have found no best LR yet")
    return found


def branch_config(reference: Reference, step: int, batch: int, seed: int, window: int, every: int,
                  folder: Path, lr: float | None = None) -> dict:
    """The settings of one branch: the reference's, from its point at `step`, at `batch` (a schedule whose
    second batch starts at the point's samples), under `seed`'s data order, for `window` samples, evaluated
    every `every` samples from the point; at `lr` when given (a tuned study's best at that batch), else by the
    reference's rule."""
    start = step * reference.batch * reference.units_per_sample  # in the schedule's units (tokens for an LM)
    config = {k: v for k, v in reference.config.items()}
    config.update(
        start_from=str(branch_point_folder(reference.run_dir, step).resolve()), output_dir=str(folder),
        batch_schedule=f"0:{reference.batch},{start}:{batch}" if batch != reference.batch else None,
        global_bs=reference.batch, per_device_bs=reference.per_device, accumulation_steps=None, seed=seed,
        max_steps=step + window // batch, max_epochs=None, max_time=None, cap_steps=None,
        target_accuracy=None, target_loss=None, target_levels=[], pace=[], exact_target=False,
        eval_every=every // batch, stall_evals=0, noise_scale=False, branch_points=None,
        checkpoint_every=None, save_model=False, probe=False, progress=False, log_with=None)
    if lr is not None:  # the tuned LR from the point on (lr_scaling none: base_lr is the LR at every batch)
        config.update(base_lr=lr, base_bs=batch, lr_scaling="none", batch_schedule_lr="rule")
    return config


def run_branch(config: dict, folder: Path) -> dict:
    """One branch as a run in this process (its own result.json in `folder`); its result."""
    import yaml

    from scaling.run import main as run_main

    folder.mkdir(parents=True, exist_ok=True)
    settings = folder.with_suffix(".yaml")
    settings.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        code = run_main(["--config", str(settings), "--overwrite"], prog="scaling branch")
    finally:
        _reset_accelerate()
    result_path = folder / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if code != 0 or result.get("status") != "completed":
        raise ConfigError(f"scaling branch: the branch in {folder} ended with status {shown(result.get('status'))} "
                          f"(exit {code}); see its output above")
    return result


def _reset_accelerate() -> None:
    """Accelerate keeps one process-wide state; the next branch builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def window_loss(result: dict, start_samples: int, window: int) -> float:
    """The mean evaluation loss of a branch over the second half of its window (the same sample counts for
    every batch): one evaluation's loss moves by several percent from step to step at a constant LR, more
    than the differences the branches are judged on."""
    losses = [entry["loss"] for entry in result["history"]
              if start_samples + window / 2 <= entry["samples"] <= start_samples + window]
    if len(losses) < MIN_EVALUATIONS or any(loss is None for loss in losses):
        raise ConfigError(f"scaling branch: a branch has {len(losses)} usable evaluations in the second half of "
                          f"its window, not {MIN_EVALUATIONS} (a diverged branch?)")
    return statistics.fmean(losses)


def b_simple_near(result: dict, step: int) -> float | None:
    """The reference's B_simple at `step`: its probe at the branch point (--branch-points probes there), else its
    running estimate at the last measurement at or before the step."""
    noise = result.get("noise_scale") or {}
    probe = next((p for p in noise.get("branch_points") or [] if p.get("step") == step), None)
    if probe is not None:
        return probe["b_simple"]
    series = noise.get("series") or []
    before = [p for p in series if p.get("step") is not None and p["step"] <= step and p.get("b_simple")]
    return before[-1]["b_simple"] if before else None


def branch_point(reference: Reference, label: str, step: int, multiples: list[int], window: int, every: int,
                 controls: int, say, lrs: dict[int, float] | None = None) -> dict:
    """Every run of one point, and what they say."""
    root = reference.run_dir / "branches" / f"step-{step}"
    seeds = [reference.seed + i for i in range(controls + 1)]  # the reference's own data order first
    control_results = []
    for index, seed in enumerate(seeds):
        say(f"scaling branch: step {step:,}: control {index} at batch {reference.batch} (seed {seed})")
        folder = root / f"control-{index}"
        control_results.append(run_branch(branch_config(reference, step, reference.batch, seed, window, every,
                                                        folder), folder))
    start = step * reference.batch
    losses = [window_loss(r, start, window) for r in control_results]
    mean, spread, tol = tolerance(losses)
    branches = []
    for multiple in multiples:
        batch = multiple * reference.batch
        seed = reference.seed if multiple > 1 else reference.seed + controls + 1  # A/A: a fresh data order
        folder = root / f"x{multiple}"
        say(f"scaling branch: step {step:,}: batch {batch} ({multiple}x, {window // batch:,} steps)")
        lr = lrs[batch] if lrs and multiple > 1 else None
        result = run_branch(branch_config(reference, step, batch, seed, window, every, folder, lr), folder)
        phases = result.get("batch_schedule") or []
        if multiple > 1 and (len(phases) != 2 or phases[1]["first_step"] != step):
            raise AssertionError(f"the branch in {folder} did not change its batch at step {step}: {phases}")
        loss = window_loss(result, start, window)
        branches.append({"batch": batch, "multiple": multiple, "seed": seed, "steps": window // batch, "loss": loss,
                         "gap": loss - mean, "kept_up": loss - mean <= tol, "lr": result["lr_per_step"][-1],
                         "run": str(folder.relative_to(reference.run_dir))})
    critical, failed = critical_batch(reference.batch, branches)
    return {"at": label, "step": step, "samples": step * reference.batch,
            "b_simple": b_simple_near(reference.result, step),
            "reference_loss": losses[0], "control_losses": losses, "control_mean": mean, "control_spread": spread,
            "tolerance": tol, "matches_reference": matches_reference(reference.result, control_results[0], step),
            "branches": branches, "critical_batch": critical, "bracket": [critical, failed]}


def matches_reference(reference: dict, control: dict, step: int) -> float | None:
    """The largest relative difference between the reference's per-step losses and the control under its
    own data order, over the steps both trained after the point (None: the reference stopped before them):
    the branch continues the reference exactly, or this says by how much it does not."""
    ours, theirs = control["train_loss"], reference["train_loss"]
    end = min(len(ours), len(theirs))
    pairs = [(a, b) for a, b in zip(ours[step:end], theirs[step:end], strict=True) if a is not None and b is not None]
    if not pairs:
        return None
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)


def describe_point(point: dict, reference_batch: int) -> list[str]:
    lines = [f"step {point['step']:,} ({point['at']}, {point['samples']:,} samples): controls "
             f"{point['control_mean']:.4f} +- {point['control_spread']:.4f} (tolerance {point['tolerance']:.4f})"]
    for branch in point["branches"]:
        lines.append(f"  batch {branch['batch']:>6} ({branch['multiple']}x): loss {branch['loss']:.4f}, gap "
                     f"{branch['gap']:+.4f} -> {'keeps up' if branch['kept_up'] else 'falls behind'}")
    low, high = point["bracket"]
    bracket = f"between {low} and {high}" if high is not None else f"at least {low} (every batch tried kept up)"
    if low == reference_batch and high is not None:
        bracket = f"below {high} (the smallest branch fell behind)"
    lines.append(f"  critical batch {bracket}")
    return lines


def branch(run_dir: str, batches: str, at: str, window: str = DEFAULT_WINDOW, controls: int = DEFAULT_CONTROLS,
           say=print, lr_from: str | None = None) -> dict:
    """Branch the run in `run_dir` at each point of `at`, at each multiple of `batches`; write and return the
    record (branches.json)."""
    started = time.perf_counter()
    reference = load_reference(run_dir)
    multiples = parse_multiples(batches)
    if not 1 <= controls <= MAX_CONTROLS:
        raise ConfigError(f"--controls takes 1 to {MAX_CONTROLS} runs at the reference batch; got {controls}")
    largest = multiples[-1] * reference.batch
    if largest > reference.train_samples:
        raise ConfigError(f"--batches {batches}: batch {largest} is larger than the training set "
                          f"({reference.train_samples:,} samples)")
    lrs = tuned_lrs(lr_from) if lr_from is not None else None
    if lrs is not None:
        missing = [m * reference.batch for m in multiples if m > 1 and m * reference.batch not in lrs]
        if missing:
            raise ConfigError(f"--lr-from {lr_from}: the tuned study searched no LR at batch "
                              f"{', '.join(map(str, missing))} (it searched {', '.join(map(str, sorted(lrs)))})")
    points = resolve_points(parse_points(at, "--at"), reference.budget, "--at")
    saved = saved_points(reference.run_dir)
    for label, step in points:
        if step not in saved:
            kept = ", ".join(f"step {s:,}" for s in saved) or "none"
            raise ConfigError(f"--at {label} is step {step:,}, which the run did not keep (kept: {kept}); the "
                              f"reference keeps its points with --branch-points")
    window_samples, every = resolve_window(window, reference,
                                           [reference.batch] + [m * reference.batch for m in multiples])
    runs = len(points) * (controls + 1 + len(multiples))
    say(f"scaling branch: {len(points)} point(s) x ({controls + 1} controls at batch {reference.batch} + "
        f"{len(multiples)} branches) = {runs} runs of {window_samples:,} samples each "
        f"({runs * window_samples:,} samples in all)")
    record = {"schema": SCHEMA, "reference": str(reference.run_dir), "batch": reference.batch,
              "units_per_sample": reference.units_per_sample,
              "budget_steps": reference.budget, "window_samples": window_samples, "eval_every_samples": every,
              "controls": controls, "lr_from": lr_from,
              "tolerance_rule": "one-sided 99% prediction bound of a run at the reference batch from the controls "
                                f"(t x s x sqrt(1 + 1/n)), at least {TOLERANCE_FLOOR:g} of their mean loss",
              "points": []}
    for label, step in points:
        point = branch_point(reference, label, step, multiples, window_samples, every, controls, say, lrs)
        record["points"].append(point)
        for line in describe_point(point, reference.batch):
            say(f"scaling branch: {line}")
    record["seconds"] = time.perf_counter() - started
    from scaling.files import write_json_atomic

    write_json_atomic(reference.run_dir / BRANCHES_FILE, record)
    say(f"scaling branch: wrote {reference.run_dir / BRANCHES_FILE}")
    return record


def main(argv: list[str]) -> int:
    from scaling.config import ArgumentParser

    parser = ArgumentParser(prog="scaling branch", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the reference run's folder (trained with --branch-points)")
    parser.add_argument("--batches", default="2x,4x,8x", help="multiples of the reference batch (default 2x,4x,8x)")
    parser.add_argument("--at", required=True, help=f"the points to branch from: {POINT_FORM}, each kept by the "
                                                    f"reference's --branch-points")
    parser.add_argument("--window", default=DEFAULT_WINDOW,
                        help="samples each branch trains: a number, or a fraction of the reference's budget "
                             f"(default {DEFAULT_WINDOW}), rounded up to a multiple of every batch")
    parser.add_argument("--controls", type=int, default=DEFAULT_CONTROLS,
                        help=f"runs at the reference batch under other data orders, for the tolerance (default "
                             f"{DEFAULT_CONTROLS}, besides the reference's own order)")
    parser.add_argument("--lr-from", metavar="STUDY_DIR",
                        help="a tuned study's folder: each branch at the best LR it found at that batch (default: "
                             "the reference's LR rule)")
    args = parser.parse_args(argv)
    branch(args.run_dir, args.batches, args.at, args.window, args.controls, lr_from=args.lr_from)
    return 0
