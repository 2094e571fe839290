"""The batched loaders: `TensorLoader` for in-memory uint8 data, augmented on the training
device, and `FolderLoader` for image folders, through DataLoader workers.

Both share `_EpochOrder`, which deals each epoch's samples out to the processes of a
distributed run, and both seed every draw from (seed, epoch, batch), so a run resumed
mid-epoch sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.data.arrays import ArrayData
from effbench.data.augment import random_crop, random_erase, random_hflip, trivial_augment
from effbench.data.seeds import batch_seed
from effbench.errors import DataError


class _EpochOrder:
    """Which samples each process sees in each epoch, and in what order.

    Training: a permutation from a generator seeded by (seed, epoch), trimmed to a multiple of
    the process count and dealt out round-robin, so every process gets as many samples as the
    others and no sample twice; the last partial batch is dropped. Evaluation: every sample
    once, in order, dealt out the same way.
    """

    def __init__(
        self, n: int, *, batch_size: int, train: bool, seed: int, rank: int, world: int
    ) -> None:
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def order(self) -> Tensor:
        if not self.train:
            return torch.arange(self.rank, self.n, self.world)
        g = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g)
        usable = (self.n // self.world) * self.world
        return perm[:usable][self.rank :: self.world]

    def samples(self) -> int:
        """How many samples this process sees per epoch (the length of `order()`)."""
        if self.train:
            return self.n // self.world
        return len(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        n = self.samples()
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def iterate(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate()


class TensorLoader(_EpochOrder):
    """Batches from an in-memory uint8 dataset on `device`, augmented there.

    Training batches go through random crop, flip and TrivialAugmentWide on uint8 images, then
    normalisation, resizing and random erasing (mixup and cutmix follow in the trainer).
    Each epoch's order comes from a generator seeded by (seed, epoch); each batch's
    augmentation from one seeded by (seed, epoch, batch). `rank`/`world` take an equal shard of
    every epoch's order (DDP); `start` skips batches (mid-epoch resume).
    """

    def __init__(
        self,
        data: ArrayData,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        train: bool,
        seed: int = 0,
        crop_padding: int = 0,
        hflip: bool = False,
        random_erasing: float = 0.0,
        trivial_augment: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(
            len(data), batch_size=batch_size, train=train, seed=seed, rank=rank, world=world
        )
        if train and trivial_augment and data.images.shape[1] not in (1, 3):
            raise DataError(
                f"train.trivial_augment works on 1- or 3-channel images, not "
                f"{data.images.shape[1]}; set backbone.channels to 1 or 3, or turn it off"
            )
        self.images = data.images.to(device, non_blocking=True)
        self.labels = data.labels.to(device, non_blocking=True)
        self.classes = data.classes
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.image_size = image_size
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.random_erasing = random_erasing
        self.trivial_augment = trivial_augment

    def iterate(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order()
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size].to(self.device)
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            g = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, i, self.rank))
            if self.train and self.crop_padding:
                x = random_crop(x, self.crop_padding, g)
            if self.train and self.hflip:
                x = random_hflip(x, g)
            if self.train and self.trivial_augment:
                x = trivial_augment(x, g)
            x = x.to(torch.float32, memory_format=torch.contiguous_format)
            x = (x - self.mean) / self.std
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True)
            if self.train and self.random_erasing > 0:
                x = random_erase(x, self.random_erasing, g)
            yield x, y


class _SeededItems(torch.utils.data.Dataset):
    """An ImageFolder (or a subset of one) whose item (index, seed) applies the transform under
    a fixed torch seed, so augmentation does not depend on which worker serves it."""

    def __init__(self, folder: Any, indices: Sequence[int] | None = None) -> None:
        self.folder = folder
        self.indices = list(range(len(folder))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:
        i, seed = item
        path, label = self.folder.samples[self.indices[i]]
        try:
            image = self.folder.loader(path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.folder.transform(image), label
        except (OSError, ValueError, SyntaxError) as err:  # PIL: empty, truncated, not an image
            raise DataError(
                f"{path}: unreadable image ({err}); remove or replace it, and run again"
            ) from None


class _SeededOrder(torch.utils.data.Sampler):
    """Yields (index, augmentation seed) for one epoch's shard, from batch `start` on."""

    def __init__(self, loader: FolderLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[int, int]]:
        ld = self.loader
        order = ld.order()
        for j in range(ld.start * ld.batch_size, len(order)):
            i = int(order[j])
            yield i, batch_seed(ld.seed, ld.epoch, i)

    def __len__(self) -> int:
        return self.loader.samples() - self.loader.start * self.loader.batch_size


class FolderLoader(_EpochOrder):
    """DataLoader over an image folder: workers, pinned memory, persistent workers."""

    def __init__(
        self,
        folder: Any,
        indices: Sequence[int] | None,
        *,
        batch_size: int,
        device: torch.device,
        train: bool,
        workers: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.items = _SeededItems(folder, indices)
        self.classes = tuple(folder.classes)
        super().__init__(
            len(self.items), batch_size=batch_size, train=train, seed=seed, rank=rank, world=world
        )
        self.device = device
        self.start = 0
        self.dl = torch.utils.data.DataLoader(
            self.items,
            batch_size=batch_size,
            sampler=_SeededOrder(self),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=train,
        )

    def iterate(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.start = start
        try:
            for x, y in self.dl:
                yield (
                    x.to(self.device, non_blocking=True),
                    y.to(self.device, non_blocking=True),
                )
        except DataError as err:
            raise DataError(worker_message(str(err))) from None
        finally:
            self.start = 0


def worker_message(text: str) -> str:
    """The message of an error raised in a DataLoader worker, without the worker's traceback
    that the DataLoader puts before it."""
    if "Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    name, sep, message = last.partition(": ")
    return message if sep and name.rsplit(".", 1)[-1].endswith("Error") else last
