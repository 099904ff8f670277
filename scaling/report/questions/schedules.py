"""Does a batch-size schedule beat the best fixed batch? Each --batch-schedule configuration against the fixed
batch that does best on each measure (steps, samples, train time to target), on per-seed values, and against the
fixed batch it starts from: the comparisons, their findings and this question's section. The anchors the field
reports: a batch-size warmup built on the measured critical batch trained OLMo-1B with 43% fewer gradient steps
(Merrill et al. 2025), Seesaw about 36% less wall-clock at equal FLOPs (Meterez et al. 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import stat
from scaling.report.finding import Finding, answers, verdict_text
from scaling.report.render import Block, Heading, Note, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study, per_study

QUESTION = "Does a batch-size schedule beat the best fixed batch?"

ANCHORS = {"steps": (0.43, "Merrill et al. 2025: 43% fewer gradient steps"),
           "train time": (0.36, "Meterez et al. 2025 (Seesaw): 36% less wall-clock")}


def _steps(run: Run) -> float | None:
    return run.steps_to_target if run.reached else None


def _samples(run: Run) -> float | None:
    value = run.get("samples_to_target")
    return value if run.reached and isinstance(value, int | float) else None


def _time(run: Run) -> float | None:
    return run.train_time if run.reached else None


MEASURES = {"steps": _steps, "samples": _samples, "train time": _time}


@dataclass
class Against:
    """A schedule against one fixed batch on one measure: the schedule's value over the fixed batch's."""

    measure: str
    fixed: Configuration
    why: str  # "best fixed" or "its first batch"
    comparison: stats.Comparison

    @property
    def saved(self) -> float | None:
        return None if self.comparison.ratio is None else 1.0 - self.comparison.ratio


@dataclass
class ScheduleComparison:
    schedule: Configuration
    against: list[Against]


def _values(configuration: Configuration, measure: str) -> list[float | None]:
    return [MEASURES[measure](run) for run in configuration.runs]


def _fixed_candidates(study: Study) -> list[Configuration]:
    """Fixed-batch configurations that chase the study's target and reached it with every seed."""
    return [c for c in study.chasing if c.all_reached and c.runs]


@per_study
def comparisons_of(study: Study) -> list[ScheduleComparison]:
    fixed = _fixed_candidates(study)
    out = []
    for schedule in study.scheduled:
        if not any(run.target == study.target for run in schedule.runs) or not fixed:
            continue
        against = []
        for measure in MEASURES:
            centres = {id(c): stats.geometric_mean(_values(c, measure)) for c in fixed}
            usable = [c for c in fixed if centres[id(c)] is not None]
            if not usable:
                continue
            best = min(usable, key=lambda c: centres[id(c)])
            against.append(Against(measure, best, "best fixed",
                                   stats.compare(_values(schedule, measure), _values(best, measure), study.rules)))
            first = next((c for c in usable if c.global_bs == schedule.global_bs and c is not best), None)
            if first is not None:
                against.append(Against(measure, first, "its first batch",
                                       stats.compare(_values(schedule, measure), _values(first, measure),
                                                     study.rules)))
        out.append(ScheduleComparison(schedule, against))
    return out


def _schedule_text(configuration: Configuration) -> str:
    return str(configuration.settings.get("batch_schedule"))


def schedules(study: Study) -> list[Finding]:
    out = []
    for item in comparisons_of(study):
        label = f"the schedule {_schedule_text(item.schedule)}"
        for against in (a for a in item.against if a.why == "best fixed"):
            c, measure = against.comparison, against.measure
            fid = f"schedule_{measure.replace(' ', '_')}[{_schedule_text(item.schedule)}]"
            base = f"global batch {against.fixed.global_bs}, the best fixed batch on {measure}"
            if c.ratio is None:
                continue
            if c.decided:
                word = "fewer" if c.verdict == stats.LOWER else "more"
                text = (f"On {measure} to target, {label} takes {fmt.percent(abs(1 - c.ratio), 0)} {word} than {base} "
                        f"({fmt.confidence(c.confidence)} interval {fmt.signed_percent(c.low - 1)} to "
                        f"{fmt.signed_percent(c.high - 1)})")
            else:
                text = (f"On {measure} to target, {label} against {base}: {fmt.signed_percent(c.ratio - 1)}; "
                        f"{verdict_text(study, c, min(c.n_a, c.n_b))}")
            anchor = ANCHORS.get(measure)
            if anchor is not None and against.saved is not None:
                text += (f"; the anchor to beat is {anchor[1]}: "
                         f"{'beaten' if c.decided and against.saved >= anchor[0] else 'not beaten'}")
            winner = _schedule_text(item.schedule) if c.verdict == stats.LOWER else (
                f"global batch {against.fixed.global_bs}" if c.verdict == stats.HIGHER else None)
            out.append(Finding(fid, text + ".", c.decided, winner, min(c.n_a, c.n_b),
                               numbers={"measure": measure, "schedule": _schedule_text(item.schedule),
                                        "fixed_batch": against.fixed.global_bs, "saved": against.saved,
                                        "comparison": c.to_dict()}))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    if not study.scheduled:
        return blocks + [Note("No run trained under --batch-schedule: nothing to compare with the fixed batches.")]
    items = comparisons_of(study)
    if not items:
        return blocks + [Note("No schedule and fixed batch both reached the study's target with every seed: "
                              "nothing to compare.")]
    verdicts = {stats.LOWER: "schedule better", stats.HIGHER: "fixed better", stats.EQUIVALENT: "no practical difference",
                stats.UNDECIDED: "cannot tell"}
    formats = {"steps": fmt.integer, "samples": fmt.integer, "train time": fmt.seconds}
    rows = []
    for item in items:
        for against in item.against:
            c, measure = against.comparison, against.measure
            ours = stat(_values(item.schedule, measure))
            theirs = stat(_values(against.fixed, measure))
            interval = (f"{fmt.signed_percent(1 - c.high)} to {fmt.signed_percent(1 - c.low)}"
                        if c.low is not None else "— (one seed)")
            rows.append([_schedule_text(item.schedule), measure, fmt.mean_std(ours.mean, ours.std, formats[measure]),
                         f"{against.fixed.global_bs} ({against.why})",
                         fmt.mean_std(theirs.mean, theirs.std, formats[measure]),
                         fmt.signed_percent(against.saved) if against.saved is not None else fmt.DASH, interval,
                         f"{c.n_a} / {c.n_b}", verdicts[c.verdict]])
    blocks.append(Table(["schedule", "to target", "schedule", "fixed batch", "fixed", "saved", "confidence interval",
                         "seeds", "verdict"], rows))
    blocks.append(Note(
        "Saved: 1 − the schedule's value over the fixed batch's (ratio of geometric means over seeds; negative: the "
        f"schedule took more), with its {fmt.confidence(study.rules.confidence)} Welch t interval; it counts when the whole "
        f"interval lies beyond ±{fmt.percent(study.rules.threshold, 0)}. The best fixed batch is chosen per measure "
        "(the fewest steps are at a large batch, the fewest samples at a small one). The anchors: "
        + "; ".join(text for _, text in ANCHORS.values()) + "."))
    return blocks + answers(schedules(study), "No comparison could be made.")
