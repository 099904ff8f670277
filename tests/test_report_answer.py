"""The answer at the top of the report (scaling/report/answer.py): at most five lines, the same in report.md
and findings.json's `recommendation`, restating the questions' own verdicts, and naming the one run that
would decide what is open. Studies are fabricated with known truths (test_report_decisions.fabricate)."""

from __future__ import annotations

import json
import random

import pytest
from test_report_decisions import LADDER, fabricate, findings

from scaling.report import write_report
from scaling.report.study import Study
from scaling.report.writer import findings_document


def answer_lines(md: str) -> list[str]:
    block = md.split("## Answer\n", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("- ")]


def test_the_answer_opens_the_report_and_matches_findings_json(tmp_path):
    fabricate(tmp_path, LADDER, seeds=3, noise=0.05, rng=random.Random(1))
    paths = write_report(tmp_path)
    md = paths["report.md"].read_text()
    assert md.index("## Answer") < md.index("## Conclusions") < md.index("## Configurations")
    lines = answer_lines(md)
    document = json.loads(paths["findings.json"].read_text())
    recommendation = document["recommendation"]
    assert 1 <= len(lines) <= 5 and lines == recommendation["lines"]
    found = findings(paths)
    # Each device count's line restates its own finding: the same configuration, the same verdict.
    for entry in recommendation["devices"]:
        finding = found[entry["finding"]]
        assert entry["configuration"] == finding["numbers"]["configuration"]
        assert entry["decided"] == finding["decided"]
    assert recommendation["lr_rule"] == {"rule": "sqrt", "decided": True, "finding": "lr_rule"}
    assert "LR rule: sqrt" in lines[1] and "decided on steps" in lines[1]
    # The best batch, 2048, is the largest run: the next run extends the grid.
    assert recommendation["next_run"].startswith("global batch 4096")
    assert "The run that would decide it: global batch 4096" in lines[-1]
    assert "Answer" in paths["report.html"].read_text()


@pytest.mark.parametrize("seed", [11, 12])
def test_a_decided_middle_batch_is_recommended_without_extending_the_grid(tmp_path, seed):
    configs = {**LADDER, (1024, "sqrt"): {"time": 1.0, "steps": 60, "rate": 60_000}}  # twice as fast as any
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(seed))
    recommendation = findings_document(Study.load(tmp_path, tmp_path))["recommendation"]
    lines = recommendation["lines"]
    assert lines[0].startswith("Fastest to 90% accuracy: global batch 1024 with the sqrt LR rule")
    one = next(entry for entry in recommendation["devices"] if entry["devices_cap"] == 1)
    assert one["global_batch"] == 1024 and one["decided"], lines
    assert "decided at 95% confidence" in lines[0]
    assert recommendation["next_run"] is None or "4096" not in recommendation["next_run"]


def test_an_undecided_study_names_what_is_open_and_the_seeds_that_would_decide_it(tmp_path):
    """Every configuration equal in truth (an A/A study of batch sizes at one rule), time noisy: nothing is
    decided, and the answer says which seeds would resolve the threshold rather than pick a winner."""
    configs = {(batch, "sqrt"): {"time": 2.0, "steps": 100, "rate": 50_000} for batch in (256, 512, 1024)}
    fabricate(tmp_path, configs, seeds=3, noise=0.15, rng=random.Random(4))
    recommendation = findings_document(Study.load(tmp_path, tmp_path))["recommendation"]
    assert not any(entry["decided"] for entry in recommendation["devices"])
    assert recommendation["undecided"] and recommendation["lines"][-1].startswith("Not decided:")
    assert "seeds per configuration" in recommendation["next_run"]  # an edge reached by noise: seeds
    assert len(recommendation["lines"]) <= 5


def test_a_best_batch_at_the_small_edge_asks_for_the_lr_rules_reference_batch(tmp_path):
    """As in the default study: time decidedly rises from the smallest batch run (512), and the LR rules'
    reference batch (base_bs 256) lies below the grid and was not run: that is the run to make next."""
    configs = {(batch, rule): {"time": 1.0 * batch / 512, "steps": 100, "rate": 50_000}
               for batch in (512, 1024, 2048) for rule in ("sqrt", "linear")}
    fabricate(tmp_path, configs, seeds=3, noise=0.02, rng=random.Random(5))
    recommendation = findings_document(Study.load(tmp_path, tmp_path))["recommendation"]
    assert recommendation["devices"][0]["global_batch"] == 512
    assert recommendation["next_run"].startswith("global batch 256 "), recommendation
