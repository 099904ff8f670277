"""`scaling run | sweep | report | study | probe`."""

from __future__ import annotations

import sys

USAGE = """usage: scaling COMMAND [options]

commands:
  run      train one configuration (same flags as scaling/run.py; `scaling run --help`)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from scaling.run import main as run_main

        return run_main(rest)
    print(f"scaling: error: unknown command {command!r}; commands: run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
