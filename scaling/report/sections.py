"""The report's sections, in order. Each takes the Study and returns blocks (render.py); a section whose data
is absent returns its heading and a one-line Note saying why.

Extension point: to add a section, write `def my_section(study: Study) -> list[Block]` and insert it into
SECTIONS; plots go in plots.py, numbers in analysis.py (or a numbers-only module such as critical_batch.py),
computed once as a cached property of the Study, number formatting in formatting.py, and sentences in
findings.py (FINDINGS) so that they also reach the Conclusions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scaling import stats
from scaling.report import analysis, critical_batch, findings, plots
from scaling.report import formatting as fmt
from scaling.report.devices_section import device_count_blocks
from scaling.report.render import Block, Bullets, Figure, Heading, Note, Paragraph, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study

Section = Callable[[Study], list[Block]]

BEST_MARK = "★ best"
LOWEST_MARK = "☆ lowest mean (not decided)"

QUESTION_FASTER = "Is a bigger batch faster to the target?"
QUESTION_LARGEST = "What is the largest useful batch?"
QUESTION_LR = "How should the learning rate scale?"
QUESTION_POWER = "Does a power of two matter?"
QUESTION_CRITICAL = "What is the critical batch size? (gradient noise scale)"
QUESTION_DATA = "When does data loading become the limit?"
QUESTION_SEEDS = "How much do results vary between seeds?"


def figure_or_note(path: Path | None, caption: str, missing: str) -> list[Block]:
    """The plot with its caption, or a Note saying why there is none."""
    return [Figure(path, caption)] if path is not None else [Note(missing)]


def _spread(study: Study) -> str:
    """`, mean ± std over seeds` in a caption, only when some configuration has several seeds."""
    return "" if study.one_seed else ", mean ± std over seeds"


def _answers(answers: list[findings.Finding], missing: str) -> list[Block]:
    sentences = [finding.statement for finding in answers]
    return [Bullets(sentences)] if sentences else [Note(missing)]


# --- sections ---------------------------------------------------------------------------------------------


def title(study: Study) -> list[Block]:
    statuses = Counter(run.status for run in study.runs)
    status_text = ", ".join(f"{n} {findings.status_words(status)}" for status, n in statuses.most_common())
    devices = sorted({(run.get("environment") or {}).get("device") for run in study.runs} - {None})
    runs, configurations = len(study.runs), len(study.all_configurations or study.configurations)
    text = (f"{runs} run{'s' * (runs != 1)} in {configurations} configuration{'s' * (configurations != 1)}, "
            f"read from {study.root} ({status_text}).")
    if study.target is not None:
        text += f" Target: {study.target_text()}."
    if devices:
        text += f" Device: {'; '.join(devices)}."
    seeds = sorted({len(c.runs) for c in study.ladder})
    seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    rules = study.rules
    return [
        Heading(f"Scaling report: {study.name}", 1),
        Paragraph(text),
        Paragraph("Time to target is train time, evaluation excluded (the fair clock across batch sizes, "
                  "docs/clock.md), unless marked wall. ± is the sample standard deviation over seeds "
                  f"({seeds_text} per configuration here)."),
        Paragraph(f"A difference is decided only when it exceeds run-to-run variation and matters: the "
                  f"{fmt.confidence(rules.confidence)} Welch t interval of the ratio of the per-seed values (on the "
                  f"log scale; Bonferroni-corrected when the best of several is picked) lies entirely beyond "
                  f"±{fmt.percent(rules.threshold, 0)}. Otherwise the report says the study cannot tell the "
                  f"alternatives apart (`scaling report --threshold/--confidence` changes both; docs/report.md). "
                  f"Every finding is also in findings.json."),
    ]


def conclusions(study: Study) -> list[Block]:
    notes: list[Block] = [Note(text) for text in findings.notes(study)]
    sentences = findings.conclusions(study)
    return [Heading("Conclusions"), *notes,
            *([Bullets(sentences)] if sentences else [Note("No conclusion: too little data.")])]


def configurations_table(study: Study) -> list[Block]:
    """Every run, grouped by configuration, the best configuration marked."""
    runs = [run for configuration in study.all_configurations or study.configurations
            for run in _by_seed(configuration.runs)]
    show_seed = len({run.seed for run in study.runs}) > 1
    show_wait = any(run.data_wait is not None for run in runs)
    show_memory = any(run.peak_memory is not None for run in runs)
    header = ["id", "global batch", "per-device × processes × accum.", "LR rule", "scaled LR"]
    header += ["seed"] * show_seed + ["status", "wall time to target (s)", "train time to target (s)", "steps to target",
                                      "samples to target", "throughput (samples/s)"]
    header += ["data wait"] * show_wait + ["peak memory"] * show_memory + ["note"]
    ranking = study.ranking
    best_runs = {id(run) for run in study.best.runs} if study.best else set()
    mark = BEST_MARK if ranking is not None and ranking.decided else LOWEST_MARK
    rows = []
    for run in runs:
        row = [run.id, fmt.integer(run.global_bs), run.decomposition or fmt.DASH, run.lr_rule or fmt.DASH,
               fmt.lr(run.lr_scaled)]
        row += [str(run.seed)] * show_seed
        row += [run.status, fmt.seconds(run.wall_time), fmt.seconds(run.train_time), fmt.integer(run.steps_to_target),
                fmt.integer(run.get("samples_to_target") if run.reached else None), fmt.integer(run.throughput)]
        row += [fmt.percent(run.data_wait)] * show_wait + [fmt.nbytes(run.peak_memory)] * show_memory
        row.append(_note(run, mark if id(run) in best_runs else None))
        rows.append(row)
    blocks: list[Block] = [Heading("Configurations"), Table(header, rows, wrap=(len(header) - 1,))]
    if study.best is not None:
        blocks.append(Note(f"{BEST_MARK}: the fastest configuration to the target, decided against every other "
                           f"(see Conclusions); {LOWEST_MARK}: the lowest mean train time where the data do not "
                           f"separate it from every other. Only configurations where every seed reached the "
                           f"target compete."))
    missing = [name for name, shown in (("data-wait share", show_wait), ("peak memory", show_memory)) if not shown]
    if missing:
        blocks.append(Note(f"Not recorded by these runs: {' and '.join(missing)}."))
    return blocks


def _by_seed(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda run: (run.seed is None, str(run.seed)))


def _note(run: Run, mark: str | None) -> str:
    parts = [mark] if mark else []
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
    blocks += figure_or_note(plots.plot_time_to_target(study),
                             f"Train time to target against global batch, one line per series{_spread(study)}; ×, "
                             f"above the frame: no run of that series reached the target at that batch, so there is "
                             f"no time.",
                             "No run reached its target: no time-to-target plot.")
    blocks += figure_or_note(plots.plot_accuracy_vs_time(study),
                             "Eval accuracy against train time: one panel per series, colour by global batch, one "
                             "line per seed.",
                             "No run recorded an evaluation history: no accuracy curves.")
    blocks += figure_or_note(plots.plot_accuracy_vs_samples(study),
                             "Eval accuracy against samples seen: one panel per series, colour by global batch, one "
                             "line per seed.",
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
    blocks += figure_or_note(plots.plot_steps_to_target(study),
                             "Steps to target against global batch (log-log); dotted: perfect scaling (slope −1 "
                             "through the smallest batch); shading: regime of each doubling, grey where its "
                             "interval does not decide it; ×, above the frame: the target was not reached.",
                             "No run reached its target: no steps-to-target plot.")
    rows = [[name, f"{d.small} → {d.large}", fmt.mean_std(d.steps_small, d.std_small, fmt.integer),
             fmt.mean_std(d.steps_large, d.std_large, fmt.integer), _resolution(d), f"{d.ratio:.2f}", _interval(d),
             d.regime + (" (super-linear: granularity?)" if d.super_linear else ""),
             "yes" if d.regime_decided else "no"]
            for name, steps in study.doublings.items() for d in steps]
    if rows:
        blocks.append(Table(["series", "batch", "steps at smaller", "steps at larger", "step resolution", "r",
                             f"r, {fmt.confidence(study.rules.confidence)} CI", "regime", "decided"], rows))
        blocks.append(Note(
            ("Steps: mean ± std over the seeds that reached the target. " if not study.one_seed else
             "Steps: one seed each, so no interval of r. ") + "Step resolution: how finely steps to target "
            "are known (the evaluation interval before the target, unless the run records it exactly); it adds "
            "the variance of a rounding error to the interval. A regime is decided when the whole interval of r "
            f"lies in it; more seeds, or steps to target known exactly (one step) rather than to the evaluation "
            f"interval, narrow the interval. r < {analysis.SUPER_LINEAR_RATIO} (better than perfect scaling) points "
            f"to evaluation granularity or an LR change rather than a real gain."))
    else:
        blocks.append(Note("Fewer than two batch sizes reached the target in any series: no regimes."))
    return blocks + _answers(findings.steps_scaling(study), "Not enough batch sizes reached the target to tell.")


def _resolution(d: analysis.Doubling) -> str:
    values = [r for r in (d.resolution_small, d.resolution_large) if r]
    return " / ".join(fmt.integer(r) for r in (d.resolution_small, d.resolution_large)) if values else fmt.DASH


def _interval(d: analysis.Doubling) -> str:
    if d.rate is None or d.rate.low is None:
        return "— (one seed)"
    return f"{d.rate.low:.2f}–{d.rate.high:.2f}"


def _method_note(result: critical_batch.NoiseAnalysis) -> str:
    methods = ", ".join(f"{method} ({n} run{'s' * (n != 1)})" for method, n in result.methods.most_common()
                        if method)
    return (f"B_simple = tr(Σ)/|G|² is measured during training (McCandlish et al. 2018, sec. 2.2, appendix A.1) "
            f"from the gradients of a small and a big batch at the same parameters, averaged over steps before "
            f"dividing{f'; method: {methods}' if methods else ''}. The value at the target is the latest "
            f"estimate at or before the step that reached it.")


def critical_batch_size(study: Study) -> list[Block]:
    """McCandlish et al. 2018's model fitted per series (critical_batch.py): B_crit, B_simple, predictions."""
    blocks: list[Block] = [Heading(QUESTION_CRITICAL)]
    result = study.noise
    if not result.present:
        return blocks + [Note("No run recorded a gradient noise scale (result.json field noise_scale; older "
                              "results lack it): section skipped.")]
    blocks.append(Paragraph(
        "McCandlish et al. 2018 (An Empirical Model of Large-Batch Training) model the steps S and samples E "
        "to a target as S(B) = S_min (1 + B_noise/B) and E(B) = E_min (1 + B/B_noise); the critical batch "
        "B_crit = E_min/S_min is where both are twice their minimum, the turn from perfect scaling to "
        "diminishing returns. Both curves are fitted together per series to the mean over seeds of the runs "
        "that reached the target (relative residuals); ± is the standard deviation and 68% the central "
        "interval of bootstrap refits over the batch sizes."))
    if not result.fits:
        detail = ", ".join(f"{name}: {n}" for name, n in result.too_few.items()) or "none"
        blocks.append(Note(f"Fewer than 2 distinct batch sizes reached the target with every seed in every series "
                           f"({detail}): no fit of S(B), no B_crit and no predictions."))
        if result.b_simple_all:
            blocks.append(Paragraph(f"Measured B_simple at the target: {fmt.b_simple_text(result.b_simple_all)}."))
        blocks += figure_or_note(plots.plot_noise_over_training(study), "B_simple over training, per run.",
                                 "No run recorded a B_simple series over training.")
        return blocks
    blocks += _fit_blocks(result)
    blocks.append(Note(_method_note(result)))
    blocks += figure_or_note(plots.plot_fit(study, "steps"),
                             "Steps to target against global batch (log-log): measured means (dots), fitted "
                             "S(B) (line), B_crit (dashed, diamond on the curve, shaded: 68% interval), S_min "
                             "(dotted).",
                             "No physical fit (S_min and E_min positive): no steps plot.")
    blocks += figure_or_note(plots.plot_fit(study, "samples"),
                             "Samples to target against global batch (log-log): measured means, fitted E(B), "
                             "B_crit (dashed), E_min (dotted).",
                             "No physical fit: no samples plot.")
    blocks += figure_or_note(plots.plot_noise_over_training(study),
                             f"B_simple over training (at most {plots.MAX_NOISE_LINES} runs, spread across batch "
                             f"sizes; colour: batch), with B_crit from the fit (red).",
                             "No run recorded a B_simple series over training.")
    blocks += _prediction_blocks(study, result)
    return blocks + _answers(findings.noise_findings(study), "No conclusion: too little data.")


def _fit_blocks(result: critical_batch.NoiseAnalysis) -> list[Block]:
    rows = []
    for fit in result.fits:
        batch, residual = fit.worst_residual
        rows.append([fit.series, f"{len(fit.batches)} ({fit.batches[0]}–{fit.batches[-1]})",
                     fmt.estimate_text(fit.tradeoff.s_min), fmt.estimate_text(fit.tradeoff.e_min),
                     fmt.estimate_text(fit.b_crit) if fit.physical else "— (not physical)",
                     f"{residual:.1%} (batch {batch})", fmt.b_simple_text(fit.b_simple),
                     f"{fit.ratio:.2g}" if fit.ratio is not None else fmt.DASH])
    blocks: list[Block] = [Table(["series", "batch sizes fitted", "S_min (steps)", "E_min (samples)", "B_crit",
                                  "max |relative residual|", "measured B_simple at target (median, range)",
                                  "B_crit / B_simple"], rows)]
    loose = [f"{fit.series} ({fit.worst_residual[1]:.0%} at batch {fit.worst_residual[0]})"
             for fit in result.fits if fit.worst_residual[1] > critical_batch.LOOSE_FIT]
    if loose:
        blocks.append(Note(f"The model fits loosely (a point off by more than {critical_batch.LOOSE_FIT:.0%}): "
                           f"{', '.join(loose)}; treat B_crit and the predictions with care."))
    if result.too_few:
        blocks.append(Note("Not fitted, fewer than 2 batch sizes reached the target: "
                           + ", ".join(f"{name} ({n})" for name, n in result.too_few.items()) + "."))
    exact = [fit.series for fit in result.fits if fit.tradeoff.resamples == 0]
    if exact:
        blocks.append(Note(f"Exact fit through 2 batch sizes, no uncertainty: {', '.join(exact)}."))
    return blocks


def _prediction_blocks(study: Study, result: critical_batch.NoiseAnalysis) -> list[Block]:
    fits = [fit for fit in result.fits if fit.physical]
    blocks: list[Block] = [Heading("Predictions at batch sizes not run", 3)]
    if not fits:
        return blocks + [Note("No series has a physical fit (S_min and E_min positive): no predictions.")]
    rows = [[fit.series, str(p.batch), fmt.integer(p.steps), fmt.integer(p.samples), fmt.seconds(p.time_s),
             p.note] for fit in fits for p in fit.predictions]
    if rows:
        blocks.append(Table(["series", "global batch", "predicted steps", "predicted samples",
                             "predicted train time (s)", "note"], rows, wrap=(5,)))
    else:
        blocks.append(Note("Every power of two in the range was run."))
    blocks.append(Note(
        "Powers of two from half the smallest batch run to four times the largest. Time = S(B) B / "
        "throughput(B), throughput interpolated log-log between the measured batch sizes (train time, evaluation "
        "excluded, in the set-up the runs were measured in). Beyond the measured range the throughput is held "
        "constant at the nearest measured value: below it the predicted times are optimistic (a smaller batch "
        "usually runs slower), above it pessimistic where throughput still grows."))
    choice_rows = [[fit.series, fmt.devices(c.devices), str(c.choice.batch), f"{c.choice.batch // c.devices}",
                    fmt.integer(c.choice.steps), fmt.seconds(c.choice.time_s),
                    f"{c.runner_up} (+{fmt.percent(c.margin)})" if c.runner_up is not None else fmt.DASH,
                    fmt.percent(c.agreement, 0) if c.agreement is not None else "— (one seed)",
                    "yes" if c.decided else "no", c.note or fmt.DASH]
                   for fit in fits for c in fit.fastest]
    if choice_rows:
        blocks.append(Table(["series", "devices", "fastest global batch", "per-device batch", "predicted steps",
                             "predicted train time (s)", "runner-up", "refits agreeing", "decided", "note"],
                            choice_rows, wrap=(9,)))
        blocks.append(Note(
            f"Refits agreeing: the share of {critical_batch.CHOICE_RESAMPLES} refits, each on the seeds of every "
            f"batch resampled with replacement, that pick the same batch. Decided when that share is at least "
            f"{fmt.confidence(study.rules.confidence)} and the runner-up is predicted more than "
            f"{fmt.percent(study.rules.threshold, 0)} slower. Batches run without every seed reaching the target, "
            f"and batches from one where no seed reached it, are never candidates."))
        blocks.append(Note(
            "n devices: throughput(B) = n × tp(B/n), tp the measured per-device throughput against the per-device "
            "batch (runs on several real processes divided by their count), i.e. perfect data parallelism with no "
            "communication cost: a lower bound on the time, and the larger the n, the more optimistic. Candidates: "
            "the powers of two above that divide evenly over the devices and give a per-device batch no smaller "
            "than the smallest measured (below it the throughput held constant would flatter them)."))
    else:
        blocks.append(Note("No run recorded throughput: no time predictions."))
    blocks += figure_or_note(plots.plot_predicted_time(study),
                             "Predicted train time to target against global batch: solid, in the measured set-up; "
                             "dashed, 8 devices; dotted, 64 devices (n × tp(B/n), no communication cost; per-device "
                             "batches within or above the measured ones); dots: measured; ★: predicted fastest.",
                             "No throughput measurements: no time prediction plot.")
    return blocks


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
                           "when no seed reached it; — : not run. Rules that give the same LR schedule at a batch "
                           "train identically there and are not ranked."))
    return blocks + _answers(findings.lr_rule_outcomes(study) + findings.lr_rule_per_batch(study)
                             + findings.lr_rules(study), "No run with an LR rule and a target.")


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
    verdicts = {stats.HIGHER: "power faster", stats.LOWER: "power slower", stats.EQUIVALENT: "no practical difference",
                stats.UNDECIDED: "cannot tell"}
    rows = []
    for p in comparisons:
        for neighbour, c in p.comparisons.items():
            power_rate = analysis.stat(run.throughput for run in p.configuration.runs)
            other_rate = analysis.stat(run.throughput for run in p.neighbours[neighbour].runs)
            interval = (f"{fmt.signed_percent(c.low - 1)} to {fmt.signed_percent(c.high - 1)} "
                        f"({fmt.confidence(c.confidence)})" if c.low is not None else "— (one seed)")
            rows.append([p.key, str(p.power), str(neighbour), fmt.mean_std(power_rate.mean, power_rate.std, fmt.integer),
                         fmt.mean_std(other_rate.mean, other_rate.std, fmt.integer),
                         fmt.signed_percent(c.ratio - 1) if c.ratio is not None else fmt.DASH, interval,
                         f"{c.n_a} / {c.n_b}", verdicts[c.verdict]])
    blocks.append(Table(["batch", "power of two", "neighbour", "throughput (samples/s)", "neighbour throughput",
                         "difference", "confidence interval", "seeds", "verdict"], rows))
    blocks.append(Note(
        "Difference: the power of two's throughput over the neighbour's, minus 1 (ratio of geometric means over "
        "seeds), with its Welch t interval over seeds, Bonferroni-corrected over a power's neighbours. It counts "
        f"when the whole interval lies beyond ±{fmt.percent(study.rules.threshold, 0)}; a power of two matters "
        "only when it is faster (or slower) than every neighbour. The spread of logging windows inside one run "
        "is not run-to-run variation, so one seed decides nothing."
    ))
    return blocks + _answers(findings.power_of_two(study), "No comparison could be made.")


def data_loading(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_DATA)]
    blocks += figure_or_note(plots.plot_throughput(study),
                             f"Throughput (throughput_samples_per_s) against global batch{_spread(study)}.",
                             "No run recorded throughput: no throughput plot.")
    blocks += figure_or_note(plots.plot_data_wait(study),
                             f"Share of training time spent waiting for data; dashed: "
                             f"{analysis.DATA_WAIT_LIMIT:.0%}.",
                             "These runs did not record data_wait_fraction: no data-wait plot.")
    return blocks + _answers(findings.throughput(study) + findings.decompositions(study) + findings.data_wait(study),
                             "No throughput or data-wait measurements to judge from.")


def seed_variation(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_SEEDS)]
    seeded = study.seeded
    if not seeded:
        return blocks + [Note("No configuration ran with several seeds: no spread to report.")]
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
           fmt.mean_std(steps.mean, steps.std, fmt.integer), fmt.mean_std(rate.mean, rate.std, fmt.integer)]
    return row + [fmt.seconds(score)] * show_score


def device_count_section(study: Study) -> list[Block]:
    """Predicted time to target on 1, 2, 4, ... devices (scaling/report/devices_section.py) and its answers."""
    found = findings.device_count_findings(study)
    return device_count_blocks(study) + ([Bullets([finding.statement for finding in found])] if found else [])


# The report, in order. Insert a function here to add a section.
SECTIONS: list[Section] = [title, conclusions, configurations_table, bigger_batch_faster, largest_useful_batch,
                           critical_batch_size, device_count_section, lr_rules, power_of_two, data_loading,
                           seed_variation]
