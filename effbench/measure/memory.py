"""Memory: peak bytes of a call (CUDA allocator stats, or the profiler's CPU memory events), a
process's peak so far, and the RLIMIT_DATA cap that turns a too-big CPU point into an `oom`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from effbench.measure.timing import synchronize

MIB = 2**20
"""Bytes in a mebibyte: every `*_mib` field is bytes / MIB."""


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated on the CPU during fn, above what was allocated before it.

    Read from the profiler's memory events (every allocation and free, in time order).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return peak_from_events(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )


def peak_from_events(events: Any) -> int:
    """Highest running total of (time, +/- bytes) events, never below 0."""
    total = peak = 0
    for _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated on the GPU during fn, above what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """(peak bytes during fn above the starting level, how it was measured)."""
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device), "torch.cuda.max_memory_allocated"
    return cpu_peak_bytes(fn), "torch.profiler memory events (CPU)"


def _proc_kib_field(path: str, key: str) -> int | None:
    """A `Key:  N kB` field of a /proc file, in bytes (None when unreadable)."""
    try:
        for line in Path(path).read_text(encoding="ascii").splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cap_cpu_memory(*, headroom: float = 0.9, extra_bytes: int | None = None) -> int | None:
    """Cap this process's data segment (RLIMIT_DATA) near the memory still available.

    On Linux an allocation that does not fit is otherwise often granted and the kernel's OOM
    killer later ends the whole sweep; with the cap the allocation fails at once, torch
    raises "can't allocate memory", and the point becomes an `oom` record. The cap is what
    the process uses now plus `headroom` of MemAvailable (or plus `extra_bytes`). Returns it,
    or None where it cannot be set (not Linux, unreadable /proc, or a lower limit exists).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None

    used = _proc_kib_field("/proc/self/status", "VmData")
    if extra_bytes is None:
        available = _proc_kib_field("/proc/meminfo", "MemAvailable")
        extra = None if available is None else int(available * headroom)
    else:
        extra = extra_bytes
    if used is None or extra is None:
        return None
    cap = used + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return None
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return cap


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """The process's peak memory so far in MiB and how it was read: allocated on the GPU since
    the last `torch.cuda.reset_peak_memory_stats`, or the peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda_max_memory_allocated"
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    except (ImportError, OSError):
        return None, "unavailable"
