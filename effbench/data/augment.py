"""Batched augmentation on the training device: random crop, horizontal flip, random erasing
and TrivialAugmentWide, each image of a batch with its own draw from one generator.

Augmenting a whole batch where it already lives, rather than per image in worker processes,
keeps in-memory datasets off the DataLoader; TrivialAugmentWide reproduces torchvision's op
set, magnitudes and arithmetic so that it can be checked against torchvision image by image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
