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

import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from scaling import distributed  # noqa: E402
from scaling.config import ConfigError, RunConfig, parse_args  # noqa: E402


def build_result(cfg: RunConfig, plan, schedule, outcome, environment: dict, extra: dict) -> dict:
    """The result document (docs/results.md describes every field)."""
    from scaling.results import SCHEMA_VERSION

    target = outcome.target_eval
    final = outcome.history[-1] if outcome.history else None
    return {
        "schema_version": SCHEMA_VERSION,
        "status": outcome.status,
        "config": cfg.to_dict(),
        "batch": plan.to_dict(),
        "lr": {
            "rule": cfg.lr_scaling,
            "base": cfg.base_lr,
            "base_bs": cfg.base_bs,
            "scaled": schedule.peak,
            "warmup_steps": schedule.warmup_steps,
            "decay": schedule.decay,
        },
        "target": {"metric": "accuracy", "value": cfg.target_accuracy},
        "time_to_target_s": target["time_s"] if target else None,
        "train_time_to_target_s": target["train_time_s"] if target else None,
        "steps_to_target": target["step"] if target else None,
        "samples_to_target": target["samples"] if target else None,
        "epochs_to_target": target["epoch"] if target else None,
        "throughput_samples_per_s": outcome.throughput_samples_per_s,
        "steps": outcome.steps,
        "elapsed_s": outcome.elapsed_s,
        "train_elapsed_s": outcome.train_elapsed_s,
        "diverged_at_step": outcome.diverged_at_step,
        "final": {"accuracy": final["accuracy"], "loss": final["loss"]} if final else None,
        "history": outcome.history,
        "train_loss": outcome.train_loss,
        "lr_per_step": outcome.lr,
        "throughput_windows": outcome.window_rates,
        "step_time_breakdown": outcome.step_time,
        "data_wait_fraction": _data_wait_fraction(outcome),
        "per_rank_step_time_s": outcome.per_rank_step_time_s,
        "straggler_ratio": _straggler(outcome.per_rank_step_time_s),
        "noise_scale": outcome.noise_scale,
        "environment": environment,
        **extra,
    }


def summary_line(result: dict, path: Path) -> str:
    status = result["status"]
    rate = result["throughput_samples_per_s"]
    speed = f"{rate:,.0f} samples/s" if rate else "n/a samples/s"
    if status == "reached":
        return (
            f"scaling: reached {result['target']['value']:.1%} in {result['time_to_target_s']:.2f} s "
            f"(train {result['train_time_to_target_s']:.2f} s), {result['steps_to_target']} steps, "
            f"{result['samples_to_target']:,} samples, {result['epochs_to_target']:.2f} epochs; {speed} -> {path}"
        )
    final = result["final"]
    accuracy = f", final accuracy {final['accuracy']:.1%}" if final else ""
    where = f" at step {result['diverged_at_step']}" if status == "diverged" else f" after {result['steps']} steps"
    return f"scaling: {status}{where}{accuracy}; {speed} -> {path}"


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Build everything for `cfg`, train, and write the result. Returns the result document."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed

    from scaling.batching import GlobalBatchSampler, plan_batch
    from scaling.compat import cache_accelerate_import_probes
    from scaling.data import load_workload
    from scaling.hardware import compute_efficiency, peak_memory, reset_peak_memory
    from scaling.lr import build_schedule
    from scaling.models import build_model, has_batch_coupled_layers
    from scaling.probe import verdict
    from scaling.results import SCHEMA_VERSION, MetricsWriter, environment, write_json_atomic
    from scaling.train import Trainer, total_steps

    plan = plan_batch(cfg, distributed.world_size())  # every batch error, before any process group exists
    _quiet_libraries(distributed.is_main_process())
    cache_accelerate_import_probes()
    state = PartialState(cpu=cfg.cpu)  # process group and device; the Accelerator below joins it
    if cfg.sync_bn and state.num_processes > 1 and state.device.type == "cpu":
        raise ConfigError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on the CPU (gloo)")
    with state.local_main_process_first():  # rank 0 of each node builds the dataset cache
        workload = load_workload(cfg)

    set_seed(cfg.seed)  # same initial weights in every process and every decomposition
    model = build_model(cfg.model, workload.input_shape, workload.num_classes)
    coupled = has_batch_coupled_layers(model)
    if cfg.sync_bn and coupled and state.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    auto_batch = None
    if cfg.per_device_bs == "auto":
        plan, auto_batch = resolve_auto_batch(cfg, plan, model, workload.train, state.device)

    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=plan.micro_steps_per_process,
        log_with=[name.strip() for name in cfg.log_with.split(",")] if cfg.log_with else None,
        project_dir=str(output_dir / "trackers"),
    )
    say = accelerator.print
    if cfg.log_with:
        # The resolved config as hyperparameters; trackers take scalars only, so lists become text.
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()}
        hparams.update(per_device_bs=plan.per_device_bs, accumulation_steps=plan.accumulation_steps,
                       num_processes=plan.num_processes)
        accelerator.init_trackers("scaling", config=hparams)
    optimizer = _build_optimizer(cfg, model)
    model, optimizer = accelerator.prepare(model, optimizer)

    steps_per_epoch = GlobalBatchSampler(len(workload.train), plan, cfg.seed).steps_per_epoch
    schedule = build_schedule(cfg, plan.global_bs, steps_per_epoch, total_steps(cfg, steps_per_epoch))
    if auto_batch:
        say(f"scaling: auto micro-batch: largest that fits {auto_batch['largest_fitting']} "
            f"({len(auto_batch['trials'])} trials), using {plan.per_device_bs}")
    say(f"scaling: {plan.describe()}")
    say(
        f"scaling: lr {cfg.lr_scaling} scaling: {cfg.base_lr:g} @ batch {cfg.base_bs} -> {schedule.peak:g} "
        f"(warmup {schedule.warmup_steps} steps, {schedule.decay} decay); {steps_per_epoch} steps/epoch "
        f"on {len(workload.train):,} training samples; {accelerator.distributed_type.value} on {accelerator.device}"
    )
    if coupled:
        say(f"scaling: note: {len(coupled)} batch-coupled layer(s) (BatchNorm): their statistics come from each "
            f"micro-batch of {plan.per_device_bs}, so results depend on the decomposition "
            f"(accumulation and emulation are not exact; docs/emulation.md)")

    env = environment(accelerator.device, accelerator.num_processes, accelerator.distributed_type.value)
    metrics = MetricsWriter(output_dir / "metrics.jsonl", enabled=accelerator.is_main_process, append=resume)
    extra = {
        "batch_coupled_layers": coupled,
        "decomposition_exact": not coupled,
        "auto_batch": auto_batch,
        "steps_per_epoch": steps_per_epoch,
        "train_samples": len(workload.train),
        "eval_samples": len(workload.eval),
    }
    trainer = Trainer(cfg, plan, accelerator, model, optimizer, schedule, workload.train, workload.eval, metrics)
    if resume:
        trainer.load_checkpoint()
        say(f"scaling: resumed from {trainer.checkpoint_dir} at step {trainer.step}")
    if accelerator.is_main_process:
        write_json_atomic(output_dir / "result.json", {"status": "running", "config": cfg.to_dict(),
                                                        "started_at": time.time()})
    ceilings = None
    signals = stop_on_signals(trainer)
    flops_per_sample = count_flops_per_sample(accelerator.unwrap_model(model), workload.train, plan,
                                              accelerator.device)
    reset_peak_memory(accelerator.device)
    try:
        if cfg.memory_cap_mb is not None and cfg.per_device_bs != "auto":
            check_fits(cfg, plan, model, workload.train, accelerator.device)
        if cfg.probe:
            ceilings = measure_ceilings(cfg, trainer, say)
        signals = stop_on_signals(trainer).__enter__()  # held until the final result is written
        outcome = trainer.run()
    except Exception as err:
        signals.__exit__()
        if accelerator.is_main_process:
            status = "oom" if is_out_of_memory(err) else "failed"
            write_json_atomic(output_dir / "result.json", {
                "schema_version": SCHEMA_VERSION, "status": status, "config": cfg.to_dict(), "batch": plan.to_dict(),
                "error": f"{type(err).__name__}: {err}", "environment": env,
                "suggestion": oom_suggestion(plan) if status == "oom" else None,
            })
        if is_out_of_memory(err):
            raise OutOfMemory(f"{plan.describe()} does not fit: {oom_suggestion(plan)}") from None
        raise
    finally:
        metrics.close()
    if ceilings is not None:
        extra["ceilings"] = verdict(ceilings[0], ceilings[1], outcome.throughput_samples_per_s,
                                    _data_wait_fraction(outcome), cfg, trainer.source.fast, accelerator.device.type)
        for line in extra["ceilings"]["advice"]:
            say(f"scaling: {line}")
    extra["peak_memory"] = peak_memory(accelerator.device)
    extra["compute"] = compute_efficiency(flops_per_sample, outcome.throughput_samples_per_s,
                                          accelerator.num_processes, accelerator.device, cfg.mixed_precision)
    if outcome.status == "interrupted":
        extra["checkpoint"] = str(trainer.checkpoint_dir)
        extra["stop_signal"] = trainer.stop_signal
    result = build_result(cfg, plan, schedule, outcome, env, extra)
    if accelerator.is_main_process:
        if cfg.save_model:
            _save_weights(accelerator.unwrap_model(model), output_dir / "model.pt")
        write_json_atomic(output_dir / "result.json", result)
    signals.__exit__()  # a signal that came after training changed nothing: the result above is whole
    say(summary_line(result, output_dir / "result.json"))
    accelerator.end_training()
    return result


def resolve_auto_batch(cfg: RunConfig, plan, model, dataset, device) -> tuple:
    """`--per-device-bs auto`: search the largest micro-batch that fits, agree on it, re-plan."""
    import dataclasses

    from scaling.batching import choose_per_device_bs, plan_batch
    from scaling.memory import SAFETY, NothingFits, agree_on_minimum, find_max_micro_batch

    per_rank = plan.global_bs // plan.num_processes
    cap = int(cfg.memory_cap_mb * 2**20) if cfg.memory_cap_mb else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    try:
        largest, trials = find_max_micro_batch(model, dataset, device, per_rank, cap, dtype)
    except NothingFits:
        largest, trials = 0, []
    largest = agree_on_minimum(largest, device)
    if largest == 0:
        limit = f"--memory-cap-mb {cfg.memory_cap_mb:g}" if cap else "device memory"
        raise ConfigError(f"--per-device-bs auto: not even a micro-batch of 1 fits in {limit}")
    # Below a size that failed keep a margin; a size that reached the per-rank share without failing is safe.
    usable = largest if largest >= per_rank else max(1, int(largest * SAFETY))
    per_device = choose_per_device_bs(per_rank, usable)
    plan = plan_batch(dataclasses.replace(cfg, per_device_bs=per_device), plan.world_size)
    return plan, {"largest_fitting": largest, "usable": usable, "chosen": per_device,
                  "memory_cap_mb": cfg.memory_cap_mb, "trials": trials}


class OutOfMemory(Exception):
    """A configuration that does not fit; its result.json says so (status "oom")."""


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (OutOfMemory, torch.cuda.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def oom_suggestion(plan) -> str:
    if plan.per_device_bs > 1:
        smaller = plan.per_device_bs // 2
        return (f"try --per-device-bs {smaller} (x{plan.accumulation_steps * plan.per_device_bs // smaller} "
                f"accumulation steps) if it divides the batch, or --per-device-bs auto")
    return "even a micro-batch of 1 does not fit: use a smaller model or mixed precision (--mixed-precision bf16)"


def count_flops_per_sample(model, dataset, plan, device) -> float | None:
    """Counted FLOPs of one training step per sample (forward + backward, torch's FLOP counter)."""
    from scaling.hardware import count_train_flops
    from scaling.memory import sample_batch

    inputs, labels = sample_batch(dataset, min(plan.per_device_bs, 64))
    try:
        return count_train_flops(model, inputs.to(device), labels.to(device)) / len(labels)
    except (RuntimeError, NotImplementedError, TypeError):  # an op the counter cannot trace: no MFU
        return None


def check_fits(cfg: RunConfig, plan, model, dataset, device) -> None:
    """With --memory-cap-mb, one trial at the planned micro-batch must stay under the cap."""
    import copy

    from scaling.memory import trial_peak_bytes

    peak = trial_peak_bytes(copy.deepcopy(model).to(device), dataset, plan.per_device_bs, device)
    if peak > cfg.memory_cap_mb * 2**20:
        raise OutOfMemory(f"micro-batch {plan.per_device_bs} needs {peak / 2**20:.1f} MiB, over "
                          f"--memory-cap-mb {cfg.memory_cap_mb:g}")


class stop_on_signals:
    """SIGTERM (schedulers' preemption) and SIGINT (Ctrl-C) ask the trainer to checkpoint and stop at the
    next logging-window boundary instead of dying mid-step; the old handlers come back afterwards."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous = {}

    def __enter__(self):
        import signal

        def request_stop(signum, frame):
            self.trainer.stop_signal = signal.Signals(signum).name

        for name in self.SIGNALS:
            number = getattr(signal, name)
            self.previous[number] = signal.signal(number, request_stop)
        return self

    def __exit__(self, *exc):
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}


def measure_ceilings(cfg: RunConfig, trainer, say) -> tuple[float, float]:
    """Input pipeline alone, then the training step alone (docs/timing.md); printed and returned."""
    from scaling.probe import compute_ceiling, input_ceiling

    accelerator = trainer.accelerator
    input_rate = input_ceiling(trainer.source, accelerator.device, cfg.probe_steps, accelerator.num_processes)
    compute_rate = compute_ceiling(accelerator, trainer.model, trainer.optimizer, trainer.source, cfg.probe_steps)
    say(f"scaling: ceilings: input pipeline alone {input_rate:,.0f} samples/s, training step alone "
        f"{compute_rate:,.0f} samples/s ({trainer.source.describe()})")
    return input_rate, compute_rate


def _data_wait_fraction(outcome) -> float | None:
    if not outcome.step_time:
        return None
    return outcome.step_time["phases"]["data_wait"]["fraction"]


def _straggler(per_rank: list[float]) -> float | None:
    """Slowest rank's step time over the median rank's (1.0 = balanced)."""
    import statistics

    if not per_rank or statistics.median(per_rank) <= 0:
        return None
    return max(per_rank) / statistics.median(per_rank)


def _save_weights(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _build_optimizer(cfg: RunConfig, model):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _quiet_libraries(main: bool) -> None:
    """Logs from one rank only; no progress bars from `datasets` while it builds caches."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if not main:
        import warnings

        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, extras = parse_args(argv)
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
    return exit_status(result)


def _close_process_group() -> None:
    """Destroy the gloo/NCCL process group before the interpreter exits: left to interpreter shutdown, its
    threads can abort the process ("terminate called without an active exception", SIGABRT), which
    torchrun then reports as a failed run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while a peer still uses them
        dist.destroy_process_group()


def exit_status(result: dict) -> int:
    """0 for a result (a missed target or a divergence is a finding, not an error); 128 + signal number
    for an interrupted run, as a shell reports a process stopped by that signal."""
    if result["status"] == "interrupted":
        import signal

        return 128 + getattr(signal, result.get("stop_signal") or "SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
