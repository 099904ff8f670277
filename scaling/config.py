"""One typed run config. Precedence: command line > YAML file (`--config`) > defaults.

Every check a user's input can fail is made here, before any process group, dataset or model exists,
and raises `ConfigError` with one line that names the key and what to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from scaling.errors import ConfigError, shown
from scaling.userfiles import load_yaml

__all__ = ["ConfigError", "RunConfig", "load_yaml", "make_config", "parse_args", "shown", "validate"]


LR_SCALING_RULES = ("none", "linear", "sqrt", "adam-sde")
BETA2_SCALING = ("none", "half-life")
TASK_NAMES = ("auto", "classification", "next-token")
LR_DECAYS = ("constant", "cosine", "step")
OPTIMIZERS = ("sgd", "adamw")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# "auto" (mixed_precision and compile): what the launcher says (`accelerate launch --mixed_precision` /
# `--dynamo_backend`, or the `accelerate config` file it reads), else no / eager (scaling/build.py resolve_launch).
AUTO = "auto"


@dataclass
class RunConfig:
    """Every knob of one run. YAML keys are these names; flags are the same words with dashes."""

    # batch decomposition: global = per_device x num_processes x accumulation_steps
    global_bs: int = 256
    per_device_bs: int | str | None = None  # an int, "auto" (memory search), or None (chosen)
    accumulation_steps: int | None = None
    emulate_processes: int | None = None  # run the batch schedule of N processes on fewer
    max_per_device_bs: int = 512  # cap for the automatic choice when neither factor is given
    memory_cap_mb: float | None = None  # auto search: trials above this measured peak count as out of memory
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm in real multi-process GPU runs
    # "0:64,20000:128": the global batch changes during the run, each from a sample count (tokens for a language
    # model) on; the accumulation steps follow it (scaling/batching.py, BatchSchedule)
    batch_schedule: str | None = None
    batch_schedule_lr: str = "rule"  # the LR at each batch of a schedule: rule (--lr-scaling), seesaw, constant

    # learning rate: base_lr is the LR at reference batch base_bs, scaled to global_bs by lr_scaling
    base_lr: float = 0.1
    base_bs: int = 256
    lr_scaling: str = "sqrt"
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    lr_decay: str = "constant"
    lr_step_epochs: list[float] = field(default_factory=list)  # step decay milestones, in epochs
    lr_step_gamma: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9  # AdamW's betas and eps: PyTorch's defaults
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    beta2_scaling: str = "none"  # half-life: beta2' = beta2^(global_bs / base_bs) (Marek et al. 2025)

    # stopping
    target_accuracy: float | None = 0.9
    target_loss: float | None = None  # evaluation loss at or below it (nats per token for a language model)
    max_steps: int | None = None
    max_epochs: float | None = 40.0
    max_time: float | None = None  # seconds of wall time (evaluation included)
    cap_steps: int | None = None  # end as not_reached after this many steps; the LR schedule still spans the budget
    pace: list[float] = field(default_factory=list)  # milestones step, value, ...: behind one ends as not_reached
    target_levels: list[float] = field(default_factory=list)  # easier levels of the target's metric: exact steps to each
    eval_every: int | None = None  # optimizer steps; when unset, eval_every_epochs applies
    eval_every_epochs: float = 0.25
    eval_samples: int | None = None  # evaluate on the first N samples of the evaluation set (None: all of it)
    diverge_factor: float = 5.0  # a training loss above this multiple of the first one counts as divergence
    stall_evals: int = 5  # end as stalled after this many evaluations at the chance loss without progress (0: off)
    exact_target: bool = True  # replay from the start, evaluating every step: the exact first step at the target
    exact_target_max_steps: int = 20000  # at most this many replayed steps (each with an evaluation)

    # workload
    dataset: str = "mnist1d"
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    input_column: str | None = None
    label_column: str = "label"
    num_samples: int = 40000  # built-in MNIST-1D: samples generated (80% train, 20% test)
    model: str = "cnn1d"
    task: str = "auto"  # classification | next-token; auto: next-token when labels are sequences like the inputs
    text_column: str = "text"  # text files: the column tokenized for next-token prediction
    tokenizer: str = "bytes"  # bytes (UTF-8, 256 ids), or a local tokenizer.json (or a folder holding one)
    context: int = 64  # text: tokens per training sequence
    seed: int = 0

    # input pipeline (the DataLoader path; in-memory tensors take the fast path unless fast_path is false)
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    fast_path: bool = True  # index in-memory tensor datasets a whole batch at a time
    materialize: str = "auto"  # hold a map-style dataset of fixed tensors in memory: auto | true | false

    # measurement
    probe: bool = False  # measure input and compute ceilings before training (DS-Analyzer's differential method)
    probe_steps: int = 30  # optimizer steps timed for each ceiling
    profile_sync: bool = False  # synchronize the device at every phase boundary (exact GPU phases, slower)
    time_phases: bool = True  # per-step phase timing (data wait, copy, forward/backward, sync, optimizer)
    noise_scale: bool = True  # measure the gradient noise scale B_simple (McCandlish et al. 2018)
    noise_every: int | None = None  # steps between noise-scale measurements (default: 10, or 50 for the
    # half-batch fallback, which costs an extra half forward/backward per measurement)

    # machine and output
    log_with: str | None = None  # trackers Accelerate supports, comma-separated: tensorboard, wandb, mlflow, ...
    cpu: bool = False
    mixed_precision: str = AUTO  # no | bf16 | fp16; auto: the launcher's (accelerate launch, accelerate config), else no
    # torch.compile backend through Accelerate (inductor, aot_eager, ...); None: eager; auto: the launcher's
    # dynamo backend (accelerate launch --dynamo_backend, accelerate config), else eager
    compile: str | None = AUTO
    channels_last: bool = False  # image models: NHWC memory format (faster convolutions on tensor cores)
    output_dir: str | None = None  # None: a fresh runs/<date>-<time> (runs/latest links to it)
    log_every: int = 10  # optimizer steps per logging window (throughput, metrics.jsonl), at least
    log_min_s: float = 0.5  # a window spans a multiple of log_every steps lasting at least this long (0: no minimum)
    progress: bool = True
    save_model: bool = False  # write OUTPUT_DIR/model.pt (final weights) at the end
    checkpoint_every: int | None = None  # also checkpoint every N optimizer steps (always on SIGTERM/SIGINT)
    # steps at which to keep a checkpoint that `scaling branch` continues from: "10%,25%" of the step budget, or
    # step numbers (scaling/branching.py)
    branch_points: str | None = None
    # a checkpoint folder to start from (a branch point of another run): its weights, optimizer, RNG and loop state,
    # under this run's settings (scaling branch's branches)
    start_from: str | None = None
    # What to do with an output folder that holds an earlier run: an instruction, not a setting of the run,
    # so it is left out of to_dict() (result.json, checkpoints and study ids do not record it).
    overwrite: bool = field(default=False, metadata={"action": True})

    def to_dict(self) -> dict[str, Any]:
        """The run's settings (result.json's `config`, the checkpoint's check); actions such as `overwrite`
        are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not FIELDS[k].metadata.get("action")}


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)

# Fields that must be > 0 when set.
_POSITIVE = {
    "global_bs", "accumulation_steps", "emulate_processes", "max_per_device_bs", "base_lr", "base_bs",
    "max_steps", "max_epochs", "max_time", "eval_every", "eval_every_epochs", "num_samples", "log_every",
    "lr_step_gamma", "diverge_factor", "memory_cap_mb", "prefetch_factor", "probe_steps", "checkpoint_every",
    "noise_every", "eps", "target_loss", "context", "eval_samples", "cap_steps",
}
_NON_NEGATIVE = {"warmup_steps", "warmup_epochs", "momentum", "weight_decay", "num_workers", "log_min_s",
                 "exact_target_max_steps", "stall_evals"}
MATERIALIZE = ("auto", "true", "false")
BATCH_SCHEDULE_LR = ("rule", "seesaw", "constant")
_CHOICES = {
    "batch_schedule_lr": BATCH_SCHEDULE_LR,
    "materialize": MATERIALIZE,
    "lr_scaling": LR_SCALING_RULES,
    "beta2_scaling": BETA2_SCALING,
    "task": TASK_NAMES,
    "lr_decay": LR_DECAYS,
    "optimizer": OPTIMIZERS,
    "mixed_precision": MIXED_PRECISION,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _suggest(name: str, as_flag: bool = False) -> str:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    if not close:
        return ""
    return f" (did you mean {_flag(close[0])}?)" if as_flag else f" (did you mean '{close[0]}'?)"


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for t in typing.get_args(hint) if t is not type(None))
    return (hint,)


def coerce_value(key: str, value: Any, from_cli: bool) -> Any:
    """Convert one value to the field's type, or raise ConfigError naming the key.

    From the CLI everything arrives as a string; from YAML it arrives typed and a type change is refused
    (an int where a float is expected is the one widening allowed, as in nanoGPT's configurator).
    """
    hint = _HINTS[key]
    optional = type(None) in typing.get_args(hint)
    allowed = _allowed_types(hint)
    where = _flag(key) if from_cli else f"'{key}'"

    if value is None or (from_cli and optional and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where} cannot be empty; give a value of type {allowed[0].__name__}")

    for typ in allowed:
        origin = typing.get_origin(typ)
        if origin is list:
            items = value.split(",") if from_cli and isinstance(value, str) else value
            if not isinstance(items, list):
                raise ConfigError(f"{where} must be a list of numbers, got {shown(value)}")
            return [coerce_value_scalar(where, float, item, from_cli) for item in items if item != ""]
        try:
            return coerce_value_scalar(where, typ, value, from_cli)
        except ConfigError:
            if typ is allowed[-1]:
                raise
    raise AssertionError("unreachable")


def coerce_value_scalar(where: str, typ: type, value: Any, from_cli: bool) -> Any:
    name = typ.__name__
    if from_cli and isinstance(value, str):
        try:
            if typ is bool:
                lowered = value.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typ is int:
                return int(value)
            if typ is float:
                result = float(value)
                if not math.isfinite(result):
                    raise ValueError
                return result
            return value
        except ValueError:
            raise ConfigError(f"{where} expects {name}, got {shown(value)}") from None
    # Typed value from YAML.
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {shown(value)}")
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} expects {name}, got {type(value).__name__} {shown(value)}")


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any], from_cli: bool, source: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if not isinstance(key, str) or key not in FIELDS:
            name = shown(key, 40) if not isinstance(key, str) else key[:60]
            where = _flag(name) if from_cli else f"'{name}'"
            raise ConfigError(f"unknown key {where} in {source}{_suggest(name, as_flag=from_cli)}")
        merged[key] = coerce_value(key, value, from_cli)
    return merged


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are a ConfigError (one line, exit 2 at the entry) instead of exit(2)+usage."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def build_parser(prog: str = "scaling run") -> ArgumentParser:
    from scaling.flags import GROUPS

    parser = ArgumentParser(
        prog=prog,
        usage="%(prog)s [--config FILE] [--resume] [--print-config] [flags below]",
        description="Train at a global batch size, scale the LR by a named rule, stop at a target accuracy "
        "and write OUTPUT_DIR/result.json. Precedence: flags > --config YAML > defaults (docs/config.md).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file whose keys are the flag names in snake_case")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (flags > --config > defaults) and exit")
    parser.add_argument("--startup-timeout-s", metavar="SECONDS",
                        help="end the run (exit 2, one line naming what it waited for) when start-up (the "
                             "process group, loading the dataset, building the model) takes longer "
                             "(default: none; a study's runs have the launcher's timeout_s)")
    for title, fields in GROUPS:
        group = parser.add_argument_group(title)
        for name, text in fields:
            _add_flag(group, name, text)
    return parser


def _add_flag(group: argparse._ArgumentGroup, name: str, text: str) -> None:
    fld = FIELDS[name]
    default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
    shown_default = "none" if default is None else default
    text = text.replace("%", "%%")  # argparse formats help strings with %
    # A description that says what its default means gets no second default after it.
    said = "(default:" in text
    if _HINTS[name] is bool:  # `--cpu` alone means true; `--cpu false` is accepted too
        group.add_argument(_flag(name), dest=name, nargs="?", const="true", metavar="BOOL",
                           help=text if said else f"{text} (default: {str(default).lower()})")
    elif name in _CHOICES:
        group.add_argument(_flag(name), dest=name, metavar="|".join(_CHOICES[name]),
                           help=text if said else f"{text} (default: {shown_default})")
    else:
        group.add_argument(_flag(name), dest=name, metavar=name.upper(),
                           help=text if said else f"{text} (default: {shown_default})")


def parse_args(argv: list[str] | None, prog: str = "scaling run") -> tuple[RunConfig, dict[str, Any]]:
    """Merge defaults, YAML and flags into a validated RunConfig. Returns it and the extra options."""
    parser = build_parser(prog)
    parsed, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        key = flag.lstrip("-").split("=")[0].replace("-", "_")
        what = f"unknown flag {flag.split('=')[0]}" if flag.startswith("-") else f"unexpected argument {flag!r}"
        raise ConfigError(f"{what}{_suggest(key, as_flag=True) if flag.startswith('-') else ''}")
    namespace = vars(parsed)
    extras = {"resume": namespace.pop("resume", False), "print_config": namespace.pop("print_config", False),
              "startup_timeout_s": startup_timeout(namespace.pop("startup_timeout_s", None))}
    config_path = namespace.pop("config", None)
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged = apply_overrides(merged, load_yaml(config_path), from_cli=False, source=str(config_path))
    merged = apply_overrides(merged, namespace, from_cli=True, source="the command line")
    return make_config(merged), extras


def startup_timeout(value: str | None) -> float | None:
    """--startup-timeout-s: a positive number of seconds, or none. A limit on the run's start-up, not a
    setting of the training: it is not in RunConfig (result.json, checkpoints and study ids do not record
    it)."""
    if value is None or value.strip().lower() in ("none", "null"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--startup-timeout-s must be a positive number of seconds (or none), got {shown(value)}")
    return seconds


# A built-in workload's own defaults, for the keys a user does not set (flags, YAML or a study's base): the
# embedded language-modelling workload trains its GPT with AdamW to a loss (docs/lm.md has the measurements
# behind these numbers).
WORKLOAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "stories": {"model": "gpt", "optimizer": "adamw", "base_lr": 1.6e-3, "base_bs": 256, "global_bs": 32,
                "target_accuracy": None, "target_loss": 1.5, "num_samples": 16384, "max_epochs": 10.0},
}


TARGET_KEYS = ("target_accuracy", "target_loss")


def make_config(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from typed values (unknown keys and type changes refused)."""
    values = apply_overrides({}, values, from_cli=False, source=source)
    if isinstance(values.get("batch_schedule"), str) and values["batch_schedule"].startswith("from:"):
        from scaling.branching import schedule_from_record

        values["batch_schedule"] = schedule_from_record(values["batch_schedule"].removeprefix("from:"))
    if values.get("batch_schedule") is not None:  # the schedule's first batch is the run's global batch
        first = parse_batch_schedule(values["batch_schedule"])[0][1]
        if values.setdefault("global_bs", first) != first:
            raise ConfigError(f"--global-bs {values['global_bs']} and --batch-schedule {values['batch_schedule']}, "
                              f"which starts at {first}: the schedule sets the batch (drop --global-bs)")
    targeted = "target_accuracy" in values or "target_loss" in values
    for key, value in WORKLOAD_DEFAULTS.get(values.get("dataset"), {}).items():
        # A target the user sets (or unsets) replaces the workload's whole target.
        values.setdefault(key, None if targeted and key in TARGET_KEYS else value)
    if values.get("target_loss") is not None and "target_accuracy" not in values:
        values["target_accuracy"] = None  # a loss target replaces the default accuracy target
    cfg = RunConfig(**values)
    validate(cfg)
    return cfg


MAX_BATCH_PHASES = 64


def parse_batch_schedule(text: Any) -> tuple[tuple[int, int], ...]:
    """--batch-schedule "0:64,20000:128": (first sample, global batch) pairs, the first from 0, the samples
    rising and each batch other than the one before it (tokens instead of samples for a language model:
    scaling/batching.py, plan_schedule, converts them)."""
    form = ('--batch-schedule takes START:BATCH pairs, the samples (tokens for a language model) from which each '
            'global batch trains, from 0 and rising, e.g. "0:64,20000:128,60000:256" (or from:RUN_DIR/branches.json)')
    if not isinstance(text, str):
        raise ConfigError(f"{form}; got {shown(text)}")
    pairs = []
    for part in text.replace(" ", "").split(","):
        start, _, batch = part.partition(":")
        if not (start.isdigit() and batch.isdigit() and int(batch) > 0):
            raise ConfigError(f"{form}; got {shown(part)} in {shown(text)}")
        pairs.append((int(start), int(batch)))
    if pairs[0][0] != 0:
        raise ConfigError(f"{form}: the first batch starts at 0, got {pairs[0][0]:,}")
    if len(pairs) > MAX_BATCH_PHASES:
        raise ConfigError(f"--batch-schedule takes at most {MAX_BATCH_PHASES} batches; got {len(pairs)}")
    for (start_a, batch_a), (start_b, batch_b) in zip(pairs, pairs[1:], strict=False):
        if start_b <= start_a:
            raise ConfigError(f"{form}: the starts must rise, got {start_b:,} after {start_a:,}")
        if batch_b == batch_a:
            raise ConfigError(f"--batch-schedule: batch {batch_b} at {start_b:,} is the batch already training "
                              f"(from {start_a:,}); drop the pair")
    return tuple(pairs)


# Trackers with an extra of their own in pyproject.toml (`pip install 'scaling[tensorboard]'`).
TRACKER_EXTRAS = ("tensorboard", "wandb", "mlflow")


def _check_trackers(log_with: str) -> None:
    """Every tracker named must be one Accelerate knows and be installed: Accelerate itself only warns and
    logs nothing when a tracker's package is missing."""
    import accelerate.utils
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    for name in (part.strip() for part in log_with.split(",")):
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"--log-with {shown(name)} is not a tracker Accelerate knows; "
                              f"choose from {', '.join(LOGGER_TYPE_TO_CLASS)}")
        available = getattr(accelerate.utils, f"is_{name}_available", None)
        if available is not None and not available():
            install = f"pip install 'scaling[{name}]'" if name in TRACKER_EXTRAS else f"pip install {name}"
            raise ConfigError(f"--log-with {name}: the {name} package is not installed; {install}")


MAX_PACE = 100  # milestones


def _check_pace(cfg: RunConfig) -> None:
    pace = cfg.pace
    if cfg.target_accuracy is None and cfg.target_loss is None:
        raise ConfigError("--pace needs a target (--target-accuracy or --target-loss): its values are the target's "
                          "metric")
    if len(pace) % 2 or len(pace) > 2 * MAX_PACE:
        raise ConfigError(f"--pace is step,value pairs (at most {MAX_PACE}), e.g. 100,0.5,150,0.7; got "
                          f"{len(pace)} numbers")
    steps, values = pace[0::2], pace[1::2]
    if any(s != int(s) or s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"--pace steps must be whole numbers >= 1, increasing; got {shown(steps)}")
    if cfg.target_loss is None and any(not 0 <= v <= 1 for v in values):
        raise ConfigError(f"--pace values are accuracies (the target's metric) from 0 to 1; got {shown(values)}")
    if cfg.target_loss is not None and any(v < 0 for v in values):
        raise ConfigError(f"--pace values are losses (the target's metric), >= 0; got {shown(values)}")


def _check_batch_schedule(cfg: RunConfig) -> None:
    """What a schedule cannot hold: its first batch other than --global-bs (make_config sets it), the
    accumulation steps fixed (they follow the batch), or a rule that scales the betas with the batch."""
    first = parse_batch_schedule(cfg.batch_schedule)[0][1]
    if cfg.global_bs != first:
        raise ConfigError(f"--global-bs {cfg.global_bs} and --batch-schedule {cfg.batch_schedule}, which starts at "
                          f"{first}: the schedule sets the batch (drop --global-bs)")
    if cfg.accumulation_steps is not None:
        raise ConfigError(f"--accumulation-steps {cfg.accumulation_steps} with --batch-schedule: the accumulation "
                          f"steps follow the batch; give --per-device-bs instead (or leave it to be chosen)")
    if cfg.lr_scaling == "adam-sde" or cfg.beta2_scaling == "half-life":
        rule = "--lr-scaling adam-sde" if cfg.lr_scaling == "adam-sde" else "--beta2-scaling half-life"
        raise ConfigError(f"{rule} scales AdamW's betas with the batch, which --batch-schedule does not change "
                          f"during a run: use --lr-scaling sqrt or linear and no beta2 rule")


MAX_TARGET_LEVELS = 20


def _check_target_levels(cfg: RunConfig) -> None:
    """Levels of the target's metric met on the way to the target: each easier than it (an accuracy below
    --target-accuracy, a loss above --target-loss), so that the run passes them before it stops."""
    levels = cfg.target_levels
    if cfg.target_accuracy is None and cfg.target_loss is None:
        raise ConfigError("--target-levels needs a target (--target-accuracy or --target-loss): the levels are "
                          "met on the way to it, in its metric")
    if len(levels) > MAX_TARGET_LEVELS or len(set(levels)) != len(levels):
        raise ConfigError(f"--target-levels takes at most {MAX_TARGET_LEVELS} different values; got "
                          f"{shown(levels)}")
    if cfg.target_loss is None:
        wrong = [v for v in levels if not 0 < v < cfg.target_accuracy]
        if wrong:
            raise ConfigError(f"--target-levels are accuracies above 0 and below --target-accuracy "
                              f"{cfg.target_accuracy:g} (met before it); got {shown(wrong)}")
    else:
        wrong = [v for v in levels if not (v > cfg.target_loss and math.isfinite(v))]
        if wrong:
            raise ConfigError(f"--target-levels are losses above --target-loss {cfg.target_loss:g} (met before "
                              f"it); got {shown(wrong)}")


def compile_backends() -> list[str]:
    """The torch.compile backends Accelerate's dynamo settings name, lower-case (its "NO" aside)."""
    from accelerate.utils import DynamoBackend

    return [b.value.lower() for b in DynamoBackend if b.value != "NO"]


def validate(cfg: RunConfig) -> None:
    """Single-field checks; cross-field batch checks live in batching.plan_batch."""
    for key in _POSITIVE:
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{_flag(key)} must be > 0, got {value}")
    for key in _NON_NEGATIVE:
        value = getattr(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{_flag(key)} must be >= 0, got {value}")
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{_flag(key)} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    if isinstance(cfg.per_device_bs, str) and cfg.per_device_bs != "auto":
        raise ConfigError(f"--per-device-bs must be a positive integer or 'auto', got {shown(cfg.per_device_bs)}")
    if isinstance(cfg.per_device_bs, int) and cfg.per_device_bs <= 0:
        raise ConfigError(f"--per-device-bs must be > 0, got {cfg.per_device_bs}")
    if cfg.per_device_bs is not None and cfg.accumulation_steps is not None:
        raise ConfigError(
            "give at most one of --per-device-bs and --accumulation-steps; the other follows from --global-bs"
        )
    if cfg.warmup_steps is not None and cfg.warmup_epochs is not None:
        raise ConfigError("give at most one of --warmup-steps and --warmup-epochs")
    if cfg.target_accuracy is not None and not 0 < cfg.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy is a fraction in (0, 1], got {cfg.target_accuracy}")
    if cfg.target_accuracy is not None and cfg.target_loss is not None:
        raise ConfigError(f"give one target: --target-accuracy {cfg.target_accuracy:g} and --target-loss "
                          f"{cfg.target_loss:g} are both set (--target-accuracy none keeps the loss target)")
    if (cfg.max_steps is None and cfg.max_epochs is None and cfg.max_time is None and cfg.target_accuracy is None
            and cfg.target_loss is None and cfg.cap_steps is None):
        raise ConfigError("nothing would stop this run: set --target-accuracy, --target-loss or a budget "
                          "(--max-steps, --max-epochs, --max-time)")
    if cfg.lr_decay == "cosine" and cfg.max_steps is None and cfg.max_epochs is None:
        raise ConfigError("--lr-decay cosine needs a length: set --max-steps or --max-epochs")
    if cfg.lr_decay == "step" and not cfg.lr_step_epochs:
        raise ConfigError("--lr-decay step needs --lr-step-epochs, e.g. --lr-step-epochs 30,60,80")
    if any(e <= 0 for e in cfg.lr_step_epochs):
        raise ConfigError(f"--lr-step-epochs must be positive epochs, got {shown(cfg.lr_step_epochs)}")
    if cfg.branch_points is not None:
        from scaling.branching import parse_points

        parse_points(cfg.branch_points, "--branch-points")
    if cfg.start_from == "":
        raise ConfigError("--start-from names a checkpoint folder, got an empty path")
    if cfg.batch_schedule is not None:
        _check_batch_schedule(cfg)
    elif cfg.batch_schedule_lr != "rule":
        raise ConfigError(f"--batch-schedule-lr {cfg.batch_schedule_lr} sets the LR at each batch of a schedule: "
                          f"add --batch-schedule")
    if cfg.pace:
        _check_pace(cfg)
    if cfg.target_levels:
        _check_target_levels(cfg)
    if not cfg.log_min_s < float("inf"):  # inf or NaN (a negative value was refused above)
        raise ConfigError(f"--log-min-s must be a finite number of seconds, got {cfg.log_min_s}")
    if not 0 <= cfg.seed < 2**32:  # the seed seeds NumPy too, whose seeds are 32-bit
        raise ConfigError(f"--seed must be a whole number from 0 to 4,294,967,295, got {shown(cfg.seed)}")
    if cfg.momentum >= 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ConfigError(f"--{key} must be in [0, 1), got {getattr(cfg, key)}")

    if cfg.log_with is not None:
        _check_trackers(cfg.log_with)
    if cfg.compile is not None and cfg.compile.lower() != AUTO:
        backends = compile_backends()
        if cfg.compile.lower() not in backends:
            raise ConfigError(f"--compile must name a torch.compile backend ({', '.join(backends)}), none (eager) "
                              f"or auto (the launcher's), got {shown(cfg.compile)}")
    if cfg.num_workers == 0 and (cfg.prefetch_factor is not None or cfg.persistent_workers):
        raise ConfigError("--prefetch-factor and --persistent-workers need --num-workers > 0")
    if cfg.output_dir == "":
        raise ConfigError("--output-dir cannot be empty")
