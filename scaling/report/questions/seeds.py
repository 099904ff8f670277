"""How much do results vary between seeds? Per configuration run with several seeds, the spread of train time
to target, and the MLPerf-style score (fastest and slowest seed dropped): the finding, this question's
section (the per-configuration table) and the scoring.
"""

from __future__ import annotations

import statistics

from scaling.report import formatting as fmt
from scaling.report.aggregates import stat
from scaling.report.finding import OBSERVATION, Finding, answers, named
from scaling.report.render import Block, Heading, Note, Table
from scaling.report.runs import Configuration
from scaling.report.study import Study

QUESTION = "How much do results vary between seeds?"

# MLPerf Training scores a benchmark from several runs by dropping the fastest and the slowest and
# averaging the rest, so that one lucky or unlucky seed does not decide it; it asks for at least 5 runs.
MLPERF_MIN_RUNS = 5


def mlperf_score(times: list[float]) -> float | None:
    """MLPerf Training's scoring: drop the fastest and the slowest run, average the rest."""
    if len(times) < MLPERF_MIN_RUNS:
        return None
    kept = sorted(times)[1:-1]
    return statistics.fmean(kept)


def seeded_configurations(study: Study) -> list[Configuration]:
    """Configurations run with several seeds."""
    return [c for c in study.configurations if len(c.runs) >= 2]


# --- finding and section ------------------------------------------------------------------------------------


def seeds(study: Study) -> list[Finding]:
    seeded = seeded_configurations(study)
    if not seeded:
        return []
    spread = [(c, stat(run.train_time for run in c.runs)) for c in seeded]
    spread = [(c, s) for c, s in spread if s.cv is not None]
    out = []
    if spread:
        worst, s = max(spread, key=lambda pair: pair[1].cv)
        out.append(Finding("seed_spread", f"Across seeds, train time to target varies by up to {s.cv:.0%} (std / mean, "
                                          f"{worst.label}, {s.n} seeds).", n_seeds=s.n, kind=OBSERVATION,
                           numbers={"cv": s.cv, "configuration": worst.label,
                                    "cv_by_configuration": {c.label: st.cv for c, st in spread}}))
    scored = [(c, mlperf_time(c)) for c in seeded]
    scored = [(c, t) for c, t in scored if t is not None]
    if scored:
        best, score = min(scored, key=lambda pair: pair[1])
        out.append(Finding("mlperf_score", f"MLPerf-style score (fastest and slowest of {MLPERF_MIN_RUNS}+ "
                                           f"seeds dropped, rest averaged): best is {named(best)} at "
                                           f"{fmt.seconds(score)} s.", n_seeds=len(best.runs), kind=OBSERVATION,
                           numbers={"configuration": best.label, "score_s": score}))
    return out


def mlperf_time(configuration: Configuration) -> float | None:
    """MLPerf-style score on wall time to target (MLPerf's time-to-train includes evaluation)."""
    return mlperf_score([run.wall_time for run in configuration.runs if run.wall_time is not None])


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    seeded = seeded_configurations(study)
    if not seeded:
        return blocks + [Note("No configuration ran with several seeds: no spread to report.")]
    scores = {id(c): mlperf_time(c) for c in seeded}
    show_score = any(score is not None for score in scores.values())
    header = ["configuration", "seeds", "reached", "train time to target (s)", "wall time to target (s)",
              "steps to target", "throughput (samples/s)"] + ["MLPerf-style score (s)"] * show_score
    rows = [_seed_row(c, scores[id(c)], show_score) for c in seeded]
    blocks.append(Table(header, rows))
    if show_score:
        blocks.append(Note(f"MLPerf-style score: as in MLPerf Training, the fastest and the slowest wall time to "
                           f"target are dropped and the rest averaged; needs {MLPERF_MIN_RUNS} or more "
                           f"seeds that reached the target."))
    else:
        blocks.append(Note(f"Scoring that drops the fastest and slowest seed (as MLPerf does) needs at least "
                           f"{MLPERF_MIN_RUNS} seeds that reached the target; none has that many."))
    return blocks + answers(seeds(study), "No configuration reached the target with several seeds.")


def _seed_row(configuration: Configuration, score: float | None, show_score: bool) -> list[str]:
    runs = configuration.runs
    train = stat(run.train_time for run in runs)
    wall = stat(run.wall_time for run in runs)
    steps = stat(run.steps_to_target for run in runs)
    rate = stat(run.throughput for run in runs)
    row = [configuration.label, str(len(runs)), f"{len(configuration.reached)}/{len(runs)}",
           fmt.mean_std(train.mean, train.std), fmt.mean_std(wall.mean, wall.std),
           fmt.mean_std(steps.mean, steps.std, fmt.integer), fmt.mean_std(rate.mean, rate.std, fmt.integer)]
    return row + [fmt.seconds(score)] * show_score
