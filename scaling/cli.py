"""`scaling run | probe | sweep | study | report`."""

from __future__ import annotations

import sys
from pathlib import Path

from scaling.config import ArgumentParser, ConfigError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STUDY = REPO / "configs" / "studies" / "default.yaml"

USAGE = """usage: scaling COMMAND [options]

commands:
  run      train one configuration (same flags as scaling/run.py; `scaling run --help`)
  probe    measure the input and compute ceilings and say which one bounds a configuration
           (the run flags; defaults to a 50-step run without a target)
  sweep    run every configuration of a study spec, each as its own launched process (resumable)
  study    sweep a spec and write its report; with no arguments, the default study on MNIST-1D
  report   write report.md, report.html and plots for a folder of results
"""


def _sweep_parser(prog: str, spec_required: bool) -> ArgumentParser:
    parser = ArgumentParser(prog=prog)
    if spec_required:
        parser.add_argument("spec", help="study spec (YAML), e.g. configs/studies/batch_size.yaml")
    else:
        parser.add_argument("spec", nargs="?", default=str(DEFAULT_STUDY), help="default: %(default)s")
    parser.add_argument("--dir", help="study folder (default: runs/study-NAME)")
    parser.add_argument("--dry-run", action="store_true", help="list every configuration; run nothing")
    parser.add_argument("--slurm", choices=("array", "per-config"),
                        help="write sbatch scripts (one array job, or one script per configuration); run nothing")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _load(args) -> tuple:
    from scaling.sweep import load_study

    spec = Path(args.spec)
    if not spec.is_file():
        raise ConfigError(f"study spec {spec} does not exist")
    import yaml

    try:
        name = (yaml.safe_load(spec.read_text()) or {}).get("name") or spec.stem
    except (yaml.YAMLError, AttributeError):
        name = spec.stem  # load_study reports the parse error itself
    study_dir = Path(args.dir or f"runs/study-{name}")
    return load_study(spec, study_dir), study_dir


def sweep(argv: list[str], spec_required: bool = True, report: bool = False) -> int:
    from scaling.sweep import run_study, write_slurm

    args = _sweep_parser("scaling study" if report else "scaling sweep", spec_required).parse_args(argv)
    study, study_dir = _load(args)
    if args.dry_run:
        print(f"scaling: study {study.name}: {len(study.configs)} configurations -> {study_dir}")
        for study_config in study.configs:
            print(study_config.describe())
        return 0
    if args.slurm:
        for path in write_slurm(study, study_dir, array=args.slurm == "array"):
            print(f"scaling: wrote {path}")
        return 0
    from scaling.lock import StudyLock

    with StudyLock(study_dir):
        run_study(study, study_dir, progress=not args.no_progress)
        if report:
            from scaling.report.command import main as report_main

            return report_main([str(study_dir)])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("run", "probe"):
        from scaling.run import main as run_main

        if command == "probe":
            # Flags given later win, so the user's own budget or target replaces these defaults.
            rest = ["--probe", "--max-steps", "50", "--target-accuracy", "none", *rest]
        return run_main(rest)
    try:
        if command == "sweep":
            return sweep(rest)
        if command == "study":
            return sweep(rest, spec_required=False, report=True)
        if command == "report":
            from scaling.report.command import main as report_main

            return report_main(rest)
    except ConfigError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    print(f"scaling: error: unknown command {command!r}; commands: run, probe, sweep, study, report", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
