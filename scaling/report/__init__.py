"""The report of a batch-size scaling study.

    from scaling.report import write_report
    paths = write_report(Path("studies/mnist1d"))          # report.md, report.html, findings.json, *.png
    scaling report STUDY_DIR [--out DIR] [--threshold 0.05] [--confidence 0.95]   # command.py

Reads `STUDY_DIR/study.json` (optional) and every `result.json` below STUDY_DIR (docs/results.md), groups
runs into configurations (config without seed and output_dir), and answers the practitioner's questions:
is a bigger batch faster, what is the largest useful batch (Shallue et al. 2018 regimes), what is the
critical batch size (McCandlish et al. 2018), how should the LR scale, does a power of two matter, when does
data loading become the limit, how much do seeds vary. Every comparison is decided from per-seed values
against run-to-run variation and a practical threshold (scaling/stats.py, docs/report.md); each conclusion
is also a record in findings.json.

Layout, each layer importing only from those before it (no import cycle):
    runs.py            loading result.json / study.json, grouping runs into configurations
    tuning.py          a tuned study's searches from study.json, checked against the runs' result files
    formatting.py      number formatting for tables, sentences and plot labels
    render.py          blocks (Heading, Table, Figure...) and their Markdown and HTML
    aggregates.py      numbers several questions share: Stat, Point (a series at one batch), series_points,
                       per-seed values of the runs that reached the target, the batch ladder
    study.py           the shared context (Study) and `per_study`, which computes a question's analysis once
    finding.py         Finding (each sentence with its record for findings.json) and the shared wording
    plots.py           what every plot shares: figure, saving, axes and ticks, colours, not-reached marks
    questions/         one module per question, each with its analysis, findings, section and plots:
        faster.py          is a bigger batch faster? ranking by train time to target, time along a series
        largest.py         the largest useful batch: steps to target, Shallue et al. regimes, the knee
        critical_batch.py  the critical batch size (numbers in critical_batch_fits.py: the noise-scale fits)
        devices.py         how long on N devices (scaling/devices/predict.py)
        lr_rules.py        how the learning rate should scale
        tuned.py           each batch at its best LR: the tuned frontier, η*(B) ∝ B^α, each rule's cost
        powers_of_two.py   does a power of two matter
        data_loading.py    data wait and throughput (with decompositions.py: the fastest decomposition)
        seeds.py           seed-to-seed variation, MLPerf-style score
        failures.py        runs that did not reach the target or have not finished
    findings.py        FINDINGS, the Conclusions' order of every question's findings; study-wide notes
    answer.py          the answer at the top (at most five lines) and findings.json's recommendation
    sections.py        SECTIONS, the report's order: title, Answer, Conclusions, the run table, each question's section
    writer.py          write_report (report.md, report.html, findings.json)
    command.py         the `scaling report` command (also `python -m scaling.report`, __main__.py)
"""

from scaling.report.findings import FINDINGS, conclusions
from scaling.report.runs import Configuration, Run, group_configurations, load_runs
from scaling.report.sections import SECTIONS
from scaling.report.study import Study
from scaling.report.writer import write_report

__all__ = ["FINDINGS", "SECTIONS", "Configuration", "Run", "Study", "conclusions", "group_configurations",
           "load_runs", "write_report"]
