"""`assert_agree`: two computations of the same thing give the same values and gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.testing import assert_close


def assert_agree(
    out: Tensor, ref: Tensor, inputs: Sequence[Tensor], ref_inputs: Sequence[Tensor], *, atol: float
) -> None:
    """`out` (from `inputs`) equals `ref` (from `ref_inputs`, separate leaves with the same
    values), and so do the gradients of one random projection of each."""
    assert_close(out, ref, atol=atol, rtol=0)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for x, y in zip(inputs, ref_inputs, strict=True):
        assert_close(x.grad, y.grad, atol=atol, rtol=0)
