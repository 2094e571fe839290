"""Memory: peak bytes of a call (CUDA allocator stats, or the profiler's CPU memory events), a
process's peak since a reset (one training run's own peak), and the RLIMIT_DATA cap that turns
a too-big CPU point into an `oom`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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

    from effbench.measure.profiler import native_noise_filtered

    with (
        native_noise_filtered(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
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


CLEAR_REFS = "/proc/self/clear_refs"
"""Writing "5" here resets the process's peak resident set (VmHWM) to its current size (Linux)."""

_PEAK_RESET = {"done": False}


def _release_free_memory() -> None:
    """Hand memory the allocator keeps but no longer uses back to the system, so a peak that
    starts now starts from what is really in use: glibc's `malloc_trim`, mimalloc's
    `mi_collect` (whichever this process has)."""
    import ctypes
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return
    for name, args in (("mi_collect", (ctypes.c_bool(True),)), ("malloc_trim", (0,))):
        fn = getattr(libc, name, None)
        if fn is not None:
            fn(*args)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory`: the CUDA allocator's peak stats, or on the CPU the
    process's peak resident set (after returning freed memory to the system), so a run
    measured after a bigger one reports its own peak, not the bigger one's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _release_free_memory()
    try:
        Path(CLEAR_REFS).write_text("5", encoding="ascii")
    except OSError:
        _PEAK_RESET["done"] = False
        return
    _PEAK_RESET["done"] = True


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """The peak memory since the last `reset_peak_memory` in MiB, and how it was read:

    - `cuda_max_memory_allocated`: bytes the CUDA caching allocator handed out;
    - `peak_rss_since_reset`: the process's peak resident set (VmHWM) since the reset (Linux);
    - `process_max_rss`: the process's lifetime peak resident set (ru_maxrss), where the peak
      cannot be reset (no reset yet, or no /proc): an upper bound on any one run's peak.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda_max_memory_allocated"
    if _PEAK_RESET["done"]:
        hwm = _proc_kib_field("/proc/self/status", "VmHWM")
        if hwm is not None:
            return hwm / MIB, "peak_rss_since_reset"
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    except (ImportError, OSError):
        return None, "unavailable"


@contextlib.contextmanager
def memory_cap(device: torch.device, limit: int) -> Iterator[None]:
    """While inside: the process may allocate at most `limit` bytes more than it holds now.

    On the CPU this is RLIMIT_DATA (the data segment now plus `limit`), so that a call that
    needs more fails with "can't allocate memory" instead of being granted and later killed;
    the previous limit comes back afterwards. A GPU's allocator runs out of memory on its
    own, and its peak is checked against `limit` by the caller, so there nothing changes.
    """
    if device.type != "cpu":
        yield
        return
    try:
        import resource
    except ImportError:  # not a POSIX system: the caller's peak check is all there is
        yield
        return
    before = resource.getrlimit(resource.RLIMIT_DATA)
    used = _proc_kib_field("/proc/self/status", "VmData")
    if used is None:
        yield
        return
    soft, hard = before
    cap = used + limit
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, before)
