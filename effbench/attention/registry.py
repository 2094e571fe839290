"""The attention registry: one registration per mechanism, looked up by its `kind`.

Mechanism modules register themselves with `@register(kind)`; the registry imports every
module of this package the first time it is asked, so a new mechanism is one new file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effbench.attention.base import Attention
from effbench.config.attention import KINDS, AttentionConfig

_REGISTRY: dict[str, type[Attention]] = {}
_discovered = False


def register(kind: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: make a mechanism buildable by its config's `kind`."""

    def deco(cls: type[Attention]) -> type[Attention]:
        assert kind in KINDS, f"{kind!r} has no config in effbench.config.attention"
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"attention kind {kind!r} ({cls.__name__}) must define {missing}")
        assert kind not in _REGISTRY, f"attention kind {kind!r} registered twice"
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def discover() -> None:
    """Import every module of the attention package once; mechanisms register on import."""
    global _discovered
    if _discovered:
        return
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{info.name}")
    _discovered = True


def available() -> tuple[str, ...]:
    """Registered kinds, in the configs' order."""
    discover()
    return tuple(k for k in KINDS if k in _REGISTRY)


def attention_class(kind: str) -> type[Attention]:
    """The registered module class of `kind`.

    Raises:
        ValueError: if no mechanism is registered under `kind`.
    """
    discover()
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
