"""Load any source `datasets.load_dataset` understands: a hub id, a local folder, or local files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scaling.config import ConfigError, RunConfig, shown
from scaling.data.tensors import TensorPair, non_finite_rows
from scaling.task import CLASSIFICATION

_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow",
                  ".txt": "text"}
# A .txt file is one document: a row per line, each keeping its line break, so the rows join back to the file.
_BUILDER_OPTIONS: dict[str, dict[str, Any]] = {"text": {"keep_linebreaks": True}}


class Loaded(tuple):
    """What load_hf returns: (train, eval, notes), as it always has, and the task they call for (`task_name`,
    checked_workload's) with a tokenizer's vocabulary for text (`vocab_size`, else None)."""

    task_name: str
    vocab_size: int | None

    def __new__(cls, train: Any, eval_: Any, notes: list[str], task_name: str = "auto",
                vocab_size: int | None = None) -> Loaded:
        made = super().__new__(cls, (train, eval_, notes))
        made.task_name, made.vocab_size = task_name, vocab_size
        return made


def _load_dataset_dict(cfg: RunConfig):
    import datasets

    name = cfg.dataset
    path = Path(name)
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(f"--dataset {name}: unsupported file type {path.suffix!r}; use csv, json, parquet, "
                                  f"arrow or txt")
            if path.stat().st_size == 0:  # datasets' builders fail on it with a generic DatasetGenerationError
                raise ConfigError(f"--dataset {name}: the file is empty (0 bytes): no rows or text to train on")
            return datasets.load_dataset(builder, data_files={split_name(cfg.train_split): str(path)},
                                         **_BUILDER_OPTIONS.get(builder, {}))
        if path.is_dir():
            return datasets.load_dataset(str(path), cfg.dataset_config)
        if name.startswith((".", "/")) or name.endswith(tuple(_FILE_BUILDERS)):
            raise ConfigError(f"--dataset {name}: no such file or folder")
        return _load_from_hub(name, cfg.dataset_config)
    except ConfigError:
        raise
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (no network? hub datasets need one; HF_HUB_OFFLINE=1 fails fast)" if not path.exists() else ""
        raise ConfigError(f"cannot load --dataset {name!r}: {type(err).__name__}: {reason}{hint}") from None
    except Exception as err:  # datasets raises its own types (DatasetNotFoundError, DataFilesNotFoundError...)
        if type(err).__module__.startswith(("datasets", "huggingface_hub", "requests", "fsspec")):
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ConfigError(f"cannot load --dataset {name!r}: {type(err).__name__}: {reason}") from None
        raise


def _load_from_hub(name: str, config: str | None):
    """A hub dataset, without retry noise: the hub's retry warnings are silenced, and when the hub cannot be
    reached at all (checked with one connection, a few seconds at most) only a cached copy is tried."""
    import datasets
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # "Retrying in 1s [Retry 1/5]" and the like
    if constants.HF_HUB_OFFLINE:
        return datasets.load_dataset(name, config)
    host, unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable is None:
        return datasets.load_dataset(name, config)
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and datasets: cache only
    datasets.config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(name, config)
    except Exception:
        raise ConfigError(f"cannot load --dataset {name!r}: the Hugging Face hub ({host}) cannot be reached "
                          f"({unreachable}) and no copy is cached here; connect to a network, or give a local file "
                          f"or folder") from None


def _hub_unreachable(endpoint: str, timeout: float = 3.0) -> tuple[str, str | None]:
    """(host, None) when a TCP connection to the hub opens, else (host, the reason)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or endpoint
    port = parts.port or (443 if parts.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return host, None
    except OSError as err:
        return host, (err.strerror or str(err) or type(err).__name__).strip()


# A file with a single split and no evaluation split of its own: this share is held out for evaluation.
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0  # fixed, so that every seed of a study evaluates on the same samples


def split_name(spec: str) -> str:
    """`train` for `train[:80%]` (datasets' split slicing)."""
    return spec.split("[", 1)[0].strip()


def _split(dataset_dict, spec: str, name: str):
    """The split `spec` names, sliced as datasets does (`train[:80%]`, `train[100:200]`, `test[-10%:]`)."""
    import datasets

    base = split_name(spec)
    if base not in dataset_dict:
        raise ConfigError(
            f"--dataset {name!r} has no split {base!r}; splits: {', '.join(dataset_dict)} "
            f"(set --train-split / --eval-split)"
        )
    split = dataset_dict[base]
    if "[" not in spec:
        return split
    try:
        instructions = datasets.ReadInstruction.from_spec(spec).to_absolute({base: len(split)})
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"split {spec!r}: {err}; slices look like train[:80%] or train[100:200]") from None
    indices = [i for part in instructions for i in range(part.from_, part.to)]
    return split.select(indices)


def _holdout(split, label_column: str, name: str) -> tuple[Any, Any, str]:
    """(train, eval, note): HOLDOUT_FRACTION of each class held out, chosen with a fixed seed."""
    labels = torch.as_tensor(split.with_format("torch", columns=[label_column])[:][label_column])
    CLASSIFICATION.check_labels(labels, "train", f"--dataset {name!r}")  # one class per row, before holding out
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    held: list[int] = []
    for label in torch.unique(labels):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held += members[: round(len(members) * HOLDOUT_FRACTION)].tolist()
    held_set = set(held)
    kept = [i for i in range(len(labels)) if i not in held_set]
    if not kept or not held:
        raise ConfigError(f"--dataset {name!r} has too few rows ({len(labels)}) to hold out an evaluation split; "
                          f"give one with --eval-split")
    note = (f"{name}: no evaluation split, so {HOLDOUT_FRACTION:.0%} of each class ({len(held):,} of {len(labels):,} "
            f"rows, fixed seed) is held out for evaluation; --eval-split chooses one instead (e.g. "
            f"'--train-split train[:80%] --eval-split train[80%:]')")
    return split.select(kept), split.select(sorted(held)), note


def _check_label_text(split, column: str, name: str) -> None:
    """Text labels ('cat', 'dog') are refused before anything is held out or converted, saying how to encode
    them: the tool does not number them itself, since the numbering must be the same in every split and run."""
    import datasets
    import pyarrow.compute as pc

    feature = split.features.get(column)
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return
    values = pc.unique(split.data.column(column).drop_null()).to_pylist()
    examples = ", ".join(shown(value, 20) for value in values[:2]) + (", ..." if len(values) > 2 else "")
    raise ConfigError(f"--dataset {name!r}: label column {column!r} holds text ({examples}); class labels must be "
                      f"whole numbers 0, 1, 2, ...: encode them first, e.g. with datasets' "
                      f"dataset.class_encode_column({column!r}) and save_to_disk, or in pandas with "
                      f"df[{column!r}].astype('category').cat.codes")


def _decode_images(split, column: str) -> torch.Tensor:
    """An Image column (e.g. CIFAR-10's `img` on the hub) decoded once into a float tensor [N, C, H, W] in
    [0, 1], held in memory so training takes the whole-batch fast path."""
    import numpy as np

    arrays = [np.asarray(image) for image in split[column]]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ConfigError(f"image column {column!r} holds images of different sizes {sorted(shapes)[:3]}; "
                          f"resize them to one size first")
    stacked = torch.from_numpy(np.stack(arrays))
    stacked = stacked.unsqueeze(1) if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)  # to N, C, H, W
    return stacked.float().div_(255.0)


def _check_cells(split, columns: list[str], name: str, where: str) -> None:
    """No missing cells (a CSV's empty field) in the columns used: training on them would give NaN losses."""
    import pyarrow.compute as pc

    for column in columns:
        values = split.data.column(column)
        if values.null_count:
            first = pc.index(pc.is_null(values), True).as_py()
            raise ConfigError(f"--dataset {name!r}: column {column!r} of split {where!r} has {values.null_count} "
                              f"missing cell(s), the first in row {first} (counting from 0); fill or drop them")


def _check_finite(values: torch.Tensor, column: str, name: str, where: str) -> None:
    found = non_finite_rows(values)
    if found is not None:
        count, first = found
        raise ConfigError(f"--dataset {name!r}: column {column!r} of split {where!r} has {count} row(s) with NaN or "
                          f"infinite values, the first in row {first} (counting from 0); fix or drop them")


def _to_tensor_pair(split, input_columns: list[str], label_column: str, name: str = "", where: str = "") -> TensorPair:
    import datasets

    _check_cells(split, [*input_columns, label_column], name, where)

    images = [c for c in input_columns if isinstance(split.features.get(c), datasets.Image)]
    if images:
        if len(input_columns) != 1:
            raise ConfigError(f"an image column ({images[0]!r}) must be the only input column")
        labels = split.with_format("torch", columns=[label_column])[:][label_column]
        return TensorPair(_decode_images(split, images[0]), labels)
    table = split.with_format("torch", columns=[*input_columns, label_column])[:]  # dict of whole columns
    columns = [table[c] for c in input_columns]
    for column, values in zip(input_columns, columns, strict=True):
        if not isinstance(values, torch.Tensor):
            raise ConfigError(
                f"input column {column!r} is not numeric with a fixed shape; choose another with --input-column"
            )
        _check_finite(values, column, name, where)
    if len(columns) == 1:
        inputs = columns[0].float()
    else:
        inputs = torch.stack([c.float() for c in columns], dim=1)
    labels = table[label_column]
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        raise ConfigError(f"label column {label_column!r} must hold integer class labels")
    return TensorPair(inputs, labels)


def load_hf(cfg: RunConfig) -> Loaded:
    """(train, eval, notes to print) from any `datasets` source; for a text column (scaling/data/text_files.py)
    packed token sequences, with task_name "next-token" and the tokenizer's vocab_size."""
    dataset_dict = _load_dataset_dict(cfg)
    train = _split(dataset_dict, cfg.train_split, cfg.dataset)
    from scaling.data.text_files import load_text, wants_text

    if wants_text(cfg, train.column_names):
        train_pair, eval_pair, notes, vocab_size = load_text(cfg, dataset_dict, train, _split, HOLDOUT_FRACTION)
        return Loaded(train_pair, eval_pair, notes, "next-token", vocab_size)
    if cfg.label_column in train.column_names:
        _check_label_text(train, cfg.label_column, cfg.dataset)
    notes = []
    if len(dataset_dict) == 1 and split_name(cfg.eval_split) not in dataset_dict:
        if cfg.label_column not in train.column_names:
            raise ConfigError(f"--dataset {cfg.dataset!r} has no label column {cfg.label_column!r}; columns: "
                              f"{', '.join(train.column_names)} (set --label-column)")
        train, eval_, note = _holdout(train, cfg.label_column, cfg.dataset)
        notes.append(note)
    else:
        eval_ = _split(dataset_dict, cfg.eval_split, cfg.dataset)
    columns = list(train.column_names)
    if cfg.label_column not in columns:
        raise ConfigError(
            f"--dataset {cfg.dataset!r} has no label column {cfg.label_column!r}; columns: {', '.join(columns)} "
            f"(set --label-column)"
        )
    if cfg.input_column is not None:
        inputs = [c.strip() for c in cfg.input_column.split(",")]
        missing = [c for c in inputs if c not in columns]
        if missing:
            raise ConfigError(
                f"--dataset {cfg.dataset!r} has no input column {missing[0]!r}; columns: {', '.join(columns)}"
            )
    else:
        inputs = [c for c in columns if c != cfg.label_column]
    for split in (eval_,):
        absent = [c for c in [*inputs, cfg.label_column] if c not in split.column_names]
        if absent:
            raise ConfigError(f"split {cfg.eval_split!r} of --dataset {cfg.dataset!r} lacks column {absent[0]!r}")
        _check_label_text(split, cfg.label_column, cfg.dataset)
    return Loaded(_to_tensor_pair(train, inputs, cfg.label_column, cfg.dataset, cfg.train_split),
                  _to_tensor_pair(eval_, inputs, cfg.label_column, cfg.dataset, cfg.eval_split), notes, cfg.task)
