"""What is the critical batch size? The gradient noise scale section (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", arXiv:1812.06162).

Per series (the report's grouping of configurations, e.g. per LR rule), from the runs that reached the
target (mean over seeds at each global batch), fit

    S(B) = S_min (1 + B_noise / B)   to steps-to-target,    E(B) = E_min (1 + B / B_noise)   to samples,

(scaling.predict.fit_tradeoff: both curves share S_min and E_min, relative residuals, bootstrap over the
batch sizes), report B_crit = E_min / S_min next to the B_simple measured during training
(result["noise_scale"]["b_simple_at_target"]), and predict steps, samples and time to target at batch sizes
not run, and the fastest global batch for a few device counts.

The numbers are computed once per study (`analyse`, cached on the Study); `section` renders them with four
plots, `noise_findings` turns them into the sentences of the Conclusions (findings.FINDINGS).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from scaling.predict import (
    BatchChoice,
    Estimate,
    TradeoffFit,
    best_batch,
    fit_tradeoff,
    predict_samples,
    predict_steps,
    predict_time,
)
from scaling.report import analysis
from scaling.report import formatting as fmt
from scaling.report.plots import LINESTYLES, _batch_axis, _figure, _log_y, _save, _series_colors
from scaling.report.render import Block, Bullets, Figure, Heading, Note, Paragraph, Table
from scaling.report.runs import Run
from scaling.report.study import Study

QUESTION_CRITICAL = "What is the critical batch size? (gradient noise scale)"

# Device counts for which the fastest global batch is predicted (throughput(B) = n x tp(B / n)).
DEVICE_COUNTS = (1, 8, 64)
# McCandlish et al. 2018 found B_simple within an order of magnitude of B_crit.
ORDER_OF_MAGNITUDE = 10.0
# Above this largest relative residual of the steps fit, the report says the model fits loosely.
LOOSE_FIT = 0.2
# At most this many runs in the B_simple-over-training plot.
MAX_NOISE_LINES = 12

PLOT_STEPS = "critical_batch_steps"
PLOT_SAMPLES = "critical_batch_samples"
PLOT_NOISE = "noise_scale_over_training"
PLOT_TIME = "predicted_time_to_target"

_CACHE = "_noise_scale_analysis"  # attribute of the Study holding its NoiseAnalysis


# --- numbers -------------------------------------------------------------------------------------------------


def noise_scale(run: Run) -> dict:
    """result["noise_scale"], an empty mapping when absent or null (older results)."""
    value = run.get("noise_scale")
    return value if isinstance(value, dict) else {}


def b_simple_at_target(run: Run) -> float | None:
    value = noise_scale(run).get("b_simple_at_target")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else None


def b_simple_series(run: Run) -> list[tuple[int, float]]:
    """(step, B_simple) over training, positive finite values only (early estimates can be noise)."""
    points = []
    for point in noise_scale(run).get("series") or []:
        if not isinstance(point, dict):
            continue
        step, value = point.get("step"), point.get("b_simple")
        if isinstance(step, int | float) and isinstance(value, int | float) and math.isfinite(value) and value > 0:
            points.append((step, float(value)))
    return points


def has_noise_data(run: Run) -> bool:
    data = noise_scale(run)
    return data.get("b_simple") is not None or b_simple_at_target(run) is not None or bool(b_simple_series(run))


def powers_of_two(low: float, high: float) -> list[int]:
    """Powers of two covering [low, high]: from the one at or below `low` to the one at or above `high`."""
    first = 2 ** max(0, math.floor(math.log2(max(1.0, low))))
    last = 2 ** max(0, math.ceil(math.log2(max(1.0, high))))
    out, value = [], first
    while value <= last:
        out.append(value)
        value *= 2
    return out


def _world_size(run: Run) -> int:
    """Real processes the run's throughput was measured over (emulated processes share one device)."""
    size = run.batch.get("world_size") or (run.get("environment") or {}).get("world_size") or 1
    return size if isinstance(size, int) and size >= 1 else 1


@dataclass
class Prediction:
    batch: int
    steps: float
    samples: float
    time_s: float | None
    note: str


@dataclass
class DeviceChoice:
    devices: int
    choice: BatchChoice
    note: str


@dataclass
class SeriesFit:
    """The fit of one series and what it predicts."""

    series: str
    batches: list[int]  # global batches that reached the target, fitted
    steps: list[float]  # mean steps to target over seeds, per batch
    samples: list[float]  # mean samples to target over seeds, per batch
    tradeoff: TradeoffFit
    b_simple: list[float]  # b_simple_at_target of the series' runs
    throughput: dict[int, float]  # global batch -> mean samples/s, as measured
    per_device: dict[float, float]  # per-device batch -> per-device samples/s
    train_time: dict[int, float]  # global batch -> mean measured train time to target
    run_batches: dict[int, str]  # every global batch run in the series (with a target) -> its outcome
    candidates: list[int] = field(default_factory=list)  # powers of two from smallest/2 to largest x 4

    @property
    def b_crit(self) -> Estimate:
        return self.tradeoff.b_crit

    @property
    def physical(self) -> bool:
        return self.tradeoff.fit.physical

    @cached_property
    def residuals(self) -> list[float]:
        """Relative residuals of the steps fit, (S_i - S(B_i)) / S_i."""
        return [(s - predict_steps(self.tradeoff, b)) / s for b, s in zip(self.batches, self.steps, strict=True)]

    @property
    def worst_residual(self) -> tuple[int, float]:
        """(batch, |relative residual|) of the point the fit misses most."""
        index = max(range(len(self.residuals)), key=lambda i: abs(self.residuals[i]))
        return self.batches[index], abs(self.residuals[index])

    @property
    def b_simple_median(self) -> float | None:
        return statistics.median(self.b_simple) if self.b_simple else None

    @property
    def ratio(self) -> float | None:
        """B_crit / B_simple (median at the target)."""
        median = self.b_simple_median
        return self.b_crit.value / median if median and self.physical else None

    def time(self, batch: int, devices: int | None = None) -> float | None:
        points = self.throughput if devices is None else self.per_device
        if not points:
            return None
        return predict_time(self.tradeoff, batch, points, devices)

    def _range_note(self, batch: int, devices: int | None = None) -> str:
        """Where the throughput at `batch` lies outside the measured curve: held constant there."""
        points = self.throughput if devices is None else self.per_device
        if not points:
            return ""
        at = batch if devices is None else batch / devices
        low, high = min(points), max(points)
        unit = "batch" if devices is None else "per-device batch"
        if at < low:
            return (f"{unit} {at:g} below the measured {low:g}: throughput held at its value, so the time is "
                    f"optimistic")
        if at > high:
            return (f"{unit} {at:g} above the measured {high:g}: throughput held at its value, so the time is "
                    f"pessimistic if throughput still grows")
        return ""

    @cached_property
    def predictions(self) -> list[Prediction]:
        """Candidates not reached in the series: not run at all, or run without reaching the target."""
        rows = []
        for batch in self.candidates:
            if batch in self.batches:
                continue
            notes = []
            if batch in self.run_batches:
                notes.append(f"run, {self.run_batches[batch]}: the fit assumes it trains as the others do")
            missed = [b for b, outcome in self.run_batches.items() if b < batch and b not in self.batches]
            if missed and batch not in self.run_batches:
                notes.append(f"beyond batch {min(missed)}, which did not reach the target")
            range_note = self._range_note(batch)
            if range_note:
                notes.append(range_note)
            rows.append(Prediction(batch, predict_steps(self.tradeoff, batch),
                                   predict_samples(self.tradeoff, batch), self.time(batch), "; ".join(notes)))
        return rows

    def eligible(self, devices: int | None = None) -> list[int]:
        """Candidates for the fastest batch: divisible over the devices, with a (per-device) batch no smaller
        than the smallest measured one, since below it the throughput held constant would flatter small
        batches (all divisible candidates when none is that large)."""
        points = self.throughput if devices is None else self.per_device
        count = devices or 1
        divisible = [b for b in self.candidates if b % count == 0]
        return [b for b in divisible if points and b / count >= min(points)] or divisible

    @cached_property
    def fastest_as_measured(self) -> BatchChoice | None:
        """The fastest candidate in the set-up the runs were measured in (global-batch throughput curve)."""
        return best_batch(self.tradeoff, self.throughput, self.eligible()) if self.throughput else None

    @cached_property
    def fastest(self) -> list[DeviceChoice]:
        """Per device count, the candidate global batch (divisible by it) predicted to reach the target soonest."""
        if not self.per_device:
            return []
        out = []
        for devices in DEVICE_COUNTS:
            candidates = self.eligible(devices)
            if not candidates:
                continue
            choice = best_batch(self.tradeoff, self.per_device, candidates, devices)
            out.append(DeviceChoice(devices, choice, self._range_note(choice.batch, devices)))
        return out


@dataclass
class NoiseAnalysis:
    present: bool  # any run recorded a noise scale
    fits: list[SeriesFit]
    too_few: dict[str, int]  # series without a fit -> distinct batch sizes that reached the target
    b_simple_all: list[float]  # b_simple_at_target of every run
    methods: Counter


def analyse(study: Study) -> NoiseAnalysis:
    """The section's numbers, computed once per study."""
    cached = study.__dict__.get(_CACHE)
    if cached is None:
        cached = _analyse(study)
        study.__dict__[_CACHE] = cached
    return cached


def _analyse(study: Study) -> NoiseAnalysis:
    present = any(has_noise_data(run) for run in study.runs)
    methods = Counter(noise_scale(run).get("method") for run in study.runs if has_noise_data(run))
    b_all = [value for run in study.runs if (value := b_simple_at_target(run)) is not None]
    fits, too_few = [], {}
    if present:
        for name, points in study.series.items():
            points = [p for p in points if any(run.target is not None for run in p.runs)]
            if not points:
                continue
            fit = _fit_series(name, points)
            if fit is None:
                too_few[name] = sum(1 for p in points if p.steps.mean is not None)
            else:
                fits.append(fit)
    return NoiseAnalysis(present, fits, too_few, b_all, methods)


def _fit_series(name: str, points: list[analysis.Point]) -> SeriesFit | None:
    reached = [p for p in points if p.steps.mean is not None]
    if len(reached) < 2:
        return None
    batches = [p.batch for p in reached]
    steps = [p.steps.mean for p in reached]
    samples = []
    for p in reached:
        measured = analysis.stat(run.get("samples_to_target") for run in p.runs if run.reached).mean
        samples.append(measured if measured else p.steps.mean * p.batch)
    tradeoff = fit_tradeoff(batches, steps, samples)
    runs = [run for p in points for run in p.runs]
    per_device: dict[float, list[float]] = {}
    for run in runs:
        if run.throughput and run.global_bs:
            size = _world_size(run)
            per_device.setdefault(run.global_bs / size, []).append(run.throughput / size)
    fit = SeriesFit(
        series=name, batches=batches, steps=steps, samples=samples, tradeoff=tradeoff,
        b_simple=[value for run in runs if (value := b_simple_at_target(run)) is not None],
        throughput={p.batch: p.throughput.mean for p in points if p.throughput.mean},
        per_device={b: statistics.fmean(rates) for b, rates in sorted(per_device.items())},
        train_time={p.batch: p.train_time.mean for p in reached if p.train_time.mean is not None},
        run_batches={p.batch: "reached" if p.any_reached else p.outcome for p in points},
    )
    run_batches = list(fit.run_batches)
    fit.candidates = powers_of_two(min(run_batches) / 2, max(run_batches) * 4)
    return fit


# --- formatting ----------------------------------------------------------------------------------------------


def _decimals(value: float, digits: int) -> int:
    """Decimal places that show `value` to `digits` significant figures (negative: round to tens...)."""
    rounded = float(f"{value:.{digits}g}")
    return digits - 1 - math.floor(math.log10(abs(rounded)))


def _fixed(value: float, decimals: int) -> str:
    return f"{round(value, decimals):,.0f}" if decimals <= 0 else f"{value:,.{decimals}f}"


def sig(value: float | None, digits: int = 3) -> str:
    """`1,120`, `2.35`: `digits` significant figures, thousands separated."""
    if value is None or not math.isfinite(value):
        return fmt.DASH
    return "0" if value == 0 else _fixed(value, _decimals(value, digits))


def estimate_text(estimate: Estimate) -> str:
    """`1,120 ± 210 (68%: 950–1,330)`: value, std and interval at the finer of two resolutions, the std's second
    significant figure and the value's third; the value alone without an uncertainty."""
    if estimate.std is None or not estimate.std > 0 or not math.isfinite(estimate.std):
        return sig(estimate.value)
    decimals = max(_decimals(estimate.std, 2), _decimals(estimate.value, 3) if estimate.value else 0)
    text = f"{_fixed(estimate.value, decimals)} ± {_fixed(estimate.std, decimals)}"
    if estimate.low is not None and estimate.high is not None:
        text += f" (68%: {_fixed(estimate.low, decimals)}–{_fixed(estimate.high, decimals)})"
    return text


def _b_simple_text(values: list[float]) -> str:
    if not values:
        return fmt.DASH
    median = statistics.median(values)
    if len(values) == 1:
        return f"{sig(median)} (1 run)"
    return f"{sig(median)} ({sig(min(values))}–{sig(max(values))}, {len(values)} runs)"


def _prefix(name: str, count: int) -> str:
    return f"{name}: " if count > 1 and name != "all" else ""


def _sentence(prefix: str, text: str) -> str:
    return prefix + (text if prefix else text[0].upper() + text[1:]) + "."


def _devices(n: int) -> str:
    return f"{n} device{'s' * (n != 1)}"


# --- sentences (findings.FINDINGS) ---------------------------------------------------------------------------


def comparison_sentence(fit: SeriesFit, count: int) -> str:
    """B_crit from the fit next to the measured B_simple, and whether they agree within an order of magnitude."""
    prefix = _prefix(fit.series, count)
    if not fit.physical:
        s_min, e_min = fit.tradeoff.fit.s_min, fit.tradeoff.fit.e_min
        return _sentence(prefix, f"the fit of S(B) = S_min (1 + B_noise/B) gives S_min = {sig(s_min)} and E_min = "
                                 f"{sig(e_min)}, not both positive: the steps do not bend as the model expects over "
                                 f"batches {fit.batches[0]}–{fit.batches[-1]}, so there is no critical batch size")
    b = fit.b_crit
    spread = f" (±{sig(b.std, 2)})" if b.std is not None else " (exact through 2 points, no uncertainty)"
    text = f"critical batch size B_crit ≈ {sig(b.value)}{spread} from the fit"
    if not fit.batches[0] / 2 <= b.value <= fit.batches[-1] * 2:
        text += f", outside the batches fitted ({fit.batches[0]}–{fit.batches[-1]}): an extrapolation"
    median = fit.b_simple_median
    if median is None:
        return _sentence(prefix, text + "; no B_simple at the target was measured in this series")
    ratio = fit.ratio
    text += f"; measured B_simple at the target ≈ {sig(median)}"
    if len(fit.b_simple) > 1:
        text += f" (median of {len(fit.b_simple)} runs, {sig(min(fit.b_simple))}–{sig(max(fit.b_simple))})"
    if 1 / ORDER_OF_MAGNITUDE <= ratio <= ORDER_OF_MAGNITUDE:
        verdict = (f"B_crit / B_simple = {ratio:.2g}: within an order of magnitude, as McCandlish et al. 2018 "
                   f"found")
    else:
        verdict = (f"B_crit / B_simple = {ratio:.2g}: more than an order of magnitude apart, unlike McCandlish et "
                   f"al. 2018, who found B_simple within an order of magnitude of B_crit")
    return _sentence(prefix, f"{text}; {verdict}")


def fastest_sentence(fit: SeriesFit, count: int) -> str | None:
    if not fit.physical or not fit.fastest:
        return None
    parts = [f"on {_devices(c.devices)}: {c.choice.batch} ({fmt.seconds(c.choice.time_s)} s)" for c in fit.fastest]
    return _sentence(_prefix(fit.series, count), "predicted fastest global batch " + "; ".join(parts)
                     + " (throughput(B) = n × tp(B/n), no communication cost)")


def noise_findings(study: Study) -> list[str]:
    """The section's conclusions: B_crit against B_simple, and the predicted fastest batch, per series."""
    result = analyse(study)
    sentences = []
    for fit in result.fits:
        sentences.append(comparison_sentence(fit, len(result.fits)))
        fastest = fastest_sentence(fit, len(result.fits))
        if fastest:
            sentences.append(fastest)
    return sentences


# --- plots ---------------------------------------------------------------------------------------------------


def _log_y_plain(ax) -> None:
    """plots._log_y, with large values written out (50,000 rather than 5e+04)."""
    from matplotlib.ticker import FuncFormatter

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
    fits = [fit for fit in analyse(study).fits if fit.physical]
    if not fits:
        return None
    colors = _series_colors(study)
    figure, ax = _figure()
    for fit in fits:
        color = colors.get(fit.series, "#1f77b4")
        measured = fit.steps if kind == "steps" else fit.samples
        curve = _curve_batches(fit)
        model = predict_steps if kind == "steps" else predict_samples
        b_crit = fit.b_crit.value
        ax.plot(fit.batches, measured, "o", color=color, label=f"{fit.series}: measured", zorder=3)
        ax.plot(curve, [model(fit.tradeoff, b) for b in curve], "-", color=color, alpha=0.8,
                label=f"{fit.series}: fit, B_crit ≈ {sig(b_crit)}", zorder=2)
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
    from matplotlib import colormaps

    runs = noise_runs(study)
    if not runs:
        return None
    series_of = {id(run): c.series for c in study.configurations for run in c.runs}
    styles = {name: LINESTYLES[i % len(LINESTYLES)] for i, name in enumerate(sorted(study.series))}
    batches = sorted({run.global_bs for run in runs})
    span = max(1.0, math.log2(batches[-1] / batches[0]))
    cmap = colormaps["viridis"]
    several = len({series_of[id(run)] for run in runs}) > 1
    figure, ax = _figure(9.0, 5.0)
    for run in runs:
        points = b_simple_series(run)
        series = series_of[id(run)]
        label = f"batch {run.global_bs}" + (f" ({series})" if several and series != "all" else "")
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.3, alpha=0.85, ls=styles.get(series, "-"),
                color=cmap(0.9 * math.log2(run.global_bs / batches[0]) / span), label=label)
    for fit in analyse(study).fits:
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
    fits = [fit for fit in analyse(study).fits if fit.physical and fit.throughput]
    if not fits:
        return None
    colors = _series_colors(study)
    figure, ax = _figure(8.0, 5.0)
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
                    color=color, alpha=0.6, label=f"{fit.series}: predicted, {_devices(choice.devices)}")
            ax.plot([choice.choice.batch], [choice.choice.time_s], "*", color=color, markersize=12,
                    markeredgecolor="black", zorder=4)
    _batch_axis(ax)
    _log_y_plain(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    ax.set_title("Predicted time to target (★: fastest); n devices: n × tp(B/n), no communication cost")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(study, figure, PLOT_TIME)


# --- the section -----------------------------------------------------------------------------------------------


def _figure_block(path: Path | None, caption: str, missing: str) -> list[Block]:
    return [Figure(path, caption)] if path is not None else [Note(missing)]


def _method_note(result: NoiseAnalysis) -> str:
    methods = ", ".join(f"{method} ({n} run{'s' * (n != 1)})" for method, n in result.methods.most_common()
                        if method)
    return (f"B_simple = tr(Σ)/|G|² is measured during training (McCandlish et al. 2018, sec. 2.2, appendix A.1) "
            f"from the gradients of a small and a big batch at the same parameters, averaged over steps before "
            f"dividing{f'; method: {methods}' if methods else ''}. The value at the target is the latest "
            f"estimate at or before the step that reached it.")


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION_CRITICAL)]
    result = analyse(study)
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
        blocks.append(Note(f"Fewer than 2 distinct batch sizes reached the target in every series ({detail}): no "
                           f"fit of S(B), no B_crit and no predictions."))
        if result.b_simple_all:
            blocks.append(Paragraph(f"Measured B_simple at the target: {_b_simple_text(result.b_simple_all)}."))
        blocks += _figure_block(plot_noise_over_training(study), "B_simple over training, per run.",
                                "No run recorded a B_simple series over training.")
        return blocks
    blocks += _fit_blocks(result)
    blocks.append(Note(_method_note(result)))
    blocks += _figure_block(plot_fit(study, "steps"),
                            "Steps to target against global batch (log-log): measured means (dots), fitted S(B) "
                            "(line), B_crit (dashed, diamond on the curve, shaded: 68% interval), S_min (dotted).",
                            "No physical fit (S_min and E_min positive): no steps plot.")
    blocks += _figure_block(plot_fit(study, "samples"),
                            "Samples to target against global batch (log-log): measured means, fitted E(B), "
                            "B_crit (dashed), E_min (dotted).",
                            "No physical fit: no samples plot.")
    blocks += _figure_block(plot_noise_over_training(study),
                            f"B_simple over training (at most {MAX_NOISE_LINES} runs, spread across batch sizes; "
                            f"colour: batch), with B_crit from the fit (red).",
                            "No run recorded a B_simple series over training.")
    blocks += _prediction_blocks(study, result)
    return blocks + _answers(noise_findings(study))


def _answers(sentences: list[str]) -> list[Block]:
    return [Bullets(sentences)] if sentences else [Note("No conclusion: too little data.")]


def _fit_blocks(result: NoiseAnalysis) -> list[Block]:
    rows = []
    for fit in result.fits:
        batch, residual = fit.worst_residual
        rows.append([fit.series, f"{len(fit.batches)} ({fit.batches[0]}–{fit.batches[-1]})",
                     estimate_text(fit.tradeoff.s_min), estimate_text(fit.tradeoff.e_min),
                     estimate_text(fit.b_crit) if fit.physical else "— (not physical)",
                     f"{residual:.1%} (batch {batch})", _b_simple_text(fit.b_simple),
                     f"{fit.ratio:.2g}" if fit.ratio is not None else fmt.DASH])
    blocks: list[Block] = [Table(["series", "batch sizes fitted", "S_min (steps)", "E_min (samples)", "B_crit",
                                  "max |relative residual|", "measured B_simple at target (median, range)",
                                  "B_crit / B_simple"], rows)]
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
                             "predicted train time (s)", "note"], rows))
    else:
        blocks.append(Note("Every power of two in the range was run."))
    blocks.append(Note(
        "Powers of two from half the smallest batch run to four times the largest. Time = S(B) B / "
        "throughput(B), throughput interpolated log-log between the measured batch sizes (train time, evaluation "
        "excluded, in the set-up the runs were measured in). Beyond the measured range the throughput is held "
        "constant at the nearest measured value: below it the predicted times are optimistic (a smaller batch "
        "usually runs slower), above it pessimistic where throughput still grows."))
    choice_rows = [[fit.series, _devices(c.devices), str(c.choice.batch), f"{c.choice.batch // c.devices}",
                    fmt.integer(c.choice.steps), fmt.seconds(c.choice.time_s), c.note or fmt.DASH]
                   for fit in fits for c in fit.fastest]
    if choice_rows:
        blocks.append(Table(["series", "devices", "fastest global batch", "per-device batch", "predicted steps",
                             "predicted train time (s)", "note"], choice_rows))
        blocks.append(Note(
            "n devices: throughput(B) = n × tp(B/n), tp the measured per-device throughput against the per-device "
            "batch (runs on several real processes divided by their count), i.e. perfect data parallelism with no "
            "communication cost: a lower bound on the time, and the larger the n, the more optimistic. Candidates: "
            "the powers of two above that divide evenly over the devices and give a per-device batch no smaller "
            "than the smallest measured (below it the throughput held constant would flatter them)."))
    else:
        blocks.append(Note("No run recorded throughput: no time predictions."))
    blocks += _figure_block(plot_predicted_time(study),
                            "Predicted train time to target against global batch: solid, in the measured set-up; "
                            "dashed, 8 devices; dotted, 64 devices (n × tp(B/n), no communication cost; per-device "
                            "batches within or above the measured ones); dots: measured; ★: predicted fastest.",
                            "No throughput measurements: no time prediction plot.")
    return blocks
