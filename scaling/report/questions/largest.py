"""What is the largest useful batch? Steps to target along each series' batch ladder, each doubling of the
batch classified into the regimes of Shallue et al. 2018 (perfect scaling, diminishing returns, no further
gain), decided from per-seed steps: up to where scaling is perfect, and the knee beyond which doubling the
batch saves under 10% of the steps. Its section (the regimes table) and its plot (steps to target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from matplotlib.lines import Line2D

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import Point, ladder, reached_steps, target_points
from scaling.report.finding import Finding, answers, one_seed, prefix, sentence, status_words, suffix
from scaling.report.plots import (
    PARTIAL_HANDLE,
    batch_axis,
    draw_missed,
    log_y,
    mark_partial,
    missed_batches,
    new_figure,
    raised_title,
    save,
    seeds_phrase,
    series_colors,
)
from scaling.report.render import Block, Heading, Note, Paragraph, Table, figure_or_note
from scaling.report.study import Study, per_study

QUESTION = "What is the largest useful batch?"

# Shallue et al. 2018, "Measuring the Effects of Data Parallelism on Neural Network Training": steps to a
# target fall in three regimes as the batch grows, perfect scaling (doubling the batch halves the steps),
# diminishing returns, and maximal data parallelism (no further gain). A doubling is classified by
# r = S(2B) / S(B), steps to target at 2B over steps at B; these are the report's thresholds.
PERFECT_MAX_RATIO = 0.6
NO_GAIN_MIN_RATIO = 0.9
REGIME_PERFECT = "perfect scaling"
REGIME_DIMINISHING = "diminishing returns"
REGIME_NO_GAIN = "no further gain"

# Doubling the batch can at best halve the steps; a ratio below this is evaluation granularity (steps to
# target known only to the evaluation interval) or a changed LR, not better-than-perfect scaling.
SUPER_LINEAR_RATIO = 0.5


@dataclass
class Doubling:
    """One rung of a series' batch ladder: steps to target at the smaller and the larger batch."""

    series: str
    small: int
    large: int
    steps_small: float  # mean over the seeds that reached the target
    steps_large: float
    rate: stats.Rate | None = None  # r per doubling with its confidence interval (from per-seed steps)
    resolution_small: float | None = None  # step resolution (evaluation interval) at each end
    resolution_large: float | None = None
    std_small: float | None = None
    std_large: float | None = None
    n_small: int = 1
    n_large: int = 1

    @property
    def ratio(self) -> float:
        """r per doubling: (S(large)/S(small)) ** (1 / log2(large/small)), which is S(2B)/S(B) for an exact
        doubling and puts uneven steps (e.g. 96 -> 256) on the same scale."""
        return (self.steps_large / self.steps_small) ** (1 / math.log2(self.large / self.small))

    @property
    def regime(self) -> str:
        return classify_ratio(self.ratio)

    @property
    def regime_decided(self) -> bool:
        """The whole confidence interval of r lies in the regime of its point value (needs 2+ seeds a side)."""
        rate = self.rate
        if rate is None or rate.low is None or rate.high is None:
            return False
        return classify_ratio(rate.low) == classify_ratio(rate.high) == self.regime

    @property
    def gain_decided(self) -> bool:
        """The whole interval of r lies below NO_GAIN_MIN_RATIO: doubling saves 10% or more of the steps."""
        return self.rate is not None and self.rate.high is not None and self.rate.high < NO_GAIN_MIN_RATIO

    @property
    def no_gain_decided(self) -> bool:
        """The whole interval of r lies at or above NO_GAIN_MIN_RATIO: doubling saves under 10%."""
        return self.rate is not None and self.rate.low is not None and self.rate.low >= NO_GAIN_MIN_RATIO

    @property
    def super_linear(self) -> bool:
        return self.ratio < SUPER_LINEAR_RATIO


def classify_ratio(ratio: float) -> str:
    if ratio <= PERFECT_MAX_RATIO:
        return REGIME_PERFECT
    if ratio < NO_GAIN_MIN_RATIO:
        return REGIME_DIMINISHING
    return REGIME_NO_GAIN


def doublings(series: str, points: list[Point], rules: stats.Rules = stats.DEFAULT_RULES) -> list[Doubling]:
    """Consecutive steps of the batch ladder where every seed reached the target (a batch that one lucky seed
    in three reached is not a useful batch, and its steps are that seed's alone). Batches closer than 1.5x to
    the last kept one (127/128/129 throughput probes) are skipped: their step ratio is noise, not scaling."""
    kept = ladder([p for p in points if p.all_reached and p.steps.mean is not None], lambda p: p.batch)
    out = []
    for a, b in pairwise(kept):
        steps_a, res_a = reached_steps(a.runs)
        steps_b, res_b = reached_steps(b.runs)
        rate = stats.per_doubling(steps_a, steps_b, math.log2(b.batch / a.batch), rules, resolution_small=res_a,
                                  resolution_large=res_b)
        out.append(Doubling(series, a.batch, b.batch, a.steps.mean, b.steps.mean, rate, a.step_resolution,
                            b.step_resolution, a.steps.std, b.steps.std, len(steps_a), len(steps_b)))
    return out


def knee(steps: list[Doubling]) -> int | None:
    """The smallest batch from which no doubling saves 10% or more of the steps (every later r >= 0.9);
    None when the last doubling still gains."""
    batch = None
    for doubling in reversed(steps):
        if doubling.regime != REGIME_NO_GAIN:
            break
        batch = doubling.small
    return batch


def knee_doublings(steps: list[Doubling]) -> list[Doubling]:
    """The doublings the largest-useful-batch claim rests on: from the doubling into the knee on (without a
    knee, the last doubling)."""
    batch = knee(steps)
    if batch is None:
        return steps[-1:]
    return [d for d in steps if d.small >= batch or d.large == batch]


def knee_decided(steps: list[Doubling]) -> bool:
    """The knee (or, without one, "at least the largest batch") holds at the confidence: every doubling from
    the knee on saves under 10% of the steps (its whole interval of r at or above 0.9) and the doubling into
    the knee saves more (its whole interval below 0.9). Only the 0.9 boundary matters here."""
    batch = knee(steps)
    if not steps:
        return False
    return all(d.no_gain_decided if batch is not None and d.small >= batch else d.gain_decided
               for d in knee_doublings(steps))


def perfect_until(steps: list[Doubling], decided: bool = False) -> int | None:
    """The largest batch reached by an unbroken run of perfect-scaling doublings from the smallest batch
    (decided=True: only doublings whose whole interval is perfect scaling)."""
    batch = None
    for doubling in steps:
        if doubling.regime != REGIME_PERFECT or (decided and not doubling.regime_decided):
            break
        batch = doubling.large
    return batch


@per_study
def doublings_of(study: Study) -> dict[str, list[Doubling]]:
    """Per series, its doublings (Study.series)."""
    return {name: doublings(name, points, study.rules) for name, points in study.series.items()}


# --- findings, section and plot -----------------------------------------------------------------------------


def _ratio_text(d: Doubling) -> str:
    """`0.95 (95% CI 0.91–0.99)`, the point value alone with one seed."""
    if d.rate is None or d.rate.low is None:
        return f"{d.ratio:.2f}"
    return f"{d.ratio:.2f} ({fmt.confidence_of(d.rate)} CI {d.rate.low:.2f}–{d.rate.high:.2f})"


def _steps_text(d: Doubling) -> str:
    """`12 → 10 steps (±1 over seeds; known to 2 steps)`: the step counts with their resolution and spread."""
    spread = [s for s in (d.std_small, d.std_large) if s is not None]
    res = [r for r in (d.resolution_small, d.resolution_large) if r]
    text = f"{fmt.integer(d.steps_small)} → {fmt.integer(d.steps_large)} steps"
    extra = []
    if spread:
        extra.append(f"seed std up to {fmt.sig(max(spread), 2)}")
    if res:
        extra.append(f"known to {fmt.integer(max(res))} step{'s' * (max(res) != 1)}")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _doubling_numbers(d: Doubling) -> dict[str, Any]:
    return {"small": d.small, "large": d.large, "steps_small": d.steps_small, "steps_large": d.steps_large,
            "std_small": d.std_small, "std_large": d.std_large, "resolution_small": d.resolution_small,
            "resolution_large": d.resolution_large, "ratio": d.ratio,
            "ci_low": d.rate.low if d.rate else None, "ci_high": d.rate.high if d.rate else None,
            "regime": d.regime, "regime_decided": d.regime_decided, "super_linear": d.super_linear}


def steps_scaling(study: Study) -> list[Finding]:
    """Perfect-scaling range and the knee of steps to target (Shallue et al. 2018 regimes), each against the
    interval of r from per-seed steps (with their evaluation resolution)."""
    out = []
    for name, steps in doublings_of(study).items():
        if not steps:
            continue
        lead, tag = prefix(name, len(study.series)), suffix(name)
        perfect = _perfect_scaling(study, steps, lead, tag)
        if perfect is not None:
            out.append(perfect)
        out.append(_largest_useful(study, name, steps, lead, tag))
    return out


def _perfect_scaling(study: Study, steps: list[Doubling], lead: str, tag: str) -> Finding | None:
    """Up to which batch doubling halves the steps, from the smallest batch on (None: not even the first)."""
    perfect = perfect_until(steps)
    if perfect is None:
        return None
    used = [d for d in steps if d.large <= perfect]
    n_seeds = min(min(d.n_small, d.n_large) for d in used)
    decided = perfect_until(steps, decided=True) == perfect
    text = (f"perfect scaling (r ≤ {PERFECT_MAX_RATIO}) holds up to batch {perfect} "
            f"(r = {', '.join(_ratio_text(d) for d in used)})")
    odd = [d for d in used if d.super_linear]
    if odd:
        where = ', '.join(f'{d.small} → {d.large} ({_steps_text(d)})' for d in odd)
        coarse = any(max(d.resolution_small or 1, d.resolution_large or 1) > 1 for d in odd)
        cause = ("the steps to target there are known only to an interval, so read it as evaluation "
                 "granularity, not as a gain" if coarse else
                 "the steps are exact, so it is the LR rule's doing (a larger LR at the larger batch), not a "
                 "gain of the batch alone")
        text += f"; r below {SUPER_LINEAR_RATIO} at {where} is better than perfect scaling allows: {cause}"
    text += "; " + ("decided on steps to target" if decided and not odd else "not decided (super-linear)" if decided
                    else _regime_undecided(study, n_seeds, [d for d in used if not d.regime_decided],
                                           (PERFECT_MAX_RATIO,)))
    return Finding(f"perfect_scaling{tag}", sentence(lead, text), decided and not odd,
                   str(perfect), n_seeds, numbers={"up_to": perfect,
                                                   "doublings": [_doubling_numbers(d) for d in used]})


def _largest_useful(study: Study, name: str, steps: list[Doubling], lead: str, tag: str) -> Finding:
    """The knee: the batch beyond which doubling saves under 10% of the steps (or "at least the largest")."""
    at = knee(steps)
    decided = knee_decided(steps)
    n_seeds = min(min(d.n_small, d.n_large) for d in knee_doublings(steps))
    if at is not None:
        later = [d for d in steps if d.small >= at]
        text = (f"beyond global batch {at}, doubling the batch saves under {1 - NO_GAIN_MIN_RATIO:.0%} "
                f"of steps (r = {', '.join(_ratio_text(d) for d in later)}; {_steps_text(later[0])}): {at} is "
                f"the largest useful batch")
        answer, numbers = at, {"batch": at, "at_least": False,
                               "doublings": [_doubling_numbers(d) for d in steps]}
    else:
        last = steps[-1]
        text = (f"doubling still saves {1 - last.ratio:.0%} of steps from batch {last.small} to {last.large} "
                f"(r = {_ratio_text(last)}; {_steps_text(last)}): the largest useful batch is at least "
                f"{last.large} (no plateau within the batches tried)")
        answer, numbers = last.large, {"batch": last.large, "at_least": True,
                                       "doublings": [_doubling_numbers(d) for d in steps]}
    open_ = [d for d in knee_doublings(steps)
             if not (d.no_gain_decided if at is not None and d.small >= at else d.gain_decided)]
    text += "; " + ("decided on steps to target" if decided else _regime_undecided(study, n_seeds, open_, (NO_GAIN_MIN_RATIO,)))
    largest = steps[-1].large
    missed = [p for p in study.series[name] if p.batch > largest and not p.all_reached
              and any(run.target is not None for run in p.runs)]
    if missed:
        text += ("; larger batches did not reach the target with every seed ("
                 + ", ".join(_missed_text(p) for p in missed) + ")")
        numbers["not_reached"] = {str(p.batch): p.outcome for p in missed}
    return Finding(f"largest_useful_batch{tag}", sentence(lead, text), decided, str(answer), n_seeds,
                   numbers=numbers)


def _missed_text(point: Point) -> str:
    """`4096 diverged`, or `2048: 1 of 3 seeds reached it`."""
    if point.any_reached:
        return f"{point.batch}: {len(point.reached)} of {len(point.runs)} seeds reached it"
    return f"{point.batch} {status_words(point.outcome)}"


def _regime_undecided(study: Study, n_seeds: int, open_: list[Doubling],
                      bounds: tuple[float, ...] = (PERFECT_MAX_RATIO, NO_GAIN_MIN_RATIO)) -> str:
    """Why a regime claim is open: one seed, or which doubling's interval of r crosses a boundary that matters
    to the claim, and the seeds that would likely decide it."""
    if n_seeds < 2:
        return one_seed(study)
    named = ", ".join(f"{d.small} → {d.large}" for d in open_) or "none"
    edges = " or ".join(f"{b:g}" for b in bounds)
    text = (f"not decided: the {fmt.confidence(study.rules.confidence)} interval of r crosses {edges} at "
            f"{named}")
    needed = [d.rate.seeds_to_clear(bounds) if d.rate else None for d in open_]
    if open_ and all(n is not None for n in needed):
        text += f"; about {max(needed)} seeds per configuration would likely decide it"
    elif open_:
        text += "; r lies too close to a boundary for a practical number of seeds to decide it"
    return text


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION), Paragraph(
        f"Regimes after Shallue et al. 2018 (Measuring the Effects of Data Parallelism on Neural Network "
        f"Training): each doubling of the batch is classified by r = S(2B)/S(B), the steps to target at 2B over "
        f"those at B. r ≤ {PERFECT_MAX_RATIO}: {REGIME_PERFECT}; "
        f"{PERFECT_MAX_RATIO} < r < {NO_GAIN_MIN_RATIO}: {REGIME_DIMINISHING}; "
        f"r ≥ {NO_GAIN_MIN_RATIO}: {REGIME_NO_GAIN}. Uneven steps between batch sizes use r "
        f"per doubling, (S(B2)/S(B1))^(1/log2(B2/B1))."
    )]
    blocks += figure_or_note(plot_steps_to_target(study),
                             "Steps to target against global batch (log-log); dotted: perfect scaling (slope −1 "
                             "through the smallest batch); shading: regime of each doubling, grey where its "
                             "interval does not decide it; ×, above the frame: the target was not reached.",
                             "No run reached its target: no steps-to-target plot.")
    rows = [[name, f"{d.small} → {d.large}", fmt.mean_std(d.steps_small, d.std_small, fmt.integer),
             fmt.mean_std(d.steps_large, d.std_large, fmt.integer), _resolution(d), f"{d.ratio:.2f}", _interval(d),
             d.regime + (" (super-linear: granularity?)" if d.super_linear else ""),
             "yes" if d.regime_decided else "no"]
            for name, steps in doublings_of(study).items() for d in steps]
    if rows:
        blocks.append(Table(["series", "batch", "steps at smaller", "steps at larger", "step resolution", "r",
                             f"r, {fmt.confidence(study.rules.confidence)} CI", "regime", "decided"], rows))
        blocks.append(Note(
            ("Steps: mean ± std over the seeds that reached the target. " if not study.one_seed else
             "Steps: one seed each, so no interval of r. ") + "Step resolution: how finely steps to target "
            "are known (the evaluation interval before the target, unless the run records it exactly); it adds "
            "the variance of a rounding error to the interval. A regime is decided when the whole interval of r "
            f"lies in it; more seeds, or steps to target known exactly (one step) rather than to the evaluation "
            f"interval, narrow the interval. r < {SUPER_LINEAR_RATIO} (better than perfect scaling) points "
            f"to evaluation granularity or an LR change rather than a real gain."))
    else:
        blocks.append(Note("Fewer than two batch sizes reached the target in any series: no regimes."))
    return blocks + answers(steps_scaling(study), "Not enough batch sizes reached the target to tell.")


def _resolution(d: Doubling) -> str:
    values = [r for r in (d.resolution_small, d.resolution_large) if r]
    return " / ".join(fmt.integer(r) for r in (d.resolution_small, d.resolution_large)) if values else fmt.DASH


def _interval(d: Doubling) -> str:
    if d.rate is None or d.rate.low is None:
        return "— (one seed)"
    return f"{d.rate.low:.2f}–{d.rate.high:.2f}"


REGIME_COLORS = {
    REGIME_PERFECT: "#2ca02c",
    REGIME_DIMINISHING: "#ff7f0e",
    REGIME_NO_GAIN: "#d62728",
}


UNDECIDED_COLOR = "#9e9e9e"


def plot_steps_to_target(study: Study) -> Path | None:
    """Steps to target, log-log, with the perfect-scaling line (slope -1 through the smallest batch) and each
    doubling shaded by its regime (Shallue et al. 2018); grey where the data do not decide the regime."""
    colors = series_colors(study)
    figure, ax = new_figure()
    drawn, missed, counts, partial = False, {}, [], False
    for name, points in study.series.items():
        points = target_points(points)
        reached = [p for p in points if p.steps.mean is not None]
        missed_batches(points, name, missed)
        if not reached:
            continue
        drawn = True
        counts += [p.steps.n for p in reached]
        batches = [p.batch for p in reached]
        ax.errorbar(batches, [p.steps.mean for p in reached], yerr=[p.steps.std or 0 for p in reached],
                    marker="o", capsize=3, color=colors[name], label=name, zorder=3)
        partial = mark_partial(ax, reached, lambda p: p.steps.mean, colors[name]) or partial
        first = reached[0]
        ax.plot(batches, [first.steps.mean * first.batch / b for b in batches], ":", color=colors[name],
                alpha=0.7, zorder=2)
        for doubling in doublings_of(study)[name]:
            color = REGIME_COLORS[doubling.regime] if doubling.regime_decided else UNDECIDED_COLOR
            ax.plot([doubling.small, doubling.large], [doubling.steps_small, doubling.steps_large],
                    color=color, lw=9, alpha=0.3, solid_capstyle="butt", zorder=1)
    if not drawn:
        return None
    extra = draw_missed(ax, missed, colors) + [PARTIAL_HANDLE] * partial
    batch_axis(ax)
    log_y(ax)
    ax.set_ylabel(f"optimizer steps to {study.target_text()}")
    raised_title(ax, "Steps to target against global batch" + seeds_phrase(counts), missed)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="#555", ls=":", label="perfect scaling (slope −1)"))
    handles += [Line2D([], [], color=color, lw=8, alpha=0.3, label=regime)
                for regime, color in REGIME_COLORS.items()]
    handles.append(Line2D([], [], color=UNDECIDED_COLOR, lw=8, alpha=0.3, label="regime not decided"))
    ax.legend(handles=handles + extra, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(study, figure, "steps_to_target")
