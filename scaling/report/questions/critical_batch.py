"""What is the critical batch size? McCandlish et al. 2018's model of steps and samples to target fitted per
series (the numbers: critical_batch_fits.py), B_crit against the B_simple measured during training, the
predicted steps and time at batch sizes not run and the batch the fit points to on a few device counts: their
findings, this question's section and its plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib import colormaps

from scaling.noise.fits import predict_samples, predict_steps
from scaling.report import formatting as fmt
from scaling.report.finding import ESTIMATE, Finding, answers, prefix, sentence, status_words, suffix
from scaling.report.plots import LINESTYLES, batch_axis, log_axis, log_y, new_figure, save, series_colors
from scaling.report.questions.critical_batch_fits import (
    CHOICE_RESAMPLES,
    DEVICE_COUNTS,
    INFORMATIVE_FACTOR,
    LOOSE_FIT,
    ORDER_OF_MAGNITUDE,
    NoiseAnalysis,
    SeriesFit,
    analyse,
    b_simple_series,
)
from scaling.report.render import Block, Heading, Note, Paragraph, Table, figure_or_note
from scaling.report.runs import Run, seed_order
from scaling.report.study import Study, per_study

QUESTION = "What is the critical batch size? (gradient noise scale)"

# At most this many runs in the B_simple-over-training plot.
MAX_NOISE_LINES = 12
PLOT_STEPS = "critical_batch_steps"
PLOT_SAMPLES = "critical_batch_samples"
PLOT_NOISE = "noise_scale_over_training"
PLOT_TIME = "predicted_time_to_target"


@per_study
def noise_of(study: Study) -> NoiseAnalysis:
    """The gradient-noise-scale fits (critical batch size) of every series."""
    return analyse(study.runs, study.series, study.rules)


# --- findings -----------------------------------------------------------------------------------------------


def comparison_sentence(fit: SeriesFit, count: int, context: int | None = None) -> Finding:
    """B_crit from the fit next to the measured B_simple, and whether they agree within an order of magnitude;
    for next-token runs (`context` tokens per sequence) both also in tokens."""
    lead = prefix(fit.series, count)
    fid = f"critical_batch{suffix(fit.series)}"
    numbers: dict[str, Any] = {"batches": fit.batches, "s_min": fit.tradeoff.fit.s_min,
                               "e_min": fit.tradeoff.fit.e_min, "physical": fit.physical,
                               "b_simple_median": fit.b_simple_median}
    if not fit.physical:
        s_min, e_min = fit.tradeoff.fit.s_min, fit.tradeoff.fit.e_min
        text = sentence(lead, f"the fit of S(B) = S_min (1 + B_noise/B) gives S_min = {fmt.sig(s_min)} and "
                              f"E_min = {fmt.sig(e_min)}, not both positive: the steps do not bend as the model "
                              f"expects over batches {fit.batches[0]}–{fit.batches[-1]}, so there is no critical "
                              f"batch size")
        return Finding(fid, text, False, None, fit.n_seeds, ESTIMATE, numbers)
    b = fit.b_crit
    interval = fit.interval
    numbers.update(b_crit=b.value, b_crit_std=b.std, b_crit_low=b.low, b_crit_high=b.high,
                   b_crit_interval=list(interval) if interval else None, confidence=fit.rules.confidence,
                   informative=fit.informative, extrapolated=fit.extrapolated, ratio_to_b_simple=fit.ratio)
    if interval is not None:
        spread = (f" ({fmt.confidence(fit.rules.confidence)} interval {fmt.sig(interval[0])}–"
                  f"{fmt.sig(interval[1])}, ±{fmt.sig(b.std, 2)})")
    else:
        spread = " (exact through 2 points, no uncertainty)"
    numbers["steps_known_to_intervals"] = fit.inexact
    if fit.inexact and interval is not None:
        spread = spread[:-1] + (f"; the steps to target at batch {fmt.batch_list(fit.inexact)} are known only to "
                                f"an interval, and the interval covers the fits at both of its ends)")
    text = f"critical batch size B_crit ≈ {fmt.sig(b.value)}{spread} from the fit"
    if context:
        numbers.update(b_crit_tokens=b.value * context, context=context)
        text = (f"critical batch size B_crit ≈ {fmt.sig(b.value)} sequences ≈ {fmt.sig(b.value * context)} tokens"
                f"{spread} from the fit")
    if fit.extrapolated:
        text += f", outside the batches fitted ({fit.batches[0]}–{fit.batches[-1]}): an extrapolation"
    median = fit.b_simple_median
    if median is None:
        text += "; no B_simple at the target was measured in this series"
    else:
        ratio = fit.ratio
        text += f"; measured B_simple at the target ≈ {fmt.sig(median)}"
        if context:
            text += f" sequences ≈ {fmt.sig(median * context)} tokens"
            numbers["b_simple_median_tokens"] = median * context
        if len(fit.b_simple) > 1:
            text += (f" (median of {len(fit.b_simple)} runs, {fmt.sig(min(fit.b_simple))}–"
                     f"{fmt.sig(max(fit.b_simple))})")
        if 1 / ORDER_OF_MAGNITUDE <= ratio <= ORDER_OF_MAGNITUDE:
            text += (f"; B_crit / B_simple = {ratio:.2g}: within an order of magnitude, as McCandlish et al. 2018 "
                     f"found")
        else:
            text += (f"; B_crit / B_simple = {ratio:.2g}: more than an order of magnitude apart, unlike McCandlish "
                     f"et al. 2018, who found B_simple within an order of magnitude of B_crit")
    if not fit.decided:
        text += (f" (not decided: {' and '.join(fit.undecided_because)}; an estimate to act on needs 3+ batch "
                 f"sizes with 2+ seeds each, inside the range, known within a factor of "
                 f"{INFORMATIVE_FACTOR:g})")
    return Finding(fid, sentence(lead, text), fit.decided, fmt.sig(b.value) if fit.decided else None,
                   fit.n_seeds, ESTIMATE, numbers)


def device_findings(fit: SeriesFit, count: int, study: Study) -> list[Finding]:
    """Batches the fit points to on a few device counts that were not run: what to run next, never an answer
    (the device-count question answers from the configurations run, with their communication; this fit
    assumes none). A pick among the batches run adds nothing to that answer and is left to the table."""
    if not fit.physical:
        return []
    out = []
    for c in fit.fastest:
        if c.choice.batch in fit.run_batches:
            continue
        text = (f"the steps fit points to global batch {c.choice.batch} on {fmt.devices(c.devices)}, not run "
                f"(predicted {fmt.seconds(c.choice.time_s)} s with n × tp(B/n) and no communication cost")
        if c.agreement is not None:
            text += f"; {fmt.percent(c.agreement, 0)} of refits on resampled seeds pick it"
        text += "): run it to check; the device-count answer covers the configurations run"
        numbers = {"devices": c.devices, "batch": c.choice.batch, "time_s": c.choice.time_s,
                   "steps": c.choice.steps, "runner_up": c.runner_up, "margin": c.margin,
                   "agreement": c.agreement, "candidates": fit.eligible(c.devices), "run": False}
        out.append(Finding(f"fit_suggests@{c.devices}{suffix(fit.series)}",
                           sentence(prefix(fit.series, count), text), False, None, c.n_seeds, ESTIMATE, numbers,
                           detail=True))
    return out


def noise_findings(study: Study) -> list[Finding]:
    """The critical batch size: B_crit against B_simple, and batches not run that the fit points to, per
    series."""
    fits = noise_of(study).fits
    out = []
    for fit in fits:  # named by series whenever the study has several, even if only one could be fitted
        out.append(comparison_sentence(fit, len(study.series), study.tokens_per_sequence))
        out += device_findings(fit, len(study.series), study)
    return out


# --- section ------------------------------------------------------------------------------------------------


def section(study: Study) -> list[Block]:
    """McCandlish et al. 2018's model fitted per series (py): B_crit, B_simple, predictions."""
    blocks: list[Block] = [Heading(QUESTION)]
    result = noise_of(study)
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
        blocks += figure_or_note(plot_noise_over_training(study), "B_simple over training, per run.",
                                 "No run recorded a B_simple series over training.")
        return blocks
    blocks += _fit_blocks(result, study.tokens_per_sequence)
    blocks.append(Note(_method_note(result)))
    blocks += figure_or_note(plot_fit(study, "steps"),
                             "Steps to target against global batch (log-log): measured means (dots), fitted "
                             "S(B) (line), B_crit (dashed, diamond on the curve, shaded: 68% interval), S_min "
                             "(dotted).",
                             "No physical fit (S_min and E_min positive): no steps plot.")
    blocks += figure_or_note(plot_fit(study, "samples"),
                             "Samples to target against global batch (log-log): measured means, fitted E(B), "
                             "B_crit (dashed), E_min (dotted).",
                             "No physical fit: no samples plot.")
    blocks += figure_or_note(plot_noise_over_training(study),
                             f"B_simple over training (at most {MAX_NOISE_LINES} runs, spread across batch "
                             f"sizes; colour: batch), with B_crit from the fit (red).",
                             "No run recorded a B_simple series over training.")
    blocks += _prediction_blocks(study, result)
    return blocks + answers(noise_findings(study), "No conclusion: too little data.")


def _method_note(result: NoiseAnalysis) -> str:
    methods = ", ".join(f"{method} ({n} run{'s' * (n != 1)})" for method, n in result.methods.most_common()
                        if method)
    return (f"B_simple = tr(Σ)/|G|² is measured during training (McCandlish et al. 2018, sec. 2.2, appendix A.1) "
            f"from the gradients of a small and a big batch at the same parameters, averaged over steps before "
            f"dividing{f'; method: {methods}' if methods else ''}. The value at the target is the latest "
            f"estimate at or before the step that reached it.")


def _fit_blocks(result: NoiseAnalysis, context: int | None = None) -> list[Block]:
    """The fits' table; for next-token runs B_crit also in tokens (sequences x `context`)."""
    rows = []
    for fit in result.fits:
        batch, residual = fit.worst_residual
        rows.append([fit.series, f"{len(fit.batches)} ({fit.batches[0]}–{fit.batches[-1]})",
                     fmt.estimate_text(fit.tradeoff.s_min), fmt.estimate_text(fit.tradeoff.e_min),
                     fmt.estimate_text(fit.b_crit) if fit.physical else "— (not physical)",
                     f"{residual:.1%} (batch {batch})", fmt.b_simple_text(fit.b_simple),
                     f"{fit.ratio:.2g}" if fit.ratio is not None else fmt.DASH])
        if context:
            rows[-1].insert(5, fmt.sig(fit.b_crit.value * context) if fit.physical else fmt.DASH)
    unit = "sequences" if context else "samples"
    header = ["series", "batch sizes fitted", "S_min (steps)", f"E_min ({unit})", f"B_crit ({unit})",
              "max |relative residual|", f"measured B_simple at target ({unit}; median, range)", "B_crit / B_simple"]
    if context:
        header.insert(5, "B_crit (tokens)")
    blocks: list[Block] = [Table(header, rows)]
    loose = [f"{fit.series} ({fit.worst_residual[1]:.0%} at batch {fit.worst_residual[0]})"
             for fit in result.fits if fit.worst_residual[1] > LOOSE_FIT]
    if loose:
        blocks.append(Note(f"The model fits loosely (a point off by more than {LOOSE_FIT:.0%}): "
                           f"{', '.join(loose)}; treat B_crit and the predictions with care."))
    if result.too_few:
        blocks.append(Note("Not fitted, fewer than 2 batch sizes reached the target: "
                           + ", ".join(f"{name} ({n})" for name, n in result.too_few.items()) + "."))
    exact = [fit.series for fit in result.fits if fit.tradeoff.resamples == 0]
    if exact:
        blocks.append(Note(f"Exact fit through 2 batch sizes, no uncertainty: {', '.join(exact)}."))
    return blocks


def _prediction_blocks(study: Study, result: NoiseAnalysis) -> list[Block]:
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
                    "yes" if c.choice.batch in fit.run_batches else "no", c.note or fmt.DASH]
                   for fit in fits for c in fit.fastest]
    if choice_rows:
        blocks.append(Table(["series", "devices", "the fit's pick", "per-device batch", "predicted steps",
                             "predicted train time (s)", "runner-up", "refits agreeing", "run", "note"],
                            choice_rows, wrap=(9,)))
        blocks.append(Note(
            f"Refits agreeing: the share of {CHOICE_RESAMPLES} refits, each on the seeds of every "
            f"batch resampled with replacement, that pick the same batch. The fit's picks are what to run next, "
            f"not answers: the answer per device count is the device-count question's (the configurations run, "
            f"with communication). Batches run without every seed reaching the target, and batches from one "
            f"where no seed reached it, are never candidates."))
        blocks.append(Note(
            "n devices: throughput(B) = n × tp(B/n), tp the measured per-device throughput against the per-device "
            "batch (runs on several real processes divided by their count), i.e. perfect data parallelism with no "
            "communication cost: a lower bound on the time, and the larger the n, the more optimistic. Candidates: "
            "the powers of two above that divide evenly over the devices and give a per-device batch no smaller "
            "than the smallest measured (below it the throughput held constant would flatter them)."))
    else:
        blocks.append(Note("No run recorded throughput: no time predictions."))
    blocks += figure_or_note(plot_predicted_time(study),
                             "Predicted train time to target against global batch: solid, in the measured set-up; "
                             "dashed, 8 devices; dotted, 64 devices (n × tp(B/n), no communication cost; per-device "
                             "batches no smaller than the smallest measured, or every batch that divides over the devices where "
                             "none is that large); dots: measured; ★: the fit's pick.",
                             "No throughput measurements: no time prediction plot.")
    return blocks


# --- plots --------------------------------------------------------------------------------------------------


def _curve_batches(fit: SeriesFit) -> list[float]:
    low, high = fit.candidates[0], fit.candidates[-1]
    count = 120
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


def plot_fit(study: Study, kind: str) -> Path | None:
    """Steps (kind="steps") or samples ("samples") to target against batch, log-log: the measured means, the
    fitted S(B) or E(B), and B_crit marked on each curve."""
    fits = [fit for fit in noise_of(study).fits if fit.physical]
    if not fits:
        return None
    colors = series_colors(study)
    figure, ax = new_figure()
    for fit in fits:
        color = colors.get(fit.series, "#1f77b4")
        measured = fit.steps if kind == "steps" else fit.samples
        curve = _curve_batches(fit)
        model = predict_steps if kind == "steps" else predict_samples
        b_crit = fit.b_crit.value
        ax.plot(fit.batches, measured, "o", color=color, label=f"{fit.series}: measured", zorder=3)
        ax.plot(curve, [model(fit.tradeoff, b) for b in curve], "-", color=color, alpha=0.8,
                label=f"{fit.series}: fit, B_crit ≈ {fmt.sig(b_crit)}", zorder=2)
        ax.axvline(b_crit, color=color, ls="--", lw=1, alpha=0.7)
        ax.plot([b_crit], [model(fit.tradeoff, b_crit)], "D", color=color, markersize=7, zorder=4)
        if fit.b_crit.low is not None and fit.b_crit.high is not None:
            ax.axvspan(max(fit.b_crit.low, curve[0]), min(fit.b_crit.high, curve[-1]), color=color, alpha=0.08)
        asymptote = fit.tradeoff.fit.s_min if kind == "steps" else fit.tradeoff.fit.e_min
        ax.axhline(asymptote, color=color, ls=":", lw=1, alpha=0.6)
    batch_axis(ax)
    log_y(ax)
    if kind == "steps":
        ax.set_ylabel(f"optimizer steps to {study.target_text()}")
        ax.set_title("Steps to target: S(B) = S_min (1 + B_crit/B); dotted: S_min; dashed: B_crit")
        name = PLOT_STEPS
    else:
        ax.set_ylabel(f"training samples to {study.target_text()}")
        ax.set_title("Samples to target: E(B) = E_min (1 + B/B_crit); dotted: E_min; dashed: B_crit")
        name = PLOT_SAMPLES
    ax.legend(fontsize=8)
    return save(study, figure, name)


def noise_runs(study: Study) -> list[Run]:
    """At most MAX_NOISE_LINES runs with a B_simple series, one per (series, batch), spread across batches."""
    chosen: dict[tuple[int, str], Run] = {}
    for configuration in study.configurations:
        # A run that trained normally first (a diverged one stands for its batch only when no other did), then
        # by seed as a number (seed 10 after seed 2).
        for run in sorted(configuration.runs, key=lambda r: (failed(r), seed_order(r))):
            if run.global_bs and b_simple_series(run):
                chosen.setdefault((run.global_bs, configuration.series), run)
    keys = sorted(chosen)
    if len(keys) > MAX_NOISE_LINES:
        picks = sorted({round(i * (len(keys) - 1) / (MAX_NOISE_LINES - 1)) for i in range(MAX_NOISE_LINES)})
        keys = [keys[i] for i in picks]
    return [chosen[key] for key in keys]


def failed(run: Run) -> bool:
    """The run ended in a failure of training (diverged, stalled, failed, out of memory): its noise scale
    swings with the collapse and says nothing about the batch."""
    return run.status not in ("reached", "not_reached", "completed")


def noise_limits(study: Study, runs: list[Run]) -> tuple[float, float] | None:
    """The noise plot's y range: the B_simple of the runs that trained normally and the fitted B_crit, with a
    margin (None when every run failed: matplotlib's own range)."""
    values = [value for run in runs if not failed(run) for _, value in b_simple_series(run)]
    if not values:
        return None
    values += [fit.b_crit.value for fit in noise_of(study).fits if fit.physical and fit.b_crit.value > 0]
    return min(values) / 1.5, max(values) * 1.5


def plot_noise_over_training(study: Study) -> Path | None:
    """B_simple against optimizer step, one line per chosen run (colour: batch; style: series), with each
    series' fitted B_crit as a horizontal line. Failed runs are drawn thin and grey and do not set the axes
    (a diverging run's B_simple swings over orders of magnitude)."""
    runs = noise_runs(study)
    if not runs:
        return None
    series_of = {id(run): c.series for c in study.configurations for run in c.runs}
    styles = {name: LINESTYLES[i % len(LINESTYLES)] for i, name in enumerate(sorted(study.series))}
    batches = sorted({run.global_bs for run in runs})
    span = max(1.0, math.log2(batches[-1] / batches[0]))
    cmap = colormaps["viridis"]
    several = len({series_of[id(run)] for run in runs}) > 1
    figure, ax = new_figure(9.0, 5.0)
    for run in runs:
        points = b_simple_series(run)
        series = series_of[id(run)]
        label = f"batch {run.global_bs}" + (f" ({series})" if several and series != "all" else "")
        color = cmap(0.9 * math.log2(run.global_bs / batches[0]) / span)
        if failed(run):
            color, label = "#9e9e9e", f"{label}, {status_words(run.status)} (not setting the axes)"
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=0.8 if failed(run) else 1.3, alpha=0.85,
                ls=styles.get(series, "-"), color=color, label=label)
    for fit in noise_of(study).fits:
        if fit.physical:
            ax.axhline(fit.b_crit.value, color="#d62728", lw=1, ls=styles.get(fit.series, "--"), alpha=0.8,
                       label=f"B_crit from the fit{f' ({fit.series})' if several else ''}")
    log_axis(ax, "x")
    log_y(ax)
    limits = noise_limits(study, runs)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("B_simple = tr(Σ) / |G|²")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Gradient noise scale B_simple over training")
    return save(study, figure, PLOT_NOISE)


def plot_predicted_time(study: Study) -> Path | None:
    """Predicted train time to target against batch (the measured set-up, and 8 and 64 devices), measured
    train times overlaid, the fit's pick on each curve starred."""
    fits = [fit for fit in noise_of(study).fits if fit.physical and fit.throughput]
    if not fits:
        return None
    colors = series_colors(study)
    figure, ax = new_figure(8.0, 5.0)
    device_styles = {DEVICE_COUNTS[1]: "--", DEVICE_COUNTS[2]: ":"}
    for fit in fits:
        color = colors.get(fit.series, "#1f77b4")
        times = [fit.time(b) for b in fit.candidates]
        ax.plot(fit.candidates, times, "-", color=color, alpha=0.8, label=f"{fit.series}: predicted, as measured")
        best = fit.fastest_as_measured
        ax.plot([best.batch], [best.time_s], "*", color=color, markersize=15, markeredgecolor="black", zorder=4)
        if fit.train_time:
            ax.plot(list(fit.train_time), list(fit.train_time.values()), "o", color=color, zorder=3,
                    label=f"{fit.series}: measured")
        for choice in fit.fastest:
            if choice.devices not in device_styles:
                continue
            batches = fit.eligible(choice.devices)
            ax.plot(batches, [fit.time(b, choice.devices) for b in batches], device_styles[choice.devices],
                    color=color, alpha=0.6, label=f"{fit.series}: predicted, {fmt.devices(choice.devices)}")
            ax.plot([choice.choice.batch], [choice.choice.time_s], "*", color=color, markersize=12,
                    markeredgecolor="black", zorder=4)
    batch_axis(ax)
    log_y(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    ax.set_title("Predicted time to target (★: the fit's pick); n devices: n × tp(B/n), no communication cost")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(study, figure, PLOT_TIME)
