"""Datasets: the built-in MNIST-1D, any Hugging Face `datasets` source, or `module:callable`.

Everything ends as a pair of map-style datasets yielding (input tensor, int label). In-memory numeric
data becomes a `TensorPair`, which the training loop indexes a whole batch at a time (the fast path).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import TensorDataset

from scaling.callables import call_factory, describe_exception
from scaling.config import ConfigError, RunConfig, shown
from scaling.data.tensors import TensorPair, non_finite_rows
from scaling.task import CLASSIFICATION, NEXT_TOKEN, Task, choose_task


@dataclass
class Workload:
    train: Any
    eval: Any
    num_classes: int  # classes, or for a next-token task the vocabulary
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)  # what loading decided for the user (printed by the run)
    task: Task = CLASSIFICATION


class InputShape(tuple):
    """The shape of one input (a tuple), carrying its dtype for the model's check (models.check_model_output)."""

    dtype: torch.dtype

    def __new__(cls, shape, dtype: torch.dtype = torch.float32) -> InputShape:
        made = super().__new__(cls, tuple(shape))
        made.dtype = dtype
        return made


def check_builtin_size(name: str, num_samples: int, global_bs: int) -> None:
    """Before a built-in dataset is generated (and for each configuration of a study, before anything runs):
    both of its splits non-empty and one global batch of training samples. Other datasets are measured when
    they are loaded."""
    _check_generated_fits(name, num_samples)
    if name in ("mnist1d", "mnist1d_images"):
        from scaling.data.mnist1d import check_num_samples

        check_num_samples(num_samples, global_bs, name)
    elif name == "stories":
        if num_samples < global_bs:
            raise ConfigError(f"--num-samples {num_samples} is too small for --dataset stories: it gives {num_samples} "
                              f"training sequences, fewer than one global batch of {global_bs}")
    elif name == "synthetic_images":
        train_size = int(num_samples * 0.8)
        if train_size < global_bs or num_samples - train_size < 1:
            raise ConfigError(f"--num-samples {num_samples} is too small for --dataset {name}: it gives "
                              f"{train_size} training samples (80%), fewer than one global batch of {global_bs}; "
                              f"use --num-samples {max(-(-global_bs * 5 // 4) + 1, 2)} or more")


# Bytes a generated sample holds once made (float32 inputs and an int64 label): a floor on what generating
# takes (MNIST-1D's generator, the images' encoding and the noise draws need more on the way).
# Evaluation sequences of --dataset stories: 16,384 target tokens at the default context, enough to put the loss
# within about 0.01 nats, and few enough that the exact-step replay (an evaluation per replayed step: a loss
# target is settled only once most of the set is seen) stays cheap.
STORIES_EVAL_SEQUENCES = 256

# Stories at the default context: 65 tokens as Python ints while generated (36 bytes each), then two int64 rows.
GENERATED_SAMPLE_BYTES = {"mnist1d": 40 * 4 + 8, "mnist1d_images": 40 * 4 + 8, "synthetic_images": 3 * 32 * 32 * 4 + 8,
                          "stories": 65 * 36 + 2 * 64 * 8}


def _check_generated_fits(name: str, num_samples: int) -> None:
    """A --num-samples whose generated set would not fit in half the machine's memory is refused before the
    generator starts (10**29 samples used to run until the machine ran out of memory)."""
    memory, per_sample = _physical_memory(), GENERATED_SAMPLE_BYTES.get(name)
    if memory is None or per_sample is None:
        return
    needed = num_samples * per_sample
    if needed > memory // 2:
        raise ConfigError(f"--num-samples {num_samples:,} of --dataset {name} would take at least "
                          f"{_bytes_text(needed)} of memory, more than half of this machine's {_bytes_text(memory)}; "
                          f"use fewer samples")


def load_workload(cfg: RunConfig) -> Workload:
    name = cfg.dataset
    notes: list[str] = []
    check_builtin_size(name, cfg.num_samples, cfg.global_bs)
    if name == "mnist1d":
        from scaling.data.mnist1d import load_mnist1d

        train, eval_ = load_mnist1d(cfg.num_samples, progress=cfg.progress)
    elif name == "mnist1d_images":
        # MNIST-1D rendered to PNG images, decoded by PIL per sample with crop/flip: a real input pipeline.
        from scaling.data.images import load_builtin

        train, eval_ = load_builtin(cfg.num_samples)
    elif name == "synthetic_images":
        from scaling.data.synthetic import load_synthetic_images

        train, eval_ = load_synthetic_images(cfg.num_samples)
    elif name == "stories":
        from scaling.data.text import load_stories

        # --num-samples training sequences of --context tokens and STORIES_EVAL_SEQUENCES new ones to evaluate
        # on; the text is fixed (its seed is not the run's: every run trains on the same stories).
        block = cfg.context + 1
        sequences = cfg.eval_samples or STORIES_EVAL_SEQUENCES
        train, eval_, vocab = load_stories(cfg.num_samples * block, sequences * block, cfg.context)
        return checked_workload(train, eval_, name, notes, cfg.task, vocab_size=vocab)
    elif ":" in name and not _looks_like_path(name):
        train, eval_ = _load_from_callable(name)
    else:
        from scaling.data.hf import load_hf

        train, eval_, notes = loaded = load_hf(cfg)  # with the task they call for, and a tokenizer's vocabulary
        eval_ = first_samples(eval_, cfg.eval_samples, name)
        return checked_workload(train, eval_, name, notes, loaded.task_name, vocab_size=loaded.vocab_size)
    return checked_workload(train, first_samples(eval_, cfg.eval_samples, name), name, notes, cfg.task)


def first_samples(dataset: Any, count: int | None, name: str) -> Any:
    """The first `count` samples of an evaluation set (--eval-samples; None: all of it)."""
    if count is None:
        return dataset
    size = _length(dataset, "eval", name)
    if count > size:
        raise ConfigError(f"--eval-samples {count} is more than the {size:,} samples of --dataset {name!r}'s "
                          f"evaluation set; use at most {size:,}")
    if isinstance(dataset, TensorPair):
        return TensorPair(dataset.inputs[:count], dataset.labels[:count])
    if hasattr(dataset, "select"):  # a datasets.Dataset: stays one, with its formatting
        return dataset.select(range(count))
    return torch.utils.data.Subset(dataset, range(count))


def checked_workload(train: Any, eval_: Any, name: str, notes: list[str], task_name: str = "auto",
                     vocab_size: int | None = None) -> Workload:
    """The two splits as a Workload, after the checks that keep bad data from reaching training: lengths that
    an epoch's order fits in memory, one input shape across both splits, finite inputs, and labels the task
    can learn from (scaling/task.py). In-memory tensors are checked whole with vectorised ops; any other
    dataset on the samples its labels are read from (the first LABEL_LIMIT), the rest when it is read into
    memory (scaling/data/delivery.py, `materialize`) or batched."""
    sizes = {"train": _length(train, "train", name), "eval": _length(eval_, "eval", name)}
    if 0 in sizes.values():
        raise ConfigError(f"--dataset {name!r}: the train and eval sets must both be non-empty")
    for split, dataset in (("train", train), ("eval", eval_)):
        _check_order_fits(dataset, sizes[split], split, name)
    x0 = _first_input(train, name)
    task = choose_task(task_name, x0, _item(train, 0, name)[1], f"--dataset {name!r}")
    e0 = _first_input(eval_, name)
    if e0.shape != x0.shape:
        raise ConfigError(f"--dataset {name!r}: its eval inputs have shape {tuple(e0.shape)} but its train inputs "
                          f"{tuple(x0.shape)}; the model takes one input shape: give both splits the same")
    labels, whole = {}, {}
    for split, dataset in (("train", train), ("eval", eval_)):
        labels[split], whole[split] = _read_split(dataset, split, x0.shape, name, task)
    # Every train label known: any eval label (all, or a sample) outside their range is one the model never learns.
    num_classes = task.num_classes(labels, whole["train"], f"--dataset {name!r}")
    if vocab_size is not None:  # a tokenizer's vocabulary: the model covers every id it can give
        num_classes = max(num_classes, vocab_size)
    return Workload(train, eval_, num_classes, InputShape(x0.shape, x0.dtype), notes, task)


# Bytes per training sample of one epoch's order: the int64 permutation and, for a dataset batched through a
# DataLoader, the same as Python ints (scaling/data/delivery.py, StepBatchSampler). Eval needs the int64 shard.
ORDER_BYTES = {"train": 8 + 36, "eval": 8}


def _length(dataset: Any, split: str, name: str) -> int:
    try:
        return len(dataset)
    except Exception as err:  # the user's __len__: a float, a negative number, one past sys.maxsize, a raise
        raise ConfigError(f"--dataset {name!r}: len() of its {split} split raised {describe_exception(err)}; "
                          f"__len__ must return the number of samples") from None


def _check_order_fits(dataset: Any, size: int, split: str, name: str) -> None:
    """A length whose shuffled order alone would not fit in half the machine's memory is not a real dataset
    (a __len__ of 10**15): refused before any index tensor of that size is allocated. In-memory tensors
    hold their samples already."""
    memory = _physical_memory()
    if isinstance(dataset, TensorPair) or memory is None:
        return
    needed = size * ORDER_BYTES[split]
    if needed > memory // 2:
        raise ConfigError(f"--dataset {name!r}: its {split} split says it has {size:,} samples (its __len__); the "
                          f"order of one epoch over them alone would take {_bytes_text(needed)}, more than half of "
                          f"this machine's {_bytes_text(memory)} of memory: check its __len__")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return None


def _bytes_text(count: int) -> str:
    """`125.4 GiB`, `38.2 PiB`: a size in binary units."""
    value, unit = float(count), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{value:,.1f} {unit}" if unit != "bytes" else f"{count:,} bytes"


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


LABEL_LIMIT = 10_000  # samples read from a dataset that is neither in memory nor has a `labels` attribute
FINITE_CHUNK_BYTES = 64 * 2**20  # sampled inputs stacked at a time for the finiteness check


def _read_split(dataset: Any, split: str, shape: torch.Size, name: str,
                task: Task = CLASSIFICATION) -> tuple[torch.Tensor, bool]:
    """(labels, whether they are all of the split's labels), checking inputs on the way: in-memory tensors
    whole (vectorised), a dataset with a `labels` attribute not at all (that would decode every sample), any
    other on its first LABEL_LIMIT samples (each sample's shape as it is read, their finiteness stacked)."""
    if isinstance(dataset, TensorPair):
        if dataset.inputs.shape[1:] != shape:
            raise ConfigError(f"--dataset {name!r}: its {split} inputs have shape {tuple(dataset.inputs.shape[1:])} "
                              f"but its train inputs {tuple(shape)}; the model takes one input shape")
        _check_finite_inputs(dataset.inputs, split, name)
        return dataset.labels, True
    if hasattr(dataset, "labels"):  # without decoding every sample
        try:
            return torch.as_tensor(dataset.labels), True
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--dataset {name!r}: the labels of its {split} split are not whole numbers 0, 1, "
                              f"2, ... ({describe_exception(err)})") from None
    count = min(len(dataset), LABEL_LIMIT)
    return _sample_split(dataset, count, split, shape, name, task), count == len(dataset)


def _sample_split(dataset: Any, count: int, split: str, shape: torch.Size, name: str,
                  task: Task = CLASSIFICATION) -> torch.Tensor:
    """The labels of the first `count` samples; each sample's input must be a tensor of `shape`, every value
    finite."""
    labels: list[int] = []
    chunk: list[torch.Tensor] = []
    chunk_bytes, bad, first_bad = 0, 0, None  # samples with a non-finite value, and the first
    for index, (inputs, label) in _items(dataset, count, name):
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError(f"--dataset {name!r}: {split} sample {index}'s input is {type(inputs).__name__}, "
                              f"not a tensor")
        if inputs.shape != shape:
            raise ConfigError(f"--dataset {name!r}: {split} sample {index} has input shape {tuple(inputs.shape)}, "
                              f"sample 0 {tuple(shape)}; every sample must have one shape")
        labels.append(_label(label, index, name) if task is not NEXT_TOKEN else _targets(label, shape, split, index, name))
        chunk.append(inputs)
        chunk_bytes += inputs.numel() * inputs.element_size()
        # Stacked a chunk at a time (40x cheaper than one check per sample), each chunk at most FINITE_CHUNK_BYTES.
        if len(chunk) == LABEL_CHUNK or chunk_bytes >= FINITE_CHUNK_BYTES or index == count - 1:
            found = non_finite_rows(torch.stack(chunk))
            if found is not None:
                bad += found[0]
                if first_bad is None:
                    first_bad = index + 1 - len(chunk) + found[1]
            chunk, chunk_bytes = [], 0
    if first_bad is not None:
        _refuse_non_finite(bad, first_bad, split, name)
    return torch.stack(labels) if task is NEXT_TOKEN else torch.tensor(labels, dtype=torch.int64)


def _targets(label: Any, shape: torch.Size, split: str, index: int, name: str) -> torch.Tensor:
    """A next-token sample's targets: an integer tensor of its input's shape."""
    if not isinstance(label, torch.Tensor) or label.shape != shape:
        got = f"shape {tuple(label.shape)}" if isinstance(label, torch.Tensor) else type(label).__name__
        raise ConfigError(f"--dataset {name!r}: {split} sample {index}'s targets are {got}, but a next-token task "
                          f"takes one target token per input token (shape {tuple(shape)})")
    return label.long() if not (label.is_floating_point() or label.is_complex()) else label


def _label(label: Any, index: int, name: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() > 1:
        raise ConfigError(f"--dataset {name!r}: sample {index} has a label of shape {tuple(label.shape)}, but a "
                          f"classification model takes one class label per sample, a whole number 0, 1, 2, ...")
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        if label.is_floating_point() or label.is_complex():
            raise ConfigError(f"--dataset {name!r}: sample {index} has label {shown(label.item())}; class labels "
                              f"must be whole numbers 0, 1, 2, ...")
        label = int(label)
    if not isinstance(label, numbers.Integral) or not -2**63 <= int(label) < 2**63:  # NumPy integers too
        raise ConfigError(f"--dataset {name!r}: sample {index} has label {shown(label)}; class labels must be "
                          f"whole numbers 0, 1, 2, ...")
    return int(label)


def _check_finite_inputs(inputs: torch.Tensor, split: str, name: str) -> None:
    found = non_finite_rows(inputs)
    if found is not None:
        _refuse_non_finite(*found, split, name)


def _refuse_non_finite(count: int, first: int, split: str, name: str) -> None:
    """NaN or infinite inputs are refused from any source (file datasets: scaling/data/hf.py): trained on, they
    end the run `diverged`, which would read as a finding about the batch size."""
    raise ConfigError(f"--dataset {name!r}: its {split} inputs have {count:,} sample(s) with NaN or infinite "
                      f"values, the first sample {first} (counting from 0); fix or drop them")


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
