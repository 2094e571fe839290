"""In-memory datasets: `ArrayData`, random `synthetic` data for smoke runs, and the fixed-seed
validation split that every dataset takes its held-out images from.

CIFAR-sized data is one uint8 tensor of images and one of labels, so the loader can move it to
the training device once and augment it there a batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from effbench.data.seeds import batch_seed

SYNTHETIC_TEST_FRACTION = 0.25


@dataclass
class ArrayData:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,), on the CPU."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> ArrayData:
        return ArrayData(self.images[index], self.labels[index], self.classes)


def synthetic(
    samples: int, *, image_size: int, channels: int, classes: int, seed: int = 0
) -> tuple[ArrayData, ArrayData]:
    """Random uint8 images with random labels, for smoke runs (accuracy stays at chance)."""
    g = torch.Generator().manual_seed(batch_seed(seed, 7))
    n_test = max(1, int(samples * SYNTHETIC_TEST_FRACTION))
    total = samples + n_test
    x = torch.randint(0, 256, (total, channels, image_size, image_size), generator=g)
    y = torch.randint(0, classes, (total,), generator=g)
    names = tuple(f"class{i}" for i in range(classes))
    x = x.to(torch.uint8)
    return ArrayData(x[:samples], y[:samples], names), ArrayData(x[samples:], y[samples:], names)


def split_validation(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): a fixed-seed random split of range(n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(batch_seed(seed, 11)))
    n_val = round(n * fraction)
    if fraction > 0 and n_val == 0:
        n_val = 1
    return perm[n_val:].sort().values, perm[:n_val].sort().values
