"""Batched TrivialAugmentWide: torchvision's op set and magnitudes, each op per image against
torchvision.transforms.v2.functional, one op per image, reproducible per seed, and a training run
through the command line with it on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from specs import TINY_BACKBONE, run_cli
from torchvision.transforms import InterpolationMode, TrivialAugmentWide
from torchvision.transforms.v2 import functional as TF

from effbench.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    TA_BINS,
    TA_OPS,
    ArrayData,
    TensorLoader,
    loaders,
    trivial_augment,
    trivial_augment_draw,
    trivial_augment_ops,
    trivial_augment_space,
)
from effbench.errors import DataError
from effbench.results import read_jsonl

NEAREST = InterpolationMode.NEAREST
GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}

# torchvision's `_apply_op` (transforms/autoaugment.py) for a uint8 tensor image, through v2.
REFERENCE: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "Identity": lambda img, m: img,
    "ShearX": lambda img, m: TF.affine(
        img,
        angle=0.0,
        translate=[0, 0],
        scale=1.0,
        shear=[math.degrees(math.atan(m)), 0.0],
        interpolation=NEAREST,
        center=[0, 0],
    ),
    "ShearY": lambda img, m: TF.affine(
        img,
        angle=0.0,
        translate=[0, 0],
        scale=1.0,
        shear=[0.0, math.degrees(math.atan(m))],
        interpolation=NEAREST,
        center=[0, 0],
    ),
    "TranslateX": lambda img, m: TF.affine(
        img, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0], interpolation=NEAREST
    ),
    "TranslateY": lambda img, m: TF.affine(
        img, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0], interpolation=NEAREST
    ),
    "Rotate": lambda img, m: TF.rotate(img, m, interpolation=NEAREST),
    "Brightness": lambda img, m: TF.adjust_brightness(img, 1.0 + m),
    "Color": lambda img, m: TF.adjust_saturation(img, 1.0 + m),
    "Contrast": lambda img, m: TF.adjust_contrast(img, 1.0 + m),
    "Sharpness": lambda img, m: TF.adjust_sharpness(img, 1.0 + m),
    "Posterize": lambda img, m: TF.posterize(img, int(m)),
    "Solarize": lambda img, m: TF.solarize(img, m),
    "AutoContrast": lambda img, m: TF.autocontrast(img),
    "Equalize": lambda img, m: TF.equalize(img),
}


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Random uint8 images, a quarter of them dull (a narrow range: autocontrast and equalize
    have work to do)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    x[: n // 4] = x[: n // 4] // 4 + 60
    return x


def test_op_set_and_magnitudes_are_torchvisions() -> None:
    table, signed = trivial_augment_space()
    space = TrivialAugmentWide()._augmentation_space(TA_BINS)
    assert tuple(space) == TA_OPS
    for i, (name, (magnitudes, is_signed)) in enumerate(space.items()):
        assert bool(signed[i]) == is_signed, name
        want = magnitudes.double() if magnitudes.ndim else torch.zeros(TA_BINS).double()
        assert torch.equal(table[i], want), name


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 24, 20)], ids=["rgb32", "gray24x20"])
def test_every_op_matches_torchvision_per_image(shape: tuple[int, int, int]) -> None:
    """A shuffled batch, every op at every magnitude bin and both signs: each image as
    torchvision.transforms.v2.functional makes it alone."""
    table, signed = trivial_augment_space()
    op = torch.arange(len(TA_OPS)).repeat_interleave(2 * TA_BINS)
    bins = torch.arange(TA_BINS).repeat(2 * len(TA_OPS))
    sign = torch.tensor([1.0, -1.0]).repeat_interleave(TA_BINS).repeat(len(TA_OPS))
    magnitude = table[op, bins] * torch.where(signed[op], sign, 1.0)
    perm = torch.randperm(len(op))
    op, magnitude = op[perm], magnitude[perm]
    x = _images(len(op), shape)
    out = trivial_augment_ops(x, op, magnitude)
    assert out.shape == x.shape and out.dtype == torch.uint8
    worst: dict[str, float] = {}
    for i in range(len(op)):
        name, m = TA_OPS[int(op[i])], float(magnitude[i])
        ref = REFERENCE[name](x[i], m)
        diff = (out[i].int() - ref.int()).abs()
        if name in GEOMETRIC:  # nearest sampling: a pixel on a rounding tie may differ
            score = float((diff > 0).float().mean())
        else:
            score = float(diff.max())
        worst[name] = max(worst.get(name, 0.0), score)
    bad = {
        k: v for k, v in worst.items() if (v > 0.02 if k in GEOMETRIC else v > 1)
    }  # geometric: share of pixels differing; colour: largest difference in uint8 steps
    assert not bad, f"differ from torchvision: {bad}"


def test_each_image_draws_its_own_op_and_magnitude() -> None:
    g = torch.Generator().manual_seed(0)
    op, magnitude = trivial_augment_draw(512, g)
    counts = torch.bincount(op, minlength=len(TA_OPS))
    assert (counts > 10).all() and (counts < 75).all(), counts.tolist()  # about 37 each
    table, signed = trivial_augment_space()
    for k, name in enumerate(TA_OPS):
        m = magnitude[op == k]
        assert torch.isin(m.abs(), table[k].abs()).all(), name
        if signed[k]:
            assert (m < 0).any() and (m > 0).any(), name
        else:
            assert (m >= 0).all(), name
    # one image, 512 times: the copies come out in many different ways
    x = _images(1, (3, 32, 32), seed=3).expand(512, -1, -1, -1).contiguous()
    out = trivial_augment(x, torch.Generator().manual_seed(0))
    assert len(torch.unique(out.flatten(1), dim=0)) > 150


def test_same_seed_same_batch_and_shape_dtype_kept() -> None:
    x = _images(64, (3, 32, 32))
    a = trivial_augment(x, torch.Generator().manual_seed(5))
    b = trivial_augment(x, torch.Generator().manual_seed(5))
    c = trivial_augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, x)
    empty = x[:0]
    assert trivial_augment(empty, torch.Generator().manual_seed(0)).shape == empty.shape


def _loader(data: ArrayData, **kw: object) -> TensorLoader:
    return TensorLoader(
        data,
        batch_size=16,
        device=torch.device("cpu"),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        image_size=32,
        train=True,
        seed=1,
        crop_padding=4,
        hflip=True,
        random_erasing=0.5,
        **kw,
    )


def test_loader_applies_it_reproducibly_between_flip_and_erasing() -> None:
    data = ArrayData(_images(48, (3, 32, 32)), torch.arange(48), ("a",))
    on = [x for x, _ in _loader(data, trivial_augment=True).iterate()]
    again = [x for x, _ in _loader(data, trivial_augment=True).iterate(start=1)]
    off = [x for x, _ in _loader(data).iterate()]
    assert len(on) == 3 and all(torch.equal(a, b) for a, b in zip(on[1:], again, strict=True))
    assert all(x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) for x in on)
    assert not any(torch.equal(a, b) for a, b in zip(on, off, strict=True))
    four = ArrayData(torch.zeros(8, 4, 8, 8, dtype=torch.uint8), torch.arange(8), ("a",))
    with pytest.raises(DataError, match="trivial_augment"):
        _loader(four, trivial_augment=True)


SPEC = (
    TINY_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[train]
epochs = 1
batch_size = 32
eval_batch_size = 128
device = "cpu"
synthetic_samples = 128
"""
)


def test_training_runs_end_to_end_with_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(len(x))
        return trivial_augment(x, g)

    monkeypatch.setattr(loaders, "trivial_augment", counted)  # where TensorLoader looks it up
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC)
    out = tmp_path / "runs"
    args = ["train", "-s", str(spec), "-a", "sdpa", "--dataset", "synthetic", "--epochs", "1"]
    sets = ["--set", "train.trivial_augment=true", "--set", "train.random_erasing=0.25"]
    code, text = run_cli(*args, *sets, "--device", "cpu", "-o", str(out))
    assert code == 0, text
    good, bad = read_jsonl(out / "sdpa" / "seed0" / "train.jsonl")
    assert not bad and [r["kind"] for r in good] == ["train_epoch", "train"]
    final = good[-1]
    assert final["status"] == "ok" and math.isfinite(good[0]["train_loss"])
    assert calls == [32] * 3  # 115 training images (10 % held out): 3 batches, not eval
    resolved = json.loads((out / "sdpa" / "seed0" / "spec.json").read_text())
    assert resolved["train"]["trivial_augment"] is True
