"""Build one run: processes, data, model, batch plan, optimizer, LR schedule, the run record and its trainer.

Every process builds the same thing from the same (settled) configuration: scaling/run.py settles it first.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from scaling import distributed
from scaling.batching import BatchPlan, GlobalBatchSampler, batch_unit_config, plan_schedule, plan_unit
from scaling.config import AUTO, MIXED_PRECISION, ConfigError, RunConfig, compile_backends, shown
from scaling.data import Workload, load_workload
from scaling.data.delivery import Read, materialize
from scaling.devices.comm import model_gradient_bytes
from scaling.files import MetricsWriter
from scaling.lr import LRSchedule, build_schedule, scaled_hyperparameters
from scaling.memory import resolve_auto_batch
from scaling.models import build_model, check_model_name, has_batch_coupled_layers
from scaling.provenance import environment
from scaling.record import ModelFacts, RunFacts, RunRecord
from scaling.task import Task
from scaling.train.loop import Trainer, total_steps
from scaling.train.state import TrainingState


@dataclass
class Built:
    """Everything one run needs, built and ready to train."""

    cfg: RunConfig
    plan: BatchPlan
    accelerator: Accelerator
    trainer: Trainer
    schedule: LRSchedule
    task: Task

    @property
    def record(self) -> RunRecord:
        return self.trainer.record

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def say(self, line: str) -> None:
        self.accelerator.print(line)  # the main process only


def build(cfg: RunConfig, resume: bool = False) -> Built:
    """Processes, data, model, batch plan, optimizer, LR schedule, record and trainer; with `resume`,
    restored from the run's checkpoint."""
    # Every batch error before any process group exists; with --batch-schedule, the plan of the per-device
    # batch all its batches share (re-planned for each batch once the data says what a token start is).
    plan = plan_unit(cfg, distributed.world_size())
    scaled_hyperparameters(cfg, cfg.global_bs)  # and every refusal of the LR, beta and eps rules
    cfg, launch = resolve_launch(cfg)  # the launcher's precision and dynamo backend where the tool's flags are unset
    requested_cpu = cfg.cpu
    cfg, state = start_processes(cfg)
    check_model_name(cfg.model)  # a typo must not wait for the dataset to be generated
    with state.local_main_process_first():  # rank 0 of each node builds the dataset cache
        workload = load_workload(cfg)
    task = workload.task
    materialized, notes, train_read = materialize_workload(workload, cfg.materialize)
    notes = workload.notes + notes
    set_seed(cfg.seed)  # same initial weights in every process and every decomposition
    model = build_model(cfg.model, workload.input_shape, workload.num_classes, task)
    model_facts = describe_model(cfg.model, model, workload, task)
    coupled = has_batch_coupled_layers(model)
    if cfg.sync_bn and coupled and state.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    auto_batch = None
    if cfg.per_device_bs == "auto":
        plan, auto_batch = resolve_auto_batch(batch_unit_config(cfg), plan, model, workload.train, state.device, task)
    batches = plan_schedule(cfg, plan, task.units_per_sample(tuple(workload.input_shape)) if task.token_weighted else 1)
    plan = batches.phases[0].plan
    if cfg.channels_last:
        model = to_channels_last(model)
    accelerator = build_accelerator(cfg, plan)
    launch["mixed_precision"]["value"] = accelerator.mixed_precision  # what Accelerate trains with
    model, optimizer = accelerator.prepare(model, build_optimizer(cfg, model))
    sampler = GlobalBatchSampler(len(workload.train), batches, cfg.seed)
    schedule = build_schedule(cfg, plan.global_bs, sampler.steps_per_epoch, total_steps(cfg, sampler),
                              [(phase.first_step, phase.plan.global_bs) for phase in batches.phases])
    facts = RunFacts(
        config=cfg, plan=plan, batches=batches, lr=lr_summary(cfg, schedule), steps_per_epoch=sampler.steps_per_epoch,
        environment={**environment(accelerator.device, accelerator.num_processes, accelerator.distributed_type.value),
                     "launch": launch},
        train_samples=len(workload.train), eval_samples=len(workload.eval), model=model_facts,
        batch_coupled_layers=coupled, auto_batch=auto_batch, materialized=materialized,
        train_read=train_read and {"read_s": train_read.seconds, "samples_read": train_read.samples})
    metrics = MetricsWriter(Path(cfg.output_dir) / "metrics.jsonl", enabled=accelerator.is_main_process,
                            append=resume)
    trainer = Trainer(RunRecord(facts), sampler, TrainingState(accelerator, model, optimizer), schedule,
                      workload.train, workload.eval, metrics, task)
    built = Built(cfg, plan, accelerator, trainer, schedule, task)
    announce(built, len(workload.train), auto_batch, coupled)
    for line in launch_notes(launch):
        built.say(f"scaling: {line}")
    for note in notes:
        built.say(f"scaling: {note}")
    if cfg.cpu and not requested_cpu:
        built.say(f"scaling: note: no GPU here: the {plan.world_size} launched processes train on the CPU over "
                  f"gloo (as with --cpu)")
    if cfg.start_from is not None and not resume:  # a resume continues from its own checkpoint instead
        trainer.start_from_point(Path(cfg.start_from))
        built.say(f"scaling: started from {cfg.start_from} at step {trainer.step}")
    if resume:
        trainer.load_checkpoint()
        built.say(f"scaling: resumed from {trainer.checkpoint.directory} at step {trainer.step}")
    return built


def describe_model(name: str, model: torch.nn.Module, workload: Workload, task: Task) -> ModelFacts:
    """What the report and `scaling predict` need to know of the model, recorded so that they never rebuild
    it: trainable parameters, their gradient bytes in backward order (DDP's buckets follow them), the input
    and the classes."""
    dtype = str(getattr(workload.input_shape, "dtype", torch.float32)).removeprefix("torch.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    return ModelFacts(name=name, task=task.name, parameters=sum(p.numel() for p in trainable),
                      gradient_bytes=model_gradient_bytes(model), input_shape=list(workload.input_shape),
                      input_dtype=dtype, num_classes=workload.num_classes)


def lr_summary(cfg: RunConfig, schedule: LRSchedule) -> dict:
    """The result's `lr` record (results.LRRecord): the rule, the schedule, and the hyperparameters the
    optimizer was built with (betas and eps null with SGD, which has none)."""
    used = scaled_hyperparameters(cfg, cfg.global_bs)
    adam = cfg.optimizer == "adamw"
    return {"rule": cfg.lr_scaling, "base": cfg.base_lr, "base_bs": cfg.base_bs, "scaled": schedule.peak,
            "warmup_steps": schedule.warmup_steps, "decay": schedule.decay, "beta1": used.beta1 if adam else None,
            "beta2": used.beta2 if adam else None, "eps": used.eps if adam else None,
            "weight_decay": used.weight_decay}


def materialize_workload(workload: Workload, mode: str) -> tuple[list[str], list[str], Read | None]:
    """--materialize: hold map-style splits of fixed tensors in memory (scaling/data/delivery.py). Returns
    the splits materialized, the lines to print and the training set's timed read (None when it was not
    read into memory): the user's pipeline's per-sample cost."""
    done, notes, train_read = [], [], None
    for split in ("train", "eval"):
        before = getattr(workload, split)
        after, note, read = materialize(before, mode, "training" if split == "train" else "evaluation")
        setattr(workload, split, after)
        done += [split] if after is not before else []
        notes += [note] if note else []
        train_read = read if split == "train" else train_read
    return done, notes, train_read


# What `accelerate launch` hands the processes it starts, from its flags or the `accelerate config` file it
# reads (accelerate/utils/launch.py, prepare_simple_launcher_cmd_env and prepare_multi_gpu_env): Accelerate
# itself falls back to these only when the script passes nothing, so the tool reads them and passes what it
# resolved. torchrun and a plain `python` set none of them.
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"
LAUNCHER_DYNAMO = "ACCELERATE_DYNAMO_BACKEND"
LAUNCHER_CPU = "ACCELERATE_USE_CPU"
LAUNCHER_VARIABLES = (LAUNCHER_PRECISION, LAUNCHER_DYNAMO, LAUNCHER_CPU)  # accelerate launch sets all three
# Launches the tool cannot honour: it trains with DDP, one whole copy of the model per process (the batch
# decomposition, the timing, the noise scale and the checkpoints assume it). (variable, what, launcher flag)
UNSUPPORTED_LAUNCHES = (
    ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed", "--use_deepspeed"),
    ("ACCELERATE_USE_FSDP", "FSDP", "--use_fsdp"),
    ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM", "--use_megatron_lm"),
    ("ACCELERATE_USE_PARALLELISM_CONFIG", "a parallelism config", "--use_parallelism_config"),
)


def _env_flag(name: str) -> bool:
    """An Accelerate flag variable (its str_to_bool: y, yes, t, true, on, 1), false when unset or unreadable."""
    return os.environ.get(name, "").strip().lower() in ("y", "yes", "t", "true", "on", "1")


def refuse_unsupported_launch() -> None:
    """A DeepSpeed, FSDP, Megatron-LM or parallelism-config launch, refused in one line: trained as plain DDP
    it would measure something else than it says."""
    for name, what, flag in UNSUPPORTED_LAUNCHES:
        if _env_flag(name):
            raise ConfigError(
                f"accelerate launch asked for {what} ({name}={os.environ[name]}), which this tool does not "
                f"honour: it trains with DDP only. Launch without {flag}, with an accelerate config whose "
                f"distributed_type is MULTI_GPU or NO (e.g. accelerate launch --config_file launch/multi_gpu.yaml "
                f"scaling/run.py ...), or with torchrun")


def resolve_launch(cfg: RunConfig) -> tuple[RunConfig, dict]:
    """The settings the launcher provides, where the tool's own are unset: mixed precision and the dynamo
    backend at `auto` take the launcher's (else no, and eager); `accelerate launch --cpu` sets --cpu. Returns
    the resolved config (what runs) and the result's `environment.launch` record: for mixed_precision, compile
    and num_processes, the value that ran, its source (flag: the tool's flag or config key; launcher: accelerate
    launch or accelerate config; default) and what the launcher asked (null: nothing). Refuses what the tool
    cannot honour: a DeepSpeed or FSDP launch, a precision or backend it does not know."""
    refuse_unsupported_launch()
    changes: dict = {}
    asked = os.environ.get(LAUNCHER_PRECISION, "").strip().lower() or None
    if cfg.mixed_precision != AUTO:
        precision = {"value": cfg.mixed_precision, "source": "flag", "launcher": asked}
    elif asked is None:
        precision = {"value": "no", "source": "default", "launcher": None}
    elif asked in MIXED_PRECISION and asked != AUTO:
        precision = {"value": asked, "source": "launcher", "launcher": asked}
    else:
        raise ConfigError(f"the launcher asks for mixed precision {shown(asked)} ({LAUNCHER_PRECISION}; accelerate "
                          f"launch --mixed_precision or accelerate config), which this tool does not train with: "
                          f"pass --mixed-precision no, bf16 or fp16")
    changes["mixed_precision"] = precision["value"]
    backend = os.environ.get(LAUNCHER_DYNAMO, "").strip().lower() or None
    if cfg.compile is None or cfg.compile.lower() != AUTO:
        compiled = {"value": cfg.compile, "source": "flag", "launcher": backend}
    elif backend is None:
        compiled = {"value": None, "source": "default", "launcher": None}
    elif backend == "no" or backend in compile_backends():
        compiled = {"value": None if backend == "no" else backend, "source": "launcher", "launcher": backend}
    else:
        raise ConfigError(f"the launcher asks for the dynamo backend {shown(backend)} ({LAUNCHER_DYNAMO}; accelerate "
                          f"launch --dynamo_backend or accelerate config), which is not a torch.compile backend "
                          f"Accelerate knows: pass --compile none, or a backend ({', '.join(compile_backends())})")
    changes["compile"] = compiled["value"]
    if not cfg.cpu and _env_flag(LAUNCHER_CPU):  # accelerate launch --cpu (Accelerate would use the CPU anyway)
        changes["cpu"] = True
    # WORLD_SIZE: torchrun, or accelerate launch of several processes; accelerate launch of one process sets
    # only its own variables.
    launched = "WORLD_SIZE" in os.environ or any(name in os.environ for name in LAUNCHER_VARIABLES)
    processes = {"value": distributed.world_size(), "source": "launcher" if launched else "default",
                 "launcher": distributed.world_size() if launched else None}
    launch = {"mixed_precision": precision, "compile": compiled, "num_processes": processes}
    return dataclasses.replace(cfg, **changes), launch


def launch_notes(launch: dict) -> list[str]:
    """What a run says of the launcher's settings: one it took (bf16 from `accelerate launch`), or one the
    tool's flag overrode. Nothing when the launcher asked for nothing besides its defaults (no, and eager:
    `accelerate launch` passes them when not told otherwise)."""
    notes = []
    for key, flag, what, launcher_flag in (("mixed_precision", "--mixed-precision", "mixed precision", "--mixed_precision"),
                                           ("compile", "--compile", "torch.compile backend", "--dynamo_backend")):
        entry = launch[key]
        value, asked = entry["value"] or "no", entry["launcher"]
        if entry["source"] == "launcher" and value != "no":
            notes.append(f"{what} {value} from the launcher (accelerate launch {launcher_flag} or accelerate config); "
                         f"{flag} overrides it")
        elif entry["source"] == "flag" and asked not in (None, "no") and asked != value:
            notes.append(f"note: {flag} {'none' if entry['value'] is None else value} overrides the launcher's "
                         f"{what} {asked}")
    return notes


def start_processes(cfg: RunConfig) -> tuple[RunConfig, PartialState]:
    """The process group and device; the Accelerator built later joins it (calling this again returns the
    same). Several launched processes on a machine without an accelerator train on the CPU over gloo (as
    with --cpu): Accelerate would otherwise start each of them alone, training on its share of every batch
    without synchronizing. The launcher's settings are resolved first (resolve_launch): what the tool cannot
    honour is refused before any process group exists."""
    cfg, _ = resolve_launch(cfg)
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
    """The Accelerator, given the resolved precision and dynamo backend (resolve_launch) explicitly, so that
    what the record says is what runs."""
    if cfg.mixed_precision == AUTO or (cfg.compile or "").lower() == AUTO:
        raise AssertionError("build_accelerator needs a resolved config (resolve_launch)")
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.mixed_precision,
        dynamo_backend=cfg.compile.upper() if cfg.compile else "NO",  # prepare() wraps the model in torch.compile
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
    """SGD, or AdamW with the betas and eps the rules give at --global-bs (scaling.lr.scaled_hyperparameters).
    The LR given here is a placeholder: the loop sets the schedule's LR before every step."""
    used = scaled_hyperparameters(cfg, cfg.global_bs)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, betas=(used.beta1, used.beta2), eps=used.eps,
                                 weight_decay=used.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=used.weight_decay)


def announce(built: Built, train_samples: int, auto_batch: dict | None, coupled: list[str]) -> None:
    """The decomposition and LR lines every run prints before training."""
    cfg, plan, schedule, accelerator = built.cfg, built.plan, built.schedule, built.accelerator
    if auto_batch:
        built.say(f"scaling: auto micro-batch: largest that fits {auto_batch['largest_fitting']} "
                  f"({len(auto_batch['trials'])} trials), using {plan.per_device_bs}")
    built.say(f"scaling: {plan.describe()}")
    batches = built.record.facts.schedule
    if batches.scheduled:
        built.say(f"scaling: batch schedule ({cfg.batch_schedule_lr} LR at each batch): " + "; ".join(
            f"from step {p.first_step:,} ({p.samples_before:,} samples) batch {p.plan.global_bs} = "
            f"{p.plan.per_device_bs} x {p.plan.num_processes} x {p.plan.accumulation_steps}, lr "
            f"{schedule.peak * (schedule.batch_factors[i - 1][1] if i else 1.0):g}"
            for i, p in enumerate(batches.phases)))
        if cfg.noise_scale:
            built.say("scaling: note: the noise scale is not measured under a batch schedule (its estimators take "
                      "one batch); a fixed-batch run measures it (scaling branch's reference run)")
    built.say(
        f"scaling: lr {cfg.lr_scaling} scaling: {cfg.base_lr:g} @ batch {cfg.base_bs} -> {schedule.peak:g} "
        f"(warmup {schedule.warmup_steps} steps, {schedule.decay} decay){_changed_settings(cfg)}; "
        f"{built.trainer.steps_per_epoch} steps/epoch on {train_samples:,} training samples; "
        f"{describe_processes(accelerator)}"
    )
    if cfg.optimizer == "adamw" and cfg.lr_scaling == "linear" and cfg.global_bs != cfg.base_bs:
        built.say(f"scaling: warning: --lr-scaling linear is SGD's rule (Goyal et al. 2017); with AdamW it moved the "
                  f"LR {schedule.peak / cfg.base_lr:g}x, where Adam's rule is the square root (Malladi et al. 2022): "
                  f"--lr-scaling sqrt")
    last_step = built.trainer.last_step
    if last_step is not None and schedule.warmup_steps > last_step:
        built.say(f"scaling: warning: the warmup ({schedule.warmup_steps} steps) is longer than the run "
                  f"({last_step} steps by --max-steps/--max-epochs): the LR never reaches {schedule.peak:g}")
    if coupled:
        built.say(f"scaling: note: {len(coupled)} batch-coupled layer(s) (BatchNorm): their statistics come from "
                  f"each micro-batch of {plan.per_device_bs}, so results depend on the decomposition "
                  f"(accumulation and emulation are not exact; docs/emulation.md)")


def _changed_settings(cfg: RunConfig) -> str:
    """`, beta1 0.9 -> 0.6, eps 1e-08 -> 5e-09`: AdamW's settings a rule changed (nothing when none did)."""
    changed = scaled_hyperparameters(cfg, cfg.global_bs).differs_from(cfg)
    return "".join(f", {name} {before:.6g} -> {after:.6g}" for name, (before, after) in changed.items())


def _quiet_libraries(main: bool) -> None:
    """Logs from one rank only; no progress bars from `datasets` while it builds caches."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if not main:
        import warnings

        warnings.filterwarnings("ignore")
