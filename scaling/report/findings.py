"""Conclusions: FINDINGS, the list of every question's finding functions in the Conclusions' order, and what
is said once for the whole study (notes).

Each question module (scaling/report/questions/) writes its finding functions, Study -> list[Finding]
(finding.py); a question's section shows the findings that answer it, the Conclusions show them all except
per-batch details (`detail=True`), which their summaries stand for, and findings.json holds every one. To add
a conclusion, write a finding function in its question's module and insert it into FINDINGS.
"""

from __future__ import annotations

import sys
from collections import Counter

from scaling.report.finding import Finding, FindingFunction
from scaling.report.questions import (
    critical_batch,
    data_loading,
    decompositions,
    devices,
    failures,
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
from scaling.report.study import Study

# The order of the Conclusions list. Insert a function to add a conclusion.
FINDINGS: list[FindingFunction] = [
    faster.fastest, faster.time_trend, largest.steps_scaling, tuned.optimal_lr, tuned.lr_exponent, tuned.lr_peak,
    tuned.tuned_critical_batch, tuned.rule_cost_per_batch, tuned.rule_cost, critical_batch.noise_findings,
    levels.levels, over_training.over_training, schedules.schedules,
    devices.device_count_findings, lr_rules.lr_rule_outcomes, lr_rules.lr_rule_per_batch, lr_rules.lr_rules,
    powers_of_two.power_of_two, data_loading.data_wait, data_loading.throughput, decompositions.decompositions,
    seeds.seeds, failures.failures,
]


def findings_by_question(study: Study) -> dict[str, list[Finding]]:
    """Every finding under the question it answers (its module's QUESTION), in FINDINGS' order, computed once
    per Study. Ids are unique: a second finding under one id (two groups of settings asking the same question)
    gets `#2`, and so on."""
    return study.cached(__name__, lambda: _by_question(study))


def _by_question(study: Study) -> dict[str, list[Finding]]:
    groups: dict[str, list[Finding]] = {}
    seen: Counter[str] = Counter()
    for function in FINDINGS:
        question = getattr(sys.modules[function.__module__], "QUESTION", "Other findings")
        for finding in function(study):
            seen[finding.id] += 1
            if seen[finding.id] > 1:
                finding.id = f"{finding.id}#{seen[finding.id]}"
            groups.setdefault(question, []).append(finding)
    return groups


def all_findings(study: Study) -> list[Finding]:
    """Every finding, in the Conclusions' order (findings.json holds them all)."""
    return [finding for found in findings_by_question(study).values() for finding in found]


def conclusions(study: Study) -> list[str]:
    """The Conclusions' sentences: every finding but the per-batch details their summaries stand for."""
    return [sentence for sentences in conclusions_by_question(study).values() for sentence in sentences]


def conclusions_by_question(study: Study) -> dict[str, list[str]]:
    """The Conclusions' sentences under their questions: every finding but the per-batch details their
    summaries stand for."""
    groups = {question: [f.statement for f in found if not f.detail]
              for question, found in findings_by_question(study).items()}
    return {question: sentences for question, sentences in groups.items() if sentences}


def notes(study: Study) -> list[str]:
    """Study-wide caveats, said once: one seed per configuration, runs timed with different thread counts."""
    out = []
    if study.one_seed:
        out.append("Every configuration ran with one seed, so run-to-run variation is unknown and no comparison "
                   "below is decided: the numbers are single measurements. Add `seeds: [0, 1, 2]` to the study spec "
                   "(docs/studies.md) and run the sweep again into the same folder; finished runs are kept and only "
                   "the new seeds run.")
    others = study.other_target_runs
    if others:
        targets = sorted({run.target for run in others})
        out.append(f"{len(others)} run{'s' * (len(others) != 1)} chase{'s' * (len(others) == 1)} another target "
                   f"({', '.join(t.label() for t in targets)}) than the study's {study.target_text()}: left "
                   f"out of every question about the target (they are in the Configurations table).")
    easy = [run for run in study.runs if run.target_at_first_evaluation]
    if easy:
        out.append(f"{len(easy)} of {len(study.runs)} runs met the target {study.target_text()} at their first "
                   f"evaluation: the target is too easy for these batches, so their steps and times to it say "
                   f"little (intervals and predictions from them are wide or tiny). Set a harder target "
                   f"(--target-accuracy higher, --target-loss lower) or evaluate earlier (--eval-every).")
    threads = sorted({run.torch_threads for run in study.runs if run.torch_threads is not None})
    if len(threads) > 1:
        out.append(f"Runs were timed with different numbers of torch threads ({', '.join(map(str, threads))}; "
                   f"environment.torch_threads): time and throughput comparisons across them mix thread counts.")
    return out


# tests/test_devices.py and tests/test_devices_run.py import it from here (its module before questions/devices.py).
device_count_findings = devices.device_count_findings
