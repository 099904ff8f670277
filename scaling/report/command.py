"""`python -m scaling.report STUDY_DIR [--out DIR]`: write the report and print where it went."""

from __future__ import annotations

import argparse
import sys

from scaling.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaling report",
                                     description="Write report.md, report.html and plots for a study folder.")
    parser.add_argument("study_dir", help="folder with study.json and/or result.json files at any depth")
    parser.add_argument("--out", default=None, help="output folder (default: the study folder)")
    args = parser.parse_args(argv)
    from scaling.report.writer import write_report

    try:
        paths = write_report(args.study_dir, args.out)
    except ConfigError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    print(f"scaling: report -> {paths['report.html']} ({len(paths) - 2} plots, {paths['report.md'].name})")
    return 0
