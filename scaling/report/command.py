"""`scaling report DIR [--out OUT] [--threshold T] [--confidence C]` (and `python -m scaling.report`): write the
report and say where it went."""

from __future__ import annotations

import sys
from pathlib import Path

from scaling import stats
from scaling.config import ArgumentParser, ConfigError
from scaling.report.writer import write_report


def main(argv: list[str] | None = None) -> int:
    """Write report.md, report.html, findings.json and the plots for a folder of results; 2 on a usage or data
    error."""
    parser = ArgumentParser(prog="scaling report",
                            description="Write report.md, report.html, findings.json and plots for a folder of "
                                        "results.")
    parser.add_argument("dir", help="a study folder, or any folder holding result.json files")
    parser.add_argument("--out", help="where to write the report (default: DIR)")
    parser.add_argument("--threshold", type=float, default=stats.DEFAULT_THRESHOLD,
                        help="smallest relative difference that counts, e.g. 0.05 for 5%% (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=stats.DEFAULT_CONFIDENCE,
                        help="confidence of the intervals that decide a difference (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        paths = write_report(Path(args.dir), Path(args.out) if args.out else None, threshold=args.threshold,
                             confidence=args.confidence)
    except ConfigError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    print(f"scaling: report -> {paths['report.md']}, {paths['report.html']} and {paths['findings.json']}")
    return 0
