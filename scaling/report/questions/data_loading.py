"""When does data loading become the limit? The share of training time spent waiting for data against a limit
(where the input pipeline, not the model, sets the pace), where throughput stops growing along the batch
ladder, their findings, this question's section (which also shows the decompositions' findings) and its
plots (throughput, data-wait share).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from scaling import stats
from scaling.data.pipeline import loaders_text, per_sample_text, rate_text
from scaling.report import formatting as fmt
from scaling.report.aggregates import Stat, ladder, stat
from scaling.report.finding import OBSERVATION, Finding, answers, one_seed
from scaling.report.plots import (
    batch_axis,
    log_y,
    new_figure,
    save,
    seeds_phrase,
    series_colors,
    spread_caption,
)
from scaling.report.questions import decompositions
from scaling.report.render import Block, Heading, Table, figure_or_note
from scaling.report.runs import RUN_ONLY_KEYS, Configuration, Run
from scaling.report.study import Study, per_study

QUESTION = "When does data loading become the limit?"

# Above this share of training time spent waiting for data, the input pipeline, not the model, sets the pace.
DATA_WAIT_LIMIT = 0.30

# Below this gain per doubling of the batch, throughput has stopped growing.
THROUGHPUT_GAIN_MIN = 0.10


def pooled_runs(configurations: list[Configuration]) -> list[tuple[int, list[Run]]]:
    """Runs of every configuration pooled at each global batch (the input pipeline does not care about the
    LR rule), sorted by batch."""
    runs: dict[int, list[Run]] = {}
    for configuration in configurations:
        if configuration.global_bs is not None:
            runs.setdefault(configuration.global_bs, []).extend(configuration.runs)
    return sorted(runs.items())


def pooled_by_batch(configurations: list[Configuration], value: Callable[[Run], float | None]
                    ) -> list[tuple[int, Stat]]:
    """`value(run)` pooled over every configuration at each global batch."""
    pairs = [(batch, stat(value(run) for run in group)) for batch, group in pooled_runs(configurations)]
    return [(batch, s) for batch, s in pairs if s.mean is not None]


def _seeds_per_configuration(runs: list[Run]) -> int:
    """Seeds per configuration among pooled runs (the fewest), so pooling two LR rules is not two seeds."""
    counts = Counter(json.dumps({k: v for k, v in run.config.items() if k not in RUN_ONLY_KEYS}, sort_keys=True,
                                default=str) for run in runs)
    return min(counts.values(), default=0)


@dataclass
class InputBound:
    """Where the data-wait share crosses DATA_WAIT_LIMIT for good, each batch's share against the limit."""

    levels: dict[int, stats.Level]  # batch -> mean share with its interval against the limit
    onset: int | None  # smallest batch from which the mean share stays above the limit
    n_seeds: int

    @property
    def top(self) -> tuple[int, float]:
        batch = max(self.levels, key=lambda b: self.levels[b].mean)
        return batch, self.levels[batch].mean

    @property
    def decided(self) -> bool:
        """Every batch on the right side of the onset, its interval too (all below: never the limit)."""
        if self.n_seeds < 2:
            return False
        for batch, level in self.levels.items():
            above = self.onset is not None and batch >= self.onset
            if level.verdict != (stats.HIGHER if above else stats.LOWER):
                return False
        return True


def input_bound(configurations: list[Configuration], rules: stats.Rules) -> InputBound | None:
    pooled = [(batch, runs) for batch, runs in pooled_runs(configurations)
              if any(run.data_wait is not None for run in runs)]
    if not pooled:
        return None
    levels = {batch: stats.against_level([run.data_wait for run in runs], DATA_WAIT_LIMIT, rules)
              for batch, runs in pooled}
    onset = None
    for batch, level in reversed(levels.items()):
        if level.mean <= DATA_WAIT_LIMIT:
            break
        onset = batch
    return InputBound(levels, onset, min(_seeds_per_configuration(runs) for _, runs in pooled))


@dataclass
class Saturation:
    """Where throughput stops growing along the batch ladder: per doubling, the gain with its interval."""

    rates: list[tuple[int, int, stats.Rate]]  # (small, large, throughput ratio per doubling)
    plateau: int | None  # smallest batch from which every doubling gains less than THROUGHPUT_GAIN_MIN
    n_seeds: int

    @property
    def decided(self) -> bool:
        """Each doubling from the plateau on gains less (whole interval), the one before it more."""
        if self.n_seeds < 2 or not self.rates:
            return False
        edge = 1 + THROUGHPUT_GAIN_MIN
        for small, _, rate in self.rates:
            if rate.low is None or rate.high is None:
                return False
            flat = self.plateau is not None and small >= self.plateau
            if (flat and not rate.high < edge) or (not flat and not rate.low >= edge):
                return False
        return True


def saturation(configurations: list[Configuration], rules: stats.Rules) -> Saturation | None:
    pooled = [(batch, runs) for batch, runs in pooled_runs(configurations)
              if any(run.throughput for run in runs)]
    kept = ladder(pooled, lambda pair: pair[0])
    if len(kept) < 2:
        return None
    rates = []
    for (small, a), (large, b) in pairwise(kept):
        rate = stats.per_doubling([run.throughput for run in a], [run.throughput for run in b],
                                  math.log2(large / small), rules)
        if rate is not None:
            rates.append((small, large, rate))
    plateau = None
    for small, _, rate in reversed(rates):
        if rate.ratio - 1 >= THROUGHPUT_GAIN_MIN:
            break
        plateau = small
    return Saturation(rates, plateau, min(_seeds_per_configuration(runs) for _, runs in kept))


@per_study
def input_bound_of(study: Study) -> InputBound | None:
    return input_bound(study.ladder, study.rules)


@per_study
def saturation_of(study: Study) -> Saturation | None:
    return saturation(study.ladder, study.rules)


# --- findings, section and plots ----------------------------------------------------------------------------


def data_wait(study: Study) -> list[Finding]:
    bound = input_bound_of(study)
    if bound is None:
        return user_loader(study)
    limit = fmt.percent(DATA_WAIT_LIMIT, 0)
    top_batch, top = bound.top
    onset = bound.onset
    numbers = {"limit": DATA_WAIT_LIMIT, "onset": onset,
               "share": {str(b): {"mean": lv.mean, "ci_low": lv.low, "ci_high": lv.high, "verdict": lv.verdict}
                         for b, lv in bound.levels.items()}}
    if onset is not None:
        text = (f"From global batch {onset} the data-wait share exceeds {limit} ({fmt.percent(bound.levels[onset].mean)} "
                f"at {onset}, up to {fmt.percent(top)} at {top_batch}): the input pipeline is the limit")
        winner = str(onset)
    elif top <= DATA_WAIT_LIMIT:
        text = (f"The data-wait share stays at or below {limit} at every batch (highest {fmt.percent(top)} at batch "
                f"{top_batch}): data loading is not the limit")
        winner = "not input-bound"
    else:
        above = [b for b, lv in bound.levels.items() if lv.mean > DATA_WAIT_LIMIT]
        text = (f"The data-wait share exceeds {limit} at batch {fmt.batch_list(above)} but not at the largest batch: "
                f"no consistent input-pipeline limit")
        winner = None
    runs = [run for _, group in pooled_runs(study.ladder) for run in group]
    copies = sum(_read_into_memory(run) is not None for run in runs)
    if copies:  # the data wait of a copy in memory says nothing of the user's loader (user_loader below)
        text = (f"As run ({copies} of {len(runs)} runs trained from the training set read into memory, not "
                f"through your loader): {text[0].lower()}{text[1:]}"
                ).replace("data loading is not the limit", "data loading was not the limit of the in-memory copy")
        winner = f"{winner} as run" if winner == "not input-bound" else winner
    if bound.decided:
        text += f" (every batch's {fmt.confidence(study.rules.confidence)} interval on its side of {limit}: decided)"
    elif bound.n_seeds < 2:
        text += f" ({one_seed(study)})"
    else:
        close = [str(b) for b, lv in bound.levels.items() if lv.verdict == stats.UNDECIDED]
        text += (f" (not decided: the interval of the share includes {limit} at batch "
                 f"{fmt.batch_list(close) if close else 'none, but the onset is not clean'})")
    return [Finding("input_bound", text + ".", bound.decided and winner is not None, winner, bound.n_seeds,
                    numbers=numbers), *user_loader(study)]


def throughput(study: Study) -> list[Finding]:
    pairs = pooled_by_batch(study.ladder, lambda run: run.throughput)
    if len(pairs) < 2:
        return []
    (b0, r0), (bl, rl) = pairs[0], pairs[-1]
    saturated = saturation_of(study)
    out = [Finding("throughput_range",
                   f"Throughput goes from {fmt.integer(r0.mean)} samples/s at batch {b0} to {fmt.integer(rl.mean)} at "
                   f"batch {bl} ({rl.mean / r0.mean:.1f}×).", kind=OBSERVATION,
                   n_seeds=saturated.n_seeds if saturated else None,
                   numbers={"samples_per_s": {str(b): s.mean for b, s in pairs}})]
    if saturated is not None and saturated.plateau is not None:
        rates = [r for small, _, r in saturated.rates if small >= saturated.plateau]
        gains = ", ".join(fmt.signed_percent(r.ratio - 1) for r in rates)
        text = (f"Beyond batch {saturated.plateau} throughput grows less than {THROUGHPUT_GAIN_MIN:.0%} per "
                f"doubling ({gains}): the device is saturated")
        if saturated.decided:
            text += " (decided)"
        elif saturated.n_seeds < 2:
            text += f" ({one_seed(study)})"
        else:
            text += f" (not decided: some doubling's {fmt.confidence(study.rules.confidence)} interval crosses " \
                    f"{THROUGHPUT_GAIN_MIN:.0%})"
        numbers = {"plateau": saturated.plateau,
                   "doublings": [{"small": s, "large": lg, "ratio": r.ratio, "ci_low": r.low, "ci_high": r.high}
                                 for s, lg, r in saturated.rates]}
        out.append(Finding("saturation", text + ".", saturated.decided, str(saturated.plateau),
                           saturated.n_seeds, numbers=numbers))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    blocks += figure_or_note(plot_throughput(study),
                             f"Throughput (throughput_samples_per_s) against global batch{spread_caption(study)}.",
                             "No run recorded throughput: no throughput plot.")
    blocks += figure_or_note(plot_data_wait(study),
                             f"Share of training time spent waiting for data; dashed: "
                             f"{DATA_WAIT_LIMIT:.0%}.",
                             "These runs did not record data_wait_fraction: no data-wait plot.")
    blocks += user_loader_table(study)
    return blocks + answers(throughput(study) + decompositions.decompositions(study) + data_wait(study),
                             "No throughput or data-wait measurements to judge from.")


# --- the user's own loader, where the runs trained from a copy in memory ------------------------------------


def _read_into_memory(run: Run) -> dict | None:
    """The run's `pipeline` block when it read its training set into memory (--materialize), else None."""
    pipeline = run.get("pipeline")
    return pipeline if pipeline and pipeline.get("materialized") else None


@dataclass
class UserLoader:
    """A configuration whose runs trained from the training set read into memory: what the user's own loader
    would do, from the timed read (result.json `pipeline`, medians over the runs)."""

    configuration: Configuration
    per_sample_s: float | None
    loaders: str  # `1 loader process`
    input_ceiling: float | None
    compute_ceiling: float | None
    verdicts: Counter  # the runs' verdicts for the user's loader
    data_wait: float | None  # mean share as run (the copy's)

    @property
    def verdict(self) -> str:
        """The runs' verdict, `mixed` when they disagree, `not judged` without a compute ceiling."""
        judged = [v for v in self.verdicts if v is not None]
        return "not judged" if not judged else judged[0] if len(judged) == 1 else "mixed"


def _median(values) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


@per_study
def user_loaders_of(study: Study) -> list[UserLoader]:
    out = []
    for configuration in study.configurations:
        blocks = [p for p in map(_read_into_memory, configuration.runs) if p is not None]
        if blocks:
            out.append(UserLoader(configuration, _median(p["per_sample_s"] for p in blocks), loaders_text(blocks[0]),
                                  _median(p["input_ceiling_samples_per_s"] for p in blocks),
                                  _median(p["compute_ceiling_samples_per_s"] for p in blocks),
                                  Counter(p["verdict"] for p in blocks), stat(r.data_wait for r in configuration.runs).mean))
    return out


def _span(values: list[float | None], text: Callable[[float], str]) -> str:
    """`500` or `480–520`: the values as `text` writes them, one when they agree."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return fmt.DASH
    low, high = text(known[0]), text(known[-1])
    return low if low == high else f"{low}–{high}"


def user_loader(study: Study) -> list[Finding]:
    """Per configuration read into memory: input- or compute-bound for the user's own loader, decided from the
    timed read, never from the copy's data wait."""
    loaders = user_loaders_of(study)
    if not loaders:
        return []
    groups: dict[str, list[UserLoader]] = {}
    for loader in loaders:
        groups.setdefault(loader.verdict, []).append(loader)
    clauses = []
    for verdict, group in groups.items():
        names = fmt.batch_list([loader.configuration.label for loader in group])
        clauses.append(
            f"{verdict} at {names} ({_span([g.per_sample_s for g in group], per_sample_text)}/sample as read; input "
            f"ceiling ~{_span([g.input_ceiling for g in group], rate_text)} samples/s with {group[0].loaders} against "
            f"compute {_span([g.compute_ceiling for g in group], rate_text)} samples/s measured from memory)")
    text = ("Your own loader, judged from the timed read of the training set into memory (the data wait as run is "
            "the copy's; loader workers assumed to parallelise the reads, docs/timing.md): " + "; ".join(clauses))
    numbers = {loader.configuration.label: {"per_sample_s": loader.per_sample_s, "verdict": loader.verdict,
                                            "input_ceiling_samples_per_s": loader.input_ceiling,
                                            "compute_ceiling_samples_per_s": loader.compute_ceiling,
                                            "data_wait_as_run": loader.data_wait} for loader in loaders}
    winner = next(iter(groups)) if len(groups) == 1 else None
    return [Finding("user_loader", text + ".", False, winner, min(len(g.configuration.runs) for g in loaders),
                    kind=OBSERVATION, numbers=numbers)]


def user_loader_table(study: Study) -> list[Block]:
    """One row per configuration read into memory: the user's loader against the run as it ran."""
    loaders = user_loaders_of(study)
    if not loaders:
        return []
    rows = [[loader.configuration.label, per_sample_text(loader.per_sample_s), loader.loaders,
             rate_text(loader.input_ceiling), rate_text(loader.compute_ceiling), loader.verdict, fmt.percent(loader.data_wait)]
            for loader in loaders]
    return [Table(["configuration", "cost per sample (as read)", "your loader", "input ceiling (samples/s)",
                   "compute ceiling (samples/s)", "your loader is", "data wait as run (in memory)"], rows)]


def _errorbar_series(study: Study, ax, statistic: str, scale: float = 1.0) -> bool:
    """One mean ± std line per series for a per-batch statistic; False when no series has it."""
    colors = series_colors(study)
    drawn = False
    for name, points in study.series.items():
        measured = [p for p in points if getattr(p, statistic).mean is not None]
        if not measured:
            continue
        drawn = True
        ax.errorbar([p.batch for p in measured], [scale * getattr(p, statistic).mean for p in measured],
                    yerr=[scale * (getattr(p, statistic).std or 0) for p in measured], marker="o", capsize=3,
                    color=colors[name], label=name)
    return drawn


def _seed_counts(study: Study, statistic: str) -> list[int]:
    return [getattr(p, statistic).n for points in study.series.values() for p in points]


def plot_throughput(study: Study) -> Path | None:
    figure, ax = new_figure()
    if not _errorbar_series(study, ax, "throughput"):
        return None
    batch_axis(ax)
    log_y(ax)
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title("Throughput against global batch" + seeds_phrase(_seed_counts(study, "throughput")))
    ax.legend(fontsize=8)
    return save(study, figure, "throughput")


def plot_data_wait(study: Study) -> Path | None:
    figure, ax = new_figure()
    if not _errorbar_series(study, ax, "data_wait", scale=100):
        return None
    ax.axhline(100 * DATA_WAIT_LIMIT, color="#d62728", ls="--", lw=1,
               label=f"{DATA_WAIT_LIMIT:.0%}: input pipeline is the limit")
    batch_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("time waiting for data (% of training time)")
    ax.set_title("Data-wait share against global batch" + seeds_phrase(_seed_counts(study, "data_wait")))
    ax.legend(fontsize=8)
    return save(study, figure, "data_wait")
