"""The entry points: the training, validation and test loaders for a spec's `[train]`
dataset (`build_loaders`), the test split alone (`eval_loader`), and the class count without
reading images (`class_count`).

This is where the dataset name picks a reader (CIFAR-10, ImageNet-100 folders or synthetic)
and a loader, and where a configuration that cannot work is turned into a `DataError` that
says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from effbench.config.spec import BenchSpec, TrainSection
from effbench.data.arrays import ArrayData, split_validation, synthetic
from effbench.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from effbench.data.folders import folder_classes, imagenet_folders
from effbench.data.loaders import FolderLoader, TensorLoader
from effbench.errors import DataError


@dataclass
class Loaders:
    train: TensorLoader | FolderLoader
    val: TensorLoader | FolderLoader | None
    test: TensorLoader | FolderLoader
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    warning: str | None = None

    @property
    def uses_workers(self) -> bool:
        """Whether training batches come from DataLoader worker processes."""
        return isinstance(self.train, FolderLoader) and self.train.dl.num_workers > 0


def class_count(cfg: TrainSection, *, num_classes: int) -> int:
    """Classes of the configured dataset without reading its images."""
    if cfg.dataset == "cifar10":
        return 10
    if cfg.dataset == "synthetic":
        return num_classes
    root = cfg.data_path() / "train"
    if not root.is_dir():
        raise DataError(
            f"{root} is not a directory: an ImageNet-100 root holds train/ and val/. "
            "Pass --data-dir to such a root."
        )
    return len(folder_classes(root))


def check_full_batch(images: int, batch_size: int, where: Path) -> None:
    """Raises DataError when `images` training images (after the validation split) make no
    full batch."""
    if images < batch_size:
        raise DataError(
            f"{where}: {images} training images (after the validation split) make no full batch "
            f"of {batch_size}; lower train.batch_size, or add images"
        )


def build_loaders(
    cfg: TrainSection,
    *,
    image_size: int,
    channels: int,
    num_classes: int,
    device: torch.device,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> Loaders:
    """Training, validation and test loaders for the `[train]` section's dataset.

    Raises:
        DataError: with what to change.
    """
    data_dir = cfg.data_path()
    per_rank = cfg.batch_size // world
    if per_rank == 0:
        raise DataError(f"train.batch_size {cfg.batch_size} is smaller than {world} processes")
    eval_bs = max(1, cfg.eval_batch_size // world)
    if cfg.dataset == "imagenet100":
        train_f, train_eval_f, test_f, warning = imagenet_folders(data_dir, image_size)
        tr_idx, val_idx = split_validation(len(train_f), cfg.val_fraction, cfg.split_seed)
        check_full_batch(len(tr_idx), per_rank * world, data_dir / "train")
        common = {"device": device, "workers": cfg.workers, "rank": rank, "world": world}
        train = FolderLoader(
            train_f, tr_idx.tolist(), batch_size=per_rank, train=True, seed=seed, **common
        )
        val = (
            FolderLoader(train_eval_f, val_idx.tolist(), batch_size=eval_bs, train=False, **common)
            if len(val_idx)
            else None
        )
        test = FolderLoader(test_f, None, batch_size=eval_bs, train=False, **common)
        return Loaders(
            train,
            val,
            test,
            tuple(train_f.classes),
            len(tr_idx),
            len(val_idx),
            len(test_f),
            warning,
        )
    train_d, test_d, mean, std = _in_memory(
        cfg, data_dir, image_size=image_size, channels=channels, num_classes=num_classes
    )
    tr_idx, val_idx = split_validation(len(train_d), cfg.val_fraction, cfg.split_seed)
    check_full_batch(len(tr_idx), per_rank * world, data_dir)
    common = {"device": device, "mean": mean, "std": std, "image_size": image_size}
    common |= {"rank": rank, "world": world}
    train = TensorLoader(
        train_d.subset(tr_idx),
        batch_size=per_rank,
        train=True,
        seed=seed,
        crop_padding=cfg.crop_padding,
        hflip=cfg.hflip,
        random_erasing=cfg.random_erasing,
        trivial_augment=cfg.trivial_augment,
        **common,
    )
    val = (
        TensorLoader(train_d.subset(val_idx), batch_size=eval_bs, train=False, **common)
        if len(val_idx)
        else None
    )
    test = TensorLoader(test_d, batch_size=eval_bs, train=False, **common)
    return Loaders(train, val, test, train_d.classes, len(tr_idx), len(val_idx), len(test_d))


def _in_memory(
    cfg: TrainSection, data_dir: Path, *, image_size: int, channels: int, num_classes: int
) -> tuple[ArrayData, ArrayData, tuple[float, ...], tuple[float, ...]]:
    """Training and test arrays of CIFAR-10 or `synthetic`, with their normalisation."""
    if cfg.dataset == "cifar10":
        train_d, test_d = load_cifar10(data_dir, download=cfg.download)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
        if channels != 3:
            raise DataError(f"CIFAR-10 has 3 channels; set backbone.channels = 3 (not {channels})")
    else:
        train_d, test_d = synthetic(
            cfg.synthetic_samples, image_size=image_size, channels=channels, classes=num_classes
        )
        mean, std = (0.5,) * channels, (0.25,) * channels
    if len(train_d) == 0 or len(test_d) == 0:
        raise DataError(f"{data_dir}: the training or test split holds no images")
    return train_d, test_d, tuple(mean), tuple(std)


def eval_loader(
    spec: BenchSpec, *, device: torch.device, image_size: int | None = None
) -> TensorLoader | FolderLoader:
    """The test split of the spec's `[train]` dataset at `image_size` (default: the
    backbone's; images are resized as the training loaders resize them), in batches of
    `eval_batch_size`.

    Raises:
        DataError: with what to change.
    """
    cfg, bb = spec.train, spec.backbone
    image_size = image_size or bb.image_size
    channels, num_classes = bb.channels, bb.num_classes
    data_dir = cfg.data_path()
    if cfg.dataset == "imagenet100":
        _, _, test_f, _ = imagenet_folders(data_dir, image_size)
        return FolderLoader(
            test_f,
            None,
            batch_size=cfg.eval_batch_size,
            train=False,
            device=device,
            workers=cfg.workers,
        )
    _, test_d, mean, std = _in_memory(
        cfg, data_dir, image_size=image_size, channels=channels, num_classes=num_classes
    )
    return TensorLoader(
        test_d,
        batch_size=cfg.eval_batch_size,
        train=False,
        device=device,
        mean=mean,
        std=std,
        image_size=image_size,
    )
