"""Exact attention through torch.nn.functional.scaled_dot_product_attention.

O(N^2) time; the fused kernels (flash, memory-efficient, cuDNN, CPU flash) keep memory O(N)
(Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from effbench.attention.base import ExactAttention
from effbench.attention.registry import register
from effbench.config.attention import SdpaConfig

_FORCED = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


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

    def attend_sized(self, q: Tensor, k: Tensor, v: Tensor, log_size: Tensor) -> Tensor:
        # proportional attention as an additive mask: log s on every key's logit
        bias = log_size[:, None, None, :].to(q.dtype)
        with self._backend():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
