"""`write_report`: load the study, run every section, write report.md, report.html and the plots."""

from __future__ import annotations

from pathlib import Path

from scaling.report.render import Block, to_html, to_markdown
from scaling.report.sections import SECTIONS
from scaling.report.study import Study


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the report of the study in `study_dir` into `out_dir` (default: `study_dir`).

    Returns name -> path: "report.md", "report.html", and one entry per plot (its file stem, e.g.
    "steps_to_target"). Raises ConfigError when the folder holds no finished run.
    """
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir
    study = Study.load(study_dir, out_dir)  # validates the folder before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [block for section in SECTIONS for block in section(study)]
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, f"Scaling report: {study.name}"), encoding="utf-8")
    return {"report.md": markdown, "report.html": page, **study.figures}
