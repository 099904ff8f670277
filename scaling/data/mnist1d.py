"""MNIST-1D (Greydanus 2020), generated locally and cached as Arrow through `datasets`.

`mnist1d.data.make_dataset` generates the data on this machine (about 4,700 samples/s on 2 cores);
`get_dataset` would try to download a pickle first, so it is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scaling.config import ConfigError
from scaling.data.tensors import TensorPair

# The generator's own defaults (mnist1d.data.get_dataset_args) except the sample count.
GENERATOR_SEED = 42
CLASSES = 10  # templates, one per digit
TRAIN_SPLIT = 0.8  # get_dataset_args' train_split


def cache_root() -> Path:
    return Path(os.environ.get("SCALING_CACHE", Path.home() / ".cache" / "scaling"))


def generation_args(num_samples: int) -> dict:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(num_samples=num_samples, seed=GENERATOR_SEED)
    return args


def cache_dir(num_samples: int) -> Path:
    args = generation_args(num_samples)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"mnist1d-{num_samples}-{key}"


def generate(num_samples: int, progress: bool = False):
    """Generate MNIST-1D and return a `datasets.DatasetDict` with train and test splits. `progress` shows a
    bar (generation runs at about 4,700 samples/s on 2 cores: 9 s for the default 40,000)."""
    import datasets
    import mnist1d.data
    from mnist1d.utils import ObjectView

    args = ObjectView(generation_args(num_samples))
    with _counting_transforms(total=(num_samples // CLASSES) * CLASSES, enabled=progress):
        data = mnist1d.data.make_dataset(args)
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"x": data["x"].astype(np.float32), "label": data["y"].astype(np.int64)}),
        test=datasets.Dataset.from_dict(
            {"x": data["x_test"].astype(np.float32), "label": data["y_test"].astype(np.int64)}
        ),
    )


@contextmanager
def _counting_transforms(total: int, enabled: bool) -> Iterator[None]:
    """A progress bar over make_dataset's samples: it calls the module-level `transform` once per sample, so
    that name is wrapped for the duration (the samples and their order are unchanged)."""
    import mnist1d.data
    from tqdm.auto import tqdm

    if not enabled:
        yield
        return
    original = mnist1d.data.transform
    # disable=None: shown on a terminal only; in logs and captured output a bar is noise around a one-line error.
    bar = tqdm(total=total, desc="scaling: generating MNIST-1D", unit="sample", leave=False, dynamic_ncols=True,
               disable=None)

    def counted(*args, **kwargs):
        bar.update()
        return original(*args, **kwargs)

    mnist1d.data.transform = counted
    try:
        yield
    finally:
        mnist1d.data.transform = original
        bar.close()


def split_sizes(num_samples: int) -> tuple[int, int]:
    """(train, test) sizes MNIST-1D generates for `num_samples`: num_samples // 10 per class, 80% train."""
    per_class = num_samples // CLASSES
    train = per_class * round(TRAIN_SPLIT * CLASSES)  # int(total * 0.8) in exact integers, for any size
    return train, per_class * CLASSES - train


def check_num_samples(num_samples: int, global_bs: int, dataset: str = "mnist1d") -> None:
    """Before generating anything: both splits non-empty and one global batch of training samples."""
    train, test = split_sizes(num_samples)
    if train >= global_bs and test >= 1:
        return
    raise ConfigError(f"--num-samples {num_samples} is too small for --dataset {dataset}: it gives {train} training "
                      f"samples ({num_samples // CLASSES} per class, 80% for training), fewer than one global batch of "
                      f"{global_bs}; use --num-samples {samples_needed(num_samples, global_bs)} or more, or a smaller "
                      f"--global-bs")


def samples_needed(num_samples: int, global_bs: int) -> int:
    """The smallest --num-samples from `num_samples` up (a whole number of samples per class) whose training
    split holds one global batch. Searched from just below the answer (10 samples a class give 8 for
    training), not 10 samples at a time from `num_samples`: a global batch of 10**15 would take 10**14 steps."""
    def holds(total: int) -> bool:
        train, test = split_sizes(total)
        return train >= global_bs and test >= 1

    needed = max(num_samples, CLASSES)
    if holds(needed):
        return needed
    needed = max(needed + (-needed) % CLASSES, (global_bs // 8 - 1) * CLASSES)
    while not holds(needed):
        needed += CLASSES
    return needed


def load_mnist1d(num_samples: int, progress: bool = False) -> tuple[TensorPair, TensorPair]:
    """Load from the Arrow cache, generating it first if needed.

    The caller runs this on the local main process first (`accelerator.local_main_process_first`),
    so other ranks on the node wait and then read the finished cache. The cache is written to a
    temporary folder and renamed, so a killed generation never leaves a half-written cache behind. A cache
    that cannot be read (damaged, truncated, the wrong sizes) is set aside and rebuilt, once, saying so.
    """
    target = cache_dir(num_samples)
    return with_rebuilt_cache(target, "MNIST-1D", lambda: _build(target, num_samples, progress),
                              lambda: _read(target, num_samples))


def with_rebuilt_cache(target: Path, what: str, build, read):
    """`read()` the cache at `target`, building it first when absent; a cache that fails to read is moved
    aside and built again (once). Unwritable cache folders are a ConfigError naming SCALING_CACHE."""
    for attempt in (1, 2):
        if not (target / "dataset_dict.json").is_file():
            try:
                build()
            except OSError as err:
                reason = "a file, not a folder" if target.parent.is_file() else err.strerror or str(err)
                raise ConfigError(f"cannot write the {what} cache under {target.parent} ({reason}); set "
                                  f"SCALING_CACHE to a writable folder") from None
        try:
            return read()
        except Exception as err:  # anything wrong with our own cache files: rebuild rather than fail every run
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
            if attempt == 2:
                raise ConfigError(f"the {what} cache {target} cannot be read even after rebuilding it ({reason}); "
                                  f"set SCALING_CACHE to another folder") from None
            print(f"scaling: note: the {what} cache {target} cannot be read ({reason}); rebuilding it",
                  file=sys.stderr)
            _set_aside(target)


def _set_aside(target: Path) -> None:
    aside = target.with_name(f"{target.name}.damaged{os.getpid()}")
    try:
        target.rename(aside)  # readers that have it open keep their files; new readers see no cache
    except FileNotFoundError:
        return  # another process set it aside first
    except OSError as err:
        raise ConfigError(f"the dataset cache {target} is damaged and cannot be replaced ({err.strerror or err}); "
                          f"delete it, or set SCALING_CACHE to another folder") from None
    shutil.rmtree(aside, ignore_errors=True)


def _build(target: Path, num_samples: int, progress: bool = False) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    generate(num_samples, progress).save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def _read(target: Path, num_samples: int) -> tuple[TensorPair, TensorPair]:
    import datasets
    import torch

    splits = datasets.load_from_disk(str(target)).with_format("torch")
    columns = [splits[name][:] for name in ("train", "test")]  # whole split as a dict of tensors
    pairs = [TensorPair(c["x"], c["label"]) for c in columns]
    for pair, expected in zip(pairs, split_sizes(num_samples), strict=True):
        inputs, labels = pair.inputs, pair.labels
        if (not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or len(inputs) != expected
                or not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or len(labels) != expected):
            raise ValueError(f"expected {expected} samples of 40 floats with int64 labels")
    return pairs[0], pairs[1]
