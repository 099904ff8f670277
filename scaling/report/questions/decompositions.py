"""Which decomposition of a global batch is fastest? Where one global batch ran with several decompositions
(per-device x processes x accumulation) in one series, the fastest (throughput) against the others, and its
finding (shown in the data-loading section).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import min_seeds, stat, throughputs
from scaling.report.finding import Finding, hardest, suffix, verdict_text
from scaling.report.runs import Configuration
from scaling.report.study import Study, per_study

QUESTION = "Which decomposition of a global batch is fastest?"


@dataclass
class DecompositionComparison:
    series: str
    batch: int
    configurations: list[Configuration]
    decision: stats.Best  # the highest throughput against every other decomposition

    @property
    def fastest(self) -> Configuration:
        return next(c for c in self.configurations if id(c) == self.decision.best)

    @property
    def decided(self) -> bool:
        return self.decision.decided and min_seeds(self.configurations) >= 2


def decomposition_comparisons(configurations: list[Configuration], rules: stats.Rules
                              ) -> list[DecompositionComparison]:
    """Where one global batch ran with several decompositions (per-device x processes x accumulation) in
    one series, the fastest (throughput) against the others."""
    groups: dict[tuple[str, int], list[Configuration]] = {}
    for c in configurations:
        if c.global_bs is not None and c.runs[0].decomposition is not None and throughputs(c):
            groups.setdefault((c.series, c.global_bs), []).append(c)
    out = []
    for (series, batch), group in groups.items():
        if len({c.runs[0].decomposition for c in group}) < 2:
            continue
        decision = stats.best_of({id(c): throughputs(c) for c in group}, rules, lower=False)
        out.append(DecompositionComparison(series, batch, group, decision))
    return out


@per_study
def comparisons_of(study: Study) -> list[DecompositionComparison]:
    return decomposition_comparisons(study.configurations, study.rules)


def decompositions(study: Study) -> list[Finding]:
    """Where one global batch ran with several decompositions (per-device x processes x accumulation) in
    the same series, the fastest against the others."""
    out = []
    for d in comparisons_of(study):
        fast = d.fastest
        rated = {id(c): stat(run.throughput for run in c.runs).mean for c in d.configurations}
        slow = min(d.configurations, key=lambda c: rated[id(c)])
        where = "" if d.series == "all" else f" ({d.series})"
        n_seeds = min_seeds(d.configurations)
        text = (f"At global batch {d.batch}{where}, the decomposition {fast.runs[0].decomposition} is the fastest "
                f"({fmt.integer(rated[id(fast)])} samples/s), {rated[id(fast)] / rated[id(slow)]:.2f}× the slowest, "
                f"{slow.runs[0].decomposition} ({fmt.integer(rated[id(slow)])} samples/s)")
        if d.decided:
            text += " (decided)"
        else:
            undecided = [c for c in d.decision.comparisons.values() if c.verdict != stats.LOWER]
            worst = hardest(undecided)
            text += f" ({verdict_text(study, worst, n_seeds)})"
        numbers = {"batch": d.batch, "samples_per_s": {c.runs[0].decomposition: rated[id(c)] for c in d.configurations}}
        out.append(Finding(f"decomposition@{d.batch}{suffix(d.series)}", text + ".", d.decided,
                           fast.runs[0].decomposition, n_seeds, numbers=numbers))
    return out
