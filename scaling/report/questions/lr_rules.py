"""How should the learning rate scale? Per global batch (every other setting equal), the LR rules against each
other on steps to target (an optimization question: steps do not move with machine load, train time does,
and at one global batch samples are steps × batch; time to target is the fastest-configuration question's),
rules that give the same LR schedule there train identically and are not ranked; where each rule stops reaching the target, this question's section (the rule-by-batch table) and
its findings.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import Point, min_seeds, reached_steps, stat
from scaling.report.finding import OBSERVATION, Finding, answers, hardest, status_words, verdict_text
from scaling.report.questions.faster import rank, seed_means, twin_groups
from scaling.report.render import Block, Heading, Note, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study, per_study

QUESTION = "How should the learning rate scale?"
STEPS = "steps to target"  # the quantity the LR rules are decided on


def rule_cells(runs: list[Run]) -> dict[str, dict[int, list[Run]]]:
    """Runs by LR rule, then by global batch (sorted): the cells of the LR-rule table."""
    cells: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        if run.lr_rule is not None and run.global_bs is not None:
            cells.setdefault(run.lr_rule, {}).setdefault(run.global_bs, []).append(run)
    return {rule: dict(sorted(by_batch.items())) for rule, by_batch in cells.items()}


@dataclass
class RuleComparison:
    """The LR rules at one global batch, every other setting equal."""

    batch: int
    configurations: dict[str, Configuration]  # rule -> its configuration
    identical: list[list[str]]  # groups of 2+ rules that train identically here (same LR schedule)
    best: str | None  # the rule with the fewest steps to target among those where every seed reached it
    against: dict[str, stats.Comparison | str]  # other rule -> comparison of steps, or "did not reach"
    beaten: dict[str, bool] = field(default_factory=dict)  # other rule -> the data separate it from `best`

    @property
    def n_seeds(self) -> int:
        return min_seeds(self.configurations.values())

    @property
    def all_identical(self) -> bool:
        return len(self.identical) == 1 and len(self.identical[0]) == len(self.configurations)

    @property
    def decided(self) -> bool:
        return self.best is not None and bool(self.beaten) and all(self.beaten.values()) and self.n_seeds >= 2


def rule_comparisons(configurations: list[Configuration], rules: stats.Rules) -> list[RuleComparison]:
    """Per global batch (and every other setting), the LR rules against each other. Rules that train
    identically there are not ranked; a rule where every seed reached the target beats one where none did
    (with 2+ seeds each) and is compared on steps to target with the others."""
    groups: dict[str, list[Configuration]] = {}
    for c in configurations:
        if c.lr_rule is None or c.global_bs is None or not any(run.target is not None for run in c.runs):
            continue
        context = json.dumps({k: v for k, v in c.settings.items() if k != "lr_scaling"}, sort_keys=True, default=str)
        groups.setdefault(context, []).append(c)
    out = []
    for group in groups.values():
        by_rule = {c.lr_rule: c for c in sorted(group, key=lambda c: c.lr_rule)}
        if len(by_rule) < 2:
            continue
        twins = [[c.lr_rule for c in g] for g in twin_groups(list(by_rule.values())) if len(g) >= 2]
        ranking = rank(list(by_rule.values()), rules, measure=reached_steps)
        best = ranking.best.lr_rule if ranking else None
        against: dict[str, stats.Comparison | str] = {}
        beaten: dict[str, bool] = {}
        if ranking is not None:
            twin_rules = {c.lr_rule for c in ranking.twins}
            for rule, c in by_rule.items():
                if rule == best or rule in twin_rules:
                    continue
                if not c.reached:
                    against[rule] = "did not reach"
                    beaten[rule] = len(c.runs) >= 2 and len(ranking.best.runs) >= 2
                elif any(c is other for other in ranking.candidates):
                    comparison = ranking.comparison(c)
                    against[rule], beaten[rule] = comparison, comparison.verdict == stats.LOWER
                else:  # reached with some seeds only: compared on those
                    (a, ra), (b, rb) = (seed_means([ranking.best, *ranking.twins], reached_steps),
                                        reached_steps(c.runs))
                    comparison = stats.compare(a, b, rules, resolution_a=ra, resolution_b=rb)
                    against[rule], beaten[rule] = comparison, comparison.verdict == stats.LOWER
        out.append(RuleComparison(group[0].global_bs, by_rule, twins, best, against, beaten))
    return sorted(out, key=lambda r: r.batch)


def rule_names(study: Study) -> list[str]:
    """The LR rules of the finished runs that chase a target."""
    return sorted({run.lr_rule for run in study.target_runs if run.lr_rule is not None})


@per_study
def comparisons_of(study: Study) -> list[RuleComparison]:
    return rule_comparisons(study.chasing, study.rules)


# --- findings and section -----------------------------------------------------------------------------------


def lr_rule_outcomes(study: Study) -> list[Finding]:
    """For each LR rule, the batches where it reached the target and where it stopped reaching it."""
    cells = rule_cells(study.target_runs)
    out = []
    for rule in rule_names(study):
        if cells.get(rule):
            text, numbers = _rule_outcome(rule, cells[rule])
            n = min(len(runs) for runs in cells[rule].values())
            out.append(Finding(f"lr_rule_outcome[{rule}]", f"LR rule: {text}", n_seeds=n, kind=OBSERVATION,
                               numbers=numbers))
    return out


def lr_rule_per_batch(study: Study) -> list[Finding]:
    """Each global batch: the LR rules against each other (details; `lr_rules` sums them up)."""
    out = []
    for r in comparisons_of(study):
        text, numbers = _rule_batch_text(study, r)
        out.append(Finding(f"lr_rule@{r.batch}", f"LR rule at batch {r.batch}: {text}.", r.decided, r.best, r.n_seeds,
                           numbers=numbers, detail=True))
    return out


def _rule_batch_text(study: Study, r: RuleComparison) -> tuple[str, dict[str, Any]]:
    numbers: dict[str, Any] = {"batch": r.batch, "identical": r.identical, "best": r.best,
                               "lr": {rule: c.runs[0].lr_scaled for rule, c in r.configurations.items()},
                               "decided_on": STEPS,
                               "steps_to_target": {rule: stat(run.steps_to_target for run in c.runs).mean
                                                   for rule, c in r.configurations.items()},
                               "train_time_s": {rule: stat(run.train_time for run in c.runs).mean
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
            parts.append(f"against {rule}, {fmt.change(against, STEPS, interval=r.n_seeds >= 2)}")
    identical = [g for g in r.identical if r.best in g]
    same = (f" ({fmt.batch_list([x for x in identical[0] if x != r.best])} trains identically)" if identical else "")
    only = all(isinstance(a, str) for a in r.against.values())
    verdict = ("the only rule that reached the target with every seed" if only else
               "the better rule on steps to target" if r.decided else "lowest on mean steps to target")
    lead = f"{r.best}{same} is {verdict}"
    text = f"{lead} ({'; '.join(parts)})"
    if r.decided:
        return text + ": decided on steps to target", numbers
    comparisons = [c for c in r.against.values() if isinstance(c, stats.Comparison) and c.verdict != stats.LOWER]
    worst = hardest(comparisons)
    return f"{text}: {verdict_text(study, worst, r.n_seeds)}", numbers


def lr_rules(study: Study) -> list[Finding]:
    """Which rule the data decide for at how many batch sizes, how many they cannot decide, and where the
    rules train identically."""
    comparisons = comparisons_of(study)
    if len(rule_names(study)) < 2 or not comparisons:
        return []
    wins = Counter(r.best for r in comparisons if r.decided)
    identical = [r.batch for r in comparisons if r.all_identical]
    open_ = [r.batch for r in comparisons if not r.decided and not r.all_identical and r.best is not None]
    n_seeds = min(r.n_seeds for r in comparisons)
    parts = []
    if wins:
        parts.append("; ".join(f"{rule} was decided the better rule on steps to target at batch "
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
    numbers = {"decided_on": STEPS, "wins": dict(wins), "undecided": open_, "identical": identical,
               "compared": [r.batch for r in comparisons]}
    return [Finding("lr_rule", text, winner is not None, winner, n_seeds, numbers=numbers)]


def _rule_outcome(rule: str, by_batch: dict[int, list[Run]]) -> tuple[str, dict[str, Any]]:
    batches = list(by_batch)
    missed = [b for b in batches if not any(run.reached for run in by_batch[b])]
    numbers: dict[str, Any] = {"rule": rule, "reached": [b for b in batches if b not in missed],
                               "not_reached": {str(b): Point(b, by_batch[b]).outcome for b in missed}}
    if not missed:
        partial = [b for b in batches if not all(run.reached for run in by_batch[b])]
        note = f" (not every seed at batch {fmt.batch_list(partial)})" if partial else ""
        span = f"{batches[0]}–{batches[-1]}" if len(batches) > 1 else str(batches[0])
        return f"{rule} reached the target at every batch size ({span}){note}.", numbers
    status = {b: Point(b, by_batch[b]).outcome for b in missed}
    detail = ", ".join(f"{b} {status_words(s)}" for b, s in status.items())
    if missed != batches[len(batches) - len(missed):]:
        return f"{rule} did not reach the target at batch {fmt.batch_list(missed)} ({detail}).", numbers
    if len(missed) == len(batches):
        return f"{rule} never reached the target ({detail}).", numbers
    # A clean cut: fine up to some batch, never after it.
    reached_up_to = batches[len(batches) - len(missed) - 1]
    verbs = {"diverged": "diverged", "stalled": "stalled", "failed": "failed", "oom": "ran out of memory"}
    first = status[missed[0]]
    if len(set(status.values())) == 1 and first in verbs:
        what = f"{verbs[first]} from batch {missed[0]}"
    else:
        what = f"did not reach it from batch {missed[0]} ({detail})"
    return f"{rule} reached the target up to batch {reached_up_to} and {what}.", numbers


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    rules = rule_names(study)
    if not rules:
        blocks.append(Note("No run with a target records its LR rule: nothing to compare."))
    elif len(rules) == 1:
        blocks.append(Note(f"Only one LR rule ({rules[0]}) in this study: nothing to compare."))
    else:
        cells = rule_cells(study.target_runs)
        batches = sorted({batch for rule in rules for batch in cells.get(rule, {})})
        rows = [[str(batch)] + [_rule_cell(cells.get(rule, {}).get(batch)) for rule in rules] for batch in batches]
        blocks.append(Table(["global batch", *rules], rows))
        blocks.append(Note("Cell: scaled LR · mean steps to target · mean train time to target; or the outcome "
                           "when no seed reached it; — : not run. Rules that give the same LR schedule at a batch "
                           "train identically there and are not ranked."))
    return blocks + answers(lr_rule_outcomes(study) + lr_rule_per_batch(study)
                             + lr_rules(study), "No run with an LR rule and a target.")


def _rule_cell(runs: list[Run] | None) -> str:
    if not runs:
        return fmt.DASH
    reached = [run for run in runs if run.reached]
    lr = fmt.lr(runs[0].lr_scaled) + " · " if runs[0].lr_scaled is not None else ""
    if not reached:
        point = Point(runs[0].global_bs or 0, runs)
        field = {"diverged": "diverged_at_step", "stalled": "stalled_at_step"}.get(point.outcome)
        ended = [run.get(field) for run in runs if field and run.get(field) is not None]
        where = f" (step {min(ended)})" if ended else ""
        return f"{lr}{point.outcome}{where}"
    steps = stat(run.steps_to_target for run in reached)
    time = stat(run.train_time for run in reached)
    seeds = f" ({len(reached)}/{len(runs)} seeds)" if len(reached) < len(runs) else ""
    return f"{lr}{fmt.integer(steps.mean)} steps · {fmt.seconds(time.mean)} s{seeds}"
