"""The attention registry: one registration per mechanism, looked up by its `kind`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from effbench.attention.base import Attention
from effbench.config.attention import KINDS, AttentionConfig

_REGISTRY: dict[str, type[Attention]] = {}


def register(kind: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: make a mechanism buildable by its config's `kind`."""

    def deco(cls: type[Attention]) -> type[Attention]:
        assert kind in KINDS, f"{kind!r} has no config in effbench.config.attention"
        assert kind not in _REGISTRY, f"attention kind {kind!r} registered twice"
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def available() -> tuple[str, ...]:
    """Registered kinds, in the configs' order."""
    return tuple(k for k in KINDS if k in _REGISTRY)


def attention_class(kind: str) -> type[Attention]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(
            f"unknown attention kind {kind!r}; choose one of {', '.join(available())}"
        ) from None


def build_attention(
    cfg: AttentionConfig | Any, *, dim: int, num_heads: int, seq_len: int
) -> Attention:
    """Build the module for a validated attention config."""
    return attention_class(cfg.kind)(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)


# Importing the mechanisms registers them.
from effbench.attention import (  # noqa: E402
    fused,
    hybrid,
    linformer,
    nystrom,
    performer,
    sdpa,
    standard,
)

__all__ = [
    "Attention",
    "attention_class",
    "available",
    "build_attention",
    "fused",
    "hybrid",
    "linformer",
    "nystrom",
    "performer",
    "register",
    "sdpa",
    "standard",
]
