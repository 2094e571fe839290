"""The field types and limits that bench.toml's sections share: devices, threads, timing
repeats, compile settings, batch sizes (a number or 'max') and memory limits, each with the
validator that names what to change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
)

from effbench.config.size import SIZE_HELP, parse_size

DEFAULT_SPEC = "bench.toml"
# Where datasets live when the spec names no data_dir: $EFFBENCH_DATA, else the per-user cache.
DATA_ENV = "EFFBENCH_DATA"
# Upper bounds of sizes and counts: beyond them a run could only hang or overflow.
MAX_SIZE = 1 << 20
MAX_SEED = (1 << 32) - 1
Dtype = Literal["float32", "bfloat16", "float16"]


def default_data_dir() -> Path:
    """Where datasets are read and CIFAR-10 is downloaded when the spec names no data_dir:
    $EFFBENCH_DATA, else `data` in the platform's per-user cache (~/.cache/effbench/data on
    Linux), so that a command finds the same data from any directory."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs  # only here: every command loads this module, few need the cache

    return platformdirs.user_cache_path("effbench") / "data"


def _check_device(v: str) -> str:
    ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    if not ok:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


DeviceName = Annotated[str, AfterValidator(_check_device)]
Threads = Annotated[
    int | None,
    Field(gt=0, le=4096, description="CPU threads for torch; unset: torch's default (the cores)"),
]
Retries = Annotated[
    int,
    Field(
        ge=0,
        le=10,
        description="re-measurements of a timing that other work on the CPU disturbed, "
        "before it is recorded as contended",
    ),
]

Compile = Annotated[
    bool,
    Field(
        description="time the torch.compile'd layer or model (inductor); the first call, "
        "which compiles, is timed apart as compile_s"
    ),
]
CompileMode = Annotated[
    Literal["default", "reduce-overhead", "max-autotune"],
    Field(description="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune"),
]

Repeats = Annotated[
    int,
    Field(ge=1, le=100, description="timed repeats per point; the record keeps their spread"),
]


def _check_size(v: str | None) -> str | None:
    if v is not None:
        parse_size(v)
    return v


def _check_batch(v: Any) -> int | str:
    if v == "max":
        return v
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIZE:
        raise ValueError(f"batch_size must be 1 to {MAX_SIZE} or 'max', got {v!r}")
    return v


BatchSize = Annotated[
    int | Literal["max"],
    PlainValidator(_check_batch),
    Field(
        description="images (or sequences) per call; 'max': the largest batch whose peak "
        "memory fits memory_limit, searched per point and phase"
    ),
]
MemoryLimit = Annotated[
    str | None,
    AfterValidator(_check_size),
    Field(
        description="with batch_size = 'max': the memory a call may use, "
        f"{SIZE_HELP}; unset: the GPU's free memory less a tenth (the CPU needs one)"
    ),
]
LargestBatch = Annotated[
    int, Field(gt=0, le=MAX_SIZE, description="with batch_size = 'max': the largest tried")
]

Interleave = Annotated[
    bool,
    Field(
        description="take the repeats round-robin over the grid's points, so that a slow "
        "spell of the machine hits every point alike (each point's model and input stay in "
        "memory until the last round); false: each point's repeats back to back"
    ),
]
