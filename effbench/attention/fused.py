"""Softmax attention (Vaswani et al. 2017, "Attention Is All You Need") with one fused QKV
projection and the (N, N) weights materialised.

O(N^2) time and memory.
"""

from __future__ import annotations

from effbench.attention.base import ExactAttention
from effbench.attention.registry import register


@register("fused")
class FusedAttention(ExactAttention):
    """The base contract's fused W_qkv with explicit softmax attention."""
