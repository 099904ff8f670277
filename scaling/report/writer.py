"""`write_report`: load the study, run every section, write report.md, report.html, findings.json and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from scaling import stats
from scaling.config import ConfigError
from scaling.files import refuse_link, write_text_atomic
from scaling.report.answer import recommendation
from scaling.report.findings import all_findings, notes
from scaling.report.render import Block, to_html, to_markdown
from scaling.report.sections import SECTIONS
from scaling.report.study import Study

# Bumped when a field of findings.json changes meaning or goes away (new fields keep it).
FINDINGS_VERSION = 1


def rules_from(threshold: float | None, confidence: float | None) -> stats.Rules:
    """The decision rules from user input; out-of-range values are a ConfigError (one line, exit 2)."""
    try:
        return stats.Rules(stats.DEFAULT_THRESHOLD if threshold is None else threshold,
                           stats.DEFAULT_CONFIDENCE if confidence is None else confidence)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def write_report(study_dir: str | Path, out_dir: str | Path | None = None, *, threshold: float | None = None,
                 confidence: float | None = None) -> dict[str, Path]:
    """Write the report of the study in `study_dir` into `out_dir` (default: `study_dir`).

    `threshold` (relative, default 0.05) and `confidence` (default 0.95) decide when a difference counts
    (scaling.stats). Returns name -> path: "report.md", "report.html", "findings.json", and one entry per plot
    (its file stem, e.g. "steps_to_target"). Raises ConfigError when the folder holds no finished run.
    """
    rules = rules_from(threshold, confidence)
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir
    study = Study.load(study_dir, out_dir, rules)  # validates the folder before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, page, record = out_dir / "report.md", out_dir / "report.html", out_dir / "findings.json"
    for path in (markdown, page, record):  # refused before any plot is drawn (each is checked again as written)
        refuse_link(path)
    blocks: list[Block] = [block for section in SECTIONS for block in section(study)]
    # Every text is made before any is written, so that a failure leaves the last report whole, not a new
    # report.md beside an old findings.json; each file is replaced atomically and never through a link.
    texts = {markdown: to_markdown(blocks), page: to_html(blocks, f"Scaling report: {study.name}"),
             record: json.dumps(findings_document(study), indent=2, default=_plain, allow_nan=False) + "\n"}
    for path, text in texts.items():
        write_text_atomic(path, text)
    return {"report.md": markdown, "report.html": page, "findings.json": record, **study.figures}


def findings_document(study: Study) -> dict:
    """findings.json: the rules the verdicts used, study-wide notes, and every finding (docs/report.md)."""
    seeds = [len(c.runs) for c in study.ladder]
    return {
        "version": FINDINGS_VERSION,
        "study": study.name,
        "rules": {"threshold": study.rules.threshold, "confidence": study.rules.confidence,
                  "method": "Welch t interval on log per-seed values; Bonferroni over the alternatives when the "
                            "best of several is picked"},
        "seeds_per_configuration": {"min": min(seeds, default=0), "max": max(seeds, default=0)},
        "notes": notes(study),
        "recommendation": recommendation(study).to_dict(),
        "findings": [finding.to_dict() for finding in all_findings(study)],
    }


def _plain(value):
    """Sets (e.g. of batches) as sorted lists; anything else JSON cannot hold as its text."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)
