"""Mixup and CutMix on a normalised batch, with soft targets: applied by the trainer after the
loader's augmentation, drawing from the batch's seeded generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
