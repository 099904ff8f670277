"""Datasets: the built-in MNIST-1D, any Hugging Face `datasets` source, or `module:callable`.

Everything ends as a pair of map-style datasets yielding (input tensor, int label). In-memory numeric
data becomes a `TensorPair`, which the training loop indexes a whole batch at a time (the fast path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import TensorDataset

from scaling.callables import call_factory, describe_exception
from scaling.config import ConfigError, RunConfig, shown
from scaling.data.tensors import TensorPair


@dataclass
class Workload:
    train: Any
    eval: Any
    num_classes: int
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)  # what loading decided for the user (printed by the run)


class InputShape(tuple):
    """The shape of one input (a tuple), carrying its dtype for the model's check (models.check_model_output)."""

    dtype: torch.dtype

    def __new__(cls, shape, dtype: torch.dtype = torch.float32) -> InputShape:
        made = super().__new__(cls, tuple(shape))
        made.dtype = dtype
        return made


def load_workload(cfg: RunConfig) -> Workload:
    name = cfg.dataset
    notes: list[str] = []
    if name == "mnist1d":
        from scaling.data.mnist1d import check_num_samples, load_mnist1d

        check_num_samples(cfg.num_samples, cfg.global_bs, name)
        train, eval_ = load_mnist1d(cfg.num_samples, progress=cfg.progress)
    elif name == "mnist1d_images":
        # MNIST-1D rendered to PNG images, decoded by PIL per sample with crop/flip: a real input pipeline.
        from scaling.data.images import load_builtin
        from scaling.data.mnist1d import check_num_samples

        check_num_samples(cfg.num_samples, cfg.global_bs, name)
        train, eval_ = load_builtin(cfg.num_samples)
    elif name == "synthetic_images":
        from scaling.data.synthetic import load_synthetic_images

        train_size = int(cfg.num_samples * 0.8)
        if train_size < cfg.global_bs or cfg.num_samples - train_size < 1:
            raise ConfigError(f"--num-samples {cfg.num_samples} is too small for --dataset {name}: it gives "
                              f"{train_size} training samples (80%), fewer than one global batch of {cfg.global_bs}; "
                              f"use --num-samples {max(math.ceil(cfg.global_bs / 0.8) + 1, 2)} or more")
        train, eval_ = load_synthetic_images(cfg.num_samples)
    elif ":" in name and not _looks_like_path(name):
        train, eval_ = _load_from_callable(name)
    else:
        from scaling.data.hf import load_hf

        train, eval_, notes = load_hf(cfg)
    if len(train) == 0 or len(eval_) == 0:
        raise ConfigError(f"--dataset {name!r}: the train and eval sets must both be non-empty")
    x0 = _first_input(train, name)
    num_classes = _num_classes(train, eval_, name)
    return Workload(train, eval_, num_classes, InputShape(x0.shape, x0.dtype), notes)


def _looks_like_path(name: str) -> bool:
    # "C:\\data" or "./dir:x" are paths; "pkg.mod:fn" is a callable.
    from pathlib import Path

    return Path(name).exists()


def _first_input(train: Any, name: str) -> torch.Tensor:
    item = _item(train, 0, name)
    if not isinstance(item[0], torch.Tensor):
        raise ConfigError(f"--dataset {name!r}: a sample's input must be a tensor, got {type(item[0]).__name__}")
    return item[0]


def _item(dataset: Any, index: int, name: str) -> tuple[Any, Any]:
    try:
        item = dataset[index]
    except Exception as err:  # the user's dataset code
        raise ConfigError(f"--dataset {name!r}: reading sample {index} raised {describe_exception(err)}") from None
    return _pair(item, name)


LABEL_CHUNK = 1024  # items per `__getitems__` call when sampling labels


def _items(dataset: Any, count: int, name: str):
    """(index, item) for the first `count` items: one `__getitems__` call per LABEL_CHUNK items when the dataset
    has the batched-fetch protocol (as `fetch_batch` reads batches), else one read per item."""
    getitems = getattr(dataset, "__getitems__", None)
    if not callable(getitems):
        yield from ((index, _item(dataset, index, name)) for index in range(count))
        return
    for start in range(0, count, LABEL_CHUNK):
        indices = list(range(start, min(start + LABEL_CHUNK, count)))
        try:
            items = getitems(indices)
        except Exception as err:  # the user's dataset code
            raise ConfigError(f"--dataset {name!r}: reading samples {indices[0]}-{indices[-1]} raised "
                              f"{describe_exception(err)}") from None
        if not (isinstance(items, (list, tuple)) and len(items) == len(indices)):
            raise ConfigError(f"--dataset {name!r}: __getitems__ of {len(indices)} indices must return a list of "
                              f"{len(indices)} items, got {shown(items)}")
        yield from ((index, _pair(item, name)) for index, item in zip(indices, items, strict=True))


def _pair(item: Any, name: str) -> tuple[Any, Any]:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ConfigError(f"--dataset {name!r}: samples must be (input tensor, int label) pairs, got "
                          f"{type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    return item


def _num_classes(train: Any, eval_: Any, name: str = "") -> int:
    """Classes = the largest label + 1, after checking that labels are whole numbers >= 0 in both splits."""
    if hasattr(train, "labels") and hasattr(eval_, "labels"):  # without decoding every sample
        splits = {"train": torch.as_tensor(train.labels), "eval": torch.as_tensor(eval_.labels)}
    else:  # a sample of each split (labels beyond it show up as an error at the first batch that has one)
        splits = {"train": _sample_labels(train, name), "eval": _sample_labels(eval_, name)}
    for split, labels in splits.items():
        if labels.is_floating_point() or labels.is_complex():
            raise ConfigError(f"--dataset {name!r}: its {split} labels are not whole numbers ({labels.dtype}); "
                              f"class labels must be 0, 1, 2, ...")
        if len(labels) and int(labels.min()) < 0:
            raise ConfigError(f"--dataset {name!r}: its {split} labels include {int(labels.min())}; class labels "
                              f"must be 0, 1, 2, ...")
    return int(max(int(labels.max()) for labels in splits.values() if len(labels))) + 1


def _sample_labels(dataset: Any, name: str, limit: int = 10_000) -> torch.Tensor:
    labels = []
    for index, (_, label) in _items(dataset, min(len(dataset), limit), name):
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            if label.is_floating_point():
                raise ConfigError(f"--dataset {name!r}: sample {index} has label {label.item()!r}; class labels must "
                                  f"be whole numbers 0, 1, 2, ...")
            label = int(label)
        if not isinstance(label, int):
            raise ConfigError(f"--dataset {name!r}: sample {index} has label {shown(label)}; class labels must be "
                              f"whole numbers 0, 1, 2, ...")
        labels.append(int(label))
    return torch.tensor(labels, dtype=torch.int64)


def _load_from_callable(spec: str) -> tuple[Any, Any]:
    result = call_factory(spec, "--dataset")
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ConfigError(f"--dataset {spec!r} must return a (train, eval) pair, got {type(result).__name__}")
    for part in result:
        if not (hasattr(part, "__len__") and hasattr(part, "__getitem__")):
            raise ConfigError(f"--dataset {spec!r} returned {type(part).__name__}, expected a map-style dataset")
        if isinstance(part, TensorDataset) and len(part.tensors) == 2 and part.tensors[1].is_floating_point():
            raise ConfigError(f"--dataset {spec!r}: its labels are {part.tensors[1].dtype}; class labels must be "
                              f"whole numbers 0, 1, 2, ...")
    return TensorPair.maybe_from(result[0]), TensorPair.maybe_from(result[1])
