"""The study as the sections see it: runs, configurations and the analyses they share, computed once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from scaling import stats
from scaling.report import analysis, critical_batch
from scaling.report.runs import Configuration, Run, group_configurations, load_runs, read_study_file


@dataclass
class Study:
    name: str
    root: Path
    out_dir: Path
    runs: list[Run]
    configurations: list[Configuration]
    figures: dict[str, Path] = field(default_factory=dict)  # plot name -> PNG written by a section
    rules: stats.Rules = field(default_factory=stats.Rules)  # when a difference counts (threshold, confidence)
    all_configurations: list[Configuration] = field(default_factory=list)  # unfinished runs too: the tables

    @classmethod
    def load(cls, study_dir: Path, out_dir: Path, rules: stats.Rules | None = None) -> Study:
        """`configurations` holds the finished runs only (every analysis and finding), `all_configurations`
        every run, unfinished (pending, running, interrupted) ones too, for the tables."""
        runs = load_runs(study_dir)
        name = read_study_file(study_dir).get("name") or study_dir.resolve().name
        everything = group_configurations(runs)
        finished = [Configuration(c.settings, [run for run in c.runs if run.finished], c.series, c.label)
                    for c in everything]
        return cls(str(name), study_dir, out_dir, runs, [c for c in finished if c.runs], rules=rules or stats.Rules(),
                   all_configurations=everything)

    @cached_property
    def series(self) -> dict[str, list[analysis.Point]]:
        return analysis.series_points(self.configurations)

    @cached_property
    def doublings(self) -> dict[str, list[analysis.Doubling]]:
        return {name: analysis.doublings(name, points, self.rules) for name, points in self.series.items()}

    @cached_property
    def ranking(self) -> analysis.Ranking | None:
        """The fastest configuration to the target against every other (None when none reached it with
        every seed)."""
        return analysis.rank([c for c in self.configurations if any(run.target is not None for run in c.runs)],
                             self.rules)

    @property
    def best(self) -> Configuration | None:
        return self.ranking.best if self.ranking else None

    @cached_property
    def trends(self) -> list[analysis.Trend]:
        trends = [analysis.trend(name, points, self.rules) for name, points in self.series.items()]
        return [t for t in trends if t is not None]

    @cached_property
    def rule_comparisons(self) -> list[analysis.RuleComparison]:
        return analysis.rule_comparisons(self.configurations, self.rules)

    @cached_property
    def noise(self) -> critical_batch.NoiseAnalysis:
        """The gradient-noise-scale fits (critical batch size) of every series."""
        return critical_batch.analyse(self.runs, self.series, self.rules)

    @cached_property
    def power_comparisons(self) -> list[analysis.PowerComparison]:
        return analysis.power_of_two_comparisons(self.configurations, self.rules)

    @cached_property
    def input_bound(self) -> analysis.InputBound | None:
        return analysis.input_bound(self.ladder, self.rules)

    @cached_property
    def saturation(self) -> analysis.Saturation | None:
        return analysis.saturation(self.ladder, self.rules)

    @cached_property
    def decompositions(self) -> list[analysis.DecompositionComparison]:
        return analysis.decomposition_comparisons(self.configurations, self.rules)

    @property
    def max_seeds(self) -> int:
        """The most seeds of any configuration that chases a target (or of any, without targets)."""
        return max((len(c.runs) for c in self.ladder), default=0)

    @property
    def one_seed(self) -> bool:
        """Every configuration ran once: there is no run-to-run variation, so nothing is decided."""
        return self.max_seeds <= 1

    @cached_property
    def target(self) -> float | None:
        """The most common accuracy target among runs that have one."""
        targets = Counter(run.target for run in self.runs if run.target is not None)
        return targets.most_common(1)[0][0] if targets else None

    @property
    def seeded(self) -> list[Configuration]:
        """Configurations run with several seeds."""
        return [c for c in self.configurations if len(c.runs) >= 2]

    @property
    def ladder(self) -> list[Configuration]:
        """Configurations that chase a target: the batch ladder. Throughput probes without a target (e.g.
        127/128/129) are left out so that they do not skew the per-batch throughput or data-wait figures."""
        chasing = [c for c in self.configurations if any(run.target is not None for run in c.runs)]
        return chasing or self.configurations

    @property
    def lr_rules(self) -> list[str]:
        return sorted({run.lr_rule for run in self.target_runs if run.lr_rule is not None})

    @property
    def target_runs(self) -> list[Run]:
        """Finished runs that chase a target (throughput-only probes, without one, are left out of target
        questions)."""
        return [run for c in self.configurations for run in c.runs if run.target is not None]

    def target_text(self) -> str:
        return f"{self.target * 100:g}% accuracy" if self.target is not None else "the target"
