"""Datasets for `effbench train`: CIFAR-10, ImageNet-100 (an ImageFolder tree) and synthetic.

CIFAR-sized data lives in memory as one uint8 tensor on the training device and is augmented
there a batch at a time (`TensorLoader`); folder datasets go through DataLoader workers.
Both draw every random number (sample order, augmentation) from generators seeded by
(seed, epoch, batch), so a run resumed mid-epoch sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.config.spec import BenchSpec, TrainSection
from effbench.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
SYNTHETIC_TEST_FRACTION = 0.25

# The ImageNet-100 subset of Tian, Krishnan and Isola, "Contrastive Multiview Coding" (2019),
# as listed in the CMC repository's imagenet100.txt.
_IMAGENET100 = """
    n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245
    n01773797 n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148
    n03530642 n04435653 n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993
    n04493381 n02109047 n04111531 n02877765 n04429376 n02009229 n01978455 n02106550 n01820546
    n01692333 n07714571 n02974003 n02114855 n03785016 n03764736 n03775546 n02087046 n07836838
    n04099969 n04592741 n03891251 n02701002 n03379051 n02259212 n07715103 n03947888 n04026417
    n02326432 n03637318 n01980166 n02113799 n02086240 n03903868 n02483362 n04127249 n02089973
    n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 n02113978 n03787032
    n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029 n03837869
    n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
    n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672
    n02090622
"""
IMAGENET100_CLASSES = tuple(_IMAGENET100.split())


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, batch, ...), stable across runs and machines."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B97F4A7C15)) * 1099511628211) % (1 << 63)
    return h


# ---------------------------------------------------------------------------- CIFAR-10


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


def find_cifar_dir(data_dir: Path) -> Path | None:
    """`data_dir` itself when it holds the CIFAR-10 batches, else `data_dir/cifar-10-batches-py`."""
    for d in (data_dir, data_dir / CIFAR_DIR):
        if (d / CIFAR_TEST_FILE).is_file() or (d / CIFAR_TRAIN_FILES[0]).is_file():
            return d
    return None


class CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 batch and nothing else: dicts, lists, bytes, strings, numbers and
    numpy arrays. Any other global a pickle names (a function to call, say) is refused before
    it is looked up, so a crafted batch file cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, "
                "numbers and numpy arrays"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    if not path.is_file():
        raise DataError(f"{path} is missing: a CIFAR-10 directory holds {CIFAR_DIR}'s 6 batches")
    try:
        with path.open("rb") as fh:
            entry = CifarUnpickler(fh, encoding="bytes").load()
        data = entry[b"data"]
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(list(entry[b"labels"]), dtype=torch.int64)
    except Exception as err:  # any unpickling or shape problem means the file is not usable
        raise DataError(f"{path} is not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if len(images) != len(y):
        raise DataError(f"{path}: {len(images)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return images.contiguous(), y


def read_cifar10(root: Path) -> tuple[ArrayData, ArrayData]:
    """(train, test) from a `cifar-10-batches-py` directory, read as is: any number of images
    per batch, no checksum check (a subset such as cifar10-mini reads like the full set)."""
    parts = [_read_cifar_batch(root / f) for f in CIFAR_TRAIN_FILES]
    test = _read_cifar_batch(root / CIFAR_TEST_FILE)
    train = ArrayData(
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), CIFAR10_CLASSES
    )
    return train, ArrayData(*test, CIFAR10_CLASSES)


def load_cifar10(data_dir: Path, *, download: bool) -> tuple[ArrayData, ArrayData]:
    """CIFAR-10 from `data_dir` (the batches directory or its parent), downloaded there by
    torchvision when absent and `download` is on.

    Raises:
        DataError: naming --data-dir and --dataset synthetic when the data is absent and
            cannot be downloaded, or when a file is unreadable.
    """
    found = find_cifar_dir(data_dir)
    if found is None and download:
        try:
            from torchvision.datasets import CIFAR10

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                CIFAR10(str(data_dir), train=True, download=True)
        except Exception as err:
            raise DataError(
                f"CIFAR-10 is not in {data_dir} and could not be downloaded "
                f"({type(err).__name__}: {err}). Pass --data-dir to a directory holding "
                f"{CIFAR_DIR}, or --dataset synthetic for a run without data."
            ) from None
        found = find_cifar_dir(data_dir)
    if found is None:
        where = "does not exist" if not data_dir.exists() else f"holds no {CIFAR_DIR}"
        raise DataError(
            f"data directory {data_dir} {where}, and downloading is off. Pass --data-dir to a "
            f"directory holding {CIFAR_DIR}, turn on train.download, or use --dataset synthetic."
        )
    return read_cifar10(found)


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


# ---------------------------------------------------------------------------- batched augmentation


def random_crop(x: Tensor, padding: int, g: torch.Generator) -> Tensor:
    """Per-sample random crop of (B, C, H, W) after zero padding, as one gather."""
    B, _, H, W = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=g).to(x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def random_hflip(x: Tensor, g: torch.Generator) -> Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erase(x: Tensor, p: float, g: torch.Generator) -> Tensor:
    """Zero one random rectangle (2-33 % of the area, aspect 0.3-3.3) in a fraction p of the
    images of a normalised batch (zero is the dataset mean)."""
    B, _, H, W = x.shape
    area = torch.empty(B).uniform_(0.02, 0.33, generator=g) * H * W
    log_ratio = torch.empty(B).uniform_(math.log(0.3), math.log(3.3), generator=g)
    h = (area * log_ratio.exp()).sqrt().round().clamp(1, H).long()
    w = (area / log_ratio.exp()).sqrt().round().clamp(1, W).long()
    top = (torch.rand(B, generator=g) * (H - h + 1)).long()
    left = (torch.rand(B, generator=g) * (W - w + 1)).long()
    on = torch.rand(B, generator=g) < p
    ys = torch.arange(H)[None, :]
    xs = torch.arange(W)[None, :]
    in_y = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (B, H)
    in_x = (xs >= left[:, None]) & (xs < (left + w)[:, None])  # (B, W)
    mask = (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None]).to(x.device)
    return x.masked_fill(mask[:, None], 0.0)


# TrivialAugmentWide (Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art
# Data Augmentation") as torchvision defines it (transforms/autoaugment.py: TrivialAugmentWide's
# op set and magnitudes, `_apply_op`'s arguments), in torchvision's order: the five geometric ops
# are consecutive, so a batch sorted by op has them in one slice.
TA_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
TA_BINS = 31
_TA_GEOMETRIC = slice(1, 6)
_TA_BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")


def trivial_augment_space(bins: int = TA_BINS) -> tuple[Tensor, Tensor]:
    """(magnitudes (ops, bins) float64, signed (ops,) bool) of TrivialAugmentWide: torchvision's
    `_augmentation_space` with its float32 values widened, zeros for ops without a magnitude."""
    lin = {
        "ShearX": (0.0, 0.99),
        "ShearY": (0.0, 0.99),
        "TranslateX": (0.0, 32.0),  # pixels, whatever the image size (as torchvision)
        "TranslateY": (0.0, 32.0),
        "Rotate": (0.0, 135.0),  # degrees
        "Brightness": (0.0, 0.99),
        "Color": (0.0, 0.99),
        "Contrast": (0.0, 0.99),
        "Sharpness": (0.0, 0.99),
        "Solarize": (255.0, 0.0),  # threshold
    }
    table = torch.zeros(len(TA_OPS), bins, dtype=torch.float64)
    for name, (lo, hi) in lin.items():
        table[TA_OPS.index(name)] = torch.linspace(lo, hi, bins).double()
    bits = 8 - (torch.arange(bins) / ((bins - 1) / 6)).round().int()
    table[TA_OPS.index("Posterize")] = bits.double()
    signed = torch.tensor([n in lin and n != "Solarize" for n in TA_OPS])
    return table, signed


_TA_MAGNITUDES, _TA_SIGNED = trivial_augment_space()


def trivial_augment_draw(batch: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per image, an index into TA_OPS and its magnitude, on the CPU ((B,) int64, (B,) float64):
    op and magnitude bin uniform, the sign flipped with probability 1/2 where torchvision
    signs it."""
    op = torch.randint(0, len(TA_OPS), (batch,), generator=g)
    bin_ = torch.randint(0, TA_BINS, (batch,), generator=g)
    flip = torch.randint(0, 2, (batch,), generator=g).bool() & _TA_SIGNED[op]
    magnitude = _TA_MAGNITUDES[op, bin_]
    return op, torch.where(flip, -magnitude, magnitude)


def trivial_augment(x: Tensor, g: torch.Generator) -> Tensor:
    """TrivialAugmentWide on a uint8 batch (B, C, H, W), C 1 or 3: each image its own op and
    magnitude, drawn from `g`."""
    op, magnitude = trivial_augment_draw(x.shape[0], g)
    return trivial_augment_ops(x, op, magnitude)


def trivial_augment_ops(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Image b of a uint8 batch (B, C, H, W) through TA_OPS[op[b]] at magnitude[b] (CPU tensors),
    as torchvision's `_apply_op` (nearest interpolation, fill 0).

    The batch is sorted by op and each op runs once on its slice, with per-image parameters
    (computed on the CPU, moved in one copy): the geometric ops as one grid_sample.
    """
    assert x.dtype == torch.uint8, f"TrivialAugment takes uint8 images, not {x.dtype}"
    B, _, H, W = x.shape
    if B == 0:
        return x
    order = torch.argsort(op, stable=True)
    counts = torch.bincount(op, minlength=len(TA_OPS)).tolist()
    params = _ta_params(op[order], magnitude[order], height=H, width=W).to(x.device)
    xs = x.index_select(0, order.to(x.device))
    parts, start, k = [], 0, 0
    for width, apply in _TA_GROUPS:
        n = sum(counts[k : k + width])
        if n:
            parts.append(apply(xs[start : start + n], params[start : start + n]))
        start, k = start + n, k + width
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(B)
    return torch.cat(parts).index_select(0, inverse.to(x.device))


def _ta_params(op: Tensor, m: Tensor, *, height: int, width: int) -> Tensor:
    """Per image (B, 6) float32, computed in float64 as torchvision computes them from Python
    floats: the inverse affine matrix of a geometric op, (factor, 1 - factor) of a blend, the
    bit mask of Posterize, the threshold of Solarize; zeros otherwise."""
    params = torch.zeros(len(op), 6, dtype=torch.float64)
    geometric = (op >= _TA_GEOMETRIC.start) & (op < _TA_GEOMETRIC.stop)
    params[geometric] = _ta_theta(op[geometric], m[geometric], height=height, width=width)
    blend = torch.isin(op, torch.tensor([TA_OPS.index(n) for n in _TA_BLENDS]))
    factor = 1.0 + m[blend]
    params[blend, 0], params[blend, 1] = factor, 1.0 - factor
    posterize = op == TA_OPS.index("Posterize")
    params[posterize, 0] = 256.0 - 2.0 ** (8.0 - m[posterize])  # keeps the top `bits` bits
    solarize = op == TA_OPS.index("Solarize")
    params[solarize, 0] = m[solarize]
    return params.float()


def _ta_theta(op: Tensor, m: Tensor, *, height: int, width: int) -> Tensor:
    """(n, 6) float64 inverse affine matrices, in pixel coordinates centred on the image, of the
    geometric ops: torchvision's `_get_inverse_affine_matrix` with `_apply_op`'s arguments."""
    zero = torch.zeros_like(m)

    def where(name: str, value: Tensor | float) -> Tensor:
        return torch.where(op == TA_OPS.index(name), value, zero)

    rot = where("Rotate", torch.deg2rad(-torch.remainder(m, 360.0)))  # rotate passes -angle
    shear = torch.deg2rad(torch.rad2deg(torch.atan(m)))  # degrees(atan(magnitude))
    sx, sy = where("ShearX", shear), where("ShearY", shear)
    tx, ty = where("TranslateX", m.trunc()), where("TranslateY", m.trunc())  # int(magnitude)
    # The shears turn about center=[0, 0], the top-left corner: (-W/2, -H/2) from the centre.
    cx = where("ShearX", -0.5 * width) + where("ShearY", -0.5 * width)
    cy = where("ShearX", -0.5 * height) + where("ShearY", -0.5 * height)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a  # the inverse of [[a, b], [c, d]] (determinant 1)
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=-1)


def _ta_identity(x: Tensor, p: Tensor) -> Tensor:
    return x


def _ta_geometric(x: Tensor, p: Tensor) -> Tensor:
    """Each image through its own inverse affine matrix p (n, 6): the sampling grid as
    torchvision's `_affine_grid` builds it (so nearest picks the same pixels), one grid_sample."""
    n, _, H, W = x.shape
    xs = torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W, device=x.device)
    ys = torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H, device=x.device)
    base = torch.stack(
        [xs.expand(H, W), ys[:, None].expand(H, W), torch.ones(H, W, device=x.device)], dim=-1
    )  # (H, W, 3): centred pixel coordinates of the output
    scale = torch.tensor([0.5 * W, 0.5 * H], device=x.device)
    theta = p.view(n, 2, 3).transpose(1, 2) / scale  # (n, 3, 2)
    grid = torch.matmul(base.view(1, H * W, 3), theta).view(n, H, W, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _per_image(p: Tensor, column: int) -> Tensor:
    return p[:, column].view(-1, 1, 1, 1)


def _ta_brightness(x: Tensor, p: Tensor) -> Tensor:
    return x.mul(_per_image(p, 0)).clamp_(0, 255).to(torch.uint8)


def _ta_gray(x: Tensor) -> Tensor:
    """(n, 1, H, W) float32 luma, floored as torchvision floors it for uint8 images."""
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _ta_blend(x: Tensor, other: Tensor, p: Tensor) -> Tensor:
    """torchvision's `_blend` with a factor per image: x * f + other * (1 - f), clamped."""
    out = x.mul(_per_image(p, 0)).add_(other * _per_image(p, 1))
    return out.clamp_(0, 255).to(torch.uint8)


def _ta_color(x: Tensor, p: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _ta_blend(x, _ta_gray(x), p)


def _ta_contrast(x: Tensor, p: Tensor) -> Tensor:
    return _ta_blend(x, _ta_gray(x).mean(dim=(-3, -2, -1), keepdim=True), p)


def _ta_sharpness(x: Tensor, p: Tensor) -> Tensor:
    """Blend with torchvision's smoothing kernel (1s around a 5, over 13), borders unchanged."""
    _, C, H, W = x.shape
    if H <= 2 or W <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=x.device)
    out = x.float()
    blurred = F.conv2d(out, kernel.expand(C, 1, 3, 3), groups=C).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_(blurred.sub_(inner).mul_(_per_image(p, 1)))
    return out.clamp_(0, 255).to(torch.uint8)


def _ta_posterize(x: Tensor, p: Tensor) -> Tensor:
    return x & _per_image(p, 0).to(torch.uint8)


def _ta_solarize(x: Tensor, p: Tensor) -> Tensor:
    return torch.where(x >= _per_image(p, 0), 255 - x, x)


def _ta_autocontrast(x: Tensor, p: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF  # per image and channel already

    return TF.autocontrast(x)


def _ta_equalize(x: Tensor, p: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF  # per image and channel already

    return TF.equalize(x)


# (how many consecutive ops of TA_OPS, the function that applies them to a slice)
_TA_GROUPS = (
    (1, _ta_identity),
    (_TA_GEOMETRIC.stop - _TA_GEOMETRIC.start, _ta_geometric),
    (1, _ta_brightness),
    (1, _ta_color),
    (1, _ta_contrast),
    (1, _ta_sharpness),
    (1, _ta_posterize),
    (1, _ta_solarize),
    (1, _ta_autocontrast),
    (1, _ta_equalize),
)


def mix_batch(
    x: Tensor, y: Tensor, classes: int, *, mixup: float, cutmix: float, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Mixup or CutMix (one of the two per batch when both are on): soft targets (B, classes)."""
    target = F.one_hot(y, classes).to(x.dtype)
    if mixup <= 0 and cutmix <= 0:
        return x, target
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = _beta(alpha, g)
    if use_cutmix:
        H, W = x.shape[2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(H * cut), int(W * cut)
        cy = int(torch.randint(0, H, (1,), generator=g))
        cx = int(torch.randint(0, W, (1,), generator=g))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = x * lam + x[perm] * (1 - lam)
    return x, target * lam + target[perm] * (1 - lam)


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) sample drawn from `g` (the ratio of two Gamma draws)."""
    a = torch._standard_gamma(torch.full((2,), alpha), generator=g)
    return float(a[0] / a.sum())


# ---------------------------------------------------------------------------- loaders


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


# ---------------------------------------------------------------------------- ImageNet-100


def check_imagenet100(classes: Sequence[str]) -> str | None:
    """A warning when the class folders are not the standard ImageNet-100 set, else None."""
    have, want = set(classes), set(IMAGENET100_CLASSES)
    if have == want:
        return None
    if len(have) == 100:
        extra = sorted(have - want)
        missing = sorted(want - have)
        return (
            f"{len(extra)} of the 100 class folders are not in the standard ImageNet-100 list "
            f"(CMC, Tian et al. 2019): {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}"
            f"; missing from it: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    return f"{len(have)} class folders, not the 100 of ImageNet-100; training on them as given"


def _folder_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def imagenet_folders(data_dir: Path, image_size: int) -> tuple[Any, Any, Any, str | None]:
    """(train with training transforms, train with evaluation transforms, val, warning).

    Raises:
        DataError: when train/ or val/ is missing, empty, or their class folders differ.
    """
    from torchvision import datasets, transforms

    train_dir, val_dir = data_dir / "train", data_dir / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(
                f"{d} is not a directory: an ImageNet-100 root holds train/ and val/, with one "
                "folder of images per WordNet id in each. Pass --data-dir to such a root."
            )
    train_classes, val_classes = _folder_classes(train_dir), _folder_classes(val_dir)
    if not train_classes:
        raise DataError(f"{train_dir} holds no class folders")
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between {train_dir} and {val_dir}: only in train: "
            f"{', '.join(only_t[:8]) or '-'}; only in val: {', '.join(only_v[:8]) or '-'}"
        )
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            norm,
        ]
    )
    try:
        train = datasets.ImageFolder(str(train_dir), transform=train_tf)
        train_eval = datasets.ImageFolder(str(train_dir), transform=eval_tf)
        val = datasets.ImageFolder(str(val_dir), transform=eval_tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{data_dir}: {err}") from None
    return train, train_eval, val, check_imagenet100(train_classes)


# ---------------------------------------------------------------------------- entry point


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
    root = Path(cfg.data_dir) / "train"
    if not root.is_dir():
        raise DataError(
            f"{root} is not a directory: an ImageNet-100 root holds train/ and val/. "
            "Pass --data-dir to such a root."
        )
    return len(_folder_classes(root))


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
    data_dir = Path(cfg.data_dir).expanduser()
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
    data_dir = Path(cfg.data_dir).expanduser()
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
