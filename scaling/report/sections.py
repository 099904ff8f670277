"""The report's sections, in order. Each takes the Study and returns blocks (render.py); a section whose data
is absent returns its heading and a one-line Note saying why.

Extension point: to add a section (gradient noise scale, predictions...), write
`def my_section(study: Study) -> list[Block]` and insert it into SECTIONS; plots go in plots.py, numbers in
analysis.py and sentences in findings.py (FINDINGS) so that they also reach the Conclusions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scaling.report import analysis, findings, noise_section, plots
from scaling.report import formatting as fmt
from scaling.report.render import Block, Bullets, Figure, Heading, Note, Paragraph, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study

Section = Callable[[Study], list[Block]]

BEST_MARK = "★ best"

QUESTION_FASTER = "Is a bigger batch faster to the target?"
QUESTION_LARGEST = "What is the largest useful batch?"
QUESTION_LR = "How should the learning rate scale?"
QUESTION_POWER = "Does a power of two matter?"
QUESTION_DATA = "When does data loading become the limit?"
QUESTION_SEEDS = "How much do results vary between seeds?"


def _figure(path: Path | None, caption: str, missing: str) -> list[Block]:
    return [Figure(path, caption)] if path is not None else [Note(missing)]


def _answers(sentences: list[str], missing: str) -> list[Block]:
    return [Bullets(sentences)] if sentences else [Note(missing)]


# --- sections ---------------------------------------------------------------------------------------------


def title(study: Study) -> list[Block]:
    statuses = Counter(run.status for run in study.runs)
    status_text = ", ".join(f"{n} {findings.status_words(status)}" for status, n in statuses.most_common())
    devices = sorted({(run.get("environment") or {}).get("device") for run in study.runs} - {None})
    runs, configurations = len(study.runs), len(study.configurations)
    text = (f"{runs} run{'s' * (runs != 1)} in {configurations} configuration{'s' * (configurations != 1)}, "
            f"read from {study.root} ({status_text}).")
    if study.target is not None:
        text += f" Target: {study.target_text()}."
    if devices:
        text += f" Device: {'; '.join(devices)}."
    return [
        Heading(f"Scaling report: {study.name}", 1),
        Paragraph(text),
        Paragraph("Time to target is train time, evaluation excluded (the fair clock across batch sizes, "
                  "docs/clock.md), unless marked wall. ± is the sample standard deviation over seeds."),
    ]


def conclusions(study: Study) -> list[Block]:
    return [Heading("Conclusions"), *_answers(findings.conclusions(study), "No conclusion: too little data.")]


def configurations_table(study: Study) -> list[Block]:
    """Every run, grouped by configuration, the best configuration marked."""
    runs = [run for configuration in study.configurations for run in _by_seed(configuration.runs)]
    show_seed = len({run.seed for run in study.runs}) > 1
    show_wait = any(run.data_wait is not None for run in runs)
    show_memory = any(run.peak_memory is not None for run in runs)
    header = ["id", "global batch", "per-device × processes × accumulation", "LR rule", "scaled LR"]
    header += ["seed"] * show_seed + ["status", "wall time to target (s)", "train time to target (s)", "steps to target",
                                      "samples to target", "throughput (samples/s)"]
    header += ["data wait"] * show_wait + ["peak memory"] * show_memory + ["note"]
    best_runs = {id(run) for run in study.best.runs} if study.best else set()
    rows = []
    for run in runs:
        row = [run.id, fmt.integer(run.global_bs), run.decomposition or fmt.DASH, run.lr_rule or fmt.DASH,
               fmt.lr(run.lr_scaled)]
        row += [str(run.seed)] * show_seed
        row += [run.status, fmt.seconds(run.wall_time), fmt.seconds(run.train_time), fmt.integer(run.steps_to_target),
                fmt.integer(run.get("samples_to_target") if run.reached else None), fmt.rate(run.throughput)]
        row += [fmt.percent(run.data_wait)] * show_wait + [fmt.nbytes(run.peak_memory)] * show_memory
        row.append(_note(run, id(run) in best_runs))
        rows.append(row)
    blocks: list[Block] = [Heading("Configurations"), Table(header, rows)]
    if study.best is not None:
        blocks.append(Note(f"{BEST_MARK}: the configuration with the lowest mean train time to target among "
                           f"those where every seed reached it."))
    missing = [name for name, shown in (("data-wait share", show_wait), ("peak memory", show_memory)) if not shown]
    if missing:
        blocks.append(Note(f"Not recorded by these runs: {' and '.join(missing)}."))
    return blocks


def _by_seed(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda run: (run.seed is None, str(run.seed)))


def _note(run: Run, best: bool) -> str:
    parts = [BEST_MARK] if best else []
    if run.status == "diverged":
        parts.append(f"diverged at step {run.get('diverged_at_step')}")
    elif run.status == "not_reached" and run.get("final"):
        parts.append(f"final accuracy {fmt.percent(run.get('final').get('accuracy'))} after {run.get('steps')} steps")
    elif run.status == "completed":
        parts.append(f"{fmt.integer(run.get('steps'))} steps, no target")
    if run.error:
        lines = [line.strip() for line in str(run.error).splitlines() if line.strip()]
        tail = lines[-1] if lines else ""
        parts.append(tail if len(tail) <= 120 else tail[:117] + "...")
    if run.partial_config:
        parts.append("no result.json" + (" (status from study.json)" if run.status != "incomplete" else ""))
    return "; ".join(parts)


def bigger_batch_faster(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_FASTER)]
    blocks += _figure(plots.plot_time_to_target(study),
                      "Train time to target against global batch, one line per series; x: no run reached it.",
                      "No run reached its target: no time-to-target plot.")
    blocks += _figure(plots.plot_accuracy_vs_time(study), "Eval accuracy against train time, per configuration.",
                      "No run recorded an evaluation history: no accuracy curves.")
    blocks += _figure(plots.plot_accuracy_vs_samples(study), "Eval accuracy against samples seen, per configuration.",
                      "No run recorded an evaluation history: no accuracy-against-samples curves.")
    return blocks + _answers(findings.fastest(study) + findings.time_trend(study),
                             "Too few configurations reached the target to tell.")


def largest_useful_batch(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_LARGEST), Paragraph(
        f"Regimes after Shallue et al. 2018 (Measuring the Effects of Data Parallelism on Neural Network "
        f"Training): each doubling of the batch is classified by r = S(2B)/S(B), the steps to target at 2B over "
        f"those at B. r ≤ {analysis.PERFECT_MAX_RATIO}: {analysis.REGIME_PERFECT}; "
        f"{analysis.PERFECT_MAX_RATIO} < r < {analysis.NO_GAIN_MIN_RATIO}: {analysis.REGIME_DIMINISHING}; "
        f"r ≥ {analysis.NO_GAIN_MIN_RATIO}: {analysis.REGIME_NO_GAIN}. Uneven steps between batch sizes use r "
        f"per doubling, (S(B2)/S(B1))^(1/log2(B2/B1))."
    )]
    blocks += _figure(plots.plot_steps_to_target(study),
                      "Steps to target against global batch (log-log); dotted: perfect scaling (slope −1 through "
                      "the smallest batch); shading: regime of each doubling.",
                      "No run reached its target: no steps-to-target plot.")
    rows = [[name, f"{d.small} → {d.large}", fmt.integer(d.steps_small), fmt.integer(d.steps_large),
             f"{d.ratio:.2f}", d.regime] for name, steps in study.doublings.items() for d in steps]
    if rows:
        blocks.append(Table(["series", "batch", "steps at smaller", "steps at larger", "r", "regime"], rows))
    else:
        blocks.append(Note("Fewer than two batch sizes reached the target in any series: no regimes."))
    return blocks + _answers(findings.steps_scaling(study), "Not enough batch sizes reached the target to tell.")


def lr_rules(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_LR)]
    rules = study.lr_rules
    if not rules:
        blocks.append(Note("No run with a target records its LR rule: nothing to compare."))
    elif len(rules) == 1:
        blocks.append(Note(f"Only one LR rule ({rules[0]}) in this study: nothing to compare."))
    else:
        cells = analysis.rule_cells(study.target_runs)
        batches = sorted({batch for rule in rules for batch in cells.get(rule, {})})
        rows = [[str(batch)] + [_rule_cell(cells.get(rule, {}).get(batch)) for rule in rules] for batch in batches]
        blocks.append(Table(["global batch", *rules], rows))
        blocks.append(Note("Cell: scaled LR · mean steps to target · mean train time to target; or the outcome "
                           "when no seed reached it; — : not run."))
    return blocks + _answers(findings.lr_rules(study), "No run with an LR rule and a target.")


def _rule_cell(runs: list[Run] | None) -> str:
    if not runs:
        return fmt.DASH
    reached = [run for run in runs if run.reached]
    lr = fmt.lr(runs[0].lr_scaled) + " · " if runs[0].lr_scaled is not None else ""
    if not reached:
        point = analysis.Point(runs[0].global_bs or 0, runs)
        diverged = [run.get("diverged_at_step") for run in runs if run.get("diverged_at_step") is not None]
        where = f" (step {min(diverged)})" if point.outcome == "diverged" and diverged else ""
        return f"{lr}{point.outcome}{where}"
    steps = analysis.stat(run.steps_to_target for run in reached)
    time = analysis.stat(run.train_time for run in reached)
    seeds = f" ({len(reached)}/{len(runs)} seeds)" if len(reached) < len(runs) else ""
    return f"{lr}{fmt.integer(steps.mean)} steps · {fmt.seconds(time.mean)} s{seeds}"


def power_of_two(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_POWER)]
    comparisons = study.power_comparisons
    if not comparisons:
        return blocks + [Note(f"No power-of-two batch has a neighbour within {analysis.NEIGHBOUR_TOLERANCE:.0%} "
                              f"(e.g. 127/128/129, 500/512) with otherwise equal settings: nothing to compare.")]
    rows = []
    for c in comparisons:
        verdict = {True: "yes", False: "no (within noise)", None: "unknown"}[c.exceeds_noise]
        rows.append([c.key, str(c.power), str(c.neighbour), fmt.rate(c.power_rate.value),
                     fmt.rate(c.neighbour_rate.value), f"{c.difference:+.1%}",
                     fmt.percent(c.noise) if c.noise is not None else fmt.DASH, verdict,
                     f"{c.power_rate.source} / {c.neighbour_rate.source}"])
    blocks.append(Table(["batch", "power of two", "neighbour", "throughput (samples/s)", "neighbour throughput",
                         "difference", "noise (1σ)", f"exceeds {analysis.NOISE_FACTOR:g}× noise?",
                         "noise from"], rows))
    blocks.append(Note(
        "Difference: power-of-two throughput over the neighbour's, minus 1. Noise: the std over seeds of each "
        "configuration when it has several, otherwise the spread of its logging windows (std / √n, first window "
        "dropped), relative to its throughput, the two combined in quadrature. The difference counts only "
        f"when it exceeds {analysis.NOISE_FACTOR:g}× that noise."
    ))
    return blocks + _answers(findings.power_of_two(study), "No comparison could be made.")


def data_loading(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_DATA)]
    blocks += _figure(plots.plot_throughput(study), "Throughput (median logging window) against global batch.",
                      "No run recorded throughput: no throughput plot.")
    blocks += _figure(plots.plot_data_wait(study),
                      f"Share of training time spent waiting for data; dashed: {analysis.DATA_WAIT_LIMIT:.0%}.",
                      "These runs did not record data_wait_fraction: no data-wait plot.")
    return blocks + _answers(findings.throughput(study) + findings.decompositions(study) + findings.data_wait(study),
                             "No throughput or data-wait measurements to judge from.")


def seed_variation(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_SEEDS)]
    seeded = study.seeded
    if not seeded:
        return blocks + [Note("Every configuration ran with one seed: no spread to report.")]
    scores = {id(c): findings.mlperf_time(c) for c in seeded}
    show_score = any(score is not None for score in scores.values())
    header = ["configuration", "seeds", "reached", "train time to target (s)", "wall time to target (s)",
              "steps to target", "throughput (samples/s)"] + ["MLPerf-style score (s)"] * show_score
    rows = [_seed_row(c, scores[id(c)], show_score) for c in seeded]
    blocks.append(Table(header, rows))
    if show_score:
        blocks.append(Note(f"MLPerf-style score: as in MLPerf Training, the fastest and the slowest wall time to "
                           f"target are dropped and the rest averaged; needs {analysis.MLPERF_MIN_RUNS} or more "
                           f"seeds that reached the target."))
    else:
        blocks.append(Note(f"Scoring that drops the fastest and slowest seed (as MLPerf does) needs at least "
                           f"{analysis.MLPERF_MIN_RUNS} seeds that reached the target; none has that many."))
    return blocks + _answers(findings.seeds(study), "No configuration reached the target with several seeds.")


def _seed_row(configuration: Configuration, score: float | None, show_score: bool) -> list[str]:
    runs = configuration.runs
    train = analysis.stat(run.train_time for run in runs)
    wall = analysis.stat(run.wall_time for run in runs)
    steps = analysis.stat(run.steps_to_target for run in runs)
    rate = analysis.stat(run.throughput for run in runs)
    row = [configuration.label, str(len(runs)), f"{len(configuration.reached)}/{len(runs)}",
           fmt.mean_std(train.mean, train.std), fmt.mean_std(wall.mean, wall.std),
           fmt.mean_std(steps.mean, steps.std, fmt.integer), fmt.mean_std(rate.mean, rate.std, fmt.rate)]
    return row + [fmt.seconds(score)] * show_score


# The report, in order. Insert a function here to add a section.
SECTIONS: list[Section] = [title, conclusions, configurations_table, bigger_batch_faster, largest_useful_batch,
                           noise_section.section, lr_rules, power_of_two, data_loading, seed_variation]
