"""Precision names and their autocast: the `[profile]`/`[scale]` dtypes and the `[train]`
precisions, one mixed-precision context for both (weights stay float32)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""`[profile]` and `[scale]` dtype names."""

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""`[train]` precision names and their autocast dtype (None: plain float32)."""


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a name from either table; None for float32."""
    dtype = DTYPES[name] if name in DTYPES else PRECISIONS[name]
    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device, name: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for a half-precision name of either table, nothing for float32/fp32."""
    dtype = autocast_dtype(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
