"""The answer at the top of the report, at most five lines, and findings.json's `recommendation`: the
recommended global batch and LR rule per device count with its confidence, the LR rule, where steps stop
paying off, what is not decided and the one run that would decide it.

It decides nothing of its own: every line restates an analysis a question already made (the device answers,
the LR rules, the largest useful batch), read from the same objects as their findings, so the answer and the
Conclusions cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.finding import hardest
from scaling.report.questions import faster, largest, lr_rules, tuned
from scaling.report.questions.devices import answer_within, caps_of, device_analysis
from scaling.report.runs import Configuration
from scaling.report.study import Study, per_study

MAX_LINES = 5


@dataclass
class Recommendation:
    lines: list[str] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)  # one per device count asked about
    lr_rule: dict[str, Any] | None = None
    largest_useful_batch: dict[str, Any] | None = None
    undecided: list[str] = field(default_factory=list)
    next_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "devices": self.devices, "lr_rule": self.lr_rule,
                "largest_useful_batch": self.largest_useful_batch, "undecided": self.undecided,
                "next_run": self.next_run}


@per_study
def recommendation(study: Study) -> Recommendation:
    out = Recommendation()
    if study.target is None:
        out.lines = ["No run chases a target: nothing to recommend (the sections below describe throughput)."]
        return out
    choice, seeds = _device_line(study, out)
    _lr_rule_line(study, out)
    _tuned_line(study, out)
    _largest_line(study, out, choice)
    out.next_run = _next_run(study, choice, seeds)
    if out.undecided or out.next_run:
        text = ("Not decided: " + "; ".join(out.undecided) + "." if out.undecided else "Everything above is decided.")
        out.lines.append(text + (f" The run that would decide it: {out.next_run}." if out.next_run else ""))
    out.lines = out.lines[:MAX_LINES]
    return out


def _label(configuration: Configuration) -> str:
    rule = f" with the {configuration.lr_rule} LR rule" if configuration.lr_rule else ""
    return f"global batch {configuration.global_bs}{rule}"


def _decided_text(study: Study, decided: bool) -> str:
    return f"decided at {fmt.confidence(study.rules.confidence)} confidence" if decided else "not decided"


def _device_line(study: Study, out: Recommendation) -> tuple[Configuration | None, stats.Comparison | None]:
    """The fastest configuration per device count (the device-count answers), or, without predictions, the
    fastest as run. Returns the configuration recommended on the fewest devices and the open comparison that needs the most
    seeds (finding.hardest)."""
    analysis = device_analysis(study)
    answers = [(cap, a) for cap in caps_of(analysis) if (a := answer_within(analysis, cap, study.rules))]
    if not answers:
        return _as_run_line(study, out)
    for cap, answer in answers:
        out.devices.append({"devices_cap": cap, "devices": answer.devices,
                            "configuration": answer.row.configuration.label,
                            "global_batch": answer.row.configuration.global_bs,
                            "lr_rule": answer.row.configuration.lr_rule, "decided": answer.decided,
                            "confidence": study.rules.confidence, "finding": f"fastest_with_devices@{cap}",
                            "predicted_train_time_s": answer.row.times[answer.devices]})
    same = len({id(a.row) for _, a in answers}) == 1
    if same:
        first = answers[0][1]
        counts = fmt.batch_list([str(cap) for cap, _ in answers]).replace(" and ", " or ")
        decided = {a.decided for _, a in answers}
        verdicts = (f"decided at {fmt.confidence(study.rules.confidence)} confidence on each" if decided == {True}
                    else "not decided on any" if decided == {False} else "; ".join(
                        f"{_decided_text(study, a.decided)} with up to {fmt.devices(cap)}" for cap, a in answers))
        devices = f"{counts} device{'s' * (counts != '1')}"
        text = (f"Fastest to {study.target_text()}: {_label(first.row.configuration)}, with up to {devices} "
                f"({verdicts}).")
    else:
        text = f"Fastest to {study.target_text()}: " + "; ".join(
            f"with up to {fmt.devices(cap)}, {_label(a.row.configuration)} on {a.devices} "
            f"({_decided_text(study, a.decided)})" for cap, a in answers) + "."
    out.lines.append(text)
    open_ = [(cap, a) for cap, a in answers if not a.decided]
    if open_:
        out.undecided.append("the fastest configuration with up to " +
                             fmt.batch_list([fmt.devices(cap) for cap, _ in open_]))
    ties = [a.decision.comparisons[k] for _, a in open_ for k in a.decision.ties]
    return answers[0][1].row.configuration, hardest(ties)


def _as_run_line(study: Study, out: Recommendation) -> tuple[Configuration | None, stats.Comparison | None]:
    ranking = faster.ranking_of(study)
    if ranking is None:
        out.lines.append(f"No configuration reached {study.target_text()} with every seed: nothing to recommend.")
        return None, None
    out.lines.append(f"Fastest to {study.target_text()} as run: {_label(ranking.best)} "
                     f"({_decided_text(study, ranking.decided)}, on train time).")
    out.devices.append({"devices_cap": None, "configuration": ranking.best.label,
                        "global_batch": ranking.best.global_bs, "lr_rule": ranking.best.lr_rule,
                        "decided": ranking.decided, "confidence": study.rules.confidence, "finding": "fastest"})
    if ranking.decided:
        return ranking.best, None
    out.undecided.append("the fastest configuration")
    return ranking.best, hardest([ranking.comparison(c) for c in ranking.ties])


def _lr_rule_line(study: Study, out: Recommendation) -> None:
    comparisons = lr_rules.comparisons_of(study)
    if len(lr_rules.rule_names(study)) < 2 or not comparisons:
        return
    (finding,) = lr_rules.lr_rules(study)
    ranked = [r for r in comparisons if not r.all_identical and r.best is not None]
    batches = fmt.batch_list([r.batch for r in ranked if r.decided]) if finding.decided else ""
    if finding.decided:
        text = f"LR rule: {finding.winner}, fewer steps to target at batch {batches} (decided on steps)."
    else:
        text = "LR rule: not decided (" + finding.statement.removeprefix("LR rule: ").rstrip(".") + ")."
        out.undecided.append("the LR rule")
    out.lr_rule = {"rule": finding.winner if finding.decided else None, "decided": finding.decided,
                   "finding": finding.id}
    out.lines.append(text)


def _tuned_line(study: Study, out: Recommendation) -> None:
    """A tuned study: how the best LR scales with the batch (the tuned question's lr_exponent)."""
    found = [f for f in tuned.lr_exponent(study) if f.numbers.get("alpha") is not None]
    if not found:
        return
    finding = found[0]
    numbers = finding.numbers
    alpha, low, high = numbers["alpha"], numbers["low"], numbers["high"]
    span = f"α from {_end(low, '−∞')} to {_end(high, '∞')}"
    if finding.decided:
        verdict = {"linear": "linear scaling", "sqrt": "square-root scaling"}.get(
            finding.winner, "neither linear nor square-root scaling")
        text = f"Tuned LR: the best LR grows as B^{alpha:.2f} ({span}): {verdict} (decided)."
    else:
        text = f"Tuned LR: the best LR grows as B^{alpha:.2f} ({span}): linear or square-root, not decided."
        out.undecided.append("how the tuned LR scales")
    out.lines.append(text.replace("B^-", "B^−"))


def _end(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:.2f}".replace("-", "−")


def _largest_line(study: Study, out: Recommendation, choice: Configuration | None) -> None:
    series = choice.series if choice is not None else next(iter(study.series), None)
    steps = largest.doublings_of(study).get(series) if series is not None else None
    if not steps:
        return
    at, decided = largest.knee(steps), largest.knee_decided(steps)
    verdict = f"{_decided_text(study, decided)}, on steps"
    if at is not None:
        text = f"Steps stop paying off past batch {at} (doubling it saves under 10% of the steps; {verdict})."
    else:
        text = (f"Steps still pay off at the largest batch run, {steps[-1].large} (doubling saved 10% or more of "
                f"the steps; {verdict}).")
    out.lines.append(text)
    out.largest_useful_batch = {"batch": at if at is not None else steps[-1].large, "at_least": at is None,
                                "decided": decided, "series": series}
    if not decided:
        out.undecided.append("the largest useful batch")


def _next_run(study: Study, choice: Configuration | None, seeds: stats.Comparison | None) -> str | None:
    """The one run that would decide most: the batch beyond the grid's edge when the recommended batch sits
    on it and time along some series decidedly falls towards that batch (the LR rules' reference batch when
    that lies beyond and was not run), else more seeds. An edge reached by noise alone asks for seeds."""
    towards_edge = choice is not None and any(t.decided and t.low.batch == choice.global_bs
                                              for t in faster.trends_of(study))
    if towards_edge and choice.global_bs:
        run = sorted({c.global_bs for c in study.ladder if c.series == choice.series and c.global_bs})
        reference = (choice.runs[0].get("lr") or {}).get("base_bs") if choice.runs else None
        if len(run) > 1 and choice.global_bs == run[0]:
            below = reference if isinstance(reference, int) and reference < run[0] else choice.global_bs // 2
            return f"global batch {below} (the recommended batch is the smallest run)"
        if len(run) > 1 and choice.global_bs == run[-1]:
            return f"global batch {choice.global_bs * 2} (the recommended batch is the largest run)"
    if seeds is not None and seeds.verdict == stats.UNDECIDED and seeds.n_a >= 2 and seeds.n_b >= 2:
        if seeds.seeds_needed is None:
            return (f"none within reach: more than {stats.MAX_SEEDS} seeds per configuration at this run-to-run "
                    f"spread")
        return f"about {seeds.seeds_needed} seeds per configuration (now {study.max_seeds})"
    if study.one_seed:
        return "3 or more seeds per configuration (now 1)"
    return None
