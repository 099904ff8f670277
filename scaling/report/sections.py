"""SECTIONS, the report's sections in order, and the ones that answer no single question: the title, the
Conclusions and the table of every run. Each section takes the Study and returns blocks (render.py); a
section whose data is absent returns its heading and a one-line Note saying why.

Extension point: a question is a module in scaling/report/questions/ that holds its analysis (computed once
per Study with `study.per_study`), its finding functions (inserted into FINDINGS, findings.py, so that they
also reach the Conclusions), its section (`section`, inserted into SECTIONS below) and its plots (helpers in
plots.py); number formatting is in formatting.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from scaling.report import findings, tuning
from scaling.report import formatting as fmt
from scaling.report.answer import recommendation
from scaling.report.finding import status_words
from scaling.report.questions import (
    critical_batch,
    data_loading,
    devices,
    faster,
    largest,
    levels,
    lr_rules,
    over_training,
    powers_of_two,
    schedules,
    seeds,
    tuned,
)
from scaling.report.render import Block, Bullets, Heading, Note, Paragraph, Table
from scaling.report.runs import UNREADABLE, Run, seed_order
from scaling.report.study import Study

Section = Callable[[Study], list[Block]]

BEST_MARK = "★ best"
LOWEST_MARK = "☆ lowest mean (not decided)"


def title(study: Study) -> list[Block]:
    statuses = Counter(run.status for run in study.runs)
    status_text = ", ".join(f"{n} {status_words(status)}" for status, n in statuses.most_common())
    device_names = sorted({(run.get("environment") or {}).get("device") for run in study.runs} - {None})
    runs, configurations = len(study.runs), len(study.all_configurations or study.configurations)
    text = (f"{runs} run{'s' * (runs != 1)} in {configurations} configuration{'s' * (configurations != 1)}, "
            f"read from {study.root} ({status_text}).")
    if study.target is not None:
        text += f" Target: {study.target_text()}."
    if device_names:
        text += f" Device: {'; '.join(device_names)}."
    counts = sorted({len(c.runs) for c in study.ladder})
    seeds_text = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    rules = study.rules
    return [
        Heading(f"Scaling report: {study.name}", 1),
        Paragraph(text),
        Paragraph("Time to target is train time, evaluation excluded (the fair clock across batch sizes, "
                  "docs/clock.md), unless marked wall. ± is the sample standard deviation over seeds "
                  f"({seeds_text} per configuration here)."),
        Paragraph(f"A difference is decided only when it exceeds run-to-run variation and matters: the "
                  f"{fmt.confidence(rules.confidence)} Welch t interval of the ratio of the per-seed values (on the "
                  f"log scale; Bonferroni-corrected when the best of several is picked) lies entirely beyond "
                  f"±{fmt.percent(rules.threshold, 0)}. Otherwise the report says the study cannot tell the "
                  f"alternatives apart (`scaling report --threshold/--confidence` changes both; docs/report.md). "
                  f"Every finding is also in findings.json."),
    ]


def answer(study: Study) -> list[Block]:
    """At most five lines: what to use and what is not decided (answer.py), before the detail."""
    return [Heading("Answer"), Bullets(recommendation(study).lines)]


def conclusions(study: Study) -> list[Block]:
    """Every finding but the per-batch details, grouped by the question it answers."""
    blocks: list[Block] = [Heading("Conclusions"), *[Note(text) for text in findings.notes(study)]]
    groups = findings.conclusions_by_question(study)
    for question, sentences in groups.items():
        blocks += [Heading(question, 3), Bullets(sentences)]
    return blocks if groups else [*blocks, Note("No conclusion: too little data.")]


def configurations_table(study: Study) -> list[Block]:
    """Every run, grouped by configuration, the best configuration marked."""
    runs = [run for configuration in study.all_configurations or study.configurations
            for run in _by_seed(configuration.runs)]
    show_seed = len({run.seed for run in study.runs}) > 1
    show_wait = any(run.data_wait is not None for run in runs)
    show_memory = any(run.peak_memory is not None for run in runs)
    context = study.tokens_per_sequence  # next-token runs: their figures in tokens too
    unit = "sequences" if context else "samples"
    header = ["id", "global batch", "per-device × processes × accum.", "LR rule", "scaled LR"]
    header += ["seed"] * show_seed + ["status", "wall time to target (s)", "train time to target (s)", "steps to target",
                                      f"{unit} to target", f"throughput ({unit}/s)"]
    header += ["tokens per step", "tokens to target", "throughput (tokens/s)"] * bool(context)
    header += ["data wait"] * show_wait + ["peak memory"] * show_memory + ["note"]
    ranking = faster.ranking_of(study)
    best = faster.best_configuration(study)
    # The best and the configurations that train identically to it (same LR schedule at that batch) share the mark.
    best_runs = {id(run) for c in [best, *ranking.twins] for run in c.runs} if best and ranking else set()
    mark = BEST_MARK if ranking is not None and ranking.decided else LOWEST_MARK
    trials = tuning.trial_ids(study.searches or [])
    chosen = {i for search in study.searches or [] if search.best for i in search.best.ids}
    rows = []
    for run in runs:
        row = [run.id, _batch_cell(run), run.decomposition or fmt.DASH, run.lr_rule or fmt.DASH,
               fmt.lr(run.lr_scaled)]
        row += [str(run.seed)] * show_seed
        row += [run.status, fmt.seconds(run.wall_time), fmt.seconds(run.train_time), _steps_cell(run),
                _samples_cell(run), fmt.integer(run.throughput)]
        if context:
            tokens = run.tokens or {}
            row += [_batch_cell(run, context) if _phases(run) else fmt.integer(tokens.get("per_step")),
                    _samples_cell(run, context),
                    fmt.integer(tokens.get("throughput_per_s"))]
        row += [fmt.percent(run.data_wait)] * show_wait + [fmt.nbytes(run.peak_memory)] * show_memory
        row.append(_note(run, mark if id(run) in best_runs else None, run.id in trials, run.id in chosen))
        rows.append(row)
    blocks: list[Block] = [Heading("Configurations"), Table(header, rows, wrap=(len(header) - 1,))]
    if best is not None:
        blocks.append(Note(f"{BEST_MARK}: the fastest configuration to the target, decided against every other "
                           f"(see Conclusions); {LOWEST_MARK}: the lowest mean train time where the data do not "
                           f"separate it from every other. Only configurations where every seed reached the "
                           f"target compete."))
    if any(run.steps_interval for run in runs):
        blocks.append(Note("Steps as a range (81–120): the first step at the target is known only to lie in it "
                           "(the run's replay could not pin it down, docs/clock.md); the questions on steps use "
                           "the range's upper end and count its width as resolution."))
    missing = [name for name, shown in (("data-wait share", show_wait), ("peak memory", show_memory)) if not shown]
    if missing:
        blocks.append(Note(f"Not recorded by these runs: {' and '.join(missing)}."))
    return blocks


def _phases(run: Run) -> list[dict]:
    """A --batch-schedule run's batches (result `batch_schedule`), [] for a fixed batch."""
    phases = run.get("batch_schedule")
    return phases if isinstance(phases, list) else []


def _batch_cell(run: Run, per_sample: int = 1) -> str:
    """The global batch (x `per_sample`: tokens per step), or a schedule's batches in order, `16→32`."""
    phases = _phases(run)
    if not phases:
        return fmt.integer(run.global_bs * per_sample if run.global_bs else None)
    return "→".join(fmt.integer(p["global"] * per_sample) for p in phases)


def _steps_cell(run: Run) -> str:
    """`175`, or `81–120` where the first step at the target is known only to an interval."""
    interval = run.steps_interval
    return fmt.integer(run.steps_to_target) if interval is None else f"{interval[0]:,}–{interval[1]:,}"


def _samples_cell(run: Run, per_sample: int = 1) -> str:
    """Samples (or with `per_sample` the context, tokens) to target; a range where the step is an interval."""
    interval, batch = run.steps_interval, run.global_bs
    if interval is None or not batch or _phases(run):  # a schedule's samples are its own sum
        samples = run.get("samples_to_target") if run.reached else None
        return fmt.integer(samples * per_sample if samples is not None else None)
    return f"{interval[0] * batch * per_sample:,}–{interval[1] * batch * per_sample:,}"


def _by_seed(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=seed_order)


def _final(run: Run) -> str:
    """The last evaluation in the target's metric: `final loss 4.01` for a loss target, else accuracy."""
    final, target = run.get("final"), run.target
    if target is not None and target.metric == "loss" and final.get("loss") is not None:
        return f"final loss {final['loss']:.3g}"
    return f"final accuracy {fmt.percent(final.get('accuracy'))}"


def _note(run: Run, mark: str | None, trial: bool = False, chosen: bool = False) -> str:
    parts = [mark] if mark else []
    if _phases(run):
        parts.append("batch schedule: " + ", ".join(f"{p['global']} from step {p['first_step']:,}"
                                                     for p in _phases(run)))
    if run.tuned:  # a tuned study's trials: which of them the questions see (report/tuning.py)
        parts.append("tuned: the best LR at its batch" if chosen else
                     "tuned series at its batch, where no LR reached the target with every seed")
    elif trial:
        parts.append("tuning trial, not the best LR: left out of the questions")
    if run.status == "diverged":
        parts.append(f"diverged at step {run.get('diverged_at_step')}")
    elif run.status == "stalled":  # `stalled at step 18 (5 evaluations at the chance loss 2.30)`
        stall = run.get("stall")
        evidence = f" ({stall['evaluations']} evaluations at the chance loss {stall['chance_loss']:.2f})" \
            if stall else ""
        parts.append(f"stalled at step {run.get('stalled_at_step')}{evidence}")
    elif run.status == "not_reached" and run.get("final"):
        parts.append(f"{_final(run)} after {run.get('steps')} steps")
    elif run.status == "completed":
        parts.append(f"{fmt.integer(run.get('steps'))} steps, no target")
    if run.status == UNREADABLE:  # the loader's one line: which file, which field
        return "; ".join([*parts, f"left out: {run.error}"])
    if run.error:
        lines = [line.strip() for line in str(run.error).splitlines() if line.strip()]
        tail = lines[-1] if lines else ""
        parts.append(tail if len(tail) <= 120 else tail[:117] + "...")
    if run.partial_config:
        parts.append("no result.json" + (" (status from study.json)" if run.status != "incomplete" else ""))
    return "; ".join(parts)


# The report, in order. Insert a function here to add a section.
SECTIONS: list[Section] = [title, answer, conclusions, configurations_table, faster.section, largest.section,
                           tuned.section, critical_batch.section, levels.section, over_training.section, schedules.section,
                           devices.section, lr_rules.section, powers_of_two.section,
                           data_loading.section, seeds.section]

# tests/test_devices.py and tests/test_devices_run.py import it from here (it was defined here before
# questions/devices.py).
device_count_section = devices.section
