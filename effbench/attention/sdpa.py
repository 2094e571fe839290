"""Exact attention through torch.nn.functional.scaled_dot_product_attention.

O(N^2) time; the fused kernels (flash, memory-efficient, cuDNN, CPU flash) keep memory O(N).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from effbench.attention import register
from effbench.attention.base import ExactAttention
from effbench.attention.configs import SdpaConfig

_FORCED = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

# aten kernels behind F.scaled_dot_product_attention, and the backend each one means.
KERNEL_BACKENDS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def backend_from_ops(op_names: list[str]) -> str:
    """The SDPA backend that a list of dispatched aten op names shows ('math' when none)."""
    for name in op_names:
        if name in KERNEL_BACKENDS:
            return KERNEL_BACKENDS[name]
    return "math"


@register("sdpa")
class SdpaAttention(ExactAttention):
    """Fused W_qkv + F.scaled_dot_product_attention, optionally forced onto one backend."""

    def __init__(self, cfg: SdpaConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        if self.cfg.backend == "auto":
            yield
        else:
            with sdpa_kernel(_FORCED[self.cfg.backend]):
                yield

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with self._backend():
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)

    @torch.no_grad()
    def backend_used(self, x: Tensor) -> str:
        """Run one forward and report which SDPA kernel actually executed."""
        q, k, v = self.qkv_heads(x)
        rec = _OpRecorder()
        with rec:
            self.attend(q, k, v)
        return backend_from_ops(rec.names)
