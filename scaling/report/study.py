"""The study as the questions see it: runs, configurations, the series points they share, and each question's
analysis computed once (`per_study`).

Study knows no question: a question module (scaling/report/questions/) wraps its own analysis of the whole
study in `@per_study`, so that its findings, its blocks, its plots and any question that builds on it share
one computation, and Study stays below every question module (they import it; it imports none of them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property, wraps
from pathlib import Path
from typing import Any, TypeVar

from scaling import stats
from scaling.errors import shown
from scaling.report import tuning
from scaling.report.aggregates import Point, series_points
from scaling.report.runs import (
    Configuration,
    Run,
    group_configurations,
    load_runs,
    read_study_file,
    warn_stderr,
)
from scaling.targets import Target

T = TypeVar("T")


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
    analyses: dict[Hashable, Any] = field(default_factory=dict, repr=False)  # key -> a question's analysis
    searches: list[tuning.Search] | None = None  # a tuned study's searches (study.json `tuning`), else None
    scheduled: list[Configuration] = field(default_factory=list)  # --batch-schedule configurations (finished)

    @classmethod
    def load(cls, study_dir: Path, out_dir: Path, rules: stats.Rules | None = None) -> Study:
        """`configurations` holds the finished runs only (every analysis and finding), `all_configurations`
        every run, unfinished (pending, running, interrupted) ones too, for the tables. In a tuned study the
        search trials leave `configurations` (they stay in the tables), and the best LR's runs at each batch
        form one configuration of the series "tuned" (report/tuning.py), beside the fixed LR rules."""
        record = read_study_file(study_dir)
        runs = load_runs(study_dir)
        name = study_name(record.get("name"), study_dir)
        everything = group_configurations(runs)
        searches = tuning.select(record["tuning"], runs, warn_stderr) if "tuning" in record else None
        if searches is None:
            analysed = everything
        else:  # the fixed rules named by their rule ("sqrt", not "all") beside "tuned"
            trials = tuning.trial_ids(searches)
            analysed = [*group_configurations([run for run in runs if run.id not in trials], named=("lr_scaling",)),
                        *tuning.tuned_configurations(searches)]
        finished = [Configuration(c.settings, [run for run in c.runs if run.finished], c.series, c.label)
                    for c in analysed]
        finished = [c for c in finished if c.runs]
        # A batch schedule is no point of the batch ladder (its batch changes): report/questions/schedules.py.
        scheduled = [c for c in finished if c.settings.get("batch_schedule")]
        return cls(name, study_dir, out_dir, runs, [c for c in finished if not c.settings.get("batch_schedule")],
                   rules=rules or stats.Rules(), all_configurations=everything, searches=searches,
                   scheduled=scheduled)

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for, the same object after that."""
        if key not in self.analyses:
            self.analyses[key] = compute()
        return self.analyses[key]

    @cached_property
    def series(self) -> dict[str, list[Point]]:
        """Per series, one point per global batch (aggregates.series_points), without configurations that
        chase another target than the study's (their steps and times are to another goal)."""
        return series_points([c for c in self.configurations if not self.other_target(c)])

    def other_target(self, configuration: Configuration) -> bool:
        """Every run of the configuration chases a target, none of them the study's."""
        targets = {run.target for run in configuration.runs}
        return bool(targets) and None not in targets and self.target not in targets

    @property
    def chasing(self) -> list[Configuration]:
        """Configurations with a run that chases the study's target: the ones target questions compare."""
        return [c for c in self.configurations if any(run.target is not None and run.target == self.target
                                                      for run in c.runs)]

    @property
    def other_target_runs(self) -> list[Run]:
        return [run for c in self.configurations if self.other_target(c) for run in c.runs]

    @property
    def max_seeds(self) -> int:
        """The most seeds of any configuration that chases a target (or of any, without targets)."""
        return max((len(c.runs) for c in self.ladder), default=0)

    @property
    def one_seed(self) -> bool:
        """Every configuration ran once: there is no run-to-run variation, so nothing is decided."""
        return self.max_seeds <= 1

    @cached_property
    def target(self) -> Target | None:
        """The most common target among runs that have one."""
        targets = Counter(run.target for run in self.runs if run.target is not None)
        return targets.most_common(1)[0][0] if targets else None

    @property
    def ladder(self) -> list[Configuration]:
        """Configurations that chase a target: the batch ladder. Throughput probes without a target (e.g.
        127/128/129) are left out so that they do not skew the per-batch throughput or data-wait figures."""
        return self.chasing or self.configurations

    @property
    def target_runs(self) -> list[Run]:
        """Finished runs that chase a target (throughput-only probes, without one, are left out of target
        questions)."""
        return [run for c in self.chasing for run in c.runs if run.target == self.target]

    def target_text(self) -> str:
        return self.target.label() if self.target is not None else "the target"

    @cached_property
    def tokens_per_sequence(self) -> int | None:
        """The context of a study of next-token runs (their figures are also given in tokens), else None."""
        contexts = {run.tokens["per_sequence"] for run in self.runs if run.tokens}
        return contexts.pop() if len(contexts) == 1 else None


MAX_NAME_CHARS = 200


def study_name(name: Any, study_dir: Path) -> str:
    """study.json's `name` when it is text of a sane length (the sweep writes a plain file name), else the
    folder's name, with a warning line: a damaged name does not stop the report."""
    if isinstance(name, str) and name.strip() and len(name) <= MAX_NAME_CHARS:
        return name
    if name not in (None, ""):
        warn_stderr(f"scaling: warning: {study_dir / 'study.json'} has 'name' {shown(name, 40)}, not a study "
                    f"name; the report is named after the folder")
    return study_dir.resolve().name


def per_study(analyse: Callable[[Study], T]) -> Callable[[Study], T]:
    """A question's analysis of the whole study, computed once per Study (on first use) and shared by the
    question's findings, blocks and plots, and by any other question that builds on it."""
    key = f"{analyse.__module__}.{analyse.__qualname__}"

    @wraps(analyse)
    def cached(study: Study) -> T:
        return study.cached(key, lambda: analyse(study))

    return cached
