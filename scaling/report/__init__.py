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

Layout, each layer importing only from those before it:
    runs.py            loading result.json / study.json, grouping runs into configurations
    analysis.py        numbers and decisions: aggregates over seeds, regimes, rankings, LR rules, powers of two,
                       data wait (through scaling.stats)
    critical_batch.py  numbers: the gradient-noise-scale fits (B_crit, B_simple, predictions)
    study.py           the shared context (Study), each analysis computed once (cached properties)
    formatting.py      number formatting for tables, sentences and plot labels
    plots.py           one function per PNG
    findings.py        Finding: each sentence with its record for findings.json (FINDINGS, the Conclusions)
    render.py          blocks (Heading, Table, Figure...) and their Markdown and HTML
    sections.py        SECTIONS, the extension point: each section's blocks
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
