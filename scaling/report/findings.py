"""Conclusions: short sentences computed from the study's numbers, never written in advance.

Each finding function takes the Study and returns zero or more sentences; a question section shows the
findings that answer it, and the Conclusions section shows them all. To add a conclusion, write a function
and append it to FINDINGS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from scaling.report import analysis, critical_batch
from scaling.report import formatting as fmt
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study

Finding = Callable[[Study], list[str]]


def _prefix(series: str, count: int) -> str:
    """`linear: ` when sentences are per series and there are several of them."""
    return f"{series}: " if count > 1 and series != "all" else ""


def _named(configuration: Configuration) -> str:
    series = "" if configuration.series == "all" else f" ({configuration.series})"
    return f"global batch {configuration.global_bs}{series}"


def fastest(study: Study) -> list[str]:
    if study.target is None:
        return []
    best = study.best
    if best is None:
        return [f"No configuration reached {study.target_text()}."]
    train = analysis.stat(run.train_time for run in best.runs)
    wall = analysis.stat(run.wall_time for run in best.runs)
    seeds = f", mean of {train.n} seeds" if train.n > 1 else ""
    caveat = "" if best.all_reached else f" (only {len(best.reached)} of {len(best.runs)} seeds reached it)"
    return [f"The fastest configuration to {study.target_text()} is {_named(best)} at {fmt.seconds(train.mean)} s "
            f"train time ({fmt.seconds(wall.mean)} s wall, evaluation included{seeds}){caveat}."]


def time_trend(study: Study) -> list[str]:
    """Where train time to target is lowest along each series' batch ladder."""
    trends = {name: [p for p in points if p.train_time.mean is not None] for name, points in study.series.items()}
    trends = {name: points for name, points in trends.items() if len(points) >= 2}
    sentences = []
    for name, points in trends.items():
        first, last = points[0], points[-1]
        low = min(points, key=lambda p: p.train_time.mean)
        t = {p.batch: fmt.seconds(p.train_time.mean) for p in points}
        lead = "train time to target"
        if low is last:
            text = (f"{lead} falls from {t[first.batch]} s at batch {first.batch} to {t[last.batch]} s at batch "
                    f"{last.batch}: a bigger batch is faster up to the largest batch that reached the target")
        elif low is first:
            text = (f"{lead} is lowest at the smallest batch, {first.batch} ({t[first.batch]} s); larger batches "
                    f"are slower ({t[last.batch]} s at batch {last.batch})")
        else:
            text = (f"{lead} falls from {t[first.batch]} s at batch {first.batch} to {t[low.batch]} s at batch "
                    f"{low.batch}, then rises to {t[last.batch]} s at batch {last.batch}: beyond batch {low.batch} "
                    f"a bigger batch is not faster")
        sentences.append(_sentence(_prefix(name, len(trends)), text))
    return sentences


def _sentence(prefix: str, text: str) -> str:
    """`linear: text.` after a series name, else `Text.`"""
    return prefix + (text if prefix else text[0].upper() + text[1:]) + "."


def steps_scaling(study: Study) -> list[str]:
    """Perfect-scaling range and the knee of steps to target (Shallue et al. 2018 regimes)."""
    ladders = {name: steps for name, steps in study.doublings.items() if steps}
    sentences = []
    for name, steps in ladders.items():
        parts = []
        perfect = analysis.perfect_until(steps)
        if perfect is not None:
            parts.append(f"perfect scaling (r ≤ {analysis.PERFECT_MAX_RATIO}) holds up to batch {perfect}")
        knee = analysis.knee(steps)
        if knee is not None:
            ratios = ", ".join(f"{d.ratio:.2f}" for d in steps if d.small >= knee)
            parts.append(f"beyond global batch {knee}, doubling the batch saves under "
                         f"{1 - analysis.NO_GAIN_MIN_RATIO:.0%} of steps (r = {ratios}): {knee} is the largest "
                         f"useful batch")
        else:
            last = steps[-1]
            parts.append(f"doubling still saves {1 - last.ratio:.0%} of steps from batch {last.small} to "
                         f"{last.large}: the largest useful batch is at least {last.large} (no plateau within the batches "
                         f"tried)")
        largest = steps[-1].large
        missed = [p for p in study.series[name] if p.batch > largest and not p.any_reached
                  and any(run.target is not None for run in p.runs)]
        if missed:
            parts.append("larger batches did not reach the target ("
                         + ", ".join(f"{p.batch} {p.outcome}" for p in missed) + ")")
        sentences.append(_sentence(_prefix(name, len(ladders)), "; ".join(parts)))
    return sentences


def comparison_sentence(fit: critical_batch.SeriesFit, count: int) -> str:
    """B_crit from the fit next to the measured B_simple, and whether they agree within an order of magnitude."""
    prefix = _prefix(fit.series, count)
    if not fit.physical:
        s_min, e_min = fit.tradeoff.fit.s_min, fit.tradeoff.fit.e_min
        return _sentence(prefix, f"the fit of S(B) = S_min (1 + B_noise/B) gives S_min = {fmt.sig(s_min)} and "
                                 f"E_min = {fmt.sig(e_min)}, not both positive: the steps do not bend as the model "
                                 f"expects over batches {fit.batches[0]}–{fit.batches[-1]}, so there is no critical "
                                 f"batch size")
    b = fit.b_crit
    spread = f" (±{fmt.sig(b.std, 2)})" if b.std is not None else " (exact through 2 points, no uncertainty)"
    text = f"critical batch size B_crit ≈ {fmt.sig(b.value)}{spread} from the fit"
    if not fit.batches[0] / 2 <= b.value <= fit.batches[-1] * 2:
        text += f", outside the batches fitted ({fit.batches[0]}–{fit.batches[-1]}): an extrapolation"
    median = fit.b_simple_median
    if median is None:
        return _sentence(prefix, text + "; no B_simple at the target was measured in this series")
    ratio = fit.ratio
    text += f"; measured B_simple at the target ≈ {fmt.sig(median)}"
    if len(fit.b_simple) > 1:
        text += (f" (median of {len(fit.b_simple)} runs, {fmt.sig(min(fit.b_simple))}–"
                 f"{fmt.sig(max(fit.b_simple))})")
    if 1 / critical_batch.ORDER_OF_MAGNITUDE <= ratio <= critical_batch.ORDER_OF_MAGNITUDE:
        verdict = (f"B_crit / B_simple = {ratio:.2g}: within an order of magnitude, as McCandlish et al. 2018 "
                   f"found")
    else:
        verdict = (f"B_crit / B_simple = {ratio:.2g}: more than an order of magnitude apart, unlike McCandlish et "
                   f"al. 2018, who found B_simple within an order of magnitude of B_crit")
    return _sentence(prefix, f"{text}; {verdict}")


def fastest_sentence(fit: critical_batch.SeriesFit, count: int) -> str | None:
    if not fit.physical or not fit.fastest:
        return None
    parts = [f"on {fmt.devices(c.devices)}: {c.choice.batch} ({fmt.seconds(c.choice.time_s)} s)"
             for c in fit.fastest]
    return _sentence(_prefix(fit.series, count), "predicted fastest global batch " + "; ".join(parts)
                     + " (throughput(B) = n × tp(B/n), no communication cost)")


def noise_findings(study: Study) -> list[str]:
    """The critical batch size: B_crit against B_simple, and the predicted fastest batch, per series."""
    fits = study.noise.fits
    sentences = []
    for fit in fits:
        sentences.append(comparison_sentence(fit, len(fits)))
        fastest = fastest_sentence(fit, len(fits))
        if fastest:
            sentences.append(fastest)
    return sentences


def lr_rules(study: Study) -> list[str]:
    """For each LR rule, the batches where it reached the target and where it stopped reaching it; which
    rule was fastest most often."""
    cells = analysis.rule_cells(study.target_runs)
    rules = study.lr_rules
    sentences = [_rule_outcome(rule, cells[rule]) for rule in rules if cells.get(rule)]
    if len(rules) >= 2:
        wins: Counter[str] = Counter()
        batches = sorted({batch for rule in rules for batch in cells.get(rule, {})})
        for batch in batches:
            timed = {rule: analysis.stat(run.train_time for run in cells[rule][batch]).mean
                     for rule in rules if batch in cells.get(rule, {})}
            timed = {rule: t for rule, t in timed.items() if t is not None}
            if len(timed) >= 2:
                wins[min(timed, key=timed.get)] += 1
        compared = sum(wins.values())
        if compared:
            rule, count = wins.most_common(1)[0]
            sentences.append(f"{rule} was the fastest rule to the target at {count} of {compared} batch sizes "
                             f"where several rules reached it.")
    return [f"LR rule: {s}" for s in sentences]


def _rule_outcome(rule: str, by_batch: dict[int, list[Run]]) -> str:
    batches = list(by_batch)
    missed = [b for b in batches if not any(run.reached for run in by_batch[b])]
    if not missed:
        partial = [b for b in batches if not all(run.reached for run in by_batch[b])]
        note = f" (not every seed at batch {fmt.batch_list(partial)})" if partial else ""
        span = f"{batches[0]}–{batches[-1]}" if len(batches) > 1 else str(batches[0])
        return f"{rule} reached the target at every batch size ({span}){note}."
    status = {b: analysis.Point(b, by_batch[b]).outcome for b in missed}
    detail = ", ".join(f"{b} {status_words(s)}" for b, s in status.items())
    if missed != batches[len(batches) - len(missed):]:
        return f"{rule} did not reach the target at batch {fmt.batch_list(missed)} ({detail})."
    if len(missed) == len(batches):
        return f"{rule} never reached the target ({detail})."
    # A clean cut: fine up to some batch, never after it.
    reached_up_to = batches[len(batches) - len(missed) - 1]
    verbs = {"diverged": "diverged", "failed": "failed", "oom": "ran out of memory"}
    first = status[missed[0]]
    if len(set(status.values())) == 1 and first in verbs:
        what = f"{verbs[first]} from batch {missed[0]}"
    else:
        what = f"did not reach it from batch {missed[0]} ({detail})"
    return f"{rule} reached the target up to batch {reached_up_to} and {what}."


def status_words(status: str) -> str:
    """`not_reached` -> `not reached`, `oom` -> `out of memory`."""
    return {"oom": "out of memory"}.get(status, status.replace("_", " "))


def power_of_two(study: Study) -> list[str]:
    comparisons = study.power_comparisons
    if not comparisons:
        return []
    sentences = []
    for c in comparisons:
        if c.exceeds_noise:
            faster = "faster" if c.difference > 0 else "slower"
            sentences.append(f"Power of two: {c.key} batch {c.power} is {abs(c.difference):.1%} {faster} than "
                             f"{c.neighbour}, beyond {analysis.NOISE_FACTOR:g}× the noise ({c.noise:.1%}).")
    within = [c for c in comparisons if c.exceeds_noise is False]
    if within:
        largest = max(within, key=lambda c: abs(c.difference))
        sentences.append(f"Power of two vs neighbours: differences of up to {abs(largest.difference):.1%} "
                         f"({largest.power} vs {largest.neighbour}) are within noise "
                         f"({len(within)} of {len(comparisons)} comparisons): no measurable effect there.")
    unknown = [c for c in comparisons if c.exceeds_noise is None]
    for c in unknown:
        sentences.append(f"Power of two: {c.power} vs {c.neighbour} differ by {c.difference:+.1%}, but the noise "
                         f"is unknown ({c.neighbour_rate.source}): cannot tell.")
    return sentences


def data_wait(study: Study) -> list[str]:
    pairs = analysis.pooled_by_batch(study.ladder, lambda run: run.data_wait)
    if not pairs:
        return []
    limit = fmt.percent(analysis.DATA_WAIT_LIMIT, 0)
    onset = analysis.data_wait_onset(pairs)
    top_batch, top = max(pairs, key=lambda pair: pair[1].mean)
    if onset is not None:
        at_onset = dict(pairs)[onset].mean
        return [f"From global batch {onset} the data-wait share exceeds {limit} ({fmt.percent(at_onset)} at "
                f"{onset}, up to {fmt.percent(top.mean)} at {top_batch}): the input pipeline is the limit."]
    if top.mean <= analysis.DATA_WAIT_LIMIT:
        return [f"The data-wait share stays at or below {limit} at every batch (highest {fmt.percent(top.mean)} "
                f"at batch {top_batch}): data loading is not the limit."]
    above = [batch for batch, share in pairs if share.mean > analysis.DATA_WAIT_LIMIT]
    return [f"The data-wait share exceeds {limit} at batch {fmt.batch_list(above)} but not at the largest "
            f"batch: no consistent input-pipeline limit."]


def throughput(study: Study) -> list[str]:
    pairs = analysis.pooled_by_batch(study.ladder, lambda run: run.throughput)
    if len(pairs) < 2:
        return []
    (b0, r0), (bl, rl) = pairs[0], pairs[-1]
    text = (f"Throughput goes from {fmt.integer(r0.mean)} samples/s at batch {b0} to {fmt.integer(rl.mean)} at batch "
            f"{bl} ({rl.mean / r0.mean:.1f}×)")
    plateau = analysis.throughput_plateau(pairs)
    if plateau is not None:
        text += (f"; beyond batch {plateau} it grows less than {analysis.THROUGHPUT_GAIN_MIN:.0%} per doubling: "
                 f"the device is saturated")
    return [text + "."]


def seeds(study: Study) -> list[str]:
    seeded = study.seeded
    if not seeded:
        return []
    spread = [(c, analysis.stat(run.train_time for run in c.runs)) for c in seeded]
    spread = [(c, s) for c, s in spread if s.cv is not None]
    sentences = []
    if spread:
        worst, s = max(spread, key=lambda pair: pair[1].cv)
        sentences.append(f"Across seeds, train time to target varies by up to {s.cv:.0%} (std / mean, "
                         f"{worst.label}, {s.n} seeds).")
    scored = [(c, mlperf_time(c)) for c in seeded]
    scored = [(c, t) for c, t in scored if t is not None]
    if scored:
        best, score = min(scored, key=lambda pair: pair[1])
        sentences.append(f"MLPerf-style score (fastest and slowest of {analysis.MLPERF_MIN_RUNS}+ seeds dropped, "
                         f"rest averaged): best is {_named(best)} at {fmt.seconds(score)} s.")
    return sentences


def mlperf_time(configuration: Configuration) -> float | None:
    """MLPerf-style score on wall time to target (MLPerf's time-to-train includes evaluation)."""
    return analysis.mlperf_score([run.wall_time for run in configuration.runs if run.wall_time is not None])


def failures(study: Study) -> list[str]:
    """Runs that ended without reaching their target (throughput probes without one, `completed`, aside)."""
    runs = [run for run in study.runs if run.target is not None or run.status not in ("completed", "reached")]
    if not runs:
        return []
    missed = Counter(run.status for run in runs if not run.reached)
    if not missed:
        return [f"Every one of the {len(runs)} runs reached {study.target_text()}."]
    counts = ", ".join(f"{n} {status_words(status)}" for status, n in missed.most_common())
    return [f"{sum(missed.values())} of {len(runs)} runs did not reach {study.target_text()}: {counts}."]


def decompositions(study: Study) -> list[str]:
    """Where one global batch ran with several decompositions (per-device x processes x accumulation) in
    the same series, how much the throughput moved between the fastest and the slowest."""
    groups: dict[tuple[str, int], list[Configuration]] = {}
    for c in study.configurations:
        if c.global_bs is not None and c.runs[0].decomposition is not None:
            groups.setdefault((c.series, c.global_bs), []).append(c)
    sentences = []
    for (series, batch), group in groups.items():
        rated = [(c, analysis.stat(run.throughput for run in c.runs).mean) for c in group]
        rated = [(c, rate) for c, rate in rated if rate]
        if len({c.runs[0].decomposition for c, _ in rated}) < 2:
            continue
        (fast, top), (slow, low) = max(rated, key=lambda p: p[1]), min(rated, key=lambda p: p[1])
        where = "" if series == "all" else f" ({series})"
        sentences.append(f"At global batch {batch}{where}, the decomposition {fast.runs[0].decomposition} is the "
                         f"fastest ({fmt.integer(top)} samples/s), {top / low:.2f}× the slowest, "
                         f"{slow.runs[0].decomposition} ({fmt.integer(low)} samples/s).")
    return sentences


# The order of the Conclusions list. Append a function to add a conclusion.
FINDINGS: list[Finding] = [fastest, time_trend, steps_scaling, noise_findings, lr_rules, power_of_two, data_wait,
                           throughput, decompositions, seeds, failures]


def conclusions(study: Study) -> list[str]:
    return [sentence for finding in FINDINGS for sentence in finding(study)]
