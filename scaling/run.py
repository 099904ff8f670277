"""Train one configuration and write OUTPUT_DIR/result.json.

    python scaling/run.py --global-bs 4096
    torchrun --nproc_per_node 2 scaling/run.py --global-bs 4096 --cpu
    accelerate launch scaling/run.py --global-bs 4096

Read top to bottom: parse -> validate -> build -> train -> write result.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file path: put the repository root (not scaling/) on sys.path so `scaling` imports as a
    # package and its module names (config, data, ...) cannot shadow anything else.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]
    sys.path.insert(0, str(Path(_here).parent))

    def _interrupted(signum, frame):
        """Ctrl-C while importing and building: one line and the shell's status, no traceback. Training
        replaces this handler with its checkpointing one (scaling/train/checkpoint.py) and restores it after."""
        import os

        if os.environ.get("RANK", "0") == "0":
            from tqdm.auto import tqdm  # clears a progress bar (dataset generation) before the line

            tqdm.write("scaling: interrupted before training started; nothing to resume", file=sys.stderr)
        raise SystemExit(130)

    import signal

    signal.signal(signal.SIGINT, _interrupted)

import dataclasses
import os
import time
from dataclasses import dataclass, field

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from scaling import distributed
from scaling.batching import BatchPlan, GlobalBatchSampler, plan_batch
from scaling.ceilings import bottleneck, measure_ceilings, verdict
from scaling.config import ConfigError, RunConfig, parse_args
from scaling.data import Workload, load_workload
from scaling.data.delivery import materialize
from scaling.hardware import compute_efficiency, count_flops_per_sample, peak_memory, reset_peak_memory
from scaling.lock import die_with_parent_if_asked, prepare_output_dir
from scaling.lr import LRSchedule, build_schedule
from scaling.memory import OutOfMemory, check_fits, is_out_of_memory, oom_suggestion, resolve_auto_batch
from scaling.models import build_model, check_model_name, has_batch_coupled_layers
from scaling.results import (
    MetricsWriter,
    OutputError,
    build_result,
    data_wait_fraction,
    environment,
    exit_status,
    failure_result,
    summary_line,
    write_json_atomic,
)
from scaling.train.checkpoint import StopOnSignals
from scaling.train.loop import Trainer, TrainOutcome, total_steps


@dataclass
class Built:
    """Everything one run needs, built and ready to train."""

    cfg: RunConfig
    plan: BatchPlan
    accelerator: Accelerator
    trainer: Trainer
    schedule: LRSchedule
    environment: dict
    extra: dict = field(default_factory=dict)  # result fields known before training (docs/results.md)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def say(self, line: str) -> None:
        self.accelerator.print(line)  # the main process only


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Build everything for `cfg`, train, and write the result. Returns the result document."""
    built = build(cfg, resume)
    write_running(built)
    with StopOnSignals(built.trainer.request_stop):  # held until the final result is written
        outcome = train(built)
        result = write_result(built, outcome)
    built.say(summary_line(result, built.output_dir / "result.json"))
    built.accelerator.end_training()
    return result


# ---- build ----


def build(cfg: RunConfig, resume: bool = False) -> Built:
    """Processes, data, model, batch plan, optimizer, LR schedule and trainer; with `resume`, restored from
    the run's checkpoint."""
    plan = plan_batch(cfg, distributed.world_size())  # every batch error, before any process group exists
    requested_cpu = cfg.cpu
    cfg, state = start_processes(cfg)
    check_model_name(cfg.model)  # a typo must not wait for the dataset to be generated
    with state.local_main_process_first():  # rank 0 of each node builds the dataset cache
        workload = load_workload(cfg)
    materialized, notes = materialize_workload(workload, cfg.materialize)
    notes = workload.notes + notes
    set_seed(cfg.seed)  # same initial weights in every process and every decomposition
    model = build_model(cfg.model, workload.input_shape, workload.num_classes)
    coupled = has_batch_coupled_layers(model)
    if cfg.sync_bn and coupled and state.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    auto_batch = None
    if cfg.per_device_bs == "auto":
        plan, auto_batch = resolve_auto_batch(cfg, plan, model, workload.train, state.device)

    if cfg.channels_last:
        model = to_channels_last(model)
    accelerator = build_accelerator(cfg, plan)
    model, optimizer = accelerator.prepare(model, build_optimizer(cfg, model))
    sampler = GlobalBatchSampler(len(workload.train), plan, cfg.seed)
    schedule = build_schedule(cfg, plan.global_bs, sampler.steps_per_epoch, total_steps(cfg, sampler.steps_per_epoch))
    metrics = MetricsWriter(Path(cfg.output_dir) / "metrics.jsonl", enabled=accelerator.is_main_process,
                            append=resume)
    trainer = Trainer(cfg, plan, sampler, accelerator, model, optimizer, schedule, workload.train, workload.eval,
                      metrics)
    env = environment(accelerator.device, accelerator.num_processes, accelerator.distributed_type.value)
    extra = {"batch_coupled_layers": coupled, "decomposition_exact": not coupled, "auto_batch": auto_batch,
             "steps_per_epoch": sampler.steps_per_epoch, "train_samples": len(workload.train),
             "eval_samples": len(workload.eval), "materialized": materialized}
    built = Built(cfg, plan, accelerator, trainer, schedule, env, extra)
    announce(built, workload, auto_batch, coupled)
    for note in notes:
        built.say(f"scaling: {note}")
    if cfg.cpu and not requested_cpu:
        built.say(f"scaling: note: no GPU here: the {plan.world_size} launched processes train on the CPU over "
                  f"gloo (as with --cpu)")
    if resume:
        trainer.load_checkpoint()
        built.say(f"scaling: resumed from {trainer.checkpoint.directory} at step {trainer.step}")
    return built


def materialize_workload(workload: Workload, mode: str) -> tuple[list[str], list[str]]:
    """--materialize: hold map-style splits of fixed tensors in memory (scaling/data/delivery.py). Returns
    the splits materialized and the lines to print."""
    done, notes = [], []
    for split in ("train", "eval"):
        before = getattr(workload, split)
        after, note = materialize(before, mode, "training" if split == "train" else "evaluation")
        setattr(workload, split, after)
        done += [split] if after is not before else []
        notes += [note] if note else []
    return done, notes


def start_processes(cfg: RunConfig) -> tuple[RunConfig, PartialState]:
    """The process group and device; the Accelerator built later joins it. Several launched processes on a
    machine without an accelerator train on the CPU over gloo (as with --cpu): Accelerate would otherwise
    start each of them alone, training on its share of every batch without synchronizing."""
    _quiet_libraries(distributed.is_main_process())
    launched = distributed.world_size()
    if launched > 1 and not cfg.cpu and not accelerator_available():
        cfg = dataclasses.replace(cfg, cpu=True)
    state = PartialState(cpu=cfg.cpu)
    if state.num_processes != launched:
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but they did not form one "
            f"process group ({state.num_processes} process as Accelerate sees it, distributed type "
            f"{state.distributed_type.value}): each would train alone on its part of every batch. On a machine "
            f"without GPUs add --cpu; otherwise check the backend (NCCL, the GPUs visible to each process)")
    if cfg.sync_bn and state.num_processes > 1 and state.device.type == "cpu":
        raise ConfigError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on the CPU (gloo)")
    return cfg, state


def accelerator_available() -> bool:
    """A GPU (or another device Accelerate trains on) that the processes can use."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def describe_processes(accelerator: Accelerator) -> str:
    """`1 process on the CPU`, `2 processes on the CPU over gloo`, `8 processes on cuda over nccl`."""
    count = accelerator.num_processes
    device = "the CPU" if accelerator.device.type == "cpu" else accelerator.device.type
    text = f"{count} process{'es' * (count != 1)} on {device}"
    if count > 1:
        import torch.distributed as dist

        text += f" over {dist.get_backend()}"
    return text


def build_accelerator(cfg: RunConfig, plan: BatchPlan) -> Accelerator:
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.mixed_precision,
        dynamo_backend=cfg.compile.upper() if cfg.compile else None,  # prepare() wraps the model in torch.compile
        gradient_accumulation_steps=plan.micro_steps_per_process,
        log_with=[name.strip() for name in cfg.log_with.split(",")] if cfg.log_with else None,
        project_dir=str(Path(cfg.output_dir) / "trackers"),
    )
    if cfg.log_with:
        # The resolved config as hyperparameters; trackers take scalars only, so lists become text.
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()}
        hparams.update(per_device_bs=plan.per_device_bs, accumulation_steps=plan.accumulation_steps,
                       num_processes=plan.num_processes)
        accelerator.init_trackers("scaling", config=hparams)
    return accelerator


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC memory format for image models (convolutions on tensor cores prefer it); inputs follow in the
    loop (scaling/data/delivery.py)."""
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        raise ConfigError("--channels-last applies to image models (2-D convolutions); this model has none")
    return model.to(memory_format=torch.channels_last)


def build_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def announce(built: Built, workload: Workload, auto_batch: dict | None, coupled: list[str]) -> None:
    """The decomposition and LR lines every run prints before training."""
    cfg, plan, schedule, accelerator = built.cfg, built.plan, built.schedule, built.accelerator
    if auto_batch:
        built.say(f"scaling: auto micro-batch: largest that fits {auto_batch['largest_fitting']} "
                  f"({len(auto_batch['trials'])} trials), using {plan.per_device_bs}")
    built.say(f"scaling: {plan.describe()}")
    built.say(
        f"scaling: lr {cfg.lr_scaling} scaling: {cfg.base_lr:g} @ batch {cfg.base_bs} -> {schedule.peak:g} "
        f"(warmup {schedule.warmup_steps} steps, {schedule.decay} decay); {built.trainer.steps_per_epoch} "
        f"steps/epoch on {len(workload.train):,} training samples; {describe_processes(accelerator)}"
    )
    if coupled:
        built.say(f"scaling: note: {len(coupled)} batch-coupled layer(s) (BatchNorm): their statistics come from "
                  f"each micro-batch of {plan.per_device_bs}, so results depend on the decomposition "
                  f"(accumulation and emulation are not exact; docs/emulation.md)")


# ---- train ----


def write_running(built: Built) -> None:
    if built.accelerator.is_main_process:
        write_json_atomic(built.output_dir / "result.json", {"status": "running", "config": built.cfg.to_dict(),
                                                             "started_at": time.time()})


def train(built: Built) -> TrainOutcome:
    """The memory check, the probe and the training loop; an exception leaves an oom/failed result."""
    cfg, plan, trainer, accelerator = built.cfg, built.plan, built.trainer, built.accelerator
    model = trainer.unwrapped  # eager, without DDP: FLOPs are counted on a copy
    flops_per_sample = count_flops_per_sample(model, trainer.source.dataset, plan.per_device_bs, accelerator.device)
    reset_peak_memory(accelerator.device)
    try:
        if cfg.memory_cap_mb is not None and cfg.per_device_bs != "auto":
            check_fits(cfg, plan, model, trainer.source.dataset, accelerator.device)
        ceilings = measure_ceilings(cfg, trainer, built.say) if cfg.probe else None
        outcome = trainer.run()
    except Exception as err:
        write_failure(built, err)
        if is_out_of_memory(err):
            raise OutOfMemory(f"{plan.describe()} does not fit: {oom_suggestion(plan)}") from None
        raise
    finally:
        trainer.metrics.close()
    wait = data_wait_fraction(outcome.step_time)
    if ceilings is not None:
        built.extra["ceilings"] = verdict(ceilings[0], ceilings[1], outcome.throughput_samples_per_s, wait, cfg,
                                          trainer.source.fast, accelerator.device.type)
    built.extra["bottleneck"] = bottleneck(wait, built.extra.get("ceilings"), cfg, trainer.source.fast,
                                           accelerator.device.type)
    verdict_now = built.extra["bottleneck"]
    if verdict_now is not None and (verdict_now["bound"] == "input" or ceilings is not None):
        for line in verdict_now["advice"]:  # an input-bound run says what to change
            built.say(f"scaling: {line}")
    built.extra["peak_memory"] = peak_memory(accelerator.device)
    built.extra["compute"] = compute_efficiency(flops_per_sample, outcome.throughput_samples_per_s,
                                                accelerator.num_processes, accelerator.device, cfg.mixed_precision)
    if outcome.status == "interrupted":
        built.extra["checkpoint"] = str(trainer.checkpoint.directory)
        built.extra["stop_signal"] = trainer.stop_signal
    return outcome


def write_failure(built: Built, err: BaseException) -> None:
    if built.accelerator.is_main_process:
        status = "oom" if is_out_of_memory(err) else "failed"
        suggestion = oom_suggestion(built.plan) if status == "oom" else None
        try:
            write_json_atomic(built.output_dir / "result.json",
                              failure_result(built.cfg, built.plan, built.environment, err, status, suggestion))
        except OutputError:  # the disk that failed the run may refuse this too: the first error is reported
            pass


# ---- write ----


def write_result(built: Built, outcome: TrainOutcome) -> dict:
    result = build_result(built.cfg, built.plan, built.schedule, outcome, built.environment, built.extra)
    if built.accelerator.is_main_process:
        if built.cfg.save_model:
            _save_weights(built.trainer.unwrapped, built.output_dir / "model.pt")
        write_json_atomic(built.output_dir / "result.json", result)
    return result


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as RuntimeError
        raise OutputError(f"cannot write {path}: {err}") from None


def _quiet_libraries(main: bool) -> None:
    """Logs from one rank only; no progress bars from `datasets` while it builds caches."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if not main:
        import warnings

        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None, prog: str = "scaling run") -> int:
    lock = None
    try:
        die_with_parent_if_asked()  # started by a sweep: do not outlive it (docs/reliability.md)
        cfg, extras = parse_args(argv, prog)
        if extras["print_config"]:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        # Before any data: the folder is writable, ours alone (its lock), and holds nothing we would lose.
        cfg, lock = prepare_output_dir(cfg, extras["resume"])
        result = run(cfg, resume=extras["resume"])
    except ConfigError as err:
        if distributed.is_main_process():
            print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        if distributed.is_main_process():
            print(f"scaling: out of memory: {err}", file=sys.stderr)
        return 1
    finally:
        _close_process_group()
        if lock is not None:
            lock.release()
    return exit_status(result)


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
