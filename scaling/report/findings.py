"""Conclusions: each a sentence and the structured record behind it, computed from the study's numbers.

A finding function takes the Study and returns `Finding`s. Each Finding carries the sentence the report shows
(`statement`) and the record `findings.json` holds (`id`, `decided`, `winner`, `n_seeds`, `numbers`), built
from the same object, so the two cannot disagree. A question section shows the findings that answer it; the
Conclusions show them all except per-batch details (`detail=True`), which their summaries stand for. To add
a conclusion, write a function and append it to FINDINGS.

`decided` is true only when the data separate the alternatives: the difference exceeds run-to-run variation at
the study's confidence and the practical threshold (scaling.stats, decided in analysis.py). Otherwise the
sentence says the study cannot tell them apart and, where it can estimate it, how many seeds would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scaling import stats
from scaling.devices.comm import Interconnect
from scaling.report import analysis, critical_batch
from scaling.report import formatting as fmt
from scaling.report.devices_section import ANSWER_CAPS, DeviceAnalysis, device_analysis, fastest_within
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study

COMPARISON = "comparison"  # two or more alternatives judged against each other
ESTIMATE = "estimate"  # a quantity with its uncertainty (critical batch size)
OBSERVATION = "observation"  # what happened (counts, ranges): decides nothing, so `decided` is false

# At most this many configurations are named where the data cannot tell several apart.
MAX_NAMED = 3


@dataclass
class Finding:
    id: str  # a stable name per question: "fastest", "lr_rule@512", "largest_useful_batch[sqrt]"
    statement: str  # the sentence in the report
    decided: bool = False
    winner: str | None = None  # the configuration or option judged better (or the answer), when decided
    n_seeds: int | None = None  # the fewest seeds per configuration the finding rests on
    kind: str = COMPARISON
    numbers: dict[str, Any] = field(default_factory=dict)
    detail: bool = False  # shown in its section and findings.json, summarised in the Conclusions

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "statement": self.statement, "decided": self.decided,
                "winner": self.winner if self.decided else None, "n_seeds": self.n_seeds, "numbers": self.numbers}


FindingFunction = Callable[[Study], list[Finding]]


def _prefix(series: str, count: int) -> str:
    """`linear: ` when sentences are per series and there are several of them."""
    return f"{series}: " if count > 1 and series != "all" else ""


def _suffix(series: str) -> str:
    """`[linear]` in an id, for per-series questions in a study with series."""
    return "" if series == "all" else f"[{series}]"


def _named(configuration: Configuration) -> str:
    series = "" if configuration.series == "all" else f" ({configuration.series})"
    return f"global batch {configuration.global_bs}{series}"


def _short(configuration: Configuration) -> str:
    return configuration.label


def _ranked(ranking: analysis.Ranking, configuration: Configuration) -> str:
    """A candidate's label, with the configurations that train identically to it: `batch 256 (linear) = batch
    256 (sqrt)`."""
    return " = ".join(c.label for c in [configuration, *ranking.twins_of(configuration)])


def _sentence(prefix: str, text: str) -> str:
    """`linear: text.` after a series name, else `Text.`"""
    return prefix + (text if prefix else text[0].upper() + text[1:]) + "."


def _one_seed(study: Study) -> str:
    """With one seed everywhere the Conclusions say why once (findings.notes); elsewhere each sentence does."""
    return "not decided" if study.one_seed else "one seed per configuration: not decided"


def _hardest(comparisons: list[stats.Comparison]) -> stats.Comparison | None:
    """The open comparison that needs the most seeds (one needing more than any practical number first), so
    that the seeds a sentence asks for resolve all of them; an equivalent one only when none is open."""
    if not comparisons:
        return None
    return max(comparisons, key=lambda c: (c.verdict == stats.UNDECIDED, c.seeds_needed is None,
                                           c.seeds_needed or 0))


def _verdict_text(study: Study, comparison: stats.Comparison | None, n_seeds: int) -> str:
    """Why a comparison is not decided, and how many seeds would likely decide it."""
    if n_seeds < 2 or comparison is None or comparison.reason == "one seed":
        return _one_seed(study)
    if comparison.verdict == stats.EQUIVALENT:
        return (f"no practical difference (within ±{fmt.percent(study.rules.threshold, 0)} at "
                f"{fmt.confidence(comparison.confidence)} confidence)")
    return "not decided; " + fmt.seeds_advice(comparison.seeds_needed, study.rules)


# --- is a bigger batch faster? -----------------------------------------------------------------------------


def fastest(study: Study) -> list[Finding]:
    if study.target is None:
        return []
    ranking = study.ranking
    if ranking is None:
        reached = [c for c in study.configurations if c.reached]
        text = (f"No configuration reached {study.target_text()} with every seed"
                + (f" ({len(reached)} reached it with some seeds only: none is recommended)" if reached else "")
                + ".")
        return [Finding("fastest", text, n_seeds=study.max_seeds)]
    best = ranking.best
    train = analysis.stat(ranking.times(best))
    wall = analysis.stat(run.wall_time for c in [best, *ranking.twins] for run in c.runs)
    n_seeds = analysis.min_seeds(ranking.candidates)
    twins = (f" (as is {', '.join(_short(c) for c in ranking.twins)}, which trains identically with the same LR "
             f"schedule: not ranked; times averaged over both per seed)" if ranking.twins else "")
    seeds = f" ({train.n} seeds)" if train.n > 1 else ""
    lead = (f"{_named(best)}{twins}, {fmt.mean_std(train.mean, train.std)} s{seeds} train time "
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
        named = ", ".join(
            f"{_ranked(ranking, c)} ({fmt.change(ranking.comparison(c).reversed(), 'train time', interval=n_seeds >= 2)})"
            for c in ties[:MAX_NAMED])
        more = f" and {len(ties) - MAX_NAMED} more" if len(ties) > MAX_NAMED else ""
        worst = _hardest([ranking.comparison(c) for c in ties])
        text = (f"Lowest {'mean ' if train.n > 1 else ''}train time to {study.target_text()}: {lead}; the data do "
                f"not separate it from {named}{more}: {_verdict_text(study, worst, n_seeds)}")
        decided = False
    if ranking.partial:
        text += (f"; not recommended, since some seed missed the target: "
                 f"{', '.join(_short(c) for c in ranking.partial[:MAX_NAMED])}"
                 + (f" and {len(ranking.partial) - MAX_NAMED} more" if len(ranking.partial) > MAX_NAMED else ""))
    return [Finding("fastest", text + ".", decided, best.label, n_seeds, numbers=numbers)]


def time_trend(study: Study) -> list[Finding]:
    """Where train time to target is lowest along each series' batch ladder, against its two ends."""
    out = []
    for trend in study.trends:
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
            worst = _hardest(undecided)
            text += f" ({'; '.join(parts)}: {_verdict_text(study, worst, trend.n_seeds)})"
        numbers = {"lowest_batch": low.batch, "train_time_s": {p.batch: p.train_time.mean for p in trend.points},
                   "against": {str(batch): c.to_dict() for batch, c in trend.comparisons.items()}}
        out.append(Finding(f"time_trend{_suffix(trend.series)}",
                           _sentence(_prefix(trend.series, len(study.series)), text), trend.decided,
                           f"batch {low.batch}", trend.n_seeds, numbers=numbers))
    return out


# --- what is the largest useful batch? ------------------------------------------------------------------------


def _ratio_text(d: analysis.Doubling) -> str:
    """`0.95 (95% CI 0.91–0.99)`, the point value alone with one seed."""
    if d.rate is None or d.rate.low is None:
        return f"{d.ratio:.2f}"
    return f"{d.ratio:.2f} ({fmt.confidence_of(d.rate)} CI {d.rate.low:.2f}–{d.rate.high:.2f})"


def _steps_text(d: analysis.Doubling) -> str:
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


def _doubling_numbers(d: analysis.Doubling) -> dict[str, Any]:
    return {"small": d.small, "large": d.large, "steps_small": d.steps_small, "steps_large": d.steps_large,
            "std_small": d.std_small, "std_large": d.std_large, "resolution_small": d.resolution_small,
            "resolution_large": d.resolution_large, "ratio": d.ratio,
            "ci_low": d.rate.low if d.rate else None, "ci_high": d.rate.high if d.rate else None,
            "regime": d.regime, "regime_decided": d.regime_decided, "super_linear": d.super_linear}


def steps_scaling(study: Study) -> list[Finding]:
    """Perfect-scaling range and the knee of steps to target (Shallue et al. 2018 regimes), each against the
    interval of r from per-seed steps (with their evaluation resolution)."""
    ladders = {name: steps for name, steps in study.doublings.items() if steps}
    out = []
    for name, steps in ladders.items():
        prefix, suffix = _prefix(name, len(study.series)), _suffix(name)
        perfect = analysis.perfect_until(steps)
        if perfect is not None:
            used = [d for d in steps if d.large <= perfect]
            n_seeds = min(min(d.n_small, d.n_large) for d in used)
            decided = analysis.perfect_until(steps, decided=True) == perfect
            text = (f"perfect scaling (r ≤ {analysis.PERFECT_MAX_RATIO}) holds up to batch {perfect} "
                    f"(r = {', '.join(_ratio_text(d) for d in used)})")
            odd = [d for d in used if d.super_linear]
            if odd:
                text += (f"; r below {analysis.SUPER_LINEAR_RATIO} at "
                         f"{', '.join(f'{d.small} → {d.large} ({_steps_text(d)})' for d in odd)} is better than "
                         f"perfect scaling allows: the steps to target there are known only to the evaluation "
                         f"interval, so read it as evaluation granularity, not as a gain")
            text += "; " + ("decided" if decided and not odd else "not decided (super-linear)" if decided
                            else _regime_undecided(study, n_seeds, [d for d in used if not d.regime_decided],
                                                   (analysis.PERFECT_MAX_RATIO,)))
            out.append(Finding(f"perfect_scaling{suffix}", _sentence(prefix, text), decided and not odd,
                               str(perfect), n_seeds, numbers={"up_to": perfect,
                                                               "doublings": [_doubling_numbers(d) for d in used]}))
        knee = analysis.knee(steps)
        decided = analysis.knee_decided(steps)
        n_seeds = min(min(d.n_small, d.n_large) for d in analysis.knee_doublings(steps))
        if knee is not None:
            later = [d for d in steps if d.small >= knee]
            text = (f"beyond global batch {knee}, doubling the batch saves under {1 - analysis.NO_GAIN_MIN_RATIO:.0%} "
                    f"of steps (r = {', '.join(_ratio_text(d) for d in later)}; {_steps_text(later[0])}): {knee} is "
                    f"the largest useful batch")
            answer, numbers = knee, {"batch": knee, "at_least": False,
                                     "doublings": [_doubling_numbers(d) for d in steps]}
        else:
            last = steps[-1]
            text = (f"doubling still saves {1 - last.ratio:.0%} of steps from batch {last.small} to {last.large} "
                    f"(r = {_ratio_text(last)}; {_steps_text(last)}): the largest useful batch is at least "
                    f"{last.large} (no plateau within the batches tried)")
            answer, numbers = last.large, {"batch": last.large, "at_least": True,
                                           "doublings": [_doubling_numbers(d) for d in steps]}
        open_ = [d for d in analysis.knee_doublings(steps)
                 if not (d.no_gain_decided if knee is not None and d.small >= knee else d.gain_decided)]
        text += "; " + ("decided" if decided else _regime_undecided(study, n_seeds, open_,
                                                                     (analysis.NO_GAIN_MIN_RATIO,)))
        largest = steps[-1].large
        missed = [p for p in study.series[name] if p.batch > largest and not p.all_reached
                  and any(run.target is not None for run in p.runs)]
        if missed:
            text += ("; larger batches did not reach the target with every seed ("
                     + ", ".join(_missed_text(p) for p in missed) + ")")
            numbers["not_reached"] = {str(p.batch): p.outcome for p in missed}
        out.append(Finding(f"largest_useful_batch{suffix}", _sentence(prefix, text), decided, str(answer), n_seeds,
                           numbers=numbers))
    return out


def _missed_text(point: analysis.Point) -> str:
    """`4096 diverged`, or `2048: 1 of 3 seeds reached it`."""
    if point.any_reached:
        return f"{point.batch}: {len(point.reached)} of {len(point.runs)} seeds reached it"
    return f"{point.batch} {status_words(point.outcome)}"


def _regime_undecided(study: Study, n_seeds: int, open_: list[analysis.Doubling],
                      bounds: tuple[float, ...] = (analysis.PERFECT_MAX_RATIO, analysis.NO_GAIN_MIN_RATIO)) -> str:
    """Why a regime claim is open: one seed, or which doubling's interval of r crosses a boundary that matters
    to the claim, and the seeds that would likely decide it."""
    if n_seeds < 2:
        return _one_seed(study)
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


# --- critical batch size -------------------------------------------------------------------------------------


def comparison_sentence(fit: critical_batch.SeriesFit, count: int) -> Finding:
    """B_crit from the fit next to the measured B_simple, and whether they agree within an order of magnitude."""
    prefix = _prefix(fit.series, count)
    fid = f"critical_batch{_suffix(fit.series)}"
    numbers: dict[str, Any] = {"batches": fit.batches, "s_min": fit.tradeoff.fit.s_min,
                               "e_min": fit.tradeoff.fit.e_min, "physical": fit.physical,
                               "b_simple_median": fit.b_simple_median}
    if not fit.physical:
        s_min, e_min = fit.tradeoff.fit.s_min, fit.tradeoff.fit.e_min
        text = _sentence(prefix, f"the fit of S(B) = S_min (1 + B_noise/B) gives S_min = {fmt.sig(s_min)} and "
                                 f"E_min = {fmt.sig(e_min)}, not both positive: the steps do not bend as the model "
                                 f"expects over batches {fit.batches[0]}–{fit.batches[-1]}, so there is no critical "
                                 f"batch size")
        return Finding(fid, text, False, None, fit.n_seeds, ESTIMATE, numbers)
    b = fit.b_crit
    numbers.update(b_crit=b.value, b_crit_std=b.std, b_crit_low=b.low, b_crit_high=b.high,
                   extrapolated=fit.extrapolated, ratio_to_b_simple=fit.ratio)
    spread = f" (±{fmt.sig(b.std, 2)})" if b.std is not None else " (exact through 2 points, no uncertainty)"
    text = f"critical batch size B_crit ≈ {fmt.sig(b.value)}{spread} from the fit"
    if fit.extrapolated:
        text += f", outside the batches fitted ({fit.batches[0]}–{fit.batches[-1]}): an extrapolation"
    median = fit.b_simple_median
    if median is None:
        text += "; no B_simple at the target was measured in this series"
    else:
        ratio = fit.ratio
        text += f"; measured B_simple at the target ≈ {fmt.sig(median)}"
        if len(fit.b_simple) > 1:
            text += (f" (median of {len(fit.b_simple)} runs, {fmt.sig(min(fit.b_simple))}–"
                     f"{fmt.sig(max(fit.b_simple))})")
        if 1 / critical_batch.ORDER_OF_MAGNITUDE <= ratio <= critical_batch.ORDER_OF_MAGNITUDE:
            text += (f"; B_crit / B_simple = {ratio:.2g}: within an order of magnitude, as McCandlish et al. 2018 "
                     f"found")
        else:
            text += (f"; B_crit / B_simple = {ratio:.2g}: more than an order of magnitude apart, unlike McCandlish "
                     f"et al. 2018, who found B_simple within an order of magnitude of B_crit")
    if not fit.decided:
        why = ("one seed per batch" if fit.n_seeds < 2 else "no uncertainty from 2 batch sizes"
               if fit.tradeoff.resamples == 0 else "an extrapolation")
        text += f" (an estimate to act on needs 3+ batch sizes with 2+ seeds each, inside the range: {why})"
    return Finding(fid, _sentence(prefix, text), fit.decided, fmt.sig(b.value) if fit.decided else None,
                   fit.n_seeds, ESTIMATE, numbers)


def device_findings(fit: critical_batch.SeriesFit, count: int, study: Study) -> list[Finding]:
    """The predicted fastest global batch per device count, with how firmly the resampled seeds pick it."""
    if not fit.physical:
        return []
    out = []
    for c in fit.fastest:
        text = (f"predicted fastest global batch on {fmt.devices(c.devices)}: {c.choice.batch} "
                f"({fmt.seconds(c.choice.time_s)} s; n × tp(B/n), no communication cost)")
        if c.runner_up is not None:
            text += f", the runner-up {c.runner_up} predicted {fmt.percent(c.margin)} slower"
        if c.agreement is not None:
            text += f"; {fmt.percent(c.agreement, 0)} of refits on resampled seeds pick {c.choice.batch}"
        if c.decided:
            text += "; decided"
        elif c.n_seeds < 2:
            text += f"; {_one_seed(study)}"
        else:
            reasons = []
            if not c.fit_decided:
                reasons.append("the fit behind it is not decided")
            if c.runner_up is None:
                reasons.append("no other candidate")
            if not c.measured_range:
                reasons.append("its per-device batch is below the measured ones")
            if c.agreement is not None and c.agreement < study.rules.confidence:
                reasons.append(f"under {fmt.confidence(study.rules.confidence)} agreement")
            if c.margin is not None and c.margin <= study.rules.threshold:
                reasons.append(f"the runner-up within {fmt.percent(study.rules.threshold, 0)}")
            text += f"; not decided ({' and '.join(reasons) or 'too little data'})"
        if fit.failed_from is not None:
            text += f"; no batch from {fit.failed_from}, where no seed reached the target, is a candidate"
        numbers = {"devices": c.devices, "batch": c.choice.batch, "time_s": c.choice.time_s,
                   "steps": c.choice.steps, "runner_up": c.runner_up, "margin": c.margin,
                   "agreement": c.agreement, "candidates": fit.eligible(c.devices)}
        out.append(Finding(f"predicted_fastest@{c.devices}{_suffix(fit.series)}",
                           _sentence(_prefix(fit.series, count), text), c.decided, str(c.choice.batch),
                           c.n_seeds, ESTIMATE, numbers))
    return out


def noise_findings(study: Study) -> list[Finding]:
    """The critical batch size: B_crit against B_simple, and the predicted fastest batch, per series."""
    fits = study.noise.fits
    out = []
    for fit in fits:  # named by series whenever the study has several, even if only one could be fitted
        out.append(comparison_sentence(fit, len(study.series)))
        out += device_findings(fit, len(study.series), study)
    return out


# --- LR rules -----------------------------------------------------------------------------------------------


def lr_rule_outcomes(study: Study) -> list[Finding]:
    """For each LR rule, the batches where it reached the target and where it stopped reaching it."""
    cells = analysis.rule_cells(study.target_runs)
    out = []
    for rule in study.lr_rules:
        if cells.get(rule):
            text, numbers = _rule_outcome(rule, cells[rule])
            n = min(len(runs) for runs in cells[rule].values())
            out.append(Finding(f"lr_rule_outcome[{rule}]", f"LR rule: {text}", n_seeds=n, kind=OBSERVATION,
                               numbers=numbers))
    return out


def lr_rule_per_batch(study: Study) -> list[Finding]:
    """Each global batch: the LR rules against each other (details; `lr_rules` sums them up)."""
    out = []
    for r in study.rule_comparisons:
        text, numbers = _rule_batch_text(study, r)
        out.append(Finding(f"lr_rule@{r.batch}", f"LR rule at batch {r.batch}: {text}.", r.decided, r.best, r.n_seeds,
                           numbers=numbers, detail=True))
    return out


def _rule_batch_text(study: Study, r: analysis.RuleComparison) -> tuple[str, dict[str, Any]]:
    numbers: dict[str, Any] = {"batch": r.batch, "identical": r.identical, "best": r.best,
                               "lr": {rule: c.runs[0].lr_scaled for rule, c in r.configurations.items()},
                               "train_time_s": {rule: analysis.stat(run.train_time for run in c.runs).mean
                                                for rule, c in r.configurations.items()},
                               "against": {rule: (c.to_dict() if isinstance(c, stats.Comparison) else c)
                                           for rule, c in r.against.items()}}
    if r.all_identical:
        lr = r.configurations[r.identical[0][0]].runs[0].lr_scaled
        return (f"{fmt.batch_list(r.identical[0])} give the same LR schedule (LR {fmt.lr(lr)}), so they train "
                f"identically: not ranked"), numbers
    if r.best is None:
        return "no rule reached the target with every seed: nothing to rank", numbers
    parts = []
    for rule, against in r.against.items():
        if isinstance(against, str):
            parts.append(f"{rule} did not reach the target")
        else:
            parts.append(f"against {rule}, {fmt.change(against, 'train time', interval=r.n_seeds >= 2)}")
    identical = [g for g in r.identical if r.best in g]
    same = (f" ({fmt.batch_list([x for x in identical[0] if x != r.best])} trains identically)" if identical else "")
    only = all(isinstance(a, str) for a in r.against.values())
    verdict = ("the only rule that reached the target with every seed" if only else
               "the fastest" if r.decided else "lowest on mean train time")
    lead = f"{r.best}{same} is {verdict}"
    text = f"{lead} ({'; '.join(parts)})"
    if r.decided:
        return text + ": decided", numbers
    comparisons = [c for c in r.against.values() if isinstance(c, stats.Comparison) and c.verdict != stats.LOWER]
    worst = _hardest(comparisons)
    return f"{text}: {_verdict_text(study, worst, r.n_seeds)}", numbers


def lr_rules(study: Study) -> list[Finding]:
    """Which rule the data decide for at how many batch sizes, how many they cannot decide, and where the
    rules train identically."""
    comparisons = study.rule_comparisons
    if len(study.lr_rules) < 2 or not comparisons:
        return []
    wins = Counter(r.best for r in comparisons if r.decided)
    identical = [r.batch for r in comparisons if r.all_identical]
    open_ = [r.batch for r in comparisons if not r.decided and not r.all_identical and r.best is not None]
    n_seeds = min(r.n_seeds for r in comparisons)
    parts = []
    if wins:
        parts.append("; ".join(f"{rule} was decided the better rule at batch "
                               f"{fmt.batch_list([r.batch for r in comparisons if r.decided and r.best == rule])}"
                               for rule, _ in wins.most_common()))
    if open_:
        parts.append(f"the data cannot tell the rules apart at batch {fmt.batch_list(open_)}"
                     + (" (one seed per configuration)" if n_seeds < 2 and not study.one_seed else ""))
    if identical:
        parts.append(f"at batch {fmt.batch_list(identical)} the rules give the same LR and train identically (not "
                     f"ranked)")
    winner = wins.most_common(1)[0][0] if len(wins) == 1 else None
    text = "LR rule: " + "; ".join(parts) + "." if parts else "LR rule: no batch size to compare the rules at."
    numbers = {"wins": dict(wins), "undecided": open_, "identical": identical,
               "compared": [r.batch for r in comparisons]}
    return [Finding("lr_rule", text, winner is not None, winner, n_seeds, numbers=numbers)]


def _rule_outcome(rule: str, by_batch: dict[int, list[Run]]) -> tuple[str, dict[str, Any]]:
    batches = list(by_batch)
    missed = [b for b in batches if not any(run.reached for run in by_batch[b])]
    numbers: dict[str, Any] = {"rule": rule, "reached": [b for b in batches if b not in missed],
                               "not_reached": {str(b): analysis.Point(b, by_batch[b]).outcome for b in missed}}
    if not missed:
        partial = [b for b in batches if not all(run.reached for run in by_batch[b])]
        note = f" (not every seed at batch {fmt.batch_list(partial)})" if partial else ""
        span = f"{batches[0]}–{batches[-1]}" if len(batches) > 1 else str(batches[0])
        return f"{rule} reached the target at every batch size ({span}){note}.", numbers
    status = {b: analysis.Point(b, by_batch[b]).outcome for b in missed}
    detail = ", ".join(f"{b} {status_words(s)}" for b, s in status.items())
    if missed != batches[len(batches) - len(missed):]:
        return f"{rule} did not reach the target at batch {fmt.batch_list(missed)} ({detail}).", numbers
    if len(missed) == len(batches):
        return f"{rule} never reached the target ({detail}).", numbers
    # A clean cut: fine up to some batch, never after it.
    reached_up_to = batches[len(batches) - len(missed) - 1]
    verbs = {"diverged": "diverged", "failed": "failed", "oom": "ran out of memory"}
    first = status[missed[0]]
    if len(set(status.values())) == 1 and first in verbs:
        what = f"{verbs[first]} from batch {missed[0]}"
    else:
        what = f"did not reach it from batch {missed[0]} ({detail})"
    return f"{rule} reached the target up to batch {reached_up_to} and {what}.", numbers


def status_words(status: str) -> str:
    """`not_reached` -> `not reached`, `oom` -> `out of memory`."""
    return {"oom": "out of memory"}.get(status, status.replace("_", " "))


# --- powers of two -------------------------------------------------------------------------------------------


def power_of_two(study: Study) -> list[Finding]:
    out = []
    for p in study.power_comparisons:
        if p.key.startswith("global"):
            fid, where = f"powers_of_two@{p.power}", ""
            name = {n: str(n) for n in p.neighbours}
        else:  # per-device: the global batches differ too, so they are named
            fid = f"powers_of_two@per_device={p.power}/global={p.configuration.global_bs}"
            where = f" (global {p.configuration.global_bs})"
            name = {n: f"{n} (global {c.global_bs})" for n, c in p.neighbours.items()}
        neighbours = fmt.batch_list([name[n] for n in p.neighbours])
        parts = [f"against {name[n]}, {fmt.change(c, 'throughput', interval=p.n_seeds >= 2)}"
                 for n, c in p.comparisons.items()]
        lead = f"Power of two: {p.key} batch {p.power}{where} against {neighbours}"
        if p.verdict == stats.HIGHER:
            text, winner = f"{lead}: the power of two is faster than every neighbour ({'; '.join(parts)})", str(p.power)
        elif p.verdict == stats.LOWER:
            text, winner = f"{lead}: the power of two is slower than every neighbour ({'; '.join(parts)})", neighbours
        else:
            undecided = [c for c in p.comparisons.values() if c.verdict == stats.UNDECIDED]
            worst = _hardest(undecided) or next(iter(p.comparisons.values()))
            if p.verdict == stats.EQUIVALENT:
                verdict = _verdict_text(study, worst, p.n_seeds)
            elif any(c.decided for c in p.comparisons.values()):
                verdict = ("it does not differ the same way from every neighbour, so being a power of two is not "
                           "what matters; not decided")
            else:
                verdict = _verdict_text(study, worst, p.n_seeds)
            text, winner = f"{lead}: {'; '.join(parts)}: {verdict}", None
        numbers = {"key": p.key, "power": p.power,
                   "against": {str(n): c.to_dict() for n, c in p.comparisons.items()}}
        out.append(Finding(fid, text + ".", p.decided, winner, p.n_seeds, numbers=numbers))
    return out


# --- data loading and throughput ------------------------------------------------------------------------------


def data_wait(study: Study) -> list[Finding]:
    bound = study.input_bound
    if bound is None:
        return []
    limit = fmt.percent(analysis.DATA_WAIT_LIMIT, 0)
    top_batch, top = bound.top
    onset = bound.onset
    numbers = {"limit": analysis.DATA_WAIT_LIMIT, "onset": onset,
               "share": {str(b): {"mean": lv.mean, "ci_low": lv.low, "ci_high": lv.high, "verdict": lv.verdict}
                         for b, lv in bound.levels.items()}}
    if onset is not None:
        text = (f"From global batch {onset} the data-wait share exceeds {limit} ({fmt.percent(bound.levels[onset].mean)} "
                f"at {onset}, up to {fmt.percent(top)} at {top_batch}): the input pipeline is the limit")
        winner = str(onset)
    elif top <= analysis.DATA_WAIT_LIMIT:
        text = (f"The data-wait share stays at or below {limit} at every batch (highest {fmt.percent(top)} at batch "
                f"{top_batch}): data loading is not the limit")
        winner = "not input-bound"
    else:
        above = [b for b, lv in bound.levels.items() if lv.mean > analysis.DATA_WAIT_LIMIT]
        text = (f"The data-wait share exceeds {limit} at batch {fmt.batch_list(above)} but not at the largest batch: "
                f"no consistent input-pipeline limit")
        winner = None
    if bound.decided:
        text += f" (every batch's {fmt.confidence(study.rules.confidence)} interval on its side of {limit}: decided)"
    elif bound.n_seeds < 2:
        text += f" ({_one_seed(study)})"
    else:
        close = [str(b) for b, lv in bound.levels.items() if lv.verdict == stats.UNDECIDED]
        text += (f" (not decided: the interval of the share includes {limit} at batch "
                 f"{fmt.batch_list(close) if close else 'none, but the onset is not clean'})")
    return [Finding("input_bound", text + ".", bound.decided and winner is not None, winner, bound.n_seeds,
                    numbers=numbers)]


def throughput(study: Study) -> list[Finding]:
    pairs = analysis.pooled_by_batch(study.ladder, lambda run: run.throughput)
    if len(pairs) < 2:
        return []
    (b0, r0), (bl, rl) = pairs[0], pairs[-1]
    out = [Finding("throughput_range",
                   f"Throughput goes from {fmt.integer(r0.mean)} samples/s at batch {b0} to {fmt.integer(rl.mean)} at "
                   f"batch {bl} ({rl.mean / r0.mean:.1f}×).", kind=OBSERVATION,
                   n_seeds=study.saturation.n_seeds if study.saturation else None,
                   numbers={"samples_per_s": {str(b): s.mean for b, s in pairs}})]
    saturation = study.saturation
    if saturation is not None and saturation.plateau is not None:
        rates = [r for small, _, r in saturation.rates if small >= saturation.plateau]
        gains = ", ".join(fmt.signed_percent(r.ratio - 1) for r in rates)
        text = (f"Beyond batch {saturation.plateau} throughput grows less than {analysis.THROUGHPUT_GAIN_MIN:.0%} per "
                f"doubling ({gains}): the device is saturated")
        if saturation.decided:
            text += " (decided)"
        elif saturation.n_seeds < 2:
            text += f" ({_one_seed(study)})"
        else:
            text += f" (not decided: some doubling's {fmt.confidence(study.rules.confidence)} interval crosses " \
                    f"{analysis.THROUGHPUT_GAIN_MIN:.0%})"
        numbers = {"plateau": saturation.plateau,
                   "doublings": [{"small": s, "large": lg, "ratio": r.ratio, "ci_low": r.low, "ci_high": r.high}
                                 for s, lg, r in saturation.rates]}
        out.append(Finding("saturation", text + ".", saturation.decided, str(saturation.plateau),
                           saturation.n_seeds, numbers=numbers))
    return out


def decompositions(study: Study) -> list[Finding]:
    """Where one global batch ran with several decompositions (per-device x processes x accumulation) in
    the same series, the fastest against the others."""
    out = []
    for d in study.decompositions:
        fast = d.fastest
        rated = {id(c): analysis.stat(run.throughput for run in c.runs).mean for c in d.configurations}
        slow = min(d.configurations, key=lambda c: rated[id(c)])
        where = "" if d.series == "all" else f" ({d.series})"
        n_seeds = analysis.min_seeds(d.configurations)
        text = (f"At global batch {d.batch}{where}, the decomposition {fast.runs[0].decomposition} is the fastest "
                f"({fmt.integer(rated[id(fast)])} samples/s), {rated[id(fast)] / rated[id(slow)]:.2f}× the slowest, "
                f"{slow.runs[0].decomposition} ({fmt.integer(rated[id(slow)])} samples/s)")
        if d.decided:
            text += " (decided)"
        else:
            undecided = [c for c in d.decision.comparisons.values() if c.verdict != stats.LOWER]
            worst = _hardest(undecided)
            text += f" ({_verdict_text(study, worst, n_seeds)})"
        numbers = {"batch": d.batch, "samples_per_s": {c.runs[0].decomposition: rated[id(c)] for c in d.configurations}}
        out.append(Finding(f"decomposition@{d.batch}{_suffix(d.series)}", text + ".", d.decided,
                           fast.runs[0].decomposition, n_seeds, numbers=numbers))
    return out


# --- seeds and failures ------------------------------------------------------------------------------------------


def seeds(study: Study) -> list[Finding]:
    seeded = study.seeded
    if not seeded:
        return []
    spread = [(c, analysis.stat(run.train_time for run in c.runs)) for c in seeded]
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
        out.append(Finding("mlperf_score", f"MLPerf-style score (fastest and slowest of {analysis.MLPERF_MIN_RUNS}+ "
                                           f"seeds dropped, rest averaged): best is {_named(best)} at "
                                           f"{fmt.seconds(score)} s.", n_seeds=len(best.runs), kind=OBSERVATION,
                           numbers={"configuration": best.label, "score_s": score}))
    return out


def mlperf_time(configuration: Configuration) -> float | None:
    """MLPerf-style score on wall time to target (MLPerf's time-to-train includes evaluation)."""
    return analysis.mlperf_score([run.wall_time for run in configuration.runs if run.wall_time is not None])


def failures(study: Study) -> list[Finding]:
    """Runs that ended without reaching their target (throughput probes without one, `completed`, aside), and
    runs that have not finished yet (they count for nothing else in the report)."""
    runs = [run for run in study.runs if run.target is not None or run.status not in ("completed", "reached")]
    if not runs:
        return []
    unfinished = Counter(run.status for run in runs if not run.finished)
    ended = [run for run in runs if run.finished]
    missed = Counter(run.status for run in ended if not run.reached)
    numbers = {"runs": len(runs), "finished": len(ended), "not_reached": dict(missed), "unfinished": dict(unfinished)}
    runs_word = "finished runs" if unfinished else "runs"
    if not ended:
        text = f"None of the {len(runs)} runs has finished"
    elif not missed:
        text = f"Every one of the {len(ended)} {runs_word} reached {study.target_text()}"
    else:
        counts = ", ".join(f"{n} {status_words(status)}" for status, n in missed.most_common())
        text = f"{sum(missed.values())} of {len(ended)} {runs_word} did not reach {study.target_text()}: {counts}"
    if unfinished:
        text += ("; not finished, and left out of every other finding: "
                 + ", ".join(f"{n} {status_words(status)}" for status, n in unfinished.most_common()))
    return [Finding("failures", text + ".", kind=OBSERVATION, n_seeds=study.max_seeds, numbers=numbers)]


# --- devices ----------------------------------------------------------------------------------------------


def _caps(analysis: DeviceAnalysis) -> list[int]:
    largest = max(analysis.counts, default=1)
    return sorted({cap for cap in ANSWER_CAPS if cap <= largest} | {largest})


def device_count_findings(study: Study, link: Interconnect | None = None) -> list[Finding]:
    """"The fastest way to the target with up to N devices", for N in ANSWER_CAPS (and the largest count);
    the Conclusions show the largest (the others are `detail`)."""
    analysis = device_analysis(study, link)
    if not analysis.rows:
        return []
    findings = []
    caps = _caps(analysis)
    for cap in caps:
        row, n = fastest_within(analysis, cap)
        configuration = row.configuration
        series = "" if configuration.series == "all" else f" ({configuration.series})"
        scaled = " (per-device batch not measured: compute scaled per sample)" if n in row.scaled else ""
        text = (f"With up to {fmt.devices(cap)}, the fastest predicted way to {study.target_text()} is global batch "
                f"{configuration.global_bs}{series} on {fmt.devices(n)} (per-device {row.per_device[n]} × "
                f"{row.accumulation[n]} accumulation): {fmt.seconds(row.times[n])} s train time for "
                f"{fmt.integer(row.steps)} steps, over {analysis.link.name}{scaled}.")
        findings.append(Finding(f"fastest_with_devices@{cap}", text, kind=ESTIMATE, winner=configuration.label,
                                detail=cap != caps[-1],
                                numbers={"devices_cap": cap, "devices": n, "configuration": configuration.label,
                                         "global_batch": configuration.global_bs, "per_device": row.per_device[n],
                                         "accumulation_steps": row.accumulation[n],
                                         "predicted_train_time_s": row.times[n], "steps_to_target": row.steps,
                                         "interconnect": analysis.link.to_dict(),
                                         "measured_micro_batch": n not in row.scaled}))
    return findings


# The order of the Conclusions list. Append a function to add a conclusion.
FINDINGS: list[FindingFunction] = [fastest, time_trend, steps_scaling, noise_findings, device_count_findings,
                                   lr_rule_outcomes,
                                   lr_rule_per_batch, lr_rules, power_of_two, data_wait, throughput, decompositions,
                                   seeds, failures]


def all_findings(study: Study) -> list[Finding]:
    """Every finding, in the Conclusions' order (findings.json holds them all). Ids are unique: a second
    finding under one id (two groups of settings asking the same question) gets `#2`, and so on."""
    out = [finding for function in FINDINGS for finding in function(study)]
    seen: Counter[str] = Counter()
    for finding in out:
        seen[finding.id] += 1
        if seen[finding.id] > 1:
            finding.id = f"{finding.id}#{seen[finding.id]}"
    return out


def conclusions(study: Study) -> list[str]:
    """The Conclusions' sentences: every finding but the per-batch details their summaries stand for."""
    return [finding.statement for finding in all_findings(study) if not finding.detail]


def notes(study: Study) -> list[str]:
    """Study-wide caveats, said once: one seed per configuration, runs timed with different thread counts."""
    out = []
    if study.one_seed:
        out.append("Every configuration ran with one seed, so run-to-run variation is unknown and no comparison "
                   "below is decided: the numbers are single measurements. Add `seeds: [0, 1, 2]` to the study spec "
                   "(docs/studies.md) and run the sweep again into the same folder; finished runs are kept and only "
                   "the new seeds run.")
    threads = sorted({run.torch_threads for run in study.runs if run.torch_threads is not None})
    if len(threads) > 1:
        out.append(f"Runs were timed with different numbers of torch threads ({', '.join(map(str, threads))}; "
                   f"environment.torch_threads): time and throughput comparisons across them mix thread counts.")
    return out
