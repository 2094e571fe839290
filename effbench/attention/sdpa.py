"""Exact attention through torch.nn.functional.scaled_dot_product_attention.

O(N^2) time; the fused kernels (flash, memory-efficient, cuDNN, CPU flash) keep memory O(N).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

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


# Substrings of CUDA kernel names and the SDPA backend each one means, checked in this order:
# cuDNN's fused kernels ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop...") also say
# "flash"; the memory-efficient kernels are CUTLASS FMHA ("fmha_cutlassF_...", templated on
# "PyTorchMemEffAttention::AttentionKernel"); FlashAttention's are "pytorch_flash::flash_fwd...".
KERNEL_NAME_BACKENDS = (
    ("cudnn", "cudnn"),
    ("fmha_cutlass", "efficient"),
    ("memeffattention", "efficient"),
    ("flash", "flash"),
)


def backend_from_kernels(kernel_names: list[str]) -> str | None:
    """The SDPA backend that the CUDA kernels which ran show: 'cudnn', 'efficient' or
    'flash'; None when no fused attention kernel ran (the math path, or no SDPA at all)."""
    lowered = [k.lower() for k in kernel_names]
    for marker, backend in KERNEL_NAME_BACKENDS:
        if any(marker in k for k in lowered):
            return backend
    return None


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


def dispatched_ops(fn: Callable[[], Any]) -> list[str]:
    """The aten op names (without overload) that fn dispatches, in order, under no_grad.

    fn must not enter `torch.inference_mode` itself: under it, composite ops such as
    `scaled_dot_product_attention` reach the recorder whole, hiding the kernel they choose.
    """
    rec = _OpRecorder()
    with torch.no_grad(), rec:
        fn()
    return rec.names


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
        return backend_from_ops(dispatched_ops(lambda: self.attend(q, k, v)))
