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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from scaling.predict import predict_samples, predict_steps
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


def _batch_axis(ax) -> None:
    """Global batch on a log2 axis, labelled with plain integers."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("global batch size")
    ax.grid(True, which="major", alpha=0.3)


def _log_y(ax) -> None:
    """Log y axis labelled with plain numbers (1.5, 2, 3...) rather than powers of ten."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:,.4g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _series_colors(study: Study) -> dict[str, str]:
    palette = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e")
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(study.series))}


def _target_points(points: list[analysis.Point]) -> list[analysis.Point]:
    """Points whose runs chase a target (throughput probes without one have no time to target)."""
    return [p for p in points if any(run.target is not None for run in p.runs)]


def _mark_missed(ax, points: list[analysis.Point], color: str, labelled: list[bool]) -> None:
    """An x along the top edge at each batch where no run reached the target (diverged, failed...)."""
    missed = [p.batch for p in points if not p.any_reached]
    if missed:
        label = None if labelled[0] else "did not reach the target"
        labelled[0] = True
        ax.plot(missed, [0.96] * len(missed), "x", color=color, markersize=9, mew=2,
                transform=ax.get_xaxis_transform(), label=label, clip_on=False)


def plot_time_to_target(study: Study) -> Path | None:
    colors = _series_colors(study)
    figure, ax = new_figure()
    drawn, labelled = False, [False]
    for name, points in study.series.items():
        points = _target_points(points)
        timed = [p for p in points if p.train_time.mean is not None]
        if timed:
            drawn = True
            ax.errorbar([p.batch for p in timed], [p.train_time.mean for p in timed],
                        yerr=[p.train_time.std or 0 for p in timed], marker="o", capsize=3, color=colors[name],
                        label=name)
        _mark_missed(ax, points, colors[name], labelled)
    if not drawn:
        return None
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    ax.set_title("Time to target against global batch (mean ± std over seeds)")
    ax.legend(fontsize=8)
    return _save(study, figure, "time_to_target")


def plot_steps_to_target(study: Study) -> Path | None:
    """Steps to target, log-log, with the perfect-scaling line (slope -1 through the smallest batch) and each
    doubling shaded by its regime (Shallue et al. 2018)."""
    colors = _series_colors(study)
    figure, ax = new_figure()
    drawn, labelled = False, [False]
    for name, points in study.series.items():
        points = _target_points(points)
        reached = [p for p in points if p.steps.mean is not None]
        _mark_missed(ax, points, colors[name], labelled)
        if not reached:
            continue
        drawn = True
        batches = [p.batch for p in reached]
        ax.errorbar(batches, [p.steps.mean for p in reached], yerr=[p.steps.std or 0 for p in reached],
                    marker="o", capsize=3, color=colors[name], label=name, zorder=3)
        first = reached[0]
        ax.plot(batches, [first.steps.mean * first.batch / b for b in batches], ":", color=colors[name],
                alpha=0.7, zorder=2)
        for doubling in study.doublings[name]:
            ax.plot([doubling.small, doubling.large], [doubling.steps_small, doubling.steps_large],
                    color=REGIME_COLORS[doubling.regime], lw=9, alpha=0.3, solid_capstyle="butt", zorder=1)
    if not drawn:
        return None
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel(f"optimizer steps to {study.target_text()}")
    ax.set_title("Steps to target: measured, perfect scaling (dotted) and regimes")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="#555", ls=":", label="perfect scaling (slope −1)"))
    handles += [Line2D([], [], color=color, lw=8, alpha=0.3, label=regime)
                for regime, color in REGIME_COLORS.items()]
    ax.legend(handles=handles, fontsize=8)
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


def plot_throughput(study: Study) -> Path | None:
    figure, ax = new_figure()
    if not _errorbar_series(study, ax, "throughput"):
        return None
    _batch_axis(ax)
    _log_y(ax)
    ax.set_ylabel("throughput (samples/s, median window)")
    ax.set_title("Throughput against global batch (mean ± std over seeds)")
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
    ax.set_title("Data-wait share against global batch")
    ax.legend(fontsize=8)
    return _save(study, figure, "data_wait")


def _plot_accuracy(study: Study, x_field: str, x_label: str, title: str):
    """Accuracy curves from result["history"] (a Figure, or None without history): colour by global batch,
    line style by series, one thin line per seed."""
    curves = [c for c in study.ladder if any(run.history for run in c.runs)]
    if not curves:
        return None
    batches = sorted({c.global_bs for c in curves if c.global_bs})
    span = max(1.0, math.log2(batches[-1] / batches[0])) if batches else 1.0
    cmap = colormaps["viridis"]
    styles = {series: LINESTYLES[i % len(LINESTYLES)] for i, series in enumerate(sorted(study.series))}
    figure, ax = new_figure(9.0, 5.0)
    for configuration in curves:
        shade = math.log2(configuration.global_bs / batches[0]) / span if configuration.global_bs else 0.0
        label = configuration.label
        for run in configuration.runs:
            history = [h for h in run.history if h.get(x_field) and h.get("accuracy") is not None]
            if not history:
                continue
            ax.plot([h[x_field] for h in history], [h["accuracy"] for h in history], lw=1.2, alpha=0.8,
                    color=cmap(0.9 * shade), ls=styles.get(configuration.series, "-"), label=label)
            label = None
    if study.target is not None:
        ax.axhline(study.target, color="#d62728", lw=1, ls="--", label=f"target {study.target_text()}")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("eval accuracy")
    ax.grid(True, alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=2 if entries > 18 else 1)
    ax.set_title(title)
    return figure


def plot_accuracy_vs_time(study: Study) -> Path | None:
    figure = _plot_accuracy(study, "train_time_s", "train time (s, evaluation excluded)",
                            "Accuracy against train time, per configuration")
    return None if figure is None else _save(study, figure, "accuracy_vs_time")


def plot_accuracy_vs_samples(study: Study) -> Path | None:
    figure = _plot_accuracy(study, "samples", "training samples seen",
                            "Accuracy against samples, per configuration")
    return None if figure is None else _save(study, figure, "accuracy_vs_samples")


# --- critical batch size (gradient noise scale) -------------------------------------------------------------


def _log_y_plain(ax) -> None:
    """plots._log_y, with large values written out (50,000 rather than 5e+04)."""
    _log_y(ax)
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1000 else f"{value:,.4g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


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
    ax.set_xscale("log")
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

