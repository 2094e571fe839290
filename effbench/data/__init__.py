"""Datasets for `effbench train`: CIFAR-10, ImageNet-100 (an ImageFolder tree) and synthetic.

CIFAR-sized data lives in memory as one uint8 tensor on the training device and is augmented
there a batch at a time (`TensorLoader`); folder datasets go through DataLoader workers.
Both draw every random number (sample order, augmentation) from generators seeded by
(seed, epoch, batch), so a run resumed mid-epoch sees exactly the batches it would have seen.

Modules: `seeds` (the seed function), `arrays` (in-memory datasets, synthetic data, the
validation split), `cifar` (CIFAR-10 batches), `folders` (ImageNet-100 folders), `augment`
(batched on-device augmentation, TrivialAugmentWide), `mix` (mixup and CutMix), `loaders`
(the batched loaders) and `dataset` (the loaders for a spec's dataset). This package re-exports
their public names.
"""

from __future__ import annotations

from effbench.data.arrays import SYNTHETIC_TEST_FRACTION, ArrayData, split_validation, synthetic
from effbench.data.augment import (
    TA_BINS,
    TA_OPS,
    random_crop,
    random_erase,
    random_hflip,
    trivial_augment,
    trivial_augment_draw,
    trivial_augment_ops,
    trivial_augment_space,
)
from effbench.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR_DIR,
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    CifarUnpickler,
    find_cifar_dir,
    load_cifar10,
    read_cifar10,
)
from effbench.data.dataset import (
    Loaders,
    build_loaders,
    check_full_batch,
    class_count,
    eval_loader,
)
from effbench.data.folders import (
    IMAGENET100_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_imagenet100,
    imagenet_folders,
)
from effbench.data.loaders import FolderLoader, TensorLoader, worker_message
from effbench.data.mix import mix_batch
from effbench.data.seeds import batch_seed

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_DIR",
    "CIFAR_TEST_FILE",
    "CIFAR_TRAIN_FILES",
    "IMAGENET100_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_TEST_FRACTION",
    "TA_BINS",
    "TA_OPS",
    "ArrayData",
    "CifarUnpickler",
    "FolderLoader",
    "Loaders",
    "TensorLoader",
    "batch_seed",
    "build_loaders",
    "check_full_batch",
    "check_imagenet100",
    "class_count",
    "eval_loader",
    "find_cifar_dir",
    "imagenet_folders",
    "load_cifar10",
    "mix_batch",
    "random_crop",
    "random_erase",
    "random_hflip",
    "read_cifar10",
    "split_validation",
    "synthetic",
    "trivial_augment",
    "trivial_augment_draw",
    "trivial_augment_ops",
    "trivial_augment_space",
    "worker_message",
]
