"""The report of a batch-size scaling study.

    from scaling.report import write_report
    paths = write_report(Path("studies/mnist1d"))          # report.md, report.html, *.png in that folder
    python -m scaling.report STUDY_DIR [--out DIR]

Reads `STUDY_DIR/study.json` (optional) and every `result.json` below STUDY_DIR (docs/results.md), groups
runs into configurations (config without seed and output_dir), and answers the practitioner's questions:
is a bigger batch faster, what is the largest useful batch (Shallue et al. 2018 regimes), how should the LR
scale, does a power of two matter, when does data loading become the limit, how much do seeds vary.

Layout: runs.py (loading, grouping) -> analysis.py (numbers) -> study.py (shared context) -> plots.py,
findings.py (sentences) -> sections.py (SECTIONS, the extension point) -> render.py (Markdown, HTML) ->
writer.py (write_report).
"""

from scaling.report.findings import FINDINGS, conclusions
from scaling.report.runs import Configuration, Run, group_configurations, load_runs
from scaling.report.sections import SECTIONS
from scaling.report.study import Study
from scaling.report.writer import write_report

__all__ = ["FINDINGS", "SECTIONS", "Configuration", "Run", "Study", "conclusions", "group_configurations",
           "load_runs", "write_report"]
