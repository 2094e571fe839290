"""The attention mechanisms: the contract (`base`), the registry, and one module per kind.

This package only re-exports; mechanisms are found by `registry.discover`, never listed.
"""

from __future__ import annotations

from effbench.attention.base import Attention, ExactAttention
from effbench.attention.registry import (
    attention_class,
    available,
    build_attention,
    discover,
    register,
)

__all__ = [
    "Attention",
    "ExactAttention",
    "attention_class",
    "available",
    "build_attention",
    "discover",
    "register",
]
