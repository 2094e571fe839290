"""Datasets: the CIFAR-10 subset read as is, batched on-device augmentation against per-sample
references, the deterministic, resumable and sharded loader, the fixed validation split, and the
ImageNet-100 class check."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from specs import MINI, needs_mini, run_cli

from effbench.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET100_CLASSES,
    ArrayData,
    CifarUnpickler,
    TensorLoader,
    check_imagenet100,
    load_cifar10,
    mix_batch,
    random_crop,
    split_validation,
)
from effbench.errors import DataError


@needs_mini
def test_reads_cifar_subset_as_is_from_dir_or_parent() -> None:
    train, test = load_cifar10(MINI, download=False)
    assert train.images.shape == (4660, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (932, 3, 32, 32)
    assert set(train.labels.unique().tolist()) == set(range(10))
    again, _ = load_cifar10(MINI / "cifar-10-batches-py", download=False)
    assert torch.equal(again.images, train.images)


def test_random_crop_matches_per_sample_reference() -> None:
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = random_crop(x, 2, g1)
    oy = torch.randint(0, 5, (6,), generator=g2)
    ox = torch.randint(0, 5, (6,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(6):
        ref = padded[b, :, oy[b] : oy[b] + 8, ox[b] : ox[b] + 8]
        assert torch.equal(out[b], ref)


def test_mix_batch_targets_are_distributions() -> None:
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for kw in ({"mixup": 0.8, "cutmix": 0.0}, {"mixup": 0.0, "cutmix": 1.0}):
        mixed, target = mix_batch(x, y, 10, g=torch.Generator().manual_seed(0), **kw)
        assert mixed.shape == x.shape
        assert torch.allclose(target.sum(-1), torch.ones(8))


def _loader(data: ArrayData, **kw: object) -> TensorLoader:
    return TensorLoader(
        data,
        batch_size=4,
        device=torch.device("cpu"),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        image_size=8,
        train=True,
        seed=1,
        crop_padding=2,
        hflip=True,
        **kw,
    )


def test_tensor_loader_is_deterministic_resumable_and_sharded() -> None:
    data = ArrayData(
        torch.randint(0, 256, (22, 3, 8, 8), dtype=torch.uint8), torch.arange(22), ("a",)
    )
    full = list(_loader(data).iterate())
    assert len(full) == 5  # 22 // 4, last partial batch dropped
    again = list(_loader(data).iterate(start=2))
    for (xa, ya), (xb, yb) in zip(full[2:], again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _loader(data)
    other.set_epoch(1)
    assert not torch.equal(next(other.iterate())[1], full[0][1])  # a new order each epoch
    shards = [_loader(data, rank=r, world=2) for r in (0, 1)]
    seen = [torch.cat([y for _, y in s.iterate()]) for s in shards]
    assert len(shards[0]) == 2 and not set(seen[0].tolist()) & set(seen[1].tolist())


def test_validation_split_is_fixed_and_disjoint() -> None:
    a_tr, a_val = split_validation(100, 0.1, seed=0)
    b_tr, b_val = split_validation(100, 0.1, seed=0)
    assert torch.equal(a_val, b_val) and len(a_val) == 10 and len(a_tr) == 90
    assert not set(a_tr.tolist()) & set(a_val.tolist())


def test_imagenet100_class_check() -> None:
    assert len(set(IMAGENET100_CLASSES)) == 100
    assert check_imagenet100(IMAGENET100_CLASSES) is None
    swapped = [*IMAGENET100_CLASSES[:-1], "n99999999"]
    msg = check_imagenet100(swapped)
    assert msg and "n99999999" in msg and IMAGENET100_CLASSES[-1] in msg
    assert "3 class folders" in check_imagenet100(["n1", "n2", "n3"])


class _Payload:
    """Unpickling this calls os.mkdir: what a crafted batch file could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.target),))


@needs_mini
def test_a_crafted_batch_file_runs_no_code(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    shutil.copytree(MINI / "cifar-10-batches-py", root)
    marker = tmp_path / "ran"
    with (root / "data_batch_1").open("wb") as fh:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1 is not a CIFAR-10 batch .*refused posix"):
        load_cifar10(tmp_path, download=False)
    assert not marker.exists()
    code, out = run_cli(
        "train", "-a", "sdpa", "--data-dir", str(tmp_path), "--epochs", "1", "-o",
        str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 2 and "refused" in out and not marker.exists(), out


@needs_mini
def test_the_real_batches_still_read_with_the_restricted_unpickler() -> None:
    for name in ("data_batch_1", "test_batch"):
        with (MINI / "cifar-10-batches-py" / name).open("rb") as fh:
            entry = CifarUnpickler(fh, encoding="bytes").load()
        assert entry[b"data"].shape[1] == 3072 and len(entry[b"labels"]) == len(entry[b"data"])
