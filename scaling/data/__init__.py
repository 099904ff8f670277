"""Datasets: the built-in MNIST-1D, any Hugging Face `datasets` source, or `module:callable`.

Everything ends as a pair of map-style datasets yielding (input tensor, int label). In-memory numeric
data becomes a `TensorPair`, which the training loop indexes a whole batch at a time (the fast path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scaling.callables import load_callable
from scaling.config import ConfigError, RunConfig
from scaling.data.tensors import TensorPair


@dataclass
class Workload:
    train: Any
    eval: Any
    num_classes: int
    input_shape: tuple[int, ...]


def load_workload(cfg: RunConfig) -> Workload:
    name = cfg.dataset
    if name == "mnist1d":
        from scaling.data.mnist1d import load_mnist1d

        train, eval_ = load_mnist1d(cfg.num_samples)
    elif name == "mnist1d_images":
        # MNIST-1D rendered to PNG images, decoded by PIL per sample with crop/flip: a real input pipeline.
        from scaling.data.images import load_builtin

        train, eval_ = load_builtin(cfg.num_samples)
    elif name == "synthetic_images":
        from scaling.data.synthetic import load_synthetic_images

        train, eval_ = load_synthetic_images(cfg.num_samples)
    elif ":" in name and not _looks_like_path(name):
        train, eval_ = _load_from_callable(name)
    else:
        from scaling.data.hf import load_hf

        train, eval_ = load_hf(cfg)
    if len(train) == 0 or len(eval_) == 0:
        raise ConfigError(f"--dataset {name!r}: the train and eval sets must both be non-empty")
    x0, _ = train[0]
    num_classes = _num_classes(train, eval_)
    return Workload(train, eval_, num_classes, tuple(x0.shape))


def _looks_like_path(name: str) -> bool:
    # "C:\\data" or "./dir:x" are paths; "pkg.mod:fn" is a callable.
    from pathlib import Path

    return Path(name).exists()


def _num_classes(train: Any, eval_: Any) -> int:
    if hasattr(train, "labels") and hasattr(eval_, "labels"):  # without decoding every sample
        return int(max(torch.as_tensor(train.labels).max(), torch.as_tensor(eval_.labels).max())) + 1
    return int(max(int(train[i][1]) for i in range(min(len(train), 10_000)))) + 1


def _load_from_callable(spec: str) -> tuple[Any, Any]:
    result = load_callable(spec, "--dataset")()
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ConfigError(f"--dataset {spec!r} must return a (train, eval) pair, got {type(result).__name__}")
    for part in result:
        if not (hasattr(part, "__len__") and hasattr(part, "__getitem__")):
            raise ConfigError(f"--dataset {spec!r} returned {type(part).__name__}, expected a map-style dataset")
    return TensorPair.maybe_from(result[0]), TensorPair.maybe_from(result[1])
