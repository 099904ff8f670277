"""The result of a run: its schema, the summary line, and the loader every reader goes through.

Schema: `Result` below (with the records it nests), described field by field in docs/results.md. The run
record (scaling/record.py) writes it; the report, `scaling predict` and the sweep read it through
`load_result` / `read_result`, which check every field against the schema, so a reader can index a result
without guarding each access, and a damaged file is named in one line instead of crashing its reader. A
result is complete when it loads and its status is final. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypedDict

from scaling.config import ConfigError, RunConfig, shown

# A run with one of these statuses is finished; "interrupted" is not (it resumes from its checkpoint).
FINAL_STATUSES = ("reached", "not_reached", "completed", "diverged", "stalled", "failed", "oom")
FAILURE_STATUSES = ("failed", "oom")
STATUSES = (*FINAL_STATUSES, "running", "interrupted")
SCHEMA_VERSION = 2  # 2: `model` (parameters, gradient layout, input shape) added


class BatchRecord(TypedDict):
    """The batch decomposition (scaling.batching.BatchPlan.to_dict); `emulated` and `micro_steps_per_process`
    follow from the others (the loader fills them when absent)."""

    world_size: int
    num_processes: int
    accumulation_steps: int
    per_device: int
    global_: int  # "global" in the file (a keyword in Python): see _FIELD_NAMES
    emulated: bool
    micro_steps_per_process: int


class LRRecord(TypedDict):
    """The LR rule, the schedule, and the settings the optimizer was built with (scaling.lr.scaled_hyperparameters):
    `scaled` is the peak LR; beta1, beta2 and eps as AdamW got them (null with SGD). Results written before
    issue 30 lack the last four (LR_ADDED_KEYS): a reader takes them with .get (None: not recorded)."""

    rule: str
    base: float
    base_bs: int
    scaled: float
    warmup_steps: int
    decay: str
    beta1: float | None
    beta2: float | None
    eps: float | None
    weight_decay: float | None


LR_ADDED_KEYS = frozenset({"beta1", "beta2", "eps", "weight_decay"})  # absent from older results' `lr`


class TargetRecord(TypedDict):
    metric: str  # accuracy | loss
    value: float | None
    direction: str  # max (at or above the value) | min (at or below); absent before the loss targets: max


class LevelRecord(TypedDict):
    """One of --target-levels (an easier value of the target's metric) and the first step at it, found as
    the target's is (`search` is a target_search record); nulls where the run never met it."""

    value: float
    steps_to_target: int | None
    samples_to_target: int | None
    epochs_to_target: float | None
    time_to_target_s: float | None
    train_time_to_target_s: float | None
    steps_to_target_resolution: int | None
    search: dict[str, Any] | None


class TokensRecord(TypedDict):
    """A next-token run in tokens (token positions: sequences x context)."""

    per_sequence: int
    per_step: int
    to_target: int | None
    trained: int
    throughput_per_s: float | None
    noise_scale: float | None
    noise_scale_at_target: float | None


class EvaluationRecord(TypedDict):
    """One evaluation (an entry of `history`)."""

    step: int
    samples: int
    epoch: float
    time_s: float
    train_time_s: float
    accuracy: float
    loss: float | None


class FinalRecord(TypedDict):
    accuracy: float
    loss: float | None


class ProgressRecord(TypedDict):
    step: int
    accuracy: float
    loss: float | None


class StallRecord(TypedDict):
    """Why a run was ended as stalled (scaling.train.evaluation.StallRule): the evaluations at the chance loss
    since its last progress."""

    evaluations: int
    steps: list[int]
    accuracies: list[float]
    losses: list[float | None]
    chance_loss: float
    tolerance: float
    min_steps: int
    last_progress: ProgressRecord
    warmup_steps: int


class ModelRecord(TypedDict):
    """The model as the run built it (scaling.record.ModelFacts)."""

    name: str
    task: str
    parameters: int
    gradient_bytes: list[int]
    input_shape: list[int]
    input_dtype: str
    num_classes: int


class PipelineRecord(TypedDict):
    """The user's own loader of the training set, judged apart from the run (scaling.data.pipeline):
    with `materialized`, from its timed read into memory; else the run's own verdict."""

    materialized: bool
    read_s: float | None
    samples_read: int | None
    per_sample_s: float | None
    workers: int | None  # loader processes per training process: max(1, num_workers)
    processes: int | None  # training processes, each with its own loader
    input_ceiling_samples_per_s: float | None
    compute_ceiling_samples_per_s: float | None
    compute_from: str | None  # "probe" | "run"
    verdict: str | None  # "input-bound" | "compute-bound"


class PhaseRecord(TypedDict):
    seconds: float | None  # None: not separable (grad_sync of a run without no-sync micro-steps)
    fraction: float | None


class StepTimeRecord(TypedDict):
    """Where the step time went (scaling.train.clock), summed over the logging windows after the first."""

    phases: dict[str, PhaseRecord]  # data_wait, h2d, forward_backward, grad_sync, optimizer, other
    measured_s: float
    covered_fraction: float
    windows: int


class BatchPhaseRecord(TypedDict):
    """One batch of a --batch-schedule run (scaling/batching.py, BatchSchedule)."""

    first_step: int  # the optimizer step it starts at
    first_sample: int  # samples trained before it
    asked: int  # the samples the schedule gave for it (a start in tokens, converted to sequences rounding up)
    global_: int  # key "global"
    accumulation_steps: int
    micro_steps_per_process: int


class Result(TypedDict, total=False):
    """result.json of a finished or interrupted run (docs/results.md). The keys marked "only ..." appear in
    some results only; every other key is always present."""

    schema_version: int
    status: str
    config: dict[str, Any]
    batch: BatchRecord  # with a batch schedule, its first batch's
    batch_schedule: list[BatchPhaseRecord] | None  # only with --batch-schedule (absent before them)
    lr: LRRecord
    target: TargetRecord
    tokens: TokensRecord | None  # only for a next-token task (absent before them)
    time_to_target_s: float | None
    train_time_to_target_s: float | None
    steps_to_target: int | None
    samples_to_target: int | None
    epochs_to_target: float | None
    steps_to_target_resolution: int | None
    first_eval_at_target: EvaluationRecord | None
    target_search: dict[str, Any] | None
    target_levels: list[LevelRecord]  # one per --target-levels value, easiest first (absent before them: [])
    throughput_samples_per_s: float | None
    throughput_median_window_samples_per_s: float | None
    train_time_per_step_s: float | None
    steps: int
    elapsed_s: float
    train_elapsed_s: float
    diverged_at_step: int | None
    stalled_at_step: int | None
    stall: StallRecord | None
    final: FinalRecord | None
    history: list[EvaluationRecord]
    train_loss: list[float | None]
    lr_per_step: list[float]
    throughput_windows: list[float]
    step_time_breakdown: StepTimeRecord | None
    data_wait_fraction: float | None
    per_rank_step_time_s: list[float]
    straggler_ratio: float | None
    noise_scale: dict[str, Any] | None
    environment: dict[str, Any]
    model: ModelRecord | None  # since schema 2 (null when loaded from an earlier one)
    batch_coupled_layers: list[str]
    decomposition_exact: bool
    auto_batch: dict[str, Any] | None
    steps_per_epoch: int
    train_samples: int
    eval_samples: int
    peak_memory: dict[str, int | None]
    compute: dict[str, Any]
    compile_s: float | None
    materialized: list[str]
    bottleneck: dict[str, Any] | None
    pipeline: PipelineRecord | None  # null in results written before it
    ceilings: dict[str, Any]  # only with --probe
    checkpoint: str  # only when interrupted
    stop_signal: str  # only when interrupted


OPTIONAL_FIELDS = frozenset({"ceilings", "checkpoint", "stop_signal"})
# What every reader relies on: a finished or interrupted result without one of these is not one of ours. Any
# other field a file lacks (one written by an earlier version, or by hand) loads as null, or as an empty list
# for a list; every field present must have its type.
CORE_FIELDS = frozenset({"schema_version", "status", "config", "batch", "lr", "target", "time_to_target_s",
                         "train_time_to_target_s", "steps_to_target", "steps", "elapsed_s", "train_elapsed_s",
                         "history", "environment"})


class FailureResult(TypedDict):
    """result.json of a run that ended in an exception (status "oom" or "failed")."""

    schema_version: int
    status: str
    config: dict[str, Any]
    batch: BatchRecord
    error: str
    environment: dict[str, Any]
    suggestion: str | None


class RunningResult(TypedDict):
    """result.json while a run trains (written once everything is built)."""

    status: str
    config: dict[str, Any]
    started_at: float


def straggler_ratio(per_rank: list[float]) -> float | None:
    """Slowest rank's step time over the median rank's (1.0 = balanced)."""
    import statistics

    if not per_rank or statistics.median(per_rank) <= 0:
        return None
    return max(per_rank) / statistics.median(per_rank)


def summary_line(result: Result, path: Path) -> str:
    """The one line a run prints at the end."""
    status = result["status"]
    rate = result["throughput_samples_per_s"]
    tokens = result.get("tokens")
    unit = "sequences" if tokens else "samples"
    speed = f"{rate:,.0f} {unit}/s" if rate else f"n/a {unit}/s"
    if tokens and tokens["throughput_per_s"]:
        speed += f" ({tokens['throughput_per_s']:,.0f} tokens/s)"
    if status == "reached":
        to_target = f"{result['samples_to_target']:,} {unit}"
        if tokens and tokens["to_target"] is not None:
            to_target += f" ({tokens['to_target']:,} tokens)"
        return (
            f"scaling: reached {target_text(result['target'])} in {result['time_to_target_s']:.2f} s "
            f"(train {result['train_time_to_target_s']:.2f} s), {result['steps_to_target']} steps, "
            f"{to_target}, {result['epochs_to_target']:.2f} epochs; {speed}{_bound_text(result)} -> {path}"
        )
    final = result["final"]
    quality = ""
    if final and result["target"]["metric"] == "loss":
        quality = f", final loss {loss_text(final['loss'])}"
    elif final:
        quality = f", final accuracy {final['accuracy']:.1%}"
    where = f" at step {result['diverged_at_step']}" if status == "diverged" else f" after {result['steps']} steps"
    return f"scaling: {status}{where}{quality}; {speed}{_bound_text(result)} -> {path}"


def target_text(target: TargetRecord) -> str:
    """`90.0% accuracy`, `loss 1.60 (perplexity 4.95)`."""
    if target["metric"] == "loss":
        return f"loss {loss_text(target['value'])}"
    return f"{target['value']:.1%} accuracy"


def loss_text(loss: float | None) -> str:
    """`1.60 (perplexity 4.95)`: a loss in nats with its perplexity, exp(loss)."""
    if loss is None:
        return "n/a"
    return f"{loss:.3g} (perplexity {math.exp(loss):.3g})" if loss < 700 else f"{loss:.3g}"


def _bound_text(result: Result) -> str:
    """`, compute-bound (data wait 3%)`: the run's bottleneck verdict in the summary line; for a training
    set read into memory, also what the user's own loader would do (scaling/data/pipeline.py)."""
    verdict, pipeline = result.get("bottleneck"), result.get("pipeline")
    if pipeline and pipeline["materialized"]:
        from scaling.data.pipeline import summary_text  # scaling.data imports torch: only a run prints this

        return summary_text(pipeline, verdict)
    if not verdict:
        return ""
    wait = verdict.get("data_wait_fraction")
    detail = f" ({wait:.0%} waiting for data)" if wait is not None else ""
    return f", {verdict['bound']}-bound{detail}"


def exit_status(result: Result) -> int:
    """0 for a result (a missed target or a divergence is a finding, not an error); 128 + signal number
    for an interrupted run, as a shell reports a process stopped by that signal."""
    if result["status"] == "interrupted":
        import signal

        return 128 + getattr(signal, result.get("stop_signal") or "SIGTERM")
    return 0


MAX_RESULT_BYTES = 256 << 20


class ResultError(ConfigError):
    """A result.json that cannot be used: one line naming the file and what is wrong."""


def load_result(path: str | Path) -> Result:
    """The result at `path`, every field checked against the schema; a field an older schema version lacks
    is null. Raises ResultError naming the file when it is missing, torn, not JSON, not a result of this
    tool, or holds a field of the wrong type (a NaN, a batch that is a number, ...)."""
    path = Path(path)
    data = _parse(path)
    problem = check_result(data)
    if problem:
        raise ResultError(f"{path} {problem}")
    return data


def read_result_checked(path: Path) -> tuple[Result | None, str | None]:
    """(result, None), or (None, what is wrong with the file) for a result.json that cannot be used."""
    try:
        return load_result(path), None
    except ResultError as err:
        return None, str(err).removeprefix(f"{path} ")


def ended_without_result(returncode: int | None, path: Path) -> str | None:
    """The line for a run whose process ended without writing its result into `path` (`os._exit(0)`, a kill
    of its launcher), or None when `path` holds a result the run ended with (any status but running)."""
    if not path.is_file():
        missing = "no result.json"
    else:
        result, problem = read_result_checked(path)
        if result is not None and result["status"] != "running":
            return None
        missing = "its result.json still says running" if result is not None else f"its result.json {problem}"
    return f"the run ended with exit status {returncode} without writing its result ({missing})"


def read_result(path: str | Path, finished_only: bool = True) -> Result | None:
    """The result at `path` if it loads and is finished (any status with finished_only=False), else None.

    A torn or damaged file, a run still "running" (or killed while running) and an "interrupted" run all
    count as unfinished: a sweep runs (or resumes) them again.
    """
    result, _ = read_result_checked(Path(path))
    if result is None or (finished_only and result["status"] not in FINAL_STATUSES):
        return None
    return result


def _parse(path: Path) -> Any:
    try:
        if path.is_dir():
            raise ResultError(f"{path} is a folder, not a file")
        size = path.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise ResultError(f"{path} is {size:,} bytes, not a result this tool wrote")
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except ResultError:
        raise
    except UnicodeDecodeError:
        raise ResultError(f"{path} is not UTF-8 text") from None
    except _NonFinite as err:
        raise ResultError(f"{path} holds {err} (this tool writes null for a non-finite number)") from None
    except ValueError:
        raise ResultError(f"{path} is not valid JSON (torn or damaged)") from None
    except FileNotFoundError:
        raise ResultError(f"{path} does not exist") from None
    except OSError as err:
        raise ResultError(f"{path} cannot be read ({err.strerror or err})") from None


class _NonFinite(Exception):
    pass


def _no_constant(name: str) -> None:
    raise _NonFinite(name)  # NaN, Infinity, -Infinity: JSON has none; a file holding one is not ours


def check_result(data: Any) -> str | None:
    """What is wrong with a parsed result.json (None when it matches the schema of its status)."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        return "is not a result of this tool (no status)"
    status = data["status"]
    if status not in STATUSES:
        return f"has an unknown status {shown(status, 40)}"
    schema = RunningResult if status == "running" else FailureResult if status in FAILURE_STATUSES else Result
    # A run that says it is running may have been killed at any point of writing its first file: its status
    # is all a reader needs of it (the sweep runs it again, the report lists it as incomplete).
    required = CORE_FIELDS if schema is Result else {"status"} if schema is RunningResult else \
        schema.__annotations__.keys()
    missing = sorted(name for name in required if name not in data)
    if missing:
        return f"lacks field {shown(missing[0], 40)} (status {status})"
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        return f"has schema_version {shown(version, 40)}; this tool reads 1 to {SCHEMA_VERSION}"
    hints = _hints(schema)
    for name, value in data.items():
        if name in hints:
            problem = _type_problem(value, hints[name])
            if problem:
                return f"field {name!r}: {problem}"
    if schema is RunningResult:  # its status is all a reader takes from it
        return None
    problem = config_problem(data.get("config"))
    if problem:
        return f"field 'config': {problem}"
    problem = known_keys_problem(data.get("environment"), ENVIRONMENT_HINTS)
    if problem:
        return f"field 'environment': {problem}"
    problem = _range_problem(data, full=schema is Result)  # a failure's result has a batch, but no numbers
    if problem:
        return problem
    problem = _breakdown_problem(data.get("step_time_breakdown")) if schema is Result else None
    if problem:
        return f"field 'step_time_breakdown': {problem}"
    if schema is Result:
        _fill_absent(data, hints)
    return None


# Bounds of the numbers a reader computes with (a ratio, a logarithm, a product): a value outside them is not one
# a run writes (a batch of 0 divides by zero, a time of 1e308 overflows), so the file is damaged.
MAX_COUNT = 10**15  # steps, samples, batch sizes
MAX_SECONDS = 1e12  # times in seconds, and rates in samples per second
BATCH_FIELDS = ("world_size", "num_processes", "accumulation_steps", "per_device", "global")
COUNT_FIELDS = ("steps", "steps_to_target", "samples_to_target", "steps_to_target_resolution", "diverged_at_step",
                "stalled_at_step", "steps_per_epoch", "train_samples", "eval_samples")
AMOUNT_FIELDS = ("time_to_target_s", "train_time_to_target_s", "epochs_to_target", "elapsed_s", "train_elapsed_s",
                 "throughput_samples_per_s", "throughput_median_window_samples_per_s", "train_time_per_step_s",
                 "data_wait_fraction", "compile_s")
HISTORY_FIELDS = ("step", "samples", "epoch", "time_s", "train_time_s")


def _range_problem(data: dict, full: bool) -> str | None:
    """The first number a reader computes with that no run writes (types are already checked): the batch,
    and with `full` (a finished or interrupted run's result) its counts, times and history."""
    batch = data.get("batch")
    if isinstance(batch, dict):
        for name in BATCH_FIELDS:
            if not 1 <= batch[name] <= MAX_COUNT:
                return f"field 'batch': {name!r} is {shown(batch[name], 30)}, not a size from 1 to {MAX_COUNT:.0e}"
        if batch["global"] != batch["per_device"] * batch["num_processes"] * batch["accumulation_steps"]:
            return (f"field 'batch': 'global' {batch['global']} is not per_device x num_processes x "
                    f"accumulation_steps ({batch['per_device']} x {batch['num_processes']} x "
                    f"{batch['accumulation_steps']})")
    if not full:
        return None
    checks = [(repr(name), data.get(name), MAX_COUNT) for name in COUNT_FIELDS]
    checks += [(repr(name), data.get(name), MAX_SECONDS) for name in AMOUNT_FIELDS]
    checks += [(f"'throughput_windows' item {i}", v, MAX_SECONDS) for i, v in enumerate(data.get("throughput_windows") or [])]
    for index, entry in enumerate(data.get("history") or []):
        checks += [(f"'history' item {index} {name!r}", entry.get(name), MAX_SECONDS) for name in HISTORY_FIELDS]
    for index, level in enumerate(data.get("target_levels") or []):
        checks += [(f"'target_levels' item {index} {name!r}", level.get(name), MAX_COUNT)
                   for name in ("steps_to_target", "samples_to_target", "steps_to_target_resolution")]
        checks += [(f"'target_levels' item {index} {name!r}", level.get(name), MAX_SECONDS)
                   for name in ("epochs_to_target", "time_to_target_s", "train_time_to_target_s")]
    for label, value, high in checks:
        if value is not None and not 0 <= value <= high:
            return f"field {label} is {shown(value, 30)}, out of range (0 to {high:.0e})"
    return None


# The environment's fields a reader uses (scaling/provenance.py writes them); it records more, left unchecked.
# `launch` (scaling/build.py resolve_launch): the mixed precision, compile backend and process count that ran,
# each with its source (flag, launcher or default) and what the launcher asked; absent in older results.
ENVIRONMENT_HINTS: dict[str, Any] = {"device": str | None, "device_type": str | None, "world_size": int | None,
                                     "torch_threads": int | None, "launch": dict[str, Any] | None}
# The phases a prediction divides (scaling/devices/predict.py); grad_sync may be unknown (None).
MEASURED_PHASES = ("data_wait", "h2d", "forward_backward", "optimizer", "other")


def known_keys_problem(record: Any, hints: dict[str, Any]) -> str | None:
    """What is wrong with the keys of `record` that `hints` knows (others are left as they are)."""
    for name, value in (record or {}).items():
        if name in hints:
            problem = _type_problem(value, hints[name])
            if problem:
                return f"{shown(name, 40)}: {problem}"
    return None


def _breakdown_problem(breakdown: StepTimeRecord | None) -> str | None:
    if not breakdown:
        return None
    phases = breakdown["phases"]
    missing = [name for name in (*MEASURED_PHASES, "grad_sync") if name not in phases]
    if missing:
        return f"'phases' lacks {missing[0]!r}"
    unknown = next((name for name in MEASURED_PHASES if phases[name]["seconds"] is None), None)
    if unknown:
        return f"'phases': {unknown!r}: 'seconds' must be a number, got null"
    numbers = [("'measured_s'", breakdown["measured_s"]), ("'windows'", breakdown["windows"])]
    numbers += [(f"'phases': {name!r}: 'seconds'", phase["seconds"]) for name, phase in phases.items()]
    for label, value in numbers:
        if value is not None and not 0 <= value <= MAX_SECONDS:
            return f"{label} is {shown(value, 30)}, out of range (0 to {MAX_SECONDS:.0e})"
    return None


def config_problem(config: Any) -> str | None:
    """What is wrong with a result's `config` (None when each setting this tool knows has its type): the
    report groups and labels runs by these values (a seed that is a list cannot be compared), so a setting of
    the wrong type makes the result damaged. A key this version does not know (an older or newer field) is
    left as it is."""
    return known_keys_problem(config, _config_hints())


_CONFIG_HINTS: dict[str, Any] = {}


def _config_hints() -> dict[str, Any]:
    if not _CONFIG_HINTS:
        _CONFIG_HINTS.update(typing.get_type_hints(RunConfig))
    return _CONFIG_HINTS


def _fill_absent(data: dict, hints: dict[str, Any]) -> None:
    """Absent fields as null (an empty list for a list), and the batch's derived fields, so that a reader
    indexes any result alike."""
    for name, hint in hints.items():
        if name not in data and name not in OPTIONAL_FIELDS:
            data[name] = [] if typing.get_origin(hint) is list else None
    batch = data["batch"]
    batch.setdefault("emulated", batch["num_processes"] != batch["world_size"])
    batch.setdefault("micro_steps_per_process",
                     batch["num_processes"] // batch["world_size"] * batch["accumulation_steps"])


_FIELD_NAMES = {"global_": "global"}  # TypedDict field -> its key in the file
# Keys a record may lack, being older than them: filled when absent (a batch's), or read with their default
# (a target's direction: max, the accuracy targets' before loss targets existed).
DERIVED_KEYS = frozenset({"emulated", "micro_steps_per_process", "direction"})


def _hints(schema: type) -> dict[str, Any]:
    return {_FIELD_NAMES.get(k, k): v for k, v in typing.get_type_hints(schema).items()}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not match `hint` (None when it does): JSON numbers, strings, booleans, lists, objects
    and the records above."""
    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, arg) for arg in args if arg is not type(None)]
        return None if None in problems else problems[0]
    if origin is list:
        if not isinstance(value, list):
            return f"must be a list, got {_kind(value)}"
        return next((f"item {i}: {p}" for i, item in enumerate(value) if (p := _type_problem(item, args[0]))), None)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return f"must be an object, got {_kind(value)}"
        inner = args[1] if args else Any
        return next((f"{shown(k, 40)}: {p}" for k, item in value.items() if (p := _type_problem(item, inner))), None)
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            return f"must be an object, got {_kind(value)}"
        for name, inner in _hints(hint).items():
            if name not in value:
                if name in DERIVED_KEYS or (hint is LRRecord and name in LR_ADDED_KEYS):
                    continue
                return f"lacks {name!r}"
            problem = _type_problem(value[name], inner)
            if problem:
                return f"{name!r}: {problem}"
        return None
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"must be a number, got {_kind(value)}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"must be a whole number, got {_kind(value)}"
    if hint in (str, bool):
        return None if isinstance(value, hint) else f"must be {'text' if hint is str else 'true or false'}, got {_kind(value)}"
    raise TypeError(f"no check for {hint!r}")  # a schema type this loader does not know: a bug


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
