"""A synthetic image classification set shaped like CIFAR-10 (3x32x32, 10 classes), made on the spot.

For GPU checks on machines without the hub: each class has a fixed random template, and a sample is its
class template plus Gaussian noise, so a ResNet learns it within a few epochs while the arithmetic per
sample is exactly CIFAR-10's. As in-memory tensors it takes the fast path: moved to the device once,
indexed a whole batch at a time, so it measures the model, not an input pipeline.
"""

from __future__ import annotations

import torch

from scaling.data.tensors import TensorPair

SHAPE = (3, 32, 32)
CLASSES = 10
NOISE = 1.0


def make_split(num_samples: int, seed: int) -> TensorPair:
    templates = torch.randn((CLASSES, *SHAPE), generator=torch.Generator().manual_seed(1234)) * 0.5
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (num_samples,), generator=generator)
    inputs = templates[labels] + NOISE * torch.randn((num_samples, *SHAPE), generator=generator)
    return TensorPair(inputs, labels)


def load_synthetic_images(num_samples: int) -> tuple[TensorPair, TensorPair]:
    """num_samples in all, 80% train and 20% eval, as for MNIST-1D."""
    train = int(num_samples * 0.8)
    return make_split(train, seed=1), make_split(num_samples - train, seed=2)
