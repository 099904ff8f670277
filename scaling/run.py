"""Train one configuration and write OUTPUT_DIR/result.json.

    python scaling/run.py --global-bs 4096
    torchrun --nproc_per_node 2 scaling/run.py --global-bs 4096 --cpu
    accelerate launch scaling/run.py --global-bs 4096

Read top to bottom: parse (with --resume: over the run's saved configuration) -> settle (the same
configuration and output folder in every process) -> build (scaling/build.py) -> train -> write the result
from the run record.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a file path: put the repository root (not scaling/) on sys.path so `scaling` imports as a
    # package and its module names (config, data, ...) cannot shadow anything else. os.path, not pathlib:
    # nothing is imported before the Ctrl-C handler below.
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

    # Ctrl-C while importing and building: one line and the shell's status, no traceback (even in the middle
    # of an import: scaling/startup.py). Training replaces this handler with its checkpointing one
    # (scaling/train/signals.py) and restores it after.
    from scaling.startup import quiet_interrupt

    quiet_interrupt("scaling: interrupted before training started; nothing to resume")

import dataclasses
import time
import traceback
from pathlib import Path

import torch
import yaml

from scaling import distributed
from scaling.build import Built, build, start_processes
from scaling.ceilings import bottleneck, measure_ceilings, verdict
from scaling.config import FIELDS, ConfigError, RunConfig, build_parser, load_yaml, parse_args
from scaling.files import OutputError, atomic_file, write_json_atomic, write_text_atomic
from scaling.hardware import compute_efficiency, count_flops_per_sample, peak_memory, reset_peak_memory
from scaling.lock import RunLock
from scaling.memory import OutOfMemory, check_fits, is_out_of_memory, oom_suggestion
from scaling.output import SAVED_CONFIG, Given, Resumed, prepare_output_dir, resumed_config
from scaling.parent import die_with_parent_if_asked
from scaling.record import RunRecord, data_wait_fraction
from scaling.results import Result, exit_status, summary_line
from scaling.startup import StartupTimeout, StartupWatch
from scaling.startup import end as end_startup
from scaling.train.signals import StopOnSignals


def main(argv: list[str] | None = None, prog: str = "scaling run") -> int:
    lock = None
    try:
        die_with_parent_if_asked()  # started by a sweep: do not outlive it (docs/reliability.md)
        cfg, extras = parse_args(argv, prog)
        resumed = None
        if extras["resume"]:  # the run's saved configuration, with only what was given over it
            cfg, resumed = resumed_config(cfg, given_settings(argv, prog))
        if extras["print_config"]:
            from scaling.data import check_builtin_size

            # The batch arithmetic `run` refuses before it generates a built-in dataset, refused here too.
            check_builtin_size(cfg.dataset, cfg.num_samples, cfg.global_bs)
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        # Until training begins: says what start-up waits for, and ends it past --startup-timeout-s.
        StartupWatch(extras["startup_timeout_s"]).start()
        cfg, lock = settle(cfg, extras["resume"], resumed)
        result = run(cfg, resume=extras["resume"])
    except (ConfigError, StartupTimeout) as err:
        if distributed.is_main_process():
            print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        if distributed.is_main_process():
            print(f"scaling: out of memory: {err}", file=sys.stderr)
        return 1
    finally:
        end_startup()
        _close_process_group()
        if lock is not None:
            lock.release()
    return exit_status(result)


def given_settings(argv: list[str] | None, prog: str = "scaling run") -> Given:
    """What the user set explicitly: the flags on the command line and the keys of a `--config` file, not
    the defaults around them (the parser leaves a flag not given out of its namespace). parse_args has
    already refused anything it cannot read."""
    namespace = vars(build_parser(prog).parse_known_args(argv)[0])
    given = Given(cli={k: v for k, v in namespace.items() if k in FIELDS})
    if namespace.get("config") is not None:
        given.yaml, given.yaml_source = load_yaml(namespace["config"]), str(namespace["config"])
    return given


def settle(cfg: RunConfig, resume: bool, resumed: Resumed | None = None) -> tuple[RunConfig, RunLock | None]:
    """Every process leaves with the same configuration, before any data is loaded: the processes form
    their group, the main process resolves the output folder (a fresh runs/<time> by default), makes sure
    it is writable, takes its lock and checks what it holds against --resume / --overwrite (and the settings
    given with --resume against the run's saved ones, `resumed`: every process has read those itself before,
    output.resumed_config); the others take its folder, or its refusal (each then exits with status 2, the
    main process printing the line)."""
    _, state = start_processes(cfg)  # build() starts them again from `cfg` (the same group) and says how
    lock, settled = None, None
    if state.is_main_process:
        try:
            prepared, lock = prepare_output_dir(cfg, resume, resumed)
            settled = ("folder", prepared.output_dir)
        except ConfigError as err:
            settled = ("error", str(err))
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        settled = broadcast_object_list([settled], from_process=0)[0]
    kind, value = settled
    if kind == "error":
        raise ConfigError(value)
    return dataclasses.replace(cfg, output_dir=value), lock


def run(cfg: RunConfig, resume: bool = False) -> Result:
    """Build everything for `cfg` (settled), train, and write the result. Returns the result document."""
    try:
        built = build(cfg, resume)
    except SystemExit as exit_:
        raise quiet_exit_error(exit_, "before training started") or exit_ from None
    write_running(built)
    with StopOnSignals(built.trainer.request_stop):  # held until the final result is written
        record = train(built)
        result = write_result(built, record)
    built.say(summary_line(result, built.output_dir / "result.json"))
    built.accelerator.end_training()
    return result


def write_running(built: Built) -> None:
    """Once built (a resume's checkpoint accepted): the run's resolved configuration, which a later
    `--resume --output-dir DIR` continues from (output.resumed_config), and a result saying it runs."""
    if built.accelerator.is_main_process:
        write_text_atomic(built.output_dir / SAVED_CONFIG, yaml.safe_dump(built.cfg.to_dict(), sort_keys=False))
        write_json_atomic(built.output_dir / "result.json", {"status": "running", "config": built.cfg.to_dict(),
                                                             "started_at": time.time()})


def train(built: Built) -> RunRecord:
    """The memory check, the probe and the training loop; an exception leaves an oom/failed result."""
    cfg, plan, trainer, accelerator, record = built.cfg, built.plan, built.trainer, built.accelerator, built.record
    model = trainer.unwrapped  # eager, without DDP: FLOPs are counted on a copy
    record.facts.flops_per_sample = count_flops_per_sample(model, trainer.source.dataset, plan.per_device_bs,
                                                           accelerator.device, built.task)
    reset_peak_memory(accelerator.device)
    try:
        if cfg.memory_cap_mb is not None and cfg.per_device_bs != "auto":
            check_fits(cfg, plan, model, trainer.source.dataset, accelerator.device, built.task)
        ceilings = measure_ceilings(cfg, trainer.source, trainer.state, built.task, built.say) if cfg.probe else None
        trainer.run()
        trainer.metrics.check()  # the result goes where the record is, or the run fails (FolderGone)
    except SystemExit as exit_:
        error = quiet_exit_error(exit_, f"at step {record.step}")
        if error is None:
            raise
        write_failure(built, error)
        raise error from None
    except Exception as err:
        write_failure(built, err)
        if is_out_of_memory(err):
            raise OutOfMemory(f"{plan.describe()} does not fit: {oom_suggestion(plan)}") from None
        raise
    finally:
        trainer.metrics.close()
    measure_the_end(built, ceilings)
    return record


def quiet_exit_error(exit_: SystemExit, when: str) -> ConfigError | None:
    """The error for user code (a dataset or model factory, a model's forward) that ended the process with
    status 0 (`sys.exit()`, `SystemExit(0)`): left alone, the run would exit 0 without its result, a silent
    false success. None for any other status: a non-zero exit already says the run failed, and the run's own
    interruptions (status 130, 143) are SystemExits too."""
    if exit_.code not in (0, None):
        return None
    frame = traceback.extract_tb(exit_.__traceback__)[-1] if exit_.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})" if frame else ""
    return ConfigError(f"SystemExit({exit_.code}) raised{where} {when}: a run that ends without writing its "
                       "result is a failure; return, or raise an exception, instead of exiting")


def measure_the_end(built: Built, ceilings: tuple[float, float] | None) -> None:
    """What the record learns once training has ended: the bottleneck verdict (with the advice an input-bound
    run prints), peak memory, FLOP/s and MFU, and where an interrupted run can resume from."""
    cfg, trainer, accelerator, record = built.cfg, built.trainer, built.accelerator, built.record
    wait, rate, device_type = data_wait_fraction(record.step_time), record.throughput(), accelerator.device.type
    if ceilings is not None:
        record.ceilings = verdict(ceilings[0], ceilings[1], rate, wait, cfg, trainer.source.fast, device_type)
    record.bottleneck = bottleneck(wait, record.ceilings, cfg, trainer.source.fast, device_type)
    if record.bottleneck is not None and (record.bottleneck["bound"] == "input" or ceilings is not None):
        for line in record.bottleneck["advice"]:  # an input-bound run says what to change
            built.say(f"scaling: {line}")
    record.peak_memory = peak_memory(accelerator.device)
    record.compute = compute_efficiency(record.facts.flops_per_sample, rate, accelerator.num_processes,
                                        accelerator.device, cfg.mixed_precision)
    if record.status == "interrupted":
        record.checkpoint, record.stop_signal = str(trainer.checkpoint.directory), trainer.stop_signal


def write_failure(built: Built, err: BaseException) -> None:
    if built.accelerator.is_main_process:
        status = "oom" if is_out_of_memory(err) else "failed"
        suggestion = oom_suggestion(built.plan) if status == "oom" else None
        try:
            # into the folder the run opened, wherever it is now (never into a folder that replaced it)
            write_json_atomic(built.output_dir / "result.json", built.record.failure_result(err, status, suggestion),
                              dir_fd=built.trainer.metrics.folder_fd)
        except OutputError:  # the disk that failed the run may refuse this too: the first error is reported
            pass


def write_result(built: Built, record: RunRecord) -> Result:
    result = record.to_result()
    if built.accelerator.is_main_process:
        if built.cfg.save_model:
            _save_weights(built.trainer.unwrapped, built.output_dir / "model.pt")
        write_json_atomic(built.output_dir / "result.json", result)
    return result


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        with atomic_file(path) as handle:
            torch.save(model.state_dict(), handle)
    except RuntimeError as err:  # torch reports a failed write as RuntimeError
        raise OutputError(f"cannot write {path}: {err}") from None


def _close_process_group() -> None:
    """Destroy the gloo/NCCL process group before the interpreter exits: left to interpreter shutdown, its
    threads can abort the process ("terminate called without an active exception", SIGABRT), which
    torchrun then reports as a failed run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while a peer still uses them
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
