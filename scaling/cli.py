"""`scaling run | sweep | report | study | probe`."""

from __future__ import annotations

import sys

USAGE = """usage: scaling COMMAND [options]

commands:
  run      train one configuration (same flags as scaling/run.py; `scaling run --help`)
  probe    measure the input and compute ceilings and say which one bounds a configuration
           (the run flags; defaults to a 50-step run without a target)
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
    if command == "probe":
        from scaling.run import main as run_main

        # Flags given later win, so the user's own budget or target replaces these defaults.
        return run_main(["--probe", "--max-steps", "50", "--target-accuracy", "none", *rest])
    print(f"scaling: error: unknown command {command!r}; commands: run, probe", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
