"""Result records (pydantic), the environment manifest, and JSON Lines files written one
record at a time so that an interrupted run loses nothing it measured.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from effbench import __version__

SCHEMA_VERSION = 1
FLOPS_UNIT = "FLOPs = 2 x multiply-adds of matrix products, forward, per sample"
Status = Literal["ok", "oom", "nan", "error"]


class Env(BaseModel):
    """Where and how a record was measured."""

    model_config = ConfigDict(extra="allow")

    effbench: str
    torch: str
    python: str
    platform: str
    device: str
    device_name: str
    threads: int
    allocator: str
    dtype: str
    cuda: str | None = None
    cudnn: int | None = None


class Record(BaseModel):
    """Fields every record carries, whatever produced it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: str
    status: Status = "ok"
    error: str | None = None
    run_id: str
    time: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    spec_hash: str
    model: str
    attention: dict[str, Any]
    env: Env


class OpTime(BaseModel):
    """One row of the profiler's table: an operator (CPU) or kernel (CUDA) by self time."""

    name: str
    self_ms: float
    total_ms: float
    calls: int


class ProfileRecord(Record):
    """One attention layer at one sequence length."""

    kind: Literal["profile"] = "profile"
    seq_len: int
    batch_size: int
    dim: int
    heads: int
    sdpa_backend: str | None = None
    params: int | None = None
    fwd_ms: float | None = None
    fwd_iqr_ms: float | None = None
    fwd_runs: int | None = None
    fwd_calls_per_run: int | None = None
    fwdbwd_ms: float | None = None
    fwdbwd_iqr_ms: float | None = None
    fwdbwd_runs: int | None = None
    fwdbwd_calls_per_run: int | None = None
    fwd_peak_mib: float | None = None
    fwdbwd_peak_mib: float | None = None
    mem_source: str | None = None
    flops_unit: str = FLOPS_UNIT
    flops_analytic: int | None = None
    flops_fvcore: int | None = None
    flops_flop_counter: int | None = None
    flops_by_op: dict[str, int] | None = None
    fwd_gflops_per_s: float | None = None
    top_ops: list[OpTime] | None = None
    trace_dir: str | None = None


# ---------------------------------------------------------------------------- environment


_GLIBC_TUNED = False
GLIBC_TUNING_ENV = "EFFBENCH_GLIBC_MALLOC"  # set to "default" to leave glibc malloc as it is


def _preloaded_allocator() -> str | None:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = os.environ.get("LD_PRELOAD", "")
    return next((n for n in ("tcmalloc", "jemalloc", "mimalloc") if n in maps), None)


def tune_glibc_malloc() -> bool:
    """Stop glibc malloc from returning large blocks to the kernel between calls.

    By default glibc serves blocks above 32 MiB with a fresh mmap and unmaps them on free, so
    every call that allocates them pays page faults that grow with the tensor: on a 2-core
    machine that alone turned linear attentions' log-log time slopes from ~1.0 into ~1.3.
    With mmap and trimming off the heap keeps and reuses those pages, as tcmalloc and jemalloc
    do. Does nothing when another allocator is preloaded, off Linux/glibc, or when
    EFFBENCH_GLIBC_MALLOC=default. Returns whether glibc was tuned.
    """
    global _GLIBC_TUNED
    if _GLIBC_TUNED:
        return True
    if os.environ.get(GLIBC_TUNING_ENV, "").lower() == "default":
        return False
    if platform.system() != "Linux" or _preloaded_allocator() is not None:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        ok = libc.mallopt(m_mmap_max, 0) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _GLIBC_TUNED = ok
    return ok


def allocator_name() -> str:
    """The malloc this process runs with: tcmalloc or jemalloc when preloaded, else the libc's
    (and whether `tune_glibc_malloc` changed its settings)."""
    preloaded = _preloaded_allocator()
    if preloaded:
        return preloaded
    if platform.system() != "Linux":
        return "system malloc"
    return "glibc malloc (mmap and trim off)" if _GLIBC_TUNED else "glibc malloc"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, dtype: str) -> Env:
    """The manifest carried by every record: software, hardware, threads, allocator, dtype."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return Env(
        effbench=__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if cuda else cpu_name(),
        threads=torch.get_num_threads(),
        allocator=allocator_name(),
        dtype=dtype,
        cuda=torch.version.cuda if cuda else None,
        cudnn=torch.backends.cudnn.version() if cuda else None,
    )


# ---------------------------------------------------------------------------- files


def new_run_id() -> str:
    """Sortable and unique: a timestamp plus a short random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class JsonlWriter:
    """Appends one JSON object per line, flushed and fsynced after each record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
        self._fh.write(json.dumps(data, sort_keys=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: the file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class BadLine(BaseModel):
    """A line of a results file that could not be read, kept so that it can be reported."""

    path: str
    line: int
    reason: str


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Every JSON object in a JSON Lines file, and the lines that were not one."""
    good: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for i, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append(BadLine(path=str(path), line=i, reason=f"invalid JSON: {err.msg}"))
            continue
        if not isinstance(obj, dict) or "kind" not in obj:
            bad.append(BadLine(path=str(path), line=i, reason="not a result record"))
            continue
        good.append(obj)
    return good, bad


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        yield from fh
