"""A tuned study's searches as the report sees them: which runs are the best LR at each batch, recomputed from
the runs' result files, and the "tuned" configurations they form. Below Study (study.py calls it at load):
no question, no formatting.

study.json's `tuning` (written by the sweep, scaling/study/tune.py) records, per grid point without the seed,
the LR grid, every trial (search and seed runs), the two candidates re-run with every seed and the sweep's
best. The record says what was run; the result files say how it went: a candidate's steps are its runs'
`steps_to_target`, the best is the candidate with the fewest median steps among those whose every seed reached
the target (Shallue et al. 2018: the metaparameters retuned at every batch, the best trial kept). Where the
result files and study.json's `best` disagree, the result files win and a warning line says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scaling.errors import shown
from scaling.report.runs import RUN_ONLY_KEYS, Configuration, Run

TUNED = "tuned"  # the series name of the best LR at every batch
LR = "base_lr"  # the searched setting that is the LR (lr_scaling none: base_lr is the LR at that batch)
TRIAL_STOPS = ("cap_steps", "pace")  # a search trial's cap and pace: they do not change how it trains up to them


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class Candidate:
    """One LR re-run with every seed: its runs (None where a run is missing) and their steps to target."""

    settings: dict[str, Any]
    ids: list[str]
    runs: list[Run | None]
    recorded_median: float | None = None  # study.json's median_steps (the sweep's record)

    @property
    def lr(self) -> float | None:
        value = self.settings.get(LR)
        if _number(value):
            return float(value)
        scaled = [run.lr_scaled for run in self.runs if run is not None and run.lr_scaled]
        return float(scaled[0]) if scaled else None

    @property
    def steps(self) -> list[int | None]:
        return [run.steps_to_target if run is not None and run.reached else None for run in self.runs]

    @property
    def median_steps(self) -> float | None:
        """The median over seeds when every seed reached the target, else None (never the best)."""
        steps = self.steps
        if not steps or any(s is None for s in steps):
            return None
        return float(statistics.median(steps))


@dataclass
class Search:
    """The search at one global batch of one tuning group, with its best recomputed from the result files."""

    group: dict[str, Any]  # the grid point without the seed (global_bs among them)
    batch: int
    grid: list[float]  # the LR grid searched, ascending
    trials: list[dict[str, Any]]  # study.json's trial records
    runs: dict[str, Run]  # trial id -> its run (where one was found)
    candidates: list[Candidate]
    best: Candidate | None
    recorded_best_lr: float | None
    done: bool
    series: str = TUNED
    tuned_lrs: list[float] = field(default_factory=list)  # LRs the search phase tried, ascending

    @property
    def others(self) -> dict[str, Any]:
        """The group's settings besides the batch (the other grid axes)."""
        return {k: v for k, v in self.group.items() if k != "global_bs"}

    @property
    def search_trials(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t.get("phase") == "search"]

    @property
    def trial_ids(self) -> set[str]:
        return {str(t["id"]) for t in self.trials} | {i for c in self.candidates for i in c.ids}

    @property
    def steps_trained(self) -> int:
        """Optimizer steps the search and its seed runs trained (each run's `steps`, else the record's)."""
        total = 0
        for trial in self.trials:
            run = self.runs.get(str(trial["id"]))
            steps = run.get("steps") if run is not None else None
            if not isinstance(steps, int):
                steps = trial.get("steps_run")
            total += steps if isinstance(steps, int) and not isinstance(steps, bool) else 0
        return total

    @property
    def bracket(self) -> tuple[float | None, float | None]:
        """The tried LRs next to the best one on each side (None where it lies at the edge of what was tried:
        the best may lie beyond the searched range)."""
        if self.best is None or self.best.lr is None:
            return None, None
        lr = self.best.lr
        below = [v for v in self.tuned_lrs if v < lr * (1 - 1e-9)]
        above = [v for v in self.tuned_lrs if v > lr * (1 + 1e-9)]
        return (max(below) if below else None, min(above) if above else None)

    @property
    def best_runs(self) -> list[Run]:
        return [run for run in self.best.runs if run is not None] if self.best else []

    @property
    def stand_in(self) -> list[Run]:
        """The runs that stand for this batch in the tuned series: the best's; without a best, the candidate
        the most seeds of which reached the target, or (no candidate) the finished search trial that trained
        the most steps, so that the series records that the batch did not reach the target."""
        if self.best is not None:
            return self.best_runs
        with_runs = [c for c in self.candidates if any(run is not None for run in c.runs)]
        if with_runs:
            chosen = max(with_runs, key=lambda c: sum(s is not None for s in c.steps))
            return [run for run in chosen.runs if run is not None]
        finished = [self.runs[str(t["id"])] for t in self.search_trials if str(t["id"]) in self.runs
                    and self.runs[str(t["id"])].finished]
        return [max(finished, key=lambda run: (run.get("steps") or 0))] if finished else []


def _trial_problem(trial: Any) -> str | None:
    if not isinstance(trial, dict):
        return "a trial that is not an object"
    if not isinstance(trial.get("id"), str) or not trial["id"]:
        return f"a trial with 'id' {shown(trial.get('id'), 40)}"
    if not isinstance(trial.get("settings", {}), dict):
        return f"trial {shown(trial['id'], 40)} with 'settings' that are not an object"
    return None


def record_problem(record: Any) -> str | None:
    """What is wrong with one entry of study.json's `tuning` (None when the report can use it)."""
    if not isinstance(record, dict):
        return "is not an object"
    batch, group = record.get("global_bs"), record.get("group")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        return f"has 'global_bs' {shown(batch, 40)}, not a batch size"
    if not isinstance(group, dict):
        return f"has 'group' {shown(group, 40)}, not an object"
    if not isinstance(record.get("trials", []), list) or not isinstance(record.get("candidates", []), list):
        return "has 'trials' or 'candidates' that are not lists"
    for trial in record.get("trials", []):
        problem = _trial_problem(trial)
        if problem:
            return f"has {problem}"
    for candidate in record.get("candidates", []):
        if not (isinstance(candidate, dict) and isinstance(candidate.get("settings"), dict)
                and isinstance(candidate.get("ids"), list) and all(isinstance(i, str) for i in candidate["ids"])):
            return "has a candidate without 'settings' and a list of run 'ids'"
    grid = (record.get("grids") or {}).get(LR, []) if isinstance(record.get("grids"), dict) else None
    if not isinstance(grid, list) or not all(_number(v) for v in grid):
        return f"has an LR grid {shown(grid, 40)} that is not a list of positive numbers"
    return None


def select(records: Any, runs: list[Run], warn: Callable[[str], None]) -> list[Search]:
    """Every usable search of study.json's `tuning`, its best recomputed from the result files; a damaged
    entry is named in one warning line and left out."""
    if not isinstance(records, list):
        warn(f"scaling: warning: study.json 'tuning' is {shown(records, 40)}, not a list; the report reads the "
             f"study as untuned")
        return []
    by_id = {run.id: run for run in runs}
    searches = []
    for index, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            warn(f"scaling: warning: study.json tuning[{index}] {problem}; that search is left out of the report")
            continue
        search = _search(record, by_id)
        recorded = search.recorded_best_lr
        found = search.best.lr if search.best else None
        if search.done and recorded != found and not (recorded and found and math.isclose(recorded, found)):
            named = f"LR {shown(recorded, 20)}" if recorded is not None else "no LR"
            given = f"LR {shown(found, 20)}" if found is not None else "no LR (no candidate reached the target with every seed)"
            warn(f"scaling: warning: study.json's tuning at batch {search.batch} names {named} the best, its runs' "
                 f"result files give {given}: the report follows the result files")
        searches.append(search)
    _name_series(searches)
    return searches


def _search(record: dict[str, Any], by_id: dict[str, Run]) -> Search:
    trials = list(record.get("trials") or [])
    runs = {str(t["id"]): by_id[str(t["id"])] for t in trials if str(t["id"]) in by_id}
    candidates = []
    for entry in record.get("candidates") or []:
        ids = [str(i) for i in entry["ids"]]
        for i in ids:
            if i in by_id:
                runs.setdefault(i, by_id[i])
        median = entry.get("median_steps")
        candidates.append(Candidate(dict(entry["settings"]), ids, [by_id.get(i) for i in ids],
                                    float(median) if _number(median) else None))
    winners = [c for c in candidates if c.median_steps is not None]
    best = min(winners, key=lambda c: c.median_steps) if winners else None  # ties: the sweep's order
    recorded = record.get("best")
    recorded_lr = recorded.get("settings", {}).get(LR) if isinstance(recorded, dict) and isinstance(
        recorded.get("settings"), dict) else None
    tried = sorted({float(t["settings"][LR]) for t in trials if t.get("phase") == "search"
                    and t.get("setting", LR) == LR and _number((t.get("settings") or {}).get(LR))})
    grid = sorted(float(v) for v in (record.get("grids") or {}).get(LR, []))
    return Search(dict(record["group"]), record["global_bs"], grid, trials, runs, candidates, best,
                  float(recorded_lr) if _number(recorded_lr) else None, bool(record.get("done")),
                  tuned_lrs=tried)


def _name_series(searches: list[Search]) -> None:
    """"tuned", or "tuned, warmup_steps=100" where the grid has axes besides the batch."""
    varying = sorted({k for s in searches for k in s.others
                      if len({repr(o.others.get(k)) for o in searches}) > 1})
    for search in searches:
        parts = [f"{k}={search.others[k]}" for k in varying if k in search.others]
        search.series = ", ".join([TUNED, *parts])


def trial_ids(searches: list[Search]) -> set[str]:
    """Every run a search made (trials and seed runs): they leave the questions, except the best's."""
    return {i for search in searches for i in search.trial_ids}


def tuned_configurations(searches: list[Search]) -> list[Configuration]:
    """One configuration per search (grid point without the seed and batch): the best LR's runs (one a
    capped search trial, the others uncapped seed runs), marked `tuned`, finished runs only."""
    out = []
    for search in searches:
        runs = [run for run in search.stand_in if run.finished]
        if not runs:
            continue
        for run in runs:
            run.tuned = True
        settings = {k: v for k, v in runs[0].config.items() if k not in (*RUN_ONLY_KEYS, *TRIAL_STOPS)}
        settings["lr_scaling"] = TUNED
        lr = search.best.lr if search.best else None
        what = f"lr {lr:.3g}" if lr is not None else "no LR reached the target"
        out.append(Configuration(settings, runs, search.series, f"batch {search.batch} ({search.series}, {what})"))
    return out
