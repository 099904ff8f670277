"""`scaling run | probe | sweep | study | report | predict | branch`."""

from __future__ import annotations

import os
import sys

from scaling.startup import quiet_interrupt

if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "scaling":
    # The command itself (not a test or tool importing this module): Ctrl-C is quiet from here on, before the
    # imports below; main() names the command once it knows it.
    quiet_interrupt("scaling: interrupted")

import dataclasses  # noqa: E402 - after the Ctrl-C handler
from pathlib import Path  # noqa: E402

from scaling.config import ArgumentParser, ConfigError  # noqa: E402

USAGE = """usage: scaling COMMAND [options]

commands:
  run      train one configuration (same flags as scaling/run.py; `scaling run --help`)
  probe    measure the input and compute ceilings and say which one bounds a configuration
           (the run flags; defaults to a 50-step run without a target)
  sweep    run every configuration of a study spec, each as its own launched process (resumable)
  study    sweep a spec and write its report; with no arguments, the default study on MNIST-1D
  report   write report.md, report.html and plots for a folder of results
  predict  predict train time to target on N devices from a finished run (docs/predict.md)
  branch   the critical batch during training: continue a run from its branch points at larger batches
           (docs/branching.md)
"""


def _sweep_parser(prog: str, spec_required: bool) -> ArgumentParser:
    parser = ArgumentParser(prog=prog)
    if spec_required:
        parser.add_argument("spec", help="study spec (YAML), e.g. configs/studies/batch_size.yaml, or the name of "
                                         "a shipped study (batch_size, lr_rules, ...)")
    else:
        parser.add_argument("spec", nargs="?", default="default",
                            help="study spec (YAML) or a shipped study's name (default: the shipped default study)")
    parser.add_argument("--dir", help="study folder (default: runs/study-NAME)")
    parser.add_argument("--dry-run", action="store_true", help="list every configuration; run nothing")
    parser.add_argument("--slurm", choices=("array", "per-config"),
                        help="write sbatch scripts (one array job, or one script per configuration); run nothing")
    slurm = parser.add_argument_group("allocation of the --slurm jobs (override the spec's slurm: section)")
    slurm.add_argument("--gpus-per-node", type=int, help="default: the study's largest process count")
    slurm.add_argument("--cpus-per-task", type=int, help="default: 8")
    slurm.add_argument("--time", help="wall-time limit per job, e.g. 02:00:00 (default) or 1-00:00:00")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--account", help="SLURM account")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _load(args) -> tuple:
    from scaling.resources import study_spec
    from scaling.study.spec import default_study_dir, load_study

    spec = study_spec(args.spec)
    study_dir = Path(args.dir) if args.dir else default_study_dir(spec)  # bounded load, name validated
    return load_study(spec, study_dir), study_dir


def sweep(argv: list[str], spec_required: bool = True, report: bool = False) -> int:
    from scaling.study.slurm import write_slurm
    from scaling.study.spec import slurm_settings
    from scaling.study.sweep import run_study

    args = _sweep_parser("scaling study" if report else "scaling sweep", spec_required).parse_args(argv)
    study, study_dir = _load(args)
    if args.dry_run:
        if study.tuning is not None:
            print(f"scaling: study {study.name}: {study.tuning.describe()}; and {len(study.configs)} fixed "
                  f"configurations -> {study_dir}")
            for group in study.tuning.groups:
                print("    " + " ".join(f"{k}={v}" for k, v in group.items()))
        else:
            print(f"scaling: study {study.name}: {len(study.configs)} configurations -> {study_dir}")
        if study.branching is not None:
            print(f"scaling: and {study.branching.describe()}:")
            print(study.branching.reference.describe())
        for study_config in study.configs:
            print(study_config.describe())
        return 0
    if args.slurm:
        if study.branching is not None:
            raise ConfigError("a branching study derives its schedules from the reference run's branches, so it "
                              "cannot be written as independent sbatch jobs: run `scaling sweep SPEC` inside one "
                              "allocation")
        if study.tuning is not None:
            raise ConfigError("a tuned study decides each trial from the ones before it, so it cannot be written as "
                              "independent sbatch jobs: run `scaling sweep SPEC` inside one allocation (salloc, or "
                              "an sbatch script of your own)")
        overrides = {key: getattr(args, key) for key in ("gpus_per_node", "cpus_per_task", "time", "partition",
                                                         "account")}
        settings = slurm_settings(study.spec.get("slurm"), overrides)
        for path in write_slurm(study, study_dir, array=args.slurm == "array", settings=settings):
            print(f"scaling: wrote {path}")
        return 0
    from scaling.lock import StudyLock

    with StudyLock(study_dir):
        run_study(study, study_dir, progress=not args.no_progress)
        if report:
            from scaling.report.command import main as report_main

            return report_main([str(study_dir)])
    return 0


def _predict_parser() -> ArgumentParser:
    from scaling.devices.comm import PRESETS
    from scaling.hardware import PEAK_TFLOPS

    parser = ArgumentParser(prog="scaling predict",
                            description="Predict train time to target on N devices from a finished run: steps "
                                        "from the run, compute from its phase timing, the gradient all-reduce "
                                        "from a communication model (docs/predict.md).")
    parser.add_argument("run_dir", help="output folder of a finished run (holding result.json)")
    parser.add_argument("--processes", type=int, required=True, help="devices (data-parallel processes) to predict")
    parser.add_argument("--per-device-bs", type=int,
                        help="micro-batch per device (default: the run's, when it divides the per-device share)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--measure-comm", action="store_true",
                        help="time real all-reduces of the model's buckets across N local processes (gloo on the "
                             "CPU, NCCL on GPUs) and fit latency and bandwidth; also time DDP's synchronization "
                             "and how much slower the model computes when N devices compute at once")
    source.add_argument("--interconnect", metavar="NAME", help=f"a preset: {', '.join(PRESETS)}")
    source.add_argument("--bandwidth", type=float, metavar="GB/S", help="all-reduce bus bandwidth (with --latency)")
    parser.add_argument("--latency", type=float, metavar="US", help="per all-reduce latency in microseconds")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP bucket_cap_mb (default: 25)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="the all-reduce does not overlap with backward (default: it does, except a measured "
                             "CPU all-reduce with no core to spare)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--compute-ratio", type=float, metavar="R",
                       help="target compute speed / measured: each micro-batch's forward/backward time is divided "
                            "by R (default: the run's device as measured)")
    scale.add_argument("--target-device", metavar="NAME",
                       help="scale the compute by the ratio of datasheet peak FLOP/s, NAME / the run's device, at "
                            "the run's precision (same utilisation assumed; not for a CPU run): "
                            f"{', '.join(name for name, _ in PEAK_TFLOPS)}")
    parser.add_argument("--json", action="store_true", help="print the prediction as JSON")
    return parser


def _measure_comm(args, result, plan, gradient_bytes):
    """`--measure-comm`: real all-reduces, DDP's synchronization and the contention across N local processes."""
    import torch

    from scaling.devices import comm, measure
    from scaling.devices import predict as predict_devices

    first = comm.FIRST_BUCKET_BYTES if args.bucket_cap_mb == comm.DEFAULT_BUCKET_CAP_MB \
        else int(args.bucket_cap_mb * comm.MIB)
    buckets = comm.ddp_buckets(gradient_bytes, args.bucket_cap_mb, first)
    on_gpu = result["environment"].get("device_type") == "cuda" and torch.cuda.is_available()
    if not args.json:
        print(f"scaling: timing all-reduces of {len(buckets)} bucket size(s) across {args.processes} local "
              f"processes ({'nccl' if on_gpu else 'gloo'})...", flush=True)
    return measure.measure_allreduce(args.processes, measure.measurement_sizes(buckets),
                                     device="cuda" if on_gpu else "cpu",
                                     threads=predict_devices.run_threads(result),
                                     parameter_bytes=list(reversed(gradient_bytes)),
                                     compute=predict_devices.compute_load(result, plan.per_device_bs))


def predict(argv: list[str]) -> int:
    """`scaling predict RUN_DIR --processes N ...`: docs/predict.md."""
    from scaling.devices import comm
    from scaling.devices import predict as predict_devices
    from scaling.devices.compute import requested_scale

    args = _predict_parser().parse_args(argv)
    if (args.bandwidth is None) != (args.latency is None):
        raise ConfigError("--bandwidth and --latency go together (GB/s and microseconds)")
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if not args.bucket_cap_mb > 0:
        raise ConfigError(f"--bucket-cap-mb must be > 0, got {args.bucket_cap_mb}")
    result, metrics, folder = predict_devices.load_run(args.run_dir)
    scale = requested_scale(result, args.compute_ratio, args.target_device)
    profile = predict_devices.profile_run(result, metrics)
    plan = predict_devices.plan_devices(profile, args.processes, args.per_device_bs)  # refuse a bad split first
    link, measurement = None, None
    if args.interconnect:
        link = comm.preset(args.interconnect)
    elif args.bandwidth is not None:
        link = comm.given(args.bandwidth, args.latency)
    elif args.processes > 1 and not args.measure_comm:
        raise ConfigError(f"say how the {args.processes} devices are connected: --measure-comm, --interconnect "
                          f"NAME ({', '.join(comm.PRESETS)}), or --bandwidth GB/s --latency us")
    gradient_bytes = predict_devices.gradient_bytes(result)
    if args.measure_comm and args.processes > 1:
        measurement = _measure_comm(args, result, plan, gradient_bytes)
        link = measurement.interconnect()
    if link is not None and args.no_overlap:
        link = dataclasses.replace(link, overlap=False)
    prediction = predict_devices.predict_on_devices(profile, gradient_bytes, args.processes, link,
                                                    args.per_device_bs, args.bucket_cap_mb,
                                                    ddp=measurement.ddp if measurement else None,
                                                    contention=measurement.contention if measurement else None,
                                                    compute=scale)
    text = predict_devices.explain(profile, prediction)
    if args.json:
        report = predict_devices.PredictionReport(
            run_dir=str(folder), run=predict_devices.profile_dict(profile), prediction=prediction.to_dict(),
            comm_measurement=measurement.to_dict() if measurement else None, explanation=text)
        print(report.to_json())
    else:
        print(f"scaling: {text}")
    return 0


def quiet_ctrl_c(command: str) -> None:
    """Ctrl-C ends any command with one line and status 130, no traceback (also in the middle of an import:
    scaling/startup.py); a run in training and a sweep running a configuration install their own handlers
    (checkpoint, forward to the run) and restore this one."""
    quiet_interrupt(f"scaling: {command} interrupted")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    quiet_ctrl_c(command)
    if command in ("run", "probe"):
        from scaling.run import main as run_main

        if command == "probe":
            # Flags given later win, so the user's own budget or target replaces these defaults.
            rest = ["--probe", "--max-steps", "50", "--target-accuracy", "none", *rest]
        return run_main(rest, prog=f"scaling {command}")
    try:
        if command == "sweep":
            return sweep(rest)
        if command == "study":
            return sweep(rest, spec_required=False, report=True)
        if command == "report":
            from scaling.report.command import main as report_main

            return report_main(rest)
        if command == "predict":
            return predict(rest)
        if command == "branch":
            from scaling.branching import main as branch_main

            return branch_main(rest)
    except ConfigError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    print(f"scaling: error: unknown command {command!r}; commands: run, probe, sweep, study, report, predict, branch", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
