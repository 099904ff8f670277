"""One function per plot. Each writes OUT_DIR/<name>.png, records it in `study.figures` and returns its path,
or returns None when the study has no data for it.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend switch, so the
report neither needs a display nor disturbs a caller's own matplotlib session.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from scaling.noise.fits import predict_samples, predict_steps
from scaling.report import analysis
from scaling.report import formatting as fmt
from scaling.report.critical_batch import DEVICE_COUNTS, SeriesFit, b_simple_series
from scaling.report.runs import Run
from scaling.report.study import Study

REGIME_COLORS = {
    analysis.REGIME_PERFECT: "#2ca02c",
    analysis.REGIME_DIMINISHING: "#ff7f0e",
    analysis.REGIME_NO_GAIN: "#d62728",
}
UNDECIDED_COLOR = "#9e9e9e"
LINESTYLES = ("-", "--", ":", "-.")

# At most this many runs in the B_simple-over-training plot.
MAX_NOISE_LINES = 12

PLOT_STEPS = "critical_batch_steps"
PLOT_SAMPLES = "critical_batch_samples"
PLOT_NOISE = "noise_scale_over_training"
PLOT_TIME = "predicted_time_to_target"


def new_figure(width: float = 7.0, height: float = 4.5):
    """A matplotlib Figure on an Agg canvas, and its one Axes."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(study: Study, figure, name: str) -> Path:
    path = study.out_dir / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    study.figures[name] = path
    return path


# At most this many labelled ticks on a log axis: more overlap at the report's figure sizes.
MAX_LOG_TICKS = 8
# Mantissas of labelled ticks on a log axis, coarsest first: the first set that gives 3+ ticks in the range.
NICE_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
                                                                          6.0, 8.0))


def plain_number(value: float) -> str:
    """`50,000`, `2.5`, `0.04`: one style for every tick of every log axis (no 1e+05 next to 90,000)."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Labelled ticks for a log axis over [low, high]: 1-2-5 style values, at least 3 when the range allows,
    at most MAX_LOG_TICKS (every other decade over a wide range)."""
    if not (low > 0 and high > low):
        return []
    first, last = math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1
    ticks: list[float] = []
    for mantissas in NICE_MANTISSAS:
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in mantissas
                 if low <= m * 10.0 ** k <= high * (1 + 1e-9)]
        if len(ticks) >= 3:
            break
    step = 1
    while len(ticks[::step]) > MAX_LOG_TICKS:
        step += 1
    return ticks[::step]


def _batch_axis(ax) -> None:
    """Global batch on a log2 axis, labelled with plain integers at powers of two (every other one when there
    are too many to fit)."""
    ax.set_xscale("log", base=2)
    low, high = ax.get_xlim()
    powers = [2 ** k for k in range(max(0, math.floor(math.log2(max(low, 1)))), math.ceil(math.log2(high)) + 1)
              if low <= 2 ** k <= high]
    step = 1
    while len(powers[::step]) > 10:
        step += 1
    if powers:
        ax.xaxis.set_major_locator(FixedLocator(powers[::step]))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("global batch size")
    ax.grid(True, which="major", alpha=0.3)


def _log_axis(ax, which: str = "y") -> None:
    """A log axis with non-overlapping labels in one style and one size (log_ticks, plain_number); minor ticks
    unlabelled. Call it after the data are drawn: the ticks follow the axis range."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    ticks = log_ticks(low, high)
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
    axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", axis=which, alpha=0.3)


def _log_y(ax) -> None:
    _log_axis(ax, "y")


def seeds_phrase(counts: list[int]) -> str:
    """` (mean ± std over 3 seeds)` for a plot title; empty when no point has more than one seed, so that a
    single measurement is never presented as a mean."""
    counts = [n for n in counts if n]
    if not counts or max(counts) <= 1:
        return ""
    low, high = min(counts), max(counts)
    return f" (mean ± std over {low} seeds)" if low == high else f" (mean ± std over {low}–{high} seeds)"


def _series_colors(study: Study) -> dict[str, str]:
    palette = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e")
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(study.series))}


def _target_points(points: list[analysis.Point]) -> list[analysis.Point]:
    """Points whose runs chase a target (throughput probes without one have no time to target)."""
    return [p for p in points if any(run.target is not None for run in p.runs)]


def _missed(points: list[analysis.Point], series: str, missed: dict[str, list[int]]) -> None:
    """Collect, per series, the batches where no run reached the target."""
    batches = [p.batch for p in points if not p.any_reached]
    if batches:
        missed[series] = batches


def _draw_missed(ax, missed: dict[str, list[int]], colors: dict[str, str]) -> list:
    """Batches where no run reached the target: an x in the series' colour in a row above the frame, outside
    the data area, so that it cannot be read as a measured value. Returns the legend handles."""
    for row, (series, batches) in enumerate(missed.items()):
        ax.plot(batches, [1.04 + 0.05 * row] * len(batches), "x", color=colors.get(series, "#555555"),
                markersize=8, mew=2, transform=ax.get_xaxis_transform(), clip_on=False)
    if not missed:
        return []
    return [Line2D([], [], ls="", marker="x", color="#555555", mew=2,
                   label="above the frame: did not reach the target")]


def _mark_partial(ax, points: list[analysis.Point], value, color: str) -> bool:
    """Hollow markers over batches where some seed missed the target: the value is that of the seeds that
    reached it, not of the configuration. True when any was drawn."""
    partial = [p for p in points if p.any_reached and not p.all_reached and value(p) is not None]
    if partial:
        ax.plot([p.batch for p in partial], [value(p) for p in partial], "o", markersize=9, markerfacecolor="white",
                markeredgecolor=color, markeredgewidth=1.8, zorder=5)
    return bool(partial)


PARTIAL_HANDLE = Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="#555555",
                        markeredgewidth=1.8, label="hollow: not every seed reached the target")


def _title(ax, text: str, missed: dict[str, list[int]]) -> None:
    """The title, raised above the row(s) of not-reached marks."""
    ax.set_title(text, pad=6 + 14 * len(missed))


def plot_time_to_target(study: Study) -> Path | None:
    colors = _series_colors(study)
    figure, ax = new_figure()
    drawn, missed, counts, partial = False, {}, [], False
    for name, points in study.series.items():
        points = _target_points(points)
        timed = [p for p in points if p.train_time.mean is not None]
        if timed:
            drawn = True
            counts += [p.train_time.n for p in timed]
            ax.errorbar([p.batch for p in timed], [p.train_time.mean for p in timed],
                        yerr=[p.train_time.std or 0 for p in timed], marker="o", capsize=3, color=colors[name],
                        label=name)
            partial = _mark_partial(ax, timed, lambda p: p.train_time.mean, colors[name]) or partial
        _missed(points, name, missed)
    if not drawn:
        return None
    handles = _draw_missed(ax, missed, colors) + [PARTIAL_HANDLE] * partial
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    _title(ax, "Time to target against global batch" + seeds_phrase(counts), missed)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=8)
    return _save(study, figure, "time_to_target")


def plot_steps_to_target(study: Study) -> Path | None:
    """Steps to target, log-log, with the perfect-scaling line (slope -1 through the smallest batch) and each
    doubling shaded by its regime (Shallue et al. 2018); grey where the data do not decide the regime."""
    colors = _series_colors(study)
    figure, ax = new_figure()
    drawn, missed, counts, partial = False, {}, [], False
    for name, points in study.series.items():
        points = _target_points(points)
        reached = [p for p in points if p.steps.mean is not None]
        _missed(points, name, missed)
        if not reached:
            continue
        drawn = True
        counts += [p.steps.n for p in reached]
        batches = [p.batch for p in reached]
        ax.errorbar(batches, [p.steps.mean for p in reached], yerr=[p.steps.std or 0 for p in reached],
                    marker="o", capsize=3, color=colors[name], label=name, zorder=3)
        partial = _mark_partial(ax, reached, lambda p: p.steps.mean, colors[name]) or partial
        first = reached[0]
        ax.plot(batches, [first.steps.mean * first.batch / b for b in batches], ":", color=colors[name],
                alpha=0.7, zorder=2)
        for doubling in study.doublings[name]:
            color = REGIME_COLORS[doubling.regime] if doubling.regime_decided else UNDECIDED_COLOR
            ax.plot([doubling.small, doubling.large], [doubling.steps_small, doubling.steps_large],
                    color=color, lw=9, alpha=0.3, solid_capstyle="butt", zorder=1)
    if not drawn:
        return None
    extra = _draw_missed(ax, missed, colors) + [PARTIAL_HANDLE] * partial
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel(f"optimizer steps to {study.target_text()}")
    _title(ax, "Steps to target against global batch" + seeds_phrase(counts), missed)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="#555", ls=":", label="perfect scaling (slope −1)"))
    handles += [Line2D([], [], color=color, lw=8, alpha=0.3, label=regime)
                for regime, color in REGIME_COLORS.items()]
    handles.append(Line2D([], [], color=UNDECIDED_COLOR, lw=8, alpha=0.3, label="regime not decided"))
    ax.legend(handles=handles + extra, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(study, figure, "steps_to_target")


def _errorbar_series(study: Study, ax, stat: str, scale: float = 1.0) -> bool:
    """One mean ± std line per series for a per-batch statistic; False when no series has it."""
    colors = _series_colors(study)
    drawn = False
    for name, points in study.series.items():
        measured = [p for p in points if getattr(p, stat).mean is not None]
        if not measured:
            continue
        drawn = True
        ax.errorbar([p.batch for p in measured], [scale * getattr(p, stat).mean for p in measured],
                    yerr=[scale * (getattr(p, stat).std or 0) for p in measured], marker="o", capsize=3,
                    color=colors[name], label=name)
    return drawn


def _seed_counts(study: Study, stat: str) -> list[int]:
    return [getattr(p, stat).n for points in study.series.values() for p in points]


def plot_throughput(study: Study) -> Path | None:
    figure, ax = new_figure()
    if not _errorbar_series(study, ax, "throughput"):
        return None
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title("Throughput against global batch" + seeds_phrase(_seed_counts(study, "throughput")))
    ax.legend(fontsize=8)
    return _save(study, figure, "throughput")


def plot_data_wait(study: Study) -> Path | None:
    figure, ax = new_figure()
    if not _errorbar_series(study, ax, "data_wait", scale=100):
        return None
    ax.axhline(100 * analysis.DATA_WAIT_LIMIT, color="#d62728", ls="--", lw=1,
               label=f"{analysis.DATA_WAIT_LIMIT:.0%}: input pipeline is the limit")
    _batch_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("time waiting for data (% of training time)")
    ax.set_title("Data-wait share against global batch" + seeds_phrase(_seed_counts(study, "data_wait")))
    ax.legend(fontsize=8)
    return _save(study, figure, "data_wait")


# At most this many batch sizes share one panel of the accuracy plots (distinct colours stay readable).
MAX_BATCHES_PER_PANEL = 8


def _plot_accuracy(study: Study, x_field: str, x_label: str, title: str):
    """Accuracy curves from result["history"] (a Figure, or None without history) as small multiples: one
    panel per series (and per 8 batch sizes), colour by global batch with one shared legend, one thin line
    per seed, the target dashed."""
    curves = [c for c in study.ladder if any(run.history for run in c.runs) and c.global_bs]
    if not curves:
        return None
    batches = sorted({c.global_bs for c in curves})
    # An ordered map with distinct hues: neighbouring batch sizes stay tellable apart up to 8 per panel.
    cmap = colormaps["turbo"]
    color = {b: cmap(0.08 + 0.84 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    panels: list[tuple[str, list]] = []
    for series in sorted({c.series for c in curves}):
        members = sorted((c for c in curves if c.series == series), key=lambda c: c.global_bs)
        for start in range(0, len(members), MAX_BATCHES_PER_PANEL):
            panels.append((series, members[start:start + MAX_BATCHES_PER_PANEL]))
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns + 1.6, 3.4 * rows + 0.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    seeds = max(len(c.runs) for c in curves)
    for ax, (series, members) in zip(axes, panels, strict=False):
        for configuration in members:
            for run in configuration.runs:
                history = [h for h in run.history if h.get(x_field) and h.get("accuracy") is not None]
                if history:
                    ax.plot([h[x_field] for h in history], [h["accuracy"] for h in history], lw=1.1,
                            alpha=0.85 if seeds == 1 else 0.6, color=color[configuration.global_bs])
        if study.target is not None:
            ax.axhline(study.target, color="#d62728", lw=1, ls="--")
        ax.grid(True, alpha=0.3)
        ax.set_title(series if series != "all" else "all runs", fontsize=9)
    _log_axis(axes[0], "x")  # the panels share x: one set of ticks for all
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel(x_label)
    for ax in axes[::columns]:
        ax.set_ylabel("eval accuracy")
    handles = [Line2D([], [], color=color[b], lw=2, label=f"batch {b}") for b in batches]
    if study.target is not None:
        handles.append(Line2D([], [], color="#d62728", lw=1, ls="--", label=f"target {study.target_text()}"))
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                  title="colour: batch" + ("\none line per seed" if seeds > 1 else ""), title_fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_accuracy_vs_time(study: Study) -> Path | None:
    figure = _plot_accuracy(study, "train_time_s", "train time (s, evaluation excluded)",
                            "Accuracy against train time, per series")
    return None if figure is None else _save(study, figure, "accuracy_vs_time")


def plot_accuracy_vs_samples(study: Study) -> Path | None:
    figure = _plot_accuracy(study, "samples", "training samples seen", "Accuracy against samples, per series")
    return None if figure is None else _save(study, figure, "accuracy_vs_samples")


# --- critical batch size (gradient noise scale) -------------------------------------------------------------


def _log_y_plain(ax) -> None:
    """The critical-batch plots' log y axis: the same ticks and labels as every other (_log_y)."""
    _log_y(ax)


def _curve_batches(fit: SeriesFit) -> list[float]:
    low, high = fit.candidates[0], fit.candidates[-1]
    count = 120
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


def plot_fit(study: Study, kind: str) -> Path | None:
    """Steps (kind="steps") or samples ("samples") to target against batch, log-log: the measured means, the
    fitted S(B) or E(B), and B_crit marked on each curve."""
    fits = [fit for fit in study.noise.fits if fit.physical]
    if not fits:
        return None
    colors = _series_colors(study)
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
    _batch_axis(ax)
    _log_y_plain(ax)
    if kind == "steps":
        ax.set_ylabel(f"optimizer steps to {study.target_text()}")
        ax.set_title("Steps to target: S(B) = S_min (1 + B_crit/B); dotted: S_min; dashed: B_crit")
        name = PLOT_STEPS
    else:
        ax.set_ylabel(f"training samples to {study.target_text()}")
        ax.set_title("Samples to target: E(B) = E_min (1 + B/B_crit); dotted: E_min; dashed: B_crit")
        name = PLOT_SAMPLES
    ax.legend(fontsize=8)
    return _save(study, figure, name)


def noise_runs(study: Study) -> list[Run]:
    """At most MAX_NOISE_LINES runs with a B_simple series, one per (series, batch), spread across batches."""
    chosen: dict[tuple[int, str], Run] = {}
    for configuration in study.configurations:
        for run in sorted(configuration.runs, key=lambda r: str(r.seed)):
            if run.global_bs and b_simple_series(run):
                chosen.setdefault((run.global_bs, configuration.series), run)
    keys = sorted(chosen)
    if len(keys) > MAX_NOISE_LINES:
        picks = sorted({round(i * (len(keys) - 1) / (MAX_NOISE_LINES - 1)) for i in range(MAX_NOISE_LINES)})
        keys = [keys[i] for i in picks]
    return [chosen[key] for key in keys]


def plot_noise_over_training(study: Study) -> Path | None:
    """B_simple against optimizer step, one line per chosen run (colour: batch; style: series), with each
    series' fitted B_crit as a horizontal line."""
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
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.3, alpha=0.85, ls=styles.get(series, "-"),
                color=cmap(0.9 * math.log2(run.global_bs / batches[0]) / span), label=label)
    for fit in study.noise.fits:
        if fit.physical:
            ax.axhline(fit.b_crit.value, color="#d62728", lw=1, ls=styles.get(fit.series, "--"), alpha=0.8,
                       label=f"B_crit from the fit{f' ({fit.series})' if several else ''}")
    _log_axis(ax, "x")
    _log_y_plain(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("B_simple = tr(Σ) / |G|²")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Gradient noise scale B_simple over training")
    return _save(study, figure, PLOT_NOISE)


def plot_predicted_time(study: Study) -> Path | None:
    """Predicted train time to target against batch (the measured set-up, and 8 and 64 devices), measured
    train times overlaid, the predicted fastest batch of each curve starred."""
    fits = [fit for fit in study.noise.fits if fit.physical and fit.throughput]
    if not fits:
        return None
    colors = _series_colors(study)
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
    _batch_axis(ax)
    _log_y_plain(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    ax.set_title("Predicted time to target (★: fastest); n devices: n × tp(B/n), no communication cost")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(study, figure, PLOT_TIME)

