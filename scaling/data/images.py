"""MNIST-1D drawn as small images and stored encoded (PNG by default), decoded per sample on load.

A real image input pipeline: Arrow holds compressed bytes, and every `__getitem__` decodes one image with
PIL and augments it, as an ImageNet-style loader does. It exists to show and test "is data loading the
bottleneck" diagnoses (DataLoader workers, decode cost), so decoding is deliberately not batched or cached.

Images are made offline from the in-package MNIST-1D signals (no download): each 1-D signal is drawn as a
filled curve across an image_size x image_size grayscale image with numpy, then encoded with PIL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from scaling.data.mnist1d import cache_root, generation_args, load_mnist1d, split_sizes, with_rebuilt_cache

# Bump when the drawing changes, so caches made by an older renderer are not reused.
RENDER_VERSION = 1
FORMATS = ("PNG", "JPEG")
JPEG_QUALITY = 90
# MNIST-1D signals are standardized (std ~1, extremes ~ +-4); +-3 spans the image height, rarer peaks clip.
SIGNAL_RANGE = 3.0
CURVE_LEVEL, FILL_LEVEL = 255, 110
RENDER_CHUNK = 4096  # samples drawn at once: bounds the float scratch array (chunk x size x size)
STATS_SAMPLES = 512  # images decoded to estimate the normalization mean/std


# ---------------------------------------------------------------- building the encoded dataset


def render_signals(signals: np.ndarray, image_size: int) -> np.ndarray:
    """[N, L] float signals -> [N, S, S] uint8 images: the curve bright, the area to the midline grey.

    Vectorized over the batch: per-sample Python loops (or matplotlib) would make generation 100x slower.
    """
    n, length = signals.shape
    # Linear resampling to one value per image column.
    pos = np.linspace(0.0, length - 1, image_size)
    left = np.floor(pos).astype(np.int64)
    right = np.minimum(left + 1, length - 1)
    frac = (pos - left).astype(np.float32)
    values = signals[:, left] * (1 - frac) + signals[:, right] * frac  # [N, S]
    mid = (image_size - 1) / 2
    curve_row = np.clip(mid - values * (mid / SIGNAL_RANGE), 0, image_size - 1)[:, None, :]  # [N, 1, S]
    rows = np.arange(image_size, dtype=np.float32)[None, :, None]  # [1, S, 1]
    # Anti-aliased line: full intensity on the curve, fading out over one pixel.
    curve = CURVE_LEVEL * np.clip(1.0 - np.abs(rows - curve_row), 0.0, 1.0)
    fill = FILL_LEVEL * ((rows >= np.minimum(curve_row, mid)) & (rows <= np.maximum(curve_row, mid)))
    return np.maximum(curve, fill).round().astype(np.uint8)


def encode_images(images: np.ndarray, fmt: str = "PNG") -> list[bytes]:
    """Encode each [S, S] uint8 array as one grayscale image file in memory."""
    from PIL import Image

    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    encoded = []
    for array in images:
        buffer = io.BytesIO()
        Image.fromarray(array, mode="L").save(buffer, format=fmt, **options)
        encoded.append(buffer.getvalue())
    return encoded


def _split_to_dataset(signals: torch.Tensor, labels: torch.Tensor, image_size: int, fmt: str):
    import datasets

    signals_np = signals.numpy().astype(np.float32)
    encoded: list[bytes] = []
    for start in range(0, len(signals_np), RENDER_CHUNK):
        encoded += encode_images(render_signals(signals_np[start : start + RENDER_CHUNK], image_size), fmt)
    features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"))
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in encoded], "label": labels.long().tolist()},
        features=features,
    )


def build_image_dataset(num_samples: int, image_size: int = 32, fmt: str = "PNG"):
    """MNIST-1D as encoded images: a `datasets.DatasetDict` with train/test splits, columns image, label."""
    import datasets

    fmt = _check_format(fmt)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    train, test = load_mnist1d(num_samples)
    return datasets.DatasetDict(
        train=_split_to_dataset(train.inputs, train.labels, image_size, fmt),
        test=_split_to_dataset(test.inputs, test.labels, image_size, fmt),
    )


def _check_format(fmt: str) -> str:
    fmt = fmt.upper().replace("JPG", "JPEG")
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


# ---------------------------------------------------------------- cache


def image_cache_dir(num_samples: int, image_size: int = 32, fmt: str = "PNG") -> Path:
    """Keyed by everything that changes the bytes: the MNIST-1D generation args, size, format, renderer."""
    fmt = _check_format(fmt)
    args = {
        "mnist1d": generation_args(num_samples), "image_size": image_size, "fmt": fmt,
        "jpeg_quality": JPEG_QUALITY if fmt == "JPEG" else None, "render_version": RENDER_VERSION,
    }
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"mnist1d_images-{num_samples}-{image_size}-{fmt.lower()}-{key}"


def _build_image_cache(target: Path, num_samples: int, image_size: int, fmt: str) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    build_image_dataset(num_samples, image_size, fmt).save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def load_image_dataset(
    num_samples: int, image_size: int = 32, fmt: str = "PNG", pad: int = 4, flip: bool = True
) -> tuple[DecodedImages, DecodedImages]:
    """(train, eval) map-style datasets that decode and (train only) augment each image on access. A cache
    that cannot be read (or holds the wrong number of images, or images that do not decode among those the
    normalization statistics read) is rebuilt, once, saying so."""
    target = image_cache_dir(num_samples, image_size, fmt)

    def read() -> tuple[DecodedImages, DecodedImages]:
        import datasets

        splits = datasets.load_from_disk(str(target))
        train = DecodedImages(splits["train"], train=True, pad=pad, flip=flip)
        # The eval split is normalized with the train statistics, as a real pipeline would be.
        eval_ = DecodedImages(splits["test"], train=False, mean=train.mean, std=train.std)
        if (len(train), len(eval_)) != split_sizes(num_samples):
            raise ValueError(f"{len(train)} + {len(eval_)} images, expected {split_sizes(num_samples)}")
        eval_[0]  # an eval image decodes (the statistics decoded the first train images)
        return train, eval_

    return with_rebuilt_cache(target, "MNIST-1D images", lambda: _build_image_cache(target, num_samples, image_size,
                                                                                    fmt), read)


def load_builtin(num_samples: int) -> tuple[DecodedImages, DecodedImages]:
    """The built-in dataset `mnist1d_images`: 32x32 grayscale PNGs, crop + flip augmentation."""
    return load_image_dataset(num_samples)


# ---------------------------------------------------------------- per-sample decoding


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> [H, W] uint8 (grayscale) array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "L":
            image = image.convert("L")
        return np.array(image)  # a writable copy: torch.from_numpy warns on read-only arrays


class DecodedImages(torch.utils.data.Dataset):
    """An Arrow split of encoded images; each item is decoded with PIL, augmented if `train`, normalized.

    Items are (float tensor [1, H, W], int label). Train augmentation: random crop after zero-padding by
    `pad` pixels, and a random horizontal flip. Picklable for DataLoader workers: the Arrow split pickles
    as a reference to its memory-mapped files, and the RNG is rebuilt in each worker.
    """

    def __init__(
        self, split, train: bool, pad: int = 4, flip: bool = True, seed: int = 0,
        mean: float | None = None, std: float | None = None,
    ):
        import datasets

        # decode=False: rows give the raw {"bytes", "path"}; decoding is ours, per sample.
        self.split = split.cast_column("image", datasets.Image(decode=False))
        self.train = train
        self.pad = pad if train else 0
        self.flip = flip and train
        self.seed = seed
        self._rng: torch.Generator | None = None
        self._rng_owner: tuple[int, int | None] | None = None
        if mean is None or std is None:
            mean, std = self._pixel_stats()
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.split[int(index)]
        pixels = decode_image(row["image"]["bytes"])
        if self.train:
            pixels = self._augment(pixels)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0).float()
        return image.div_(255.0).sub_(self.mean).div_(self.std), int(row["label"])

    @property
    def labels(self) -> list[int]:
        """All labels without decoding any image (for class counts)."""
        return self.split["label"][:]  # a list in every datasets version

    @property
    def num_classes(self) -> int:
        return int(max(self.labels)) + 1

    def _augment(self, pixels: np.ndarray) -> np.ndarray:
        rng = self._generator()
        if self.pad:
            height, width = pixels.shape
            top, left = torch.randint(0, 2 * self.pad + 1, (2,), generator=rng).tolist()
            padded = np.pad(pixels, self.pad)  # zeros: the background colour
            pixels = padded[top : top + height, left : left + width]
        if self.flip and torch.rand((), generator=rng).item() < 0.5:
            pixels = pixels[:, ::-1]
        return pixels

    def _generator(self) -> torch.Generator:
        """A generator owned by this process (or DataLoader worker).

        In a worker it is seeded from the worker's own seed (distinct per worker and per epoch's iterator,
        and derived from the main process seed, so runs repeat); otherwise from `seed`. Rebuilt whenever the
        owner changes, so forked workers never replay the parent's stream.
        """
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), info.id if info is not None else None)
        if self._rng is None or self._rng_owner != owner:
            seed = info.seed if info is not None else self.seed
            self._rng = torch.Generator().manual_seed(seed % 2**63)
            self._rng_owner = owner
        return self._rng

    def _pixel_stats(self) -> tuple[float, float]:
        # A fixed prefix keeps the statistics (and hence the inputs) identical on every rank and run.
        count = min(len(self.split), STATS_SAMPLES)
        if count == 0:
            return 0.0, 1.0
        pixels = np.stack([decode_image(self.split[i]["image"]["bytes"]) for i in range(count)])
        pixels = pixels.astype(np.float64) / 255.0
        return float(pixels.mean()), float(max(pixels.std(), 1e-6))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_rng"] = state["_rng_owner"] = None  # each worker builds its own
        return state
