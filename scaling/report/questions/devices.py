"""How long would it take on N devices? Predicted train time to target against the number of devices, for every
configuration that reached the target, and the fastest way to the target with up to N devices
(scaling/devices/predict.py, docs/predict.md): the predictions, their findings, this question's section and
its plot.

Each run's steps to target are its own (every decomposition of a global batch trains the same trajectory);
the step time on n devices is the run's measured micro-step compute at the per-device batch, n-fold parallel,
plus the modelled gradient all-reduce over a named interconnect (scaling/devices/comm.py). The report cannot measure
the interconnect, so it names a preset chosen from the runs' device (`report_interconnect`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib import colormaps

from scaling import stats
from scaling.config import ConfigError
from scaling.devices.comm import PRESETS, Interconnect
from scaling.devices.predict import device_counts, gradient_bytes, predict_on_devices, profile_run
from scaling.files import read_metrics
from scaling.report import formatting as fmt
from scaling.report.finding import ESTIMATE, Finding, hardest, verdict_text
from scaling.report.plots import new_figure, save
from scaling.report.render import Block, Bullets, Figure, Heading, Note, Paragraph, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study

QUESTION = "How long would it take on N devices?"
MAX_DEVICES = 64  # the table and plot go up to this many devices (or the global batch, if smaller)
ANSWER_CAPS = (1, 8, 64)  # "the fastest way to the target with up to N devices", for these N
PLOT_DEVICES = "devices_time_to_target"
SCALED_MARK = "*"

# GPU name fragment -> the NVLink generation of its SXM form (other GPUs: PCIe 4.0); CPUs: 10 GbE.
_GPU_LINKS = (("B200", "nvlink5"), ("B100", "nvlink5"), ("GB200", "nvlink5"), ("H200", "nvlink4"),
              ("H100", "nvlink4"), ("GH200", "nvlink4"), ("A100", "nvlink3"), ("V100", "nvlink2"))
CPU_LINK = "ethernet-10g"
GPU_LINK = "pcie4"


def report_interconnect(study: Study) -> Interconnect:
    """The preset the section predicts with: the NVLink generation of the runs' GPU when it is known, PCIe 4.0
    for other GPUs, 10 Gigabit Ethernet for CPUs (the most common device among the runs)."""
    devices = Counter(str((run.get("environment") or {}).get("device") or "") for run in study.runs)
    device = devices.most_common(1)[0][0] if devices else ""
    if not device or device.lower().startswith("cpu"):
        return PRESETS[CPU_LINK]
    for fragment, name in _GPU_LINKS:
        if fragment in device.upper():
            return PRESETS[name]
    return PRESETS[GPU_LINK]


@dataclass
class DeviceRow:
    """One configuration's predicted train time to target per device count (mean over its reached runs)."""

    configuration: Configuration
    measured_s: float | None
    steps: float | None
    run_as: str = ""  # the measured runs' decomposition (per-device x processes x accumulation, emulated?)
    times: dict[int, float] = field(default_factory=dict)  # geometric mean over run_times (what is compared)
    run_times: dict[int, list[float]] = field(default_factory=dict)  # device count -> one prediction per run
    per_device: dict[int, int] = field(default_factory=dict)
    accumulation: dict[int, int] = field(default_factory=dict)
    scaled: set[int] = field(default_factory=set)  # device counts whose per-device batch was not measured


@dataclass
class DeviceAnalysis:
    link: Interconnect
    rows: list[DeviceRow]
    counts: list[int]
    skipped: list[str]  # why a configuration that reached the target has no row
    answers: dict = field(default_factory=dict, repr=False)  # (cap, rules) -> answer_within's answer, once


def device_analysis(study: Study, link: Interconnect | None = None) -> DeviceAnalysis:
    """The predictions of every configuration that reached the target (computed once per study and link)."""
    link = link or report_interconnect(study)
    return study.cached((__name__, link.name), lambda: _analyse(study, link))


def _analyse(study: Study, link: Interconnect) -> DeviceAnalysis:
    rows, skipped = [], []
    for configuration in study.configurations:
        # Runs chasing another target than the study's are not comparable with the rest.
        reached = [run for run in configuration.runs if run.reached and run.target == study.target]
        if not reached:
            continue
        try:
            rows.append(_row(configuration, reached, link))
        except ConfigError as err:
            skipped.append(f"{configuration.label} ({err})")
    counts = sorted({n for row in rows for n in row.times})
    return DeviceAnalysis(link, rows, counts, skipped)


def _row(configuration: Configuration, runs: list[Run], link: Interconnect) -> DeviceRow:
    if runs[0].result["model"] is None:
        raise ConfigError("its result was written before results recorded the model's gradient layout "
                          "(schema version 1): rerun it to predict it on more devices")
    gradient = gradient_bytes(runs[0].result)
    row = DeviceRow(configuration, statistics.fmean(run.train_time for run in runs),
                    statistics.fmean(run.steps_to_target for run in runs))
    per_run: dict[int, list[float]] = {}
    for run in runs:
        metrics = read_metrics(run.folder / "metrics.jsonl") if run.folder is not None else []
        profile = profile_run(run.result, metrics)
        row.run_as = profile.decomposition.replace(" x ", " × ")
        for n in device_counts(profile.global_bs, MAX_DEVICES):
            prediction = predict_on_devices(profile, gradient, n, link)
            if prediction.train_time_to_target_s is None or not prediction.train_time_to_target_s > 0:
                continue  # no target, or a breakdown too inconsistent to give a positive time
            per_run.setdefault(n, []).append(prediction.train_time_to_target_s)
            row.per_device[n] = prediction.plan.per_device_bs
            row.accumulation[n] = prediction.plan.accumulation_steps
            if not prediction.measured_micro_batch:
                row.scaled.add(n)
    row.run_times = per_run
    row.times = {n: stats.geometric_mean(times) for n, times in per_run.items()}
    return row


def best_count(row: DeviceRow, cap: int) -> int | None:
    """The row's device count <= cap with the lowest predicted time (ties: fewer devices)."""
    counts = [n for n in row.times if n <= cap]
    return min(counts, key=lambda n: (row.times[n], n)) if counts else None


@dataclass
class DeviceAnswer:
    """The fastest predicted way to the target with up to `cap` devices: each configuration at its best device
    count, the lowest predicted time (the table's fastest row) against every other, on the per-run
    predictions (each seed's own steps, measured compute, the same modelled interconnect)."""

    cap: int
    options: dict[int, tuple[DeviceRow, int]]  # id(row) -> (row, its best device count <= cap)
    decision: stats.Best

    @property
    def row(self) -> DeviceRow:
        return self.options[self.decision.best][0]

    @property
    def devices(self) -> int:
        return self.options[self.decision.best][1]

    @property
    def n_seeds(self) -> int:
        return min(len(row.run_times[n]) for row, n in self.options.values())

    @property
    def decided(self) -> bool:
        return self.decision.decided and self.n_seeds >= 2

    def nearest(self) -> tuple[DeviceRow, int, stats.Comparison] | None:
        """The runner-up (the option predicted closest to the answer) and the answer against it."""
        if not self.decision.comparisons:
            return None
        key = min(self.decision.comparisons, key=lambda k: self.options[k][0].times[self.options[k][1]])
        row, n = self.options[key]
        return row, n, self.decision.comparisons[key]


def answer_within(analysis: DeviceAnalysis, cap: int, rules: stats.Rules) -> DeviceAnswer | None:
    """With up to `cap` devices: the configuration and device count predicted fastest, decided against every
    other configuration (None when no configuration has a prediction on so few devices). Only configurations
    where every seed reached the target compete: one that missed it with some seed is never recommended."""
    key = (cap, rules.threshold, rules.confidence)
    if key not in analysis.answers:
        options = {id(row): (row, n) for row in analysis.rows
                   if row.configuration.all_reached and (n := best_count(row, cap)) is not None}
        decision = stats.best_of({k: row.run_times[n] for k, (row, n) in options.items()}, rules) if options else None
        analysis.answers[key] = DeviceAnswer(cap, options, decision) if decision is not None else None
    return analysis.answers[key]


# --- findings, section and plot -----------------------------------------------------------------------------


def caps_of(analysis: DeviceAnalysis) -> list[int]:
    """The device counts asked about: ANSWER_CAPS up to the largest count predicted, and that count."""
    largest = max(analysis.counts, default=1)
    return sorted({cap for cap in ANSWER_CAPS if cap <= largest} | {largest})


def device_count_findings(study: Study, link: Interconnect | None = None) -> list[Finding]:
    """"The fastest way to the target with up to N devices", for N in ANSWER_CAPS (and the largest count):
    one answer per N, the fastest row of the section's table at that N, decided against every other
    configuration; the Conclusions show the largest (the others are `detail`)."""
    analysis = device_analysis(study, link)
    if not analysis.rows:
        return []
    caps = caps_of(analysis)
    answers = [(cap, answer_within(analysis, cap, study.rules)) for cap in caps]
    return [_answer_finding(study, analysis, answer, cap != caps[-1]) for cap, answer in answers if answer]


def _where(row: DeviceRow, n: int) -> str:
    """`global batch 512 (sqrt) on 8 devices (per-device 64 × 1 accumulation)`."""
    configuration = row.configuration
    series = "" if configuration.series == "all" else f" ({configuration.series})"
    return (f"global batch {configuration.global_bs}{series} on {fmt.devices(n)} (per-device {row.per_device[n]} "
            f"× {row.accumulation[n]} accumulation)")


def _answer_finding(study: Study, analysis: DeviceAnalysis, answer: DeviceAnswer, detail: bool) -> Finding:
    row, n, cap = answer.row, answer.devices, answer.cap
    link = "no communication" if n == 1 else f"the gradient all-reduce modelled over {analysis.link.name}"
    scaled = "; per-device batch not measured: compute scaled per sample" if n in row.scaled else ""
    text = (f"With up to {fmt.devices(cap)}, the fastest predicted way to {study.target_text()} is {_where(row, n)}: "
            f"{fmt.seconds(row.times[n])} s predicted train time for {fmt.integer(row.steps)} steps ({link}{scaled})")
    nearest = answer.nearest()
    numbers = {"devices_cap": cap, "devices": n, "configuration": row.configuration.label,
               "global_batch": row.configuration.global_bs, "per_device": row.per_device[n],
               "accumulation_steps": row.accumulation[n], "predicted_train_time_s": row.times[n],
               "steps_to_target": row.steps, "decided_on": "predicted train time",
               "interconnect": analysis.link.to_dict() if n > 1 else None,
               "measured_micro_batch": n not in row.scaled, "runner_up": None}
    if nearest is None:
        text += "; no other configuration to compare: not decided"
    else:
        other, m, comparison = nearest
        numbers["runner_up"] = {"configuration": other.configuration.label, "devices": m,
                                "predicted_train_time_s": other.times[m], **comparison.to_dict()}
        text += (f"; against the runner-up, {_where(other, m)}, "
                 f"{fmt.change(comparison, 'predicted train time', interval=answer.n_seeds >= 2)}")
        if answer.decided:
            text += ": decided (faster than every other configuration on the seeds' own steps)"
        else:
            open_ = [answer.decision.comparisons[k] for k in answer.decision.ties]
            text += f": {verdict_text(study, hardest(open_), answer.n_seeds)}"
    return Finding(f"fastest_with_devices@{cap}", text + ".", answer.decided, row.configuration.label,
                   answer.n_seeds, ESTIMATE, numbers, detail=detail)


def section(study: Study) -> list[Block]:
    """Predicted time to target on 1, 2, 4, ... devices, and its answers."""
    found = device_count_findings(study)
    return _blocks(study) + ([Bullets([finding.statement for finding in found])] if found else [])


def _blocks(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    if study.target is None or not any(run.reached and run.target == study.target for run in study.runs):
        return blocks + [Note("No run reached its target: no time to predict.")]
    analysis = device_analysis(study)
    link = analysis.link
    blocks.append(Paragraph(
        f"Train time to {study.target_text()} predicted on n data-parallel devices from each configuration's own "
        f"runs (scaling predict, docs/predict.md): the steps to target are the run's (every decomposition of a "
        f"global batch trains the same trajectory); a step is the run's measured forward/backward per micro-batch "
        f"at the per-device batch, times the accumulation steps, plus its data, optimizer and overhead time, plus "
        f"the DDP gradient all-reduce over {link.name} ({link.bus_bandwidth / 1e9:.3g} GB/s bus bandwidth, "
        f"{link.latency * 1e6:.3g} µs latency; {link.note or link.source}), overlapped with backward. The "
        f"interconnect is a datasheet upper bound chosen from the runs' device; `scaling predict RUN --processes "
        f"N --measure-comm` measures a real one."))
    if not analysis.rows:
        return blocks + [Note("No configuration could be predicted: " + "; ".join(analysis.skipped) + ".")]
    header = ["configuration", "run as", "measured (s)", *[fmt.devices(n) for n in analysis.counts]]
    rows = []
    for row in analysis.rows:
        cells = [row.configuration.label, row.run_as or fmt.DASH, fmt.seconds(row.measured_s)]
        for n in analysis.counts:
            value = row.times.get(n)
            cells.append(fmt.DASH if value is None else fmt.seconds(value) + (SCALED_MARK if n in row.scaled else ""))
        rows.append(cells)
    blocks.append(Table(header, rows))
    notes = ["Predicted train time to target (s), geometric mean over the seeds that reached it (what the answers "
             "compare); run as: per-device × "
             "processes × accumulation of the measured run; — : the global batch does not split over that many "
             "devices. Only configurations where every seed reached the target compete for the answers below."]
    if any(row.scaled for row in analysis.rows):
        notes.append(f"{SCALED_MARK}: the per-device batch is smaller than the measured one, so its compute is "
                     f"scaled per sample from it (optimistic on GPUs, whose efficiency drops at small batches).")
    blocks += [Note(text) for text in notes]
    if analysis.skipped:
        blocks.append(Note("Not predicted: " + "; ".join(analysis.skipped) + "."))
    path = plot_devices(study, analysis)
    if path is not None:
        blocks.append(Figure(path, f"Predicted train time to target against device count, one line per "
                                   f"configuration, all-reduce over {link.name}; hollow: per-device batch not "
                                   f"measured (scaled per sample)."))
    return blocks


def plot_devices(study: Study, analysis: DeviceAnalysis) -> Path | None:
    rows = [row for row in analysis.rows if row.times]
    if not rows:
        return None
    figure, ax = new_figure(8.0, 5.0)
    cmap = colormaps["viridis"]
    for index, row in enumerate(rows):
        color = cmap(0.9 * index / max(1, len(rows) - 1))
        counts = sorted(row.times)
        ax.plot(counts, [row.times[n] for n in counts], "-", color=color, label=row.configuration.label)
        for n in counts:
            hollow = n in row.scaled
            ax.plot([n], [row.times[n]], "o", color=color, markerfacecolor="white" if hollow else color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(analysis.counts)
    ax.set_xticklabels([str(n) for n in analysis.counts])
    ax.minorticks_off()
    ax.set_xlabel("devices")
    ax.set_ylabel(f"predicted train time to {study.target_text()} (s)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"Predicted time to target on n devices ({analysis.link.name})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if not all(math.isfinite(t) and t > 0 for row in rows for t in row.times.values()):
        ax.set_yscale("linear")
    return save(study, figure, PLOT_DEVICES)
