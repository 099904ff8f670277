"""Small things a user trips on (issue 33, item 7): a target met at the first evaluation is said to be too easy,
by the run and by the report; the HTML report shows the Markdown's code spans as code, not as backticks."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from test_report import fabricate_study

from conftest import load_result, run_in_process
from scaling.report import write_report
from scaling.report.render import Paragraph, to_html

EASY = "met at the first evaluation"


def _results(root: Path) -> list[Path]:
    return sorted(root.glob("runs/*/result.json"))


def test_a_run_whose_first_evaluation_meets_the_target_warns_that_it_is_too_easy(tmp_path):
    # MNIST-1D has 10 classes: an untrained model is near 10%, so 5% is met at once.
    easy = run_in_process(["--num-samples", "2000", "--global-bs", "64", "--target-accuracy", "0.05", "--cpu",
                           "--eval-every", "5", "--output-dir", str(tmp_path / "easy")])
    assert easy.returncode == 0, easy.stderr
    result = load_result(tmp_path / "easy")
    assert result["status"] == "reached" and result["first_eval_at_target"]["step"] == 5
    warnings = [line for line in easy.stderr.splitlines() if EASY in line]
    assert warnings == ["scaling: warning: the target (5% accuracy) was met at the first evaluation, step 5: too easy "
                        "to compare batch sizes by; set a harder target or evaluate earlier (--eval-every)"]

    hard = run_in_process(["--num-samples", "2000", "--global-bs", "64", "--target-accuracy", "0.5", "--cpu",
                           "--eval-every", "5", "--max-steps", "60", "--output-dir", str(tmp_path / "hard")])
    assert hard.returncode == 0, hard.stderr
    assert load_result(tmp_path / "hard")["first_eval_at_target"] != {"step": 5}
    assert EASY not in hard.stderr


@pytest.mark.parametrize("easy_runs", [0, 3])
def test_the_report_says_how_many_runs_met_the_target_at_their_first_evaluation(tmp_path, easy_runs):
    fabricate_study(tmp_path, seeds=2)
    reached = [path for path in _results(tmp_path) if json.loads(path.read_text())["status"] == "reached"]
    for path in reached[:easy_runs]:
        result = json.loads(path.read_text())
        result["first_eval_at_target"] = result["history"][0]
        path.write_text(json.dumps(result))
    markdown = write_report(tmp_path)["report.md"].read_text()
    notes = [line for line in markdown.splitlines() if "at their first evaluation" in line]
    if easy_runs:
        assert len(notes) == 1 and re.match(rf"_{easy_runs} of \d+ runs met the target 90% accuracy at their first evaluation: the target is "
                                             r"too easy", notes[0])
    else:
        assert notes == []


def test_the_html_report_shows_code_spans_as_code(tmp_path):
    fabricate_study(tmp_path, seeds=2)
    paths = write_report(tmp_path)
    markdown, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    spans = set(re.findall(r"`([^`\n]+)`", markdown))
    assert spans, "the report's Markdown has code spans to carry over"
    body = page.split("<body>", 1)[1]
    assert "`" not in body
    shown = set(re.findall(r"<code>(.*?)</code>", body))
    # Every span of the Markdown that is not inside a link or table-escaped text is code in the page.
    assert {html.escape(span) for span in spans} & shown
    # Text stays text: markup inside a span is escaped before it becomes code.
    assert to_html([Paragraph("run `a <b> & c` now")], "t").count("<code>a &lt;b&gt; &amp; c</code>") == 1


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path):
    long = run_in_process(["--num-samples", "2000", "--global-bs", "64", "--target-accuracy", "none", "--cpu",
                           "--max-steps", "4", "--warmup-steps", "10", "--output-dir", str(tmp_path / "long")])
    assert long.returncode == 0, long.stderr
    lines = [line for line in (long.stdout + long.stderr).splitlines() if "warmup (10 steps)" in line]
    assert lines == ["scaling: warning: the warmup (10 steps) is longer than the run (4 steps by "
                     "--max-steps/--max-epochs): the LR never reaches 0.05"]
    assert load_result(tmp_path / "long")["lr_per_step"][-1] < 0.05
    short = run_in_process(["--num-samples", "2000", "--global-bs", "64", "--target-accuracy", "none", "--cpu",
                            "--max-steps", "4", "--warmup-steps", "3", "--output-dir", str(tmp_path / "short")])
    assert short.returncode == 0 and "longer than the run" not in short.stdout + short.stderr


def test_print_config_refuses_the_batch_arithmetic_a_run_refuses(tmp_path):
    printed = run_in_process(["--global-bs", "1000", "--num-samples", "300", "--print-config"])
    assert printed.returncode == 2 and printed.stdout == ""
    assert printed.stderr.strip().splitlines() == [
        "scaling: error: --num-samples 300 is too small for --dataset mnist1d: it gives 240 training samples (30 per "
        "class, 80% for training), fewer than one global batch of 1000; use --num-samples 1250 or more, or a "
        "smaller --global-bs"]
    fine = run_in_process(["--global-bs", "100", "--num-samples", "3000", "--print-config"])
    assert fine.returncode == 0 and "global_bs: 100\n" in fine.stdout


def test_help_gives_each_flag_one_default():
    shown = run_in_process(["--help"])
    assert shown.returncode == 0
    entries = [" ".join(entry.split()) for entry in re.split(r"\n  (?=-)", shown.stdout)]
    by_flag = {entry.split()[0]: entry for entry in entries if entry.startswith("--")}
    assert "(default: every column but the label)" in by_flag["--input-column"]
    assert "(default: a new runs/<time> folder)" in by_flag["--output-dir"]
    assert len(by_flag) > 50 and all(entry.count("(default:") <= 1 for entry in by_flag.values()), \
        [entry for entry in by_flag.values() if entry.count("(default:") > 1]
