"""Tuning at every global batch: a study spec's `tune:` block (docs/studies.md, "Tuned studies").

    tune:
      base_lr: [0.003, 3.0]   # searched on a log grid at every global batch (neighbours a factor `resolution` apart)
      resolution: 2           # grid step of the LR (default 2)
      trials: 8               # at most this many search trials per batch (per tuned setting)
      warmup_steps: [0, 200]  # any other numeric run setting: a linear grid of 5 values (or {range, points, scale})
      stop_factor: 1.5        # a trial is capped at this many times the best steps found so far at its batch
      pace: true              # and stopped once it is that far behind the best's curve on the way (default)
      compare: [linear, sqrt] # also run these LR rules (from base.base_lr at base.base_bs) at every batch

Protocol (Shallue et al. 2018: the metaparameters retuned at every batch, the best trial kept). Per global batch
and tuned setting, in order (the LR first; later settings at the best values found before them):
1. coarse: every `stride`-th value of the grid, both ends included, from the largest down (large LRs diverge
   quickly, and a fast trial early lets the slower ones below it be capped);
2. refine: bisect the grid between the best trial and its nearest tried neighbour on each side until both
   neighbours one grid step away are tried (the best is then bracketed by them) or the budget is spent; when no
   trial reached the target, bisect the widest untried gap instead;
3. seeds: the two best trials run again with each of the spec's other seeds (no cap); the best is the one with
   the fewest median steps among those whose every seed reached the target.
A trial runs with `cap_steps` = ceil(stop_factor x the fewest steps any trial at its batch took so far): past
that it cannot beat the best (at one seed, by more than the factor), so it ends as not reached; the cap does
not change the LR schedule, so a capped trial that reaches the target is the uncapped run. With `pace` (the
default) it also runs with the best trial's curve as milestones (`pace_for`): where the best got to a level
(from halfway to the target on) at step s, a trial not there by s + (stop_factor - 1) x the best's steps to
target stops as not reached: it is later on the way than the cap allows at the end. Runs that diverge,
stall, fail or miss the target rank below every run that reached it.

Each trial is an ordinary configuration (its id is the hash of its resolved config, its folder runs/<id>): the
search is a function of the finished trials' result files, so a rerun replays it, skips what is finished and
resumes the trial that was stopped.
"""

from __future__ import annotations

import math
import statistics
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scaling.config import FIELDS, LR_SCALING_RULES, RunConfig, shown
from scaling.errors import ConfigError

TUNE_OPTIONS = {"trials", "resolution", "stop_factor", "pace", "compare"}
DEFAULT_TRIALS = 8
DEFAULT_RESOLUTION = 2.0
DEFAULT_STOP_FACTOR = 1.5
DEFAULT_POINTS = 5  # values of a linear grid
MAX_GRID = 200  # values of one setting's grid
MAX_TRIALS = 100
CANDIDATES = 2  # trials re-run with every seed
PACE_FROM = 0.5  # pace milestones where the best trial was at least this far from its start to the target
MAX_PACE = 100  # milestones per trial (RunConfig.pace)
# Settings a search cannot vary: they define the batch, the rule or the run itself.
NOT_TUNABLE = {"global_bs", "per_device_bs", "accumulation_steps", "emulate_processes", "seed", "cap_steps", "pace",
               "target_levels", "base_bs", "max_steps", "max_epochs", "max_time", "num_samples", "target_accuracy", "target_loss",
               "output_dir"}
_HINTS = typing.get_type_hints(RunConfig)


@dataclass(frozen=True)
class Dimension:
    """One tuned setting and its grid, ascending."""

    name: str
    values: tuple[float, ...]
    scale: str  # log | linear

    def describe(self) -> str:
        step = f", x{self.values[1] / self.values[0]:.3g} apart" if self.scale == "log" and len(self.values) > 1 else ""
        return f"{self.name}: {len(self.values)} values {self.values[0]:g}..{self.values[-1]:g} ({self.scale}{step})"


@dataclass
class TuneSpec:
    dimensions: list[Dimension]  # base_lr first
    trials: int = DEFAULT_TRIALS
    stop_factor: float = DEFAULT_STOP_FACTOR
    compare: list[str] = field(default_factory=list)
    pace: bool = True  # stop trials that fall behind the best's curve (pace_for), not only at the cap

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sig(value: float) -> float:
    """Four significant figures: readable values, and ids that do not hang on the last bit of a float."""
    return float(f"{value:.4g}")


def _is_int_field(name: str) -> bool:
    return _HINTS[name] in (int, int | None)


def _is_numeric_field(name: str) -> bool:
    return _HINTS[name] in (int, float, int | None, float | None)


def parse_dimension(name: str, entry: Any, resolution: float) -> Dimension:
    """`[low, high]` or `{range: [low, high], scale: log|linear, points: N}`, checked in one line each."""
    where = f"study spec: tune '{name}'"
    scale = "log" if name == "base_lr" else "linear"
    points = None
    if isinstance(entry, dict):
        unknown = sorted(set(map(str, entry)) - {"range", "scale", "points"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {shown(unknown[0], 30)}; known: points, range, scale")
        scale, points, entry = entry.get("scale", scale), entry.get("points"), entry.get("range")
        if scale not in ("log", "linear"):
            raise ConfigError(f"{where}: scale must be log or linear, got {shown(scale)}")
        if points is not None and not (isinstance(points, int) and not isinstance(points, bool)
                                       and 2 <= points <= MAX_GRID):
            raise ConfigError(f"{where}: points must be a whole number from 2 to {MAX_GRID}, got {shown(points)}")
    if not (isinstance(entry, list) and len(entry) == 2 and all(_number(v) for v in entry) and entry[0] < entry[1]):
        raise ConfigError(f"{where} must be a range [low, high] of two numbers, low < high, got {shown(entry)}")
    low, high = float(entry[0]), float(entry[1])
    if scale == "log" and low <= 0:
        raise ConfigError(f"{where}: a log-scale range must be above 0, got {shown(entry)}")
    if name == "base_lr" and low <= 0:
        raise ConfigError(f"{where}: learning rates must be > 0, got {shown(entry)}")
    if scale == "log":
        count = points or math.ceil(math.log(high / low) / math.log(resolution) - 1e-9) + 1
        if count > MAX_GRID:
            raise ConfigError(f"{where}: the range {low:g}..{high:g} at resolution {resolution:g} has {count} values, "
                              f"over the limit of {MAX_GRID}: a coarser resolution or a narrower range")
        values = [low * (high / low) ** (k / (count - 1)) for k in range(count)]
    else:
        count = points or DEFAULT_POINTS
        values = [low + (high - low) * k / (count - 1) for k in range(count)]
    if _is_int_field(name):
        values = [float(round(v)) for v in values]
    values = sorted({_sig(v) for v in values})
    if len(values) < 2:
        raise ConfigError(f"{where}: the range {shown(entry)} holds fewer than two distinct values")
    return Dimension(name, tuple(values), scale)


def parse_tune(section: Any) -> TuneSpec | None:
    """The spec's `tune:` block, every key checked before anything runs; None when there is none."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("study spec: 'tune' must be a mapping, e.g. {base_lr: [0.003, 3.0], trials: 8}")
    if "base_lr" not in section:
        raise ConfigError("study spec: 'tune' must search base_lr (e.g. base_lr: [0.003, 3.0]); other numeric "
                          "settings may be added with their ranges")
    trials = section.get("trials", DEFAULT_TRIALS)
    if not (isinstance(trials, int) and not isinstance(trials, bool) and 3 <= trials <= MAX_TRIALS):
        raise ConfigError(f"study spec: tune 'trials' must be a whole number from 3 to {MAX_TRIALS}, got {shown(trials)}")
    resolution = section.get("resolution", DEFAULT_RESOLUTION)
    if not (_number(resolution) and 1.05 <= resolution <= 100):
        raise ConfigError(f"study spec: tune 'resolution' (the ratio of neighbouring LRs on the grid) must be a "
                          f"number from 1.05 to 100, got {shown(resolution)}")
    stop_factor = section.get("stop_factor", DEFAULT_STOP_FACTOR)
    if not (_number(stop_factor) and 1 <= stop_factor <= 100):
        raise ConfigError(f"study spec: tune 'stop_factor' must be a number from 1 to 100 (1.5: a trial stops at "
                          f"1.5x the best steps so far), got {shown(stop_factor)}")
    pace = section.get("pace", True)
    if not isinstance(pace, bool):
        raise ConfigError(f"study spec: tune 'pace' must be true or false (stop trials behind the best's curve), "
                          f"got {shown(pace)}")
    compare = section.get("compare", [])
    if not (isinstance(compare, list) and all(isinstance(r, str) and r in LR_SCALING_RULES for r in compare)):
        raise ConfigError(f"study spec: tune 'compare' must be a list of LR rules ({', '.join(LR_SCALING_RULES)}), "
                          f"got {shown(compare)}")
    dimensions = []
    for name, entry in section.items():
        if name in TUNE_OPTIONS:
            continue
        if not isinstance(name, str) or name not in FIELDS:
            raise ConfigError(f"study spec: unknown key {shown(name, 40)} in 'tune' (not a run setting; options: "
                              f"{', '.join(sorted(TUNE_OPTIONS))})")
        if name in NOT_TUNABLE or not _is_numeric_field(name):
            raise ConfigError(f"study spec: tune '{name}': only numeric training settings can be tuned (base_lr, "
                              f"warmup_steps, momentum, beta2, ...), not the batch, the seed, the budget or the target")
        dimensions.append(parse_dimension(name, entry, float(resolution)))
    dimensions.sort(key=lambda d: d.name != "base_lr")  # the LR first, the others in the spec's order
    return TuneSpec(dimensions, trials, float(stop_factor), list(dict.fromkeys(compare)), pace)


# ---- the search on one grid (pure: a function of the trials so far) ----------------------------------------


@dataclass
class Trial:
    """One finished trial of a search: its place on the grid and how it ended."""

    index: int
    value: float
    status: str
    steps: int | None  # steps to target when reached, else None
    id: str = ""
    curve: tuple[tuple[int, float], ...] = ()  # a reached trial's (step, target metric) up to the target

    @property
    def reached(self) -> bool:
        return self.status == "reached" and self.steps is not None


def coarse_indices(size: int, budget: int) -> list[int]:
    """Every stride-th index, both ends included, with about half the budget; largest first."""
    count = min(size, max(3, budget // 2))
    stride = max(1, math.ceil((size - 1) / max(1, count - 1)))
    indices = sorted(set(range(0, size, stride)) | {size - 1})
    return indices[::-1]


def best_trial(trials: dict[int, Trial]) -> Trial | None:
    """The reached trial with the fewest steps (the larger value among equals), or None."""
    reached = [t for t in trials.values() if t.reached]
    return min(reached, key=lambda t: (t.steps, -t.index)) if reached else None


def next_index(size: int, trials: dict[int, Trial], budget: int) -> int | None:
    """The next grid index to try, or None when the search is done (bracketed, or the budget spent)."""
    if len(trials) >= budget or len(trials) >= size:
        return None
    for index in coarse_indices(size, budget):
        if index not in trials:
            return index
    best = best_trial(trials)
    tried = sorted(trials)
    if best is None:  # nothing reached: the best may lie in the widest gap (between too slow and diverged)
        gaps = [(b - a, a) for a, b in zip(tried, tried[1:], strict=False) if b - a > 1]
        if not gaps:
            return None
        width, low = max(gaps)
        return low + width // 2
    lower = max((i for i in tried if i < best.index), default=None)
    upper = min((i for i in tried if i > best.index), default=None)
    options = []
    if upper is not None and upper - best.index > 1:
        options.append((upper - best.index, 1, (best.index + upper) // 2 + (upper - best.index) % 2))
    if lower is not None and best.index - lower > 1:
        options.append((best.index - lower, 0, (lower + best.index) // 2))
    if not options:
        return None
    return max(options)[2]


def bracket(values: tuple[float, ...], trials: dict[int, Trial], best: int) -> tuple[float | None, float | None]:
    """The tried values next to the best on each side (None where the best is at the edge of what was tried)."""
    lower = max((i for i in trials if i < best), default=None)
    upper = min((i for i in trials if i > best), default=None)
    return (values[lower] if lower is not None else None, values[upper] if upper is not None else None)


def cap_for(trials: dict[int, Trial], stop_factor: float) -> int | None:
    best = best_trial(trials)
    return None if best is None else max(1, math.ceil(stop_factor * best.steps))


def pace_for(trials: dict[int, Trial], stop_factor: float) -> list[float]:
    """The milestones of the next trial (RunConfig.pace, flat step, value, ...) from the best trial so far:
    wherever that trial's best value of the target metric so far was at least PACE_FROM of the way from its
    first evaluation to the target at step s, the same value by step s + (stop_factor - 1) x S, S the best's
    steps to target: the lateness the cap allows at the target (stop_factor x S), allowed at every level on
    the way. Not stop_factor x s: a larger LR often gets halfway sooner and then creeps to the target (its
    noise floor is near it), and a factor of its early steps stops a smaller LR that would have won (on the
    noisy quadratic model of benchmarks/tuning.py that moved the best one grid step in 8 of 40 searches; the
    allowance of S moves none). Empty before any trial reached the target."""
    best = best_trial(trials)
    if best is None or len(best.curve) < 2:
        return []
    (_, first), (_, goal) = best.curve[0], best.curve[-1]
    higher = goal >= first
    milestones: list[tuple[int, float]] = []
    level = first
    for step, value in best.curve[:-1]:  # the last point is the target: the cap stands for it
        level = max(level, value) if higher else min(level, value)
        if goal != first and (level - first) / (goal - first) >= PACE_FROM:
            milestone = max(1, math.ceil(step + (stop_factor - 1) * best.steps))
            if not milestones or milestone > milestones[-1][0]:
                milestones.append((milestone, level))
    if len(milestones) > MAX_PACE:  # evenly thinned, the last kept
        keep = {round(i * (len(milestones) - 1) / (MAX_PACE - 1)) for i in range(MAX_PACE)}
        milestones = [m for i, m in enumerate(milestones) if i in keep]
    return [number for milestone in milestones for number in milestone]


def median_steps(steps: list[int | None]) -> float | None:
    """The median over seeds when every seed reached the target, else None (a candidate a seed missed never
    wins: its steps would be those of the lucky seeds)."""
    if not steps or any(s is None for s in steps):
        return None
    return statistics.median(steps)


# ---- the search of a study: trials as configurations, decided from their results ------------------------------

# StudyConfig -> (status, steps to target, steps run, (step, target metric) up to the target when reached)
Outcome = Callable[[Any], tuple[str, int | None, int | None, tuple[tuple[int, float], ...]]]


@dataclass
class BatchSearch:
    """The search at one global batch of one tuning group: its trials so far, for study.json's `tuning`."""

    group: dict[str, Any]  # the study overrides of this group (global_bs among them), without the seed
    global_bs: int
    dimensions: list[Dimension]
    seeds: list[int]
    trials: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, float] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    done: bool = False

    def record(self) -> dict[str, Any]:
        search = [t for t in self.trials if t["phase"] == "search"]
        return {"group": self.group, "global_bs": self.global_bs,
                "grids": {d.name: list(d.values) for d in self.dimensions},
                "trials": self.trials, "search_trials": len(search),
                "steps_trained": sum(t.get("steps_run") or 0 for t in self.trials),
                "candidates": self.candidates, "best": self.best, "done": self.done}


def search_batch(search: BatchSearch, spec: TuneSpec, make: Callable[[dict[str, Any]], Any],
                 outcome: Outcome) -> Iterator[Any]:
    """Yield the configurations of one batch's search in order; after each, `outcome(config)` reads how it
    ended (from its result file). `make(overrides)` builds a configuration."""
    seed = search.seeds[0]
    for dimension in spec.dimensions:
        tried: dict[int, Trial] = {}
        while (index := next_index(len(dimension.values), tried, spec.trials)) is not None:
            overrides = {**search.group, **search.chosen, dimension.name: dimension.values[index],
                         "lr_scaling": "none", "seed": seed}
            cap = cap_for(tried, spec.stop_factor)
            if cap is not None:
                overrides["cap_steps"] = cap
            pace = pace_for(tried, spec.stop_factor) if spec.pace else []
            if pace:
                overrides["pace"] = pace
            config = make(overrides)
            yield config
            status, steps, run, curve = outcome(config)
            tried[index] = Trial(index, dimension.values[index], status, steps, config.id, tuple(curve))
            search.trials.append({"id": config.id, "phase": "search", "setting": dimension.name,
                                  "settings": {**search.chosen, dimension.name: dimension.values[index]},
                                  "seed": seed, "cap_steps": cap, "pace": len(pace) // 2, "status": status,
                                  "steps": steps, "steps_run": run})
        best = best_trial(tried)
        if best is None:  # no value reached the target: keep the spec's own for the settings after this one
            search.done = True
            return
        search.chosen[dimension.name] = best.value
        last_tried, last_dimension = tried, dimension
    ranked = sorted((t for t in last_tried.values() if t.reached), key=lambda t: (t.steps, -t.index))
    for trial in ranked[:CANDIDATES]:
        settings = {**search.chosen, last_dimension.name: trial.value}
        steps = [trial.steps]
        ids = [trial.id]
        for other in search.seeds[1:]:
            config = make({**search.group, **settings, "lr_scaling": "none", "seed": other})
            yield config
            status, reached_steps, run, _ = outcome(config)
            steps.append(reached_steps if status == "reached" else None)
            ids.append(config.id)
            search.trials.append({"id": config.id, "phase": "seeds", "setting": last_dimension.name,
                                  "settings": settings, "seed": other, "cap_steps": None, "pace": 0,
                                  "status": status,
                                  "steps": reached_steps, "steps_run": run})
        low, high = bracket(last_dimension.values, last_tried, trial.index)
        search.candidates.append({"settings": settings, "ids": ids, "steps": steps,
                                  "median_steps": median_steps(steps), "low": low, "high": high})
    winners = [c for c in search.candidates if c["median_steps"] is not None]
    if winners:
        search.best = dict(min(winners, key=lambda c: c["median_steps"]))
    search.done = True


def groups_without_seed(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's grid points with the seed taken out, each once, in order."""
    seen, groups = set(), []
    for point in points:
        group = {k: v for k, v in point.items() if k != "seed"}
        key = repr(sorted(group.items(), key=lambda kv: kv[0]))
        if key not in seen:
            seen.add(key)
            groups.append(group)
    return groups
