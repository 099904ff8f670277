"""Which learning rate is best at each batch, and how should it scale? The tuned frontier of a tuned study
(study.json `tuning`, report/tuning.py): the best LR the search found at every global batch, its bracket (the
tried LRs either side), the power law η*(B) ∝ B^α through those best LRs against linear (α = 1) and square-root
(α = 0.5) scaling, a rise-then-fall of η*(B) where it appears, the critical batch of the tuned series, and what
each fixed LR rule costs in steps against the tuned best. Its findings, its section (a table per batch and the
best-LR plot) and that plot.

Shallue et al. 2018 (JMLR 20(112)): retune the metaparameters at every batch and keep the best trial, since
disagreements between studies were "largely explained by differences in metaparameter tuning"; McCandlish et
al. 2018 (arXiv 1812.06162): S(B) = S_min (1 + B_noise/B) holds at the best LR for each batch; Li et al. 2024
(arXiv 2405.14578): for Adam the optimal LR rises and then falls with the batch, its peak near B_noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from matplotlib.lines import Line2D

from scaling import stats
from scaling.distributions import t_quantile
from scaling.report import formatting as fmt
from scaling.report.aggregates import reached_steps, stat
from scaling.report.finding import (
    ESTIMATE,
    OBSERVATION,
    Finding,
    answers,
    hardest,
    sentence,
    status_words,
    verdict_text,
)
from scaling.report.plots import batch_axis, log_y, new_figure, save
from scaling.report.questions.critical_batch import comparison_sentence, noise_of
from scaling.report.questions.critical_batch_fits import b_simple_at_target
from scaling.report.render import Block, Heading, Note, Paragraph, Table, figure_or_note
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study, per_study
from scaling.report.tuning import TUNED, Search

QUESTION = "Which learning rate is best at each batch, and how should it scale?"
PLOT = "tuned_lr"
LINEAR, SQRT = 1.0, 0.5  # the exponents of the linear and square-root rules
# A peak of the best LR within this factor of B_simple counts as "near" it (Li et al. 2024 place it near B_noise).
NEAR_FACTOR = 2.0
ADAM_LIKE = ("adam", "adamw", "lamb", "lion")


# --- the power law through the best LRs (pure) -------------------------------------------------------------


@dataclass
class Exponent:
    """η*(B) = exp(c) B^α fitted through the best LRs, with the interval of α: the hull of the least-squares
    slope's t interval (3+ batches) and the slopes of every power law through every batch's bracket."""

    batches: list[int]
    alpha: float  # least-squares slope of log η* on log B
    intercept: float
    fit_low: float | None = None  # the slope's t interval (None with 2 batches: no residual to go by)
    fit_high: float | None = None
    bracket_low: float | None = None  # slopes of power laws through every bracket (-inf/inf: unbounded)
    bracket_high: float | None = None
    feasible: bool = True  # some power law passes through every bracket

    @property
    def low(self) -> float:
        """The lower end of the hull (-inf where nothing bounds it)."""
        ends = [v for v in (self.fit_low, self.bracket_low if self.feasible else None) if v is not None]
        return min(ends) if ends else -math.inf

    @property
    def high(self) -> float:
        ends = [v for v in (self.fit_high, self.bracket_high if self.feasible else None) if v is not None]
        return max(ends) if ends else math.inf

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def winner(self) -> str | None:
        """"linear" or "sqrt" when the interval holds that exponent and not the other, "neither" when it holds
        none, None when it holds both (not decided)."""
        linear, sqrt = self.contains(LINEAR), self.contains(SQRT)
        if linear and sqrt:
            return None
        return "linear" if linear else "sqrt" if sqrt else "neither"


def least_squares(xs: list[float], ys: list[float], confidence: float) -> tuple[float, float, float | None,
                                                                               float | None]:
    """(slope, intercept, low, high): the least-squares line and the slope's Student-t interval at
    `confidence` (n - 2 degrees of freedom; None with fewer than 3 points)."""
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    if n < 3:
        return slope, intercept, None, None
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    half = t_quantile(1 - (1 - confidence) / 2, n - 2) * math.sqrt(residual / (n - 2) / sxx)
    return slope, intercept, slope - half, slope + half


def bracket_slopes(xs: list[float], lows: list[float], highs: list[float]) -> tuple[float, float] | None:
    """The slopes α of the lines c + α x that pass through every interval [lows_i, highs_i] at x_i (logs;
    -inf/inf for an open side), or None when no line does. For i < j such a line needs
    (lows_j - highs_i) / (x_j - x_i) <= α <= (highs_j - lows_i) / (x_j - x_i), and on a line the pairwise
    conditions suffice (intervals on a line meet when every two of them do)."""
    low, high = -math.inf, math.inf
    for i, j in combinations(range(len(xs)), 2):
        if xs[j] < xs[i]:
            i, j = j, i
        dx = xs[j] - xs[i]
        low = max(low, (lows[j] - highs[i]) / dx)
        high = min(high, (highs[j] - lows[i]) / dx)
    return (low, high) if low <= high else None


def power_law(batches: list[int], lrs: list[float], lows: list[float | None], highs: list[float | None],
              confidence: float) -> Exponent | None:
    """The exponent of η*(B) from the best LR and its bracket at each batch (None bounds: open at the edge of
    the searched range); None with fewer than 2 distinct batches."""
    if len(set(batches)) < 2:
        return None
    xs, ys = [math.log(b) for b in batches], [math.log(v) for v in lrs]
    slope, intercept, fit_low, fit_high = least_squares(xs, ys, confidence)
    logs_low = [math.log(v) if v else -math.inf for v in lows]
    logs_high = [math.log(v) if v else math.inf for v in highs]
    feasible = bracket_slopes(xs, logs_low, logs_high)
    exponent = Exponent(list(batches), slope, intercept, fit_low, fit_high)
    if feasible is None:
        exponent.feasible = False
    else:
        exponent.bracket_low = feasible[0] if math.isfinite(feasible[0]) else -math.inf
        exponent.bracket_high = feasible[1] if math.isfinite(feasible[1]) else math.inf
    return exponent


def peaks(lrs: list[float], lows: list[float | None], highs: list[float | None]) -> list[int]:
    """Indices j (batches ascending) where η* rises then falls beyond the brackets: some smaller batch's
    bracket and some larger batch's lie wholly below batch j's (their top at or under its bottom; an open top
    never does). Within a bracket the optimum is only known to lie between the tried LRs either side, so
    brackets that touch or overlap say nothing about the order of the optima."""
    def below(i: int, j: int) -> bool:
        return highs[i] is not None and lows[j] is not None and highs[i] <= lows[j] * (1 + 1e-9)

    return [j for j in range(1, len(lrs) - 1)
            if any(below(i, j) for i in range(j)) and any(below(k, j) for k in range(j + 1, len(lrs)))]


# --- the analysis ---------------------------------------------------------------------------------------------


@dataclass
class BatchBest:
    """The tuned frontier at one batch: the search, its best (if any) and the runs behind it."""

    search: Search
    configuration: Configuration | None  # the tuned configuration at this batch (finished runs)

    @property
    def batch(self) -> int:
        return self.search.batch

    @property
    def lr(self) -> float | None:
        return self.search.best.lr if self.search.best else None

    @property
    def low(self) -> float | None:
        return self.search.bracket[0]

    @property
    def high(self) -> float | None:
        return self.search.bracket[1]

    @property
    def runs(self) -> list[Run]:
        return self.search.best_runs

    @property
    def steps(self) -> list[int]:
        return [s for s in (self.search.best.steps if self.search.best else []) if s is not None]

    @property
    def median_steps(self) -> float | None:
        return self.search.best.median_steps if self.search.best else None

    @property
    def runner_up(self):
        """The other candidate (the second-best LR re-run with every seed), if any."""
        others = [c for c in self.search.candidates if c is not self.search.best]
        return others[0] if others else None


@dataclass
class TunedSeries:
    series: str
    points: list[BatchBest]
    exponent: Exponent | None = None
    peak_indices: list[int] = field(default_factory=list)

    @property
    def with_best(self) -> list[BatchBest]:
        return [p for p in self.points if p.lr is not None]

    @property
    def runs(self) -> list[Run]:
        return [run for p in self.points if p.configuration for run in p.configuration.runs]

    @property
    def n_seeds(self) -> int:
        return min((len(p.search.best.ids) for p in self.with_best), default=0)


@per_study
def tuned_of(study: Study) -> list[TunedSeries]:
    """Per tuned series (one, unless the grid has axes besides the batch), the best LR at every batch and the
    power law through them."""
    if not study.searches:
        return []
    by_series: dict[str, list[Search]] = {}
    for search in study.searches:
        by_series.setdefault(search.series, []).append(search)
    configurations = {(c.series, c.global_bs): c for c in study.configurations if c.lr_rule == TUNED}
    out = []
    for name, searches in by_series.items():
        points = [BatchBest(s, configurations.get((name, s.batch))) for s in sorted(searches, key=lambda s: s.batch)]
        series = TunedSeries(name, points)
        best = series.with_best
        if best:
            series.exponent = power_law([p.batch for p in best], [p.lr for p in best], [p.low for p in best],
                                        [p.high for p in best], study.rules.confidence)
            series.peak_indices = peaks([p.lr for p in best], [p.low for p in best], [p.high for p in best])
        out.append(series)
    return out


# --- findings -------------------------------------------------------------------------------------------------


def _tag(series: str) -> str:
    return "" if series == TUNED else f"[{series}]"


def _lead(series: str) -> str:
    return "" if series == TUNED else f"{series}: "


def _open_side(point: BatchBest) -> str | None:
    """Where the best lies at the edge of the searched range: "bottom", "top" or "both"."""
    if point.low is None and point.high is None:
        return "both"
    return "bottom" if point.low is None else "top" if point.high is None else None


def optimal_lr(study: Study) -> list[Finding]:
    """At each batch: the best LR, its bracket, its median steps, and whether the runner-up is separated."""
    out = []
    for series in tuned_of(study):
        for point in series.points:
            out.append(_optimal_lr(study, series, point))
    return out


def _optimal_lr(study: Study, series: TunedSeries, point: BatchBest) -> Finding:
    search = point.search
    numbers: dict[str, Any] = {"batch": point.batch, "lr": point.lr, "low": point.low, "high": point.high,
                               "best_trial_lr": point.lr, "best_trial_steps": point.median_steps,
                               "steps": point.steps, "trials": len(search.search_trials),
                               "steps_trained": search.steps_trained,
                               "seeds": len(search.best.ids) if search.best else 0,
                               "grid": [search.grid[0], search.grid[-1]] if search.grid else None,
                               "search_done": search.done}
    fid = f"optimal_lr@{point.batch}{_tag(series.series)}"
    effort = (f"{len(search.search_trials)} search trials, {fmt.integer(search.steps_trained)} steps trained in "
              f"all at this batch")
    unfinished = "" if search.done else "; the search is not finished (run the sweep again to complete it)"
    if search.best is None:
        statuses = [status_words(t.get("status") or "missing") for t in search.search_trials]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        text = (f"at batch {point.batch} no LR reached {study.target_text()} with every seed ({effort}; the "
                f"search trials, at one seed: {counts or 'none'}){unfinished}")
        return Finding(fid, sentence(_lead(series.series), text), False, None, 0, ESTIMATE, numbers, detail=True)
    steps = point.steps
    spread = f", {fmt.integer(min(steps))}–{fmt.integer(max(steps))} over {len(steps)} seeds" if len(steps) > 1 else \
        " (one seed)"
    text = f"at batch {point.batch} the best LR is {fmt.lr(point.lr)}"
    edge = _open_side(point)
    if edge is None:
        text += f" (bracketed by the tried {fmt.lr(point.low)} and {fmt.lr(point.high)})"
    else:
        where = {"top": "the largest", "bottom": "the smallest", "both": "the only"}[edge]
        text += (f", {where} LR tried ({fmt.lr(search.grid[0])}–{fmt.lr(search.grid[-1])} searched): the best may "
                 f"lie beyond it, so widen the range (tune: base_lr, docs/studies.md)")
    text += f": {fmt.integer(point.median_steps)} median steps to {study.target_text()}{spread} ({effort})"
    decided, reason = _separated(study, point, numbers)
    text += reason + unfinished
    decided = decided and edge is None and search.done
    return Finding(fid, sentence(_lead(series.series), text), decided, fmt.lr(point.lr) if decided else None,
                   len(search.best.ids), ESTIMATE, numbers, detail=True)


def _separated(study: Study, point: BatchBest, numbers: dict[str, Any]) -> tuple[bool, str]:
    """Whether the best beats the runner-up candidate on steps (per seed), and the clause that says so."""
    other = point.runner_up
    if other is None:
        return False, "; no runner-up was re-run with every seed, so nothing is decided"
    numbers["runner_up_lr"] = other.lr
    numbers["runner_up_steps"] = other.median_steps
    best_runs = [run for run in point.search.best.runs if run is not None]
    other_runs = [run for run in other.runs if run is not None]
    missed = sum(s is None for s in other.steps)
    if missed == len(other.steps):  # no seed of the runner-up reached the target
        n = len(point.runs)
        numbers["runner_up"] = "did not reach"
        return n >= 2, (f"; the runner-up LR {fmt.lr(other.lr)} missed the target with every seed"
                        + (": decided" if n >= 2 else f" ({verdict_text(study, None, n)})"))
    (a, ra), (b, rb) = reached_steps(best_runs), reached_steps(other_runs)
    comparison = stats.compare(a, b, study.rules, resolution_a=ra, resolution_b=rb)
    numbers["runner_up"] = comparison.to_dict()
    text = f"; against the runner-up LR {fmt.lr(other.lr)}, {fmt.change(comparison, 'steps')}"
    if missed:  # compared on the seeds that reached it, as the LR-rule question does
        text += f" (on its seeds that reached the target; {missed} of {len(other.steps)} missed it)"
    if comparison.verdict == stats.LOWER:
        return True, text + ": decided"
    return False, text + ": " + verdict_text(study, comparison, min(comparison.n_a, comparison.n_b))


def _alpha_text(value: float) -> str:
    """`0.47`, `−0.47` (a real minus sign), `−∞`, `∞`."""
    return "−∞" if value == -math.inf else "∞" if value == math.inf else f"{value:.2f}".replace("-", "−")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def lr_exponent(study: Study) -> list[Finding]:
    """The exponent α of η*(B) ∝ B^α against linear (1) and square-root (0.5) scaling."""
    out = []
    for series in tuned_of(study):
        fid, lead = f"lr_exponent{_tag(series.series)}", _lead(series.series)
        best = series.with_best
        e = series.exponent
        if e is None:
            text = (f"{lead}the best LR is known at {len(best)} batch{'es' * (len(best) != 1)} "
                    f"({fmt.batch_list([p.batch for p in best]) if best else 'none'}): a scaling of the LR with the "
                    f"batch needs the best LR at 2 or more batches")
            out.append(Finding(fid, _sentence(text), False, None, series.n_seeds, ESTIMATE,
                               {"alpha": None, "low": None, "high": None, "batches": [p.batch for p in best]}))
            continue
        numbers: dict[str, Any] = {
            "alpha": e.alpha, "low": _finite(e.low), "high": _finite(e.high), "batches": e.batches,
            "intercept": e.intercept, "fit_low": e.fit_low, "fit_high": e.fit_high,
            "bracket_low": _finite(e.bracket_low), "bracket_high": _finite(e.bracket_high),
            "brackets_fit": e.feasible, "confidence": study.rules.confidence,
            "lr": {str(p.batch): p.lr for p in best}}
        parts = []
        if e.fit_low is not None:
            parts.append(f"{fmt.confidence(study.rules.confidence)} t interval of the least-squares slope "
                         f"{_alpha_text(e.fit_low)} to {_alpha_text(e.fit_high)}")
        if e.feasible:
            parts.append(f"power laws through every batch's bracket: α from {_alpha_text(e.bracket_low)} to "
                         f"{_alpha_text(e.bracket_high)}")
        text = (f"{lead}the best LR scales as B^{_alpha_text(e.alpha)} over batches {e.batches[0]}–{e.batches[-1]} "
                f"({', '.join(f'{fmt.lr(p.lr)} at {p.batch}' for p in best)}); α lies in "
                f"{_alpha_text(e.low)} to {_alpha_text(e.high)} ({'; '.join(parts)})")
        if not e.feasible:
            text += "; no single power law passes through every batch's bracket (η*(B) bends, see lr_peak)"
        winner = e.winner
        one = study.one_seed or series.n_seeds < 2
        edges = [p.batch for p in best if _open_side(p)]
        if edges:
            text += f"; the best LR at batch {fmt.batch_list(edges)} is at the edge of the searched range"
        if winner is None:
            text += ": the data cannot tell linear (α = 1) from square-root (α = 0.5) scaling"
        elif winner == "neither":
            text += f": neither linear (α = 1) nor square-root (α = 0.5) scaling; α ≈ {_alpha_text(e.alpha)}"
        else:
            text += (f": {'linear (α = 1)' if winner == 'linear' else 'square-root (α = 0.5)'} scaling, not "
                     f"{'square-root' if winner == 'linear' else 'linear'}")
        decided = winner is not None and not one
        if winner is not None and one:
            text += f" ({verdict_text(study, None, 1)}: the best LR rests on one seed per batch)"
        elif decided:
            text += " (decided)"
        out.append(Finding(fid, _sentence(text), decided, winner if decided else None, series.n_seeds, ESTIMATE,
                           numbers))
    return out


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "." if text else text


def lr_peak(study: Study) -> list[Finding]:
    """A rise-then-fall of η*(B) beyond the brackets, against B_simple of the tuned runs (Li et al. 2024)."""
    out = []
    for series in tuned_of(study):
        if not series.peak_indices:
            continue
        best = series.with_best
        peak = best[max(series.peak_indices, key=lambda j: best[j].lr)]
        values = [v for run in series.runs if (v := b_simple_at_target(run)) is not None]
        median = statistics.median(values) if values else None
        optimizers = sorted({str(run.config.get("optimizer")) for run in series.runs if run.config.get("optimizer")})
        numbers: dict[str, Any] = {"batch": peak.batch, "lr": peak.lr, "low": peak.low, "high": peak.high,
                                   "b_simple_median": median, "ratio_to_b_simple": peak.batch / median if median
                                   else None, "optimizer": optimizers,
                                   "peaks": [best[j].batch for j in series.peak_indices]}
        text = (f"{_lead(series.series)}the best LR rises and then falls with the batch: it peaks at batch "
                f"{peak.batch} (LR {fmt.lr(peak.lr)}, bracket {fmt.lr(peak.low)}–{fmt.lr(peak.high)}), above the "
                f"brackets of a smaller and a larger batch")
        if median is None:
            text += "; no B_simple was measured to compare the peak with"
        else:
            near = 1 / NEAR_FACTOR <= peak.batch / median <= NEAR_FACTOR
            text += (f"; the tuned runs' median B_simple at the target is {fmt.sig(median)}, "
                     f"{'near' if near else 'far from'} the peak (within a factor of {NEAR_FACTOR:g}: "
                     f"{'yes' if near else 'no'})")
        adam = any(o.lower() in ADAM_LIKE for o in optimizers)
        text += ("; Li et al. 2024 (arXiv 2405.14578) find that for Adam the optimal LR peaks near B_noise"
                 + ("" if adam or not optimizers else f" (these runs use {', '.join(optimizers)})"))
        out.append(Finding(f"lr_peak{_tag(series.series)}", _sentence(text), False, None, series.n_seeds, OBSERVATION,
                           numbers))
    return out


def tuned_critical_batch(study: Study) -> list[Finding]:
    """The critical batch of the tuned series (critical_batch's fit of that series): the headline, since
    McCandlish et al.'s S(B) = S_min (1 + B_noise/B) holds at the best LR for each batch."""
    out = []
    analysis = noise_of(study)
    for series in tuned_of(study):
        fid = f"tuned_critical_batch{_tag(series.series)}"
        fit = next((f for f in analysis.fits if f.series == series.series), None)
        if fit is None:
            if not analysis.present:
                why = "no run recorded a gradient noise scale, so no series was fitted"
            else:
                n = analysis.too_few.get(series.series, 0)
                why = f"fewer than 2 batches of the tuned series reached the target with every seed ({n})"
            text = f"{_lead(series.series)}the critical batch of the tuned frontier is not known: {why}"
            out.append(Finding(fid, _sentence(text), False, None, series.n_seeds, ESTIMATE, {"b_crit": None}))
            continue
        base = comparison_sentence(fit, 1, study.tokens_per_sequence)
        statement = base.statement[0].lower() + base.statement[1:]
        text = sentence(_lead(series.series), f"on the tuned frontier (the best LR at every batch, as McCandlish "
                                              f"et al. 2018's model assumes), {statement.rstrip('.')}")
        numbers = {**base.numbers, "series": series.series}
        out.append(Finding(fid, text, base.decided, base.winner, base.n_seeds, ESTIMATE, numbers))
    return out


@dataclass
class RuleCost:
    """A fixed LR rule against the tuned best at one batch, on steps to target."""

    rule: str
    point: BatchBest
    configuration: Configuration
    comparison: stats.Comparison | None  # rule over tuned; None when no seed of the rule reached the target

    @property
    def batch(self) -> int:
        return self.point.batch

    @property
    def n_seeds(self) -> int:
        return min(len(self.configuration.runs), len(self.point.runs))

    @property
    def decided(self) -> bool:
        if self.comparison is None:
            return self.n_seeds >= 2
        return self.comparison.decided

    @property
    def same_lr(self) -> bool:
        """The rule's LR at this batch is the tuned best LR: the two differ in nothing the search chose."""
        lr = self.configuration.runs[0].lr_scaled
        return lr is not None and self.point.lr is not None and math.isclose(lr, self.point.lr, rel_tol=1e-6)

    @property
    def winner(self) -> str | None:
        if not self.decided:
            return None
        if self.comparison is None or self.comparison.verdict == stats.HIGHER:
            return TUNED
        return self.rule


def _matches(configuration: Configuration, search: Search) -> bool:
    return configuration.global_bs == search.batch and all(
        configuration.settings.get(k) == v for k, v in search.others.items())


@per_study
def rule_costs_of(study: Study) -> dict[str, list[RuleCost]]:
    """Per fixed LR rule (series), its cost against the tuned best at every batch that has one."""
    fixed = [c for c in study.chasing if c.lr_rule != TUNED and not study.other_target(c)]
    out: dict[str, list[RuleCost]] = {}
    for series in tuned_of(study):
        for point in series.with_best:
            for c in fixed:
                if not _matches(c, point.search):
                    continue
                comparison = None
                if c.reached:
                    (a, ra), (b, rb) = reached_steps(c.runs), reached_steps(point.runs)
                    comparison = stats.compare(a, b, study.rules, resolution_a=ra, resolution_b=rb)
                out.setdefault(c.series, []).append(RuleCost(c.series, point, c, comparison))
    return {rule: sorted(costs, key=lambda r: r.batch) for rule, costs in sorted(out.items())}


def _cost_text(study: Study, cost: RuleCost) -> str:
    tuned = fmt.integer(cost.point.median_steps)
    c = cost.comparison
    if c is None:
        outcome = status_words(_outcome(cost.configuration.runs))
        return (f"LR rule {cost.rule} did not reach the target at {cost.batch} ({outcome}), tuned needs {tuned} steps"
                + ("" if cost.n_seeds >= 2 else f" ({verdict_text(study, None, 1)})"))
    interval = (f" ({fmt.confidence(c.confidence)} CI {c.low:.2f}–{c.high:.2f})" if c.low is not None else "")
    partial = (f", {len(cost.configuration.reached)} of {len(cost.configuration.runs)} seeds reached it"
               if not cost.configuration.all_reached else "")
    text = f"LR rule {cost.rule} needs {c.ratio:.2f}× the tuned steps at {cost.batch}{interval}{partial}"
    if cost.same_lr:
        return text + f": at this batch the rule gives the tuned best LR itself ({fmt.lr(cost.point.lr)})"
    if c.decided:
        return text + (": more steps than tuned, decided" if c.verdict == stats.HIGHER else
                       ": fewer steps than the tuned best, decided (a finer LR grid may close it)")
    return text + ": " + verdict_text(study, c, min(c.n_a, c.n_b))


def _outcome(runs: list[Run]) -> str:
    missed = [run.status for run in runs if not run.reached]
    return max(set(missed), key=missed.count) if missed else "reached"


def rule_cost_per_batch(study: Study) -> list[Finding]:
    out = []
    for rule, costs in rule_costs_of(study).items():
        for cost in costs:
            numbers = {"rule": rule, "batch": cost.batch, "tuned_lr": cost.point.lr,
                       "rule_lr": cost.configuration.runs[0].lr_scaled,
                       "tuned_steps": cost.point.median_steps,
                       "rule_steps": stat(run.steps_to_target for run in cost.configuration.runs).mean,
                       "ratio": cost.comparison.ratio if cost.comparison else None,
                       "comparison": cost.comparison.to_dict() if cost.comparison else None,
                       "reached": cost.comparison is not None}
            out.append(Finding(f"rule_cost@{cost.batch}[{rule}]", _sentence(_cost_text(study, cost)), cost.decided,
                               cost.winner, cost.n_seeds, numbers=numbers, detail=True))
    return out


def rule_cost(study: Study) -> list[Finding]:
    """Per fixed rule: the range of its step costs against the tuned best, and where it is decided."""
    out = []
    for rule, costs in rule_costs_of(study).items():
        compared = [c for c in costs if c.comparison is not None and c.comparison.ratio is not None]
        missed = [c.batch for c in costs if c.comparison is None]
        parts = []
        same = [c for c in compared if c.same_lr]
        if same:
            parts.append(f"LR rule {rule} gives the tuned best LR itself at batch {fmt.batch_list([c.batch for c in same])}")
            compared = [c for c in compared if not c.same_lr]
        if compared:
            ratios = [c.comparison.ratio for c in compared]
            span = (f"{min(ratios):.2f}×" if len(ratios) == 1 else f"{min(ratios):.2f}–{max(ratios):.2f}×")
            batches = [c.batch for c in compared]
            parts.append(f"{'elsewhere it' if same else f'LR rule {rule}'} needs {span} the tuned steps at batch "
                         f"{fmt.batch_list(batches)}")
            more = [c.batch for c in compared if c.decided and c.comparison.verdict == stats.HIGHER]
            fewer = [c.batch for c in compared if c.decided and c.comparison.verdict == stats.LOWER]
            open_ = [c for c in compared if not c.decided]
            if more:
                parts.append(f"more than tuned, decided at {fmt.batch_list(more)}")
            if fewer:
                parts.append(f"fewer than tuned, decided at {fmt.batch_list(fewer)}")
            if open_:
                worst = hardest([c.comparison for c in open_])
                parts.append(f"not decided at {fmt.batch_list([c.batch for c in open_])} "
                             f"({verdict_text(study, worst, min(c.n_seeds for c in open_))})")
        if missed:
            parts.append(f"{'it' if compared or same else f'LR rule {rule}'} did not reach the target at batch {fmt.batch_list(missed)}")
        differing = [c for c in costs if not (c.comparison is not None and c.same_lr)]
        decided = bool(differing) and all(c.decided for c in differing)
        winners = {c.winner for c in differing}
        winner = winners.pop() if decided and len(winners) == 1 else None
        numbers = {"rule": rule, "ratios": {str(c.batch): c.comparison.ratio for c in sorted(compared + same,
                                                                                          key=lambda c: c.batch)},
                   "decided_at": [c.batch for c in costs if c.decided], "not_reached": missed,
                   "same_lr_at": [c.batch for c in same],
                   "batches": [c.batch for c in costs]}
        out.append(Finding(f"rule_cost[{rule}]", _sentence("; ".join(parts)), winner is not None, winner,
                           min(c.n_seeds for c in costs), numbers=numbers))
    return out


def tuned_findings(study: Study) -> list[Finding]:
    """Every finding of the question, in the section's order."""
    return (optimal_lr(study) + lr_exponent(study) + lr_peak(study) + tuned_critical_batch(study)
            + rule_cost_per_batch(study) + rule_cost(study))


# --- section and plot -----------------------------------------------------------------------------------------


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    found = tuned_of(study)
    if not found:
        return blocks + [Note("This study did not tune the LR at each batch: add a `tune:` block to the study spec "
                              "(docs/studies.md, \"Tuned studies\") to search the best LR at every batch.")]
    blocks.append(Paragraph(
        "At every global batch the sweep searched the LR (base_lr with no scaling rule, so it is the LR at that "
        "batch) and re-ran the two best with every seed; the best is the one with the fewest median steps to "
        f"{study.target_text()} among those whose every seed reached it (Shallue et al. 2018: retune at every "
        "batch, keep the best trial), recomputed here from the runs' result files. Its bracket is the tried LRs "
        "either side of it. The best LR's runs form the series \"tuned\" in the other sections."))
    several = len(found) > 1
    rows = []
    for series in found:
        for p in series.points:
            rows.append(([series.series] if several else []) + _row(p))
    header = ["series"] * several + ["global batch", "best LR", "bracket", "median steps (range, seeds)",
                                     "samples to target", "train time to target (s)", "search trials",
                                     "steps trained", "note"]
    blocks.append(Table(header, rows, wrap=(len(header) - 1,)))
    blocks.append(Note("Bracket: the tried LRs either side of the best (— at the edge of the searched range: the "
                       "best may lie beyond it). Steps trained: every search trial and seed run at that batch (a trial "
                       "stops at its cap, or once it falls behind the best trial's pace). Train time: mean ± std over the best LR's seeds."))
    blocks += figure_or_note(plot_tuned_lr(study),
                             "Best LR against global batch (log-log): the bracket as error bars (open triangle: the "
                             "best is at the edge of the searched range), the fitted power law η* ∝ B^α (solid), "
                             "and slopes 1 (linear) and 0.5 (square root) through the centre of the points.",
                             "The best LR is known at no batch: no plot.")
    return blocks + answers(tuned_findings(study), "No conclusion: no search found a best LR.")


def _row(p: BatchBest) -> list[str]:
    search = p.search
    if p.lr is None:
        return [str(p.batch), fmt.DASH, fmt.DASH, fmt.DASH, fmt.DASH, fmt.DASH, str(len(search.search_trials)),
                fmt.integer(search.steps_trained), "no LR reached the target with every seed"
                + ("" if search.done else "; search not finished")]
    steps = p.steps
    spread = f" ({min(steps)}–{max(steps)}, {len(steps)})" if len(steps) > 1 else " (1 seed)"
    samples = [run.get("samples_to_target") for run in p.runs if run.reached and run.get("samples_to_target")]
    time = stat(run.train_time for run in p.runs)
    notes = []
    edge = _open_side(p)
    if edge:
        notes.append(f"best at the {'edges' if edge == 'both' else edge} of the searched range: widen it")
    if not search.done:
        notes.append("search not finished")
    return [str(p.batch), fmt.lr(p.lr), f"{fmt.lr(p.low)}–{fmt.lr(p.high)}",
            fmt.integer(p.median_steps) + spread,
            fmt.integer(statistics.median(samples)) if samples else fmt.DASH, fmt.mean_std(time.mean, time.std),
            str(len(search.search_trials)), fmt.integer(search.steps_trained), "; ".join(notes)]


def plot_tuned_lr(study: Study) -> Path | None:
    """Best LR against batch, log-log: brackets as error bars, the fitted power law, and the slopes of the
    linear and square-root rules through the centre of the points."""
    drawn = [s for s in tuned_of(study) if s.with_best]
    if not drawn:
        return None
    palette = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2")
    figure, ax = new_figure()
    open_ = False
    for index, series in enumerate(drawn):
        color = palette[index % len(palette)]
        best = series.with_best
        batches, lrs = [p.batch for p in best], [p.lr for p in best]
        lower = [p.lr - p.low if p.low else 0.0 for p in best]
        upper = [p.high - p.lr if p.high else 0.0 for p in best]
        ax.errorbar(batches, lrs, yerr=[lower, upper], fmt="o", capsize=4, color=color, zorder=3,
                    label=f"{series.series}: best LR (bracket)")
        for p in best:
            if p.high is None:
                ax.plot([p.batch], [p.lr * 1.25], "^", color=color, markerfacecolor="white", zorder=4)
                open_ = True
            if p.low is None:
                ax.plot([p.batch], [p.lr / 1.25], "v", color=color, markerfacecolor="white", zorder=4)
                open_ = True
        e = series.exponent
        if e is not None:
            span = [batches[0] / 1.2, batches[-1] * 1.2]
            ax.plot(span, [math.exp(e.intercept) * b ** e.alpha for b in span], "-", color=color, alpha=0.8,
                    label=f"{series.series}: fit, α = {_alpha_text(e.alpha)} ({_alpha_text(e.low)} to {_alpha_text(e.high)})")
            cx = math.exp(statistics.fmean(math.log(b) for b in batches))
            cy = math.exp(statistics.fmean(math.log(v) for v in lrs))
            for slope, style, name in ((LINEAR, "--", "linear (slope 1)"), (SQRT, ":", "square root (slope 0.5)")):
                ax.plot(span, [cy * (b / cx) ** slope for b in span], style, color="#555555", alpha=0.7,
                        label=name if index == 0 else None)
    batch_axis(ax)
    log_y(ax)
    ax.set_ylabel("best LR (base_lr, no scaling)")
    ax.set_title("Best LR against global batch (tuned at every batch)")
    handles, _ = ax.get_legend_handles_labels()
    if open_:
        handles.append(Line2D([], [], ls="", marker="^", color="#555555", markerfacecolor="white",
                              label="open: best at the edge of the range"))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(study, figure, PLOT)
