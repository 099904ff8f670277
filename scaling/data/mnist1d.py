"""MNIST-1D (Greydanus 2020), generated locally and cached as Arrow through `datasets`.

`mnist1d.data.make_dataset` generates the data on this machine (about 4,700 samples/s on 2 cores);
`get_dataset` would try to download a pickle first, so it is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from scaling.data.tensors import TensorPair

# The generator's own defaults (mnist1d.data.get_dataset_args) except the sample count.
GENERATOR_SEED = 42


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


def generate(num_samples: int):
    """Generate MNIST-1D and return a `datasets.DatasetDict` with train and test splits."""
    import datasets
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    data = make_dataset(ObjectView(generation_args(num_samples)))
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"x": data["x"].astype(np.float32), "label": data["y"].astype(np.int64)}),
        test=datasets.Dataset.from_dict(
            {"x": data["x_test"].astype(np.float32), "label": data["y_test"].astype(np.int64)}
        ),
    )


def load_mnist1d(num_samples: int) -> tuple[TensorPair, TensorPair]:
    """Load from the Arrow cache, generating it first if needed.

    The caller runs this on the local main process first (`accelerator.local_main_process_first`),
    so other ranks on the node wait and then read the finished cache. The cache is written to a
    temporary folder and renamed, so a killed generation never leaves a half-written cache behind.
    """
    import datasets

    target = cache_dir(num_samples)
    if not (target / "dataset_dict.json").is_file():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        generate(num_samples).save_to_disk(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    splits = datasets.load_from_disk(str(target)).with_format("torch")
    columns = [splits[name][:] for name in ("train", "test")]  # whole split as a dict of tensors
    return TensorPair(columns[0]["x"], columns[0]["label"]), TensorPair(columns[1]["x"], columns[1]["label"])
