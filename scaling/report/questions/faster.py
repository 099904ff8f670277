"""Is a bigger batch faster to the target? The configurations ranked by train time to target (the fastest
against every other, decided from per-seed times), where the time is lowest along each series' batch ladder,
this question's section and its plots (time to target; accuracy against time and against samples).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import Measure, Point, min_seeds, reached_times, stat, target_points
from scaling.report.finding import (
    MAX_NAMED,
    Finding,
    answers,
    hardest,
    named,
    prefix,
    sentence,
    suffix,
    verdict_text,
)
from scaling.report.plots import (
    PARTIAL_HANDLE,
    batch_axis,
    draw_missed,
    log_axis,
    log_y,
    mark_partial,
    missed_batches,
    new_figure,
    raised_title,
    save,
    seeds_phrase,
    series_colors,
    spread_caption,
)
from scaling.report.render import Block, Heading, figure_or_note
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study, per_study

QUESTION = "Is a bigger batch faster to the target?"


# --- configurations that train identically ------------------------------------------------------------------


def training_key(configuration: Configuration) -> str:
    """What the optimizer does: every setting but the LR rule's name, and the LR schedule the run resolved.
    Two LR rules that give the same LR at a batch (linear and sqrt at the reference batch) train
    identically there; their times differ by timing noise only, so they are not ranked against each other."""
    settings = {k: v for k, v in configuration.settings.items() if k != "lr_scaling"}
    run = configuration.runs[0]
    schedule = {k: v for k, v in (run.get("lr") or {}).items() if k != "rule"}
    if not schedule:  # no result: only the rule is known, so assume it matters
        settings["lr_scaling"] = configuration.settings.get("lr_scaling")
    return json.dumps([settings, schedule], sort_keys=True, default=str)


def twin_groups(configurations: list[Configuration]) -> list[list[Configuration]]:
    """Configurations grouped by training_key, in their order."""
    groups: dict[str, list[Configuration]] = {}
    for configuration in configurations:
        groups.setdefault(training_key(configuration), []).append(configuration)
    return list(groups.values())


# --- ranking configurations by train time to target ---------------------------------------------------------


@dataclass
class Ranking:
    """The configuration with the lowest train time to target among candidates where every seed reached it,
    against every other candidate (configurations that train identically count once: `twins`)."""

    best: Configuration
    twins: list[Configuration]  # train exactly as `best` does (same LR schedule at the same batch)
    decision: stats.Best
    candidates: list[Configuration]  # one per distinct training, `best` included
    partial: list[Configuration]  # reached with some seeds only: never recommended
    samples: dict[int, list[float]] = field(default_factory=dict)  # id(candidate) -> per-seed times compared
    groups: dict[int, list[Configuration]] = field(default_factory=dict)  # id(candidate) -> it and its twins

    def twins_of(self, configuration: Configuration) -> list[Configuration]:
        """The configurations that train exactly as this candidate does (not itself)."""
        return self.groups.get(id(configuration), [configuration])[1:]

    def times(self, configuration: Configuration) -> list[float]:
        """The per-seed train times the ranking compared (averaged over identical trainings)."""
        return self.samples[id(configuration)]

    @property
    def decided(self) -> bool:
        return self.decision.decided and min_seeds(self.candidates) >= 2

    def comparison(self, other: Configuration) -> stats.Comparison:
        return self.decision.comparisons[id(other)]

    @property
    def others(self) -> list[Configuration]:
        return [c for c in self.candidates if c is not self.best]

    @property
    def ties(self) -> list[Configuration]:
        """Candidates the data do not separate from the best."""
        return [c for c in self.others if self.comparison(c).verdict != stats.LOWER]


def rank(configurations: list[Configuration], rules: stats.Rules, measure: Measure = reached_times) -> Ranking | None:
    """Rank by train time to target (or by another per-seed `measure`, e.g. aggregates.reached_steps); only
    configurations where every seed reached the target compete (one that failed with some seed is never
    recommended). None when no configuration qualifies."""
    complete = [c for c in configurations if c.runs and c.all_reached and measure(c.runs)[0]]
    partial = [c for c in configurations if c.reached and not c.all_reached]
    if not complete:
        return None
    groups = twin_groups(complete)
    representatives = [group[0] for group in groups]
    pooled = {id(group[0]): seed_means(group, measure) for group in groups}
    samples = {key: values for key, (values, _) in pooled.items()}
    resolutions = {key: res for key, (_, res) in pooled.items()}
    decision = stats.best_of(samples, rules, resolutions=resolutions)
    best = next(c for c in representatives if id(c) == decision.best)
    twins = next(group for group in groups if group[0] is best)[1:]
    return Ranking(best, twins, decision, representatives, partial, samples,
                   {id(group[0]): group for group in groups})


def seed_means(group: list[Configuration], measure: Measure = reached_times) -> tuple[list[float], list[float]]:
    """Per seed, the mean train time (or other `measure`) and its resolution over configurations that train
    identically: the same training timed twice, so their difference is timing noise and their mean the better
    measurement. One value per seed keeps the count of independent trainings honest."""
    by_seed: dict[str, list[Run]] = {}
    for configuration in group:
        for index, run in enumerate(configuration.runs):
            by_seed.setdefault(str(run.seed) if run.seed is not None else f"#{index}", []).append(run)
    values, resolutions = [], []
    for runs in by_seed.values():
        times, res = measure(runs)
        if times:
            values.append(statistics.fmean(times))
            resolutions.append(statistics.fmean(res))
    return values, resolutions


@per_study
def ranking_of(study: Study) -> Ranking | None:
    """The fastest configuration to the target against every other (None when none reached it with every
    seed)."""
    return rank(study.chasing, study.rules)


def best_configuration(study: Study) -> Configuration | None:
    ranking = ranking_of(study)
    return ranking.best if ranking else None


# --- time to target along a series --------------------------------------------------------------------------


@dataclass
class Trend:
    """Where train time to target is lowest along a series, against the smallest and the largest batch."""

    series: str
    points: list[Point]  # batches where every seed reached the target
    low: Point
    comparisons: dict[int, stats.Comparison]  # end batch -> low against it

    @property
    def first(self) -> Point:
        return self.points[0]

    @property
    def last(self) -> Point:
        return self.points[-1]

    @property
    def decided(self) -> bool:
        return bool(self.comparisons) and all(c.verdict == stats.LOWER for c in self.comparisons.values())

    @property
    def n_seeds(self) -> int:
        return min_seeds(self.points)


def series_trend(series: str, points: list[Point], rules: stats.Rules) -> Trend | None:
    timed = [p for p in points if p.all_reached and p.train_time.mean is not None]
    if len(timed) < 2:
        return None
    low = min(timed, key=lambda p: stats.geometric_mean(reached_times(p.runs)[0]))
    ends = [p for p in (timed[0], timed[-1]) if p is not low]
    comparisons = {}
    for end in ends:
        (a, ra), (b, rb) = reached_times(low.runs), reached_times(end.runs)
        comparisons[end.batch] = stats.compare(a, b, rules, comparisons=len(ends), resolution_a=ra, resolution_b=rb)
    return Trend(series, timed, low, comparisons)


@per_study
def trends_of(study: Study) -> list[Trend]:
    trends = [series_trend(name, points, study.rules) for name, points in study.series.items()]
    return [t for t in trends if t is not None]


# --- findings, section and plots ----------------------------------------------------------------------------


def _ranked(ranking: Ranking, configuration: Configuration) -> str:
    """A candidate's label, with the configurations that train identically to it: `batch 256 (linear) = batch
    256 (sqrt)`."""
    return " = ".join(c.label for c in [configuration, *ranking.twins_of(configuration)])


def fastest(study: Study) -> list[Finding]:
    if study.target is None:
        return []
    ranking = ranking_of(study)
    if ranking is None:
        reached = [c for c in study.chasing if c.reached]
        text = (f"No configuration reached {study.target_text()} with every seed"
                + (f" ({len(reached)} reached it with some seeds only: none is recommended)" if reached else "")
                + ".")
        return [Finding("fastest", text, n_seeds=study.max_seeds)]
    best = ranking.best
    train = stat(ranking.times(best))
    wall = stat(run.wall_time for c in [best, *ranking.twins] for run in c.runs)
    n_seeds = min_seeds(ranking.candidates)
    twins = (f" (as is {', '.join(c.label for c in ranking.twins)}, which trains identically with the same LR "
             f"schedule: not ranked; times averaged over both per seed)" if ranking.twins else "")
    seeds = f" ({train.n} seeds)" if train.n > 1 else ""
    lead = (f"{named(best)}{twins}, {fmt.mean_std(train.mean, train.std)} s{seeds} train time "
            f"({fmt.seconds(wall.mean)} s wall, evaluation included)")
    others = sorted(ranking.others, key=lambda c: ranking.comparison(c).ratio or 0, reverse=True)
    numbers: dict[str, Any] = {"configuration": best.label, "global_batch": best.global_bs, "series": best.series,
                               "train_time_s": train.mean, "train_time_std_s": train.std, "wall_time_s": wall.mean,
                               "against": [{"configuration": c.label,
                                            "same_training": [t.label for t in ranking.twins_of(c)],
                                            **ranking.comparison(c).to_dict()} for c in ranking.others],
                               "identical_training": [c.label for c in ranking.twins],
                               "not_every_seed_reached": [c.label for c in ranking.partial]}
    if not others:
        text = f"The only configuration that reached {study.target_text()} with every seed is {lead}"
        decided = False
    elif ranking.decided:
        nearest = min(ranking.others, key=lambda c: ranking.comparison(c).ratio and 1 / ranking.comparison(c).ratio)
        c = ranking.comparison(nearest)
        text = (f"The fastest configuration to {study.target_text()} is {lead}: faster than every other beyond "
                f"{fmt.percent(study.rules.threshold, 0)} at {fmt.confidence(study.rules.confidence)} confidence "
                f"(the nearest, {_ranked(ranking, nearest)}, {fmt.change(c.reversed(), 'train time')})")
        decided = True
    else:
        ties = sorted(ranking.ties, key=lambda c: ranking.comparison(c).ratio or 0, reverse=True)
        tied = ", ".join(
            f"{_ranked(ranking, c)} ({fmt.change(ranking.comparison(c).reversed(), 'train time', interval=n_seeds >= 2)})"
            for c in ties[:MAX_NAMED])
        more = f" and {len(ties) - MAX_NAMED} more" if len(ties) > MAX_NAMED else ""
        worst = hardest([ranking.comparison(c) for c in ties])
        text = (f"Lowest {'mean ' if train.n > 1 else ''}train time to {study.target_text()}: {lead}; the data do "
                f"not separate it from {tied}{more}: {verdict_text(study, worst, n_seeds)}")
        decided = False
    if ranking.partial:
        text += (f"; not recommended, since some seed missed the target: "
                 f"{', '.join(c.label for c in ranking.partial[:MAX_NAMED])}"
                 + (f" and {len(ranking.partial) - MAX_NAMED} more" if len(ranking.partial) > MAX_NAMED else ""))
    return [Finding("fastest", text + ".", decided, best.label, n_seeds, numbers=numbers)]


def time_trend(study: Study) -> list[Finding]:
    """Where train time to target is lowest along each series' batch ladder, against its two ends."""
    out = []
    for trend in trends_of(study):
        first, last, low = trend.first, trend.last, trend.low
        t = {p.batch: fmt.seconds(p.train_time.mean) for p in trend.points}
        lead = "train time to target"
        if low is last:
            text = (f"{lead} falls from {t[first.batch]} s at batch {first.batch} to {t[last.batch]} s at batch "
                    f"{last.batch}: the largest batch that reached the target is the fastest")
        elif low is first:
            text = (f"{lead} is lowest at the smallest batch, {first.batch} ({t[first.batch]} s); larger batches "
                    f"are slower ({t[last.batch]} s at batch {last.batch})")
        else:
            text = (f"{lead} falls from {t[first.batch]} s at batch {first.batch} to {t[low.batch]} s at batch "
                    f"{low.batch}, then rises to {t[last.batch]} s at batch {last.batch}: beyond batch {low.batch} "
                    f"a bigger batch is not faster")
        parts = [f"batch {low.batch} against {batch}: {fmt.change(c, 'train time', interval=trend.n_seeds >= 2)}"
                 for batch, c in trend.comparisons.items()]
        if trend.decided:
            text += f" ({'; '.join(parts)}: decided)"
        else:
            undecided = [c for c in trend.comparisons.values() if c.verdict != stats.LOWER]
            worst = hardest(undecided)
            text += f" ({'; '.join(parts)}: {verdict_text(study, worst, trend.n_seeds)})"
        numbers = {"lowest_batch": low.batch, "train_time_s": {p.batch: p.train_time.mean for p in trend.points},
                   "against": {str(batch): c.to_dict() for batch, c in trend.comparisons.items()}}
        out.append(Finding(f"time_trend{suffix(trend.series)}",
                           sentence(prefix(trend.series, len(study.series)), text), trend.decided,
                           f"batch {low.batch}", trend.n_seeds, numbers=numbers))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    blocks += figure_or_note(plot_time_to_target(study),
                             f"Train time to target against global batch, one line per series"
                             f"{spread_caption(study)}; ×, above the frame: no run of that series reached the "
                             f"target at that batch, so there is no time.",
                             "No run reached its target: no time-to-target plot.")
    metric, seen = _metric(study), "tokens" if study.tokens_per_sequence else "samples"
    blocks += figure_or_note(plot_accuracy_vs_time(study),
                             f"Eval {metric} against train time: one panel per series, colour by global batch, one "
                             f"line per seed.",
                             f"No run recorded an evaluation history: no {metric} curves.")
    blocks += figure_or_note(plot_accuracy_vs_samples(study),
                             f"Eval {metric} against {seen} seen: one panel per series, colour by global batch, one "
                             f"line per seed.",
                             f"No run recorded an evaluation history: no {metric}-against-{seen} curves.")
    return blocks + answers(fastest(study) + time_trend(study),
                            "Too few configurations reached the target to tell.")


def plot_time_to_target(study: Study) -> Path | None:
    colors = series_colors(study)
    figure, ax = new_figure()
    drawn, missed, counts, partial = False, {}, [], False
    for name, points in study.series.items():
        points = target_points(points)
        timed = [p for p in points if p.train_time.mean is not None]
        if timed:
            drawn = True
            counts += [p.train_time.n for p in timed]
            ax.errorbar([p.batch for p in timed], [p.train_time.mean for p in timed],
                        yerr=[p.train_time.std or 0 for p in timed], marker="o", capsize=3, color=colors[name],
                        label=name)
            partial = mark_partial(ax, timed, lambda p: p.train_time.mean, colors[name]) or partial
        missed_batches(points, name, missed)
    if not drawn:
        return None
    handles = draw_missed(ax, missed, colors) + [PARTIAL_HANDLE] * partial
    batch_axis(ax)
    log_y(ax)
    ax.set_ylabel(f"train time to {study.target_text()} (s)")
    raised_title(ax, "Time to target against global batch" + seeds_phrase(counts), missed)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=8)
    return save(study, figure, "time_to_target")


# At most this many batch sizes share one panel of the accuracy plots (distinct colours stay readable).
MAX_BATCHES_PER_PANEL = 8


def _metric(study: Study) -> str:
    """The evaluation metric the study's target is on (accuracy without a target)."""
    return study.target.metric if study.target is not None else "accuracy"


def _plot_accuracy(study: Study, x_field: str, x_label: str, title: str, x_scale: float = 1.0):
    """Curves of the targeted metric (accuracy, or the evaluation loss) from result["history"] (a Figure, or
    None without history) as small multiples: one panel per series (and per 8 batch sizes), colour by global
    batch with one shared legend, one thin line per seed, the target dashed. x values are multiplied by
    `x_scale` (samples to tokens)."""
    metric = _metric(study)
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
                history = [h for h in run.history if h.get(x_field) and h.get(metric) is not None]
                if history:
                    ax.plot([h[x_field] * x_scale for h in history], [h[metric] for h in history], lw=1.1,
                            alpha=0.85 if seeds == 1 else 0.6, color=color[configuration.global_bs])
        if study.target is not None:
            ax.axhline(study.target.value, color="#d62728", lw=1, ls="--")
        ax.grid(True, alpha=0.3)
        ax.set_title(series if series != "all" else "all runs", fontsize=9)
    log_axis(axes[0], "x")  # the panels share x: one set of ticks for all
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel(x_label)
    for ax in axes[::columns]:
        ax.set_ylabel("eval accuracy" if metric == "accuracy" else "eval loss (nats/token)")
    handles = [Line2D([], [], color=color[b], lw=2, label=f"batch {b}") for b in batches]
    if study.target is not None:
        handles.append(Line2D([], [], color="#d62728", lw=1, ls="--", label=f"target {study.target_text()}"))
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                  title="colour: batch" + ("\none line per seed" if seeds > 1 else ""), title_fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_accuracy_vs_time(study: Study) -> Path | None:
    metric = _metric(study)
    figure = _plot_accuracy(study, "train_time_s", "train time (s, evaluation excluded)",
                            f"{metric.capitalize()} against train time, per series")
    return None if figure is None else save(study, figure, f"{metric}_vs_time")


def plot_accuracy_vs_samples(study: Study) -> Path | None:
    """Against samples seen, or for next-token runs against tokens seen (sequences x context)."""
    metric, context = _metric(study), study.tokens_per_sequence
    seen = "tokens" if context else "samples"
    figure = _plot_accuracy(study, "samples", f"training {seen} seen", f"{metric.capitalize()} against {seen}, "
                            "per series", x_scale=context or 1)
    return None if figure is None else save(study, figure, f"{metric}_vs_{seen}")
