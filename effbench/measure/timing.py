"""Latency: `time_call` (median and IQR of blocked_autorange with a CPU-contention check and
retries), `time_repeats`, and the CPU checks that say whether the process had its CPUs."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import benchmark

from effbench import contention
from effbench.results import CpuCheck


@dataclass(frozen=True)
class Timing:
    """Per-call times in milliseconds from `blocked_autorange`, and whether the CPU was the
    process's own while they were measured (None: not checked)."""

    median_ms: float
    iqr_ms: float
    runs: int
    calls_per_run: int
    check: CpuCheck | None = None

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}_ms": self.median_ms,
            f"{prefix}_iqr_ms": self.iqr_ms,
            f"{prefix}_runs": self.runs,
            f"{prefix}_calls_per_run": self.calls_per_run,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _running_threads(device: torch.device) -> int:
    """Threads a timed call keeps busy: torch's intra-op threads on CPU, the launching thread
    on a GPU."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def cpu_check(
    before: contention.Counters, *, device: torch.device, cpus: frozenset[int]
) -> CpuCheck:
    """Whether the process had its CPUs to itself since `before` (`effbench.contention`)."""
    s = contention.share(
        before, contention.read_counters(cpus), threads=_running_threads(device), cpus=len(cpus)
    )
    reason = contention.disturbance(s)
    return CpuCheck(**dataclasses.asdict(s), disturbed=reason is not None, reason=reason)


def time_call(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    warmup: int = 2,
    min_run_time: float = 0.3,
    retries: int = 0,
) -> Timing:
    """Median and IQR of fn's time over repeated blocks, after `warmup` untimed calls.

    torch.utils.benchmark.Timer picks the calls per block and synchronises CUDA; it runs with
    torch's current thread count (Timer alone would default to one thread). Around the
    measurement the process's CPU time, its threads' run-queue wait and the machine's busy
    time are read (`effbench.contention`); a disturbed measurement is made again, up to
    `retries` times after a doubling back-off. When every attempt was disturbed the fastest
    is kept and its check says `disturbed`.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    cpus = contention.usable_cpus()
    kept: Timing | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(contention.BACKOFF_S * 2 ** (attempt - 1))
        before = contention.read_counters(cpus)
        m = timer.blocked_autorange(min_run_time=min_run_time)
        check = cpu_check(before, device=device, cpus=cpus)
        timing = Timing(
            median_ms=m.median * 1e3,
            iqr_ms=m.iqr * 1e3,
            runs=len(m.times),
            calls_per_run=m.number_per_run,
            check=check,
        )
        if kept is None or not check.disturbed or timing.median_ms < kept.median_ms:
            kept = timing
        if not check.disturbed:
            break
    assert kept is not None and kept.check is not None
    done = kept.check.model_copy(update={"attempts": attempt + 1})
    return dataclasses.replace(kept, check=done)


def combine_checks(checks: list[CpuCheck]) -> CpuCheck:
    """One check for the median of several timings: shares weighted by wall time, attempts
    summed, and disturbed when at least half of them were (a median of timings that noise
    only slows is then no longer safe)."""
    wall = sum(c.wall_s for c in checks)

    def mean(values: list[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return sum(v * c.wall_s for v, c in zip(values, checks, strict=True)) / wall

    bad = [c for c in checks if c.disturbed]
    return CpuCheck(
        wall_s=wall,
        threads=checks[0].threads,
        cpus=checks[0].cpus,
        cpu_share=mean([c.cpu_share for c in checks]) or 0.0,
        wait_share=mean([c.wait_share for c in checks]),
        others_cpus=mean([c.others_cpus for c in checks]),
        attempts=sum(c.attempts for c in checks),
        disturbed=2 * len(bad) >= len(checks),
        reason=f"{len(bad)} of {len(checks)} repeats: {bad[0].reason}" if bad else None,
    )


def time_repeats(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_run_time: float = 0.2,
    retries: int = 0,
) -> tuple[Timing, float]:
    """`time_call` repeated: the median of the repeats' medians (IQR: their median IQR; runs:
    all of them; check: `combine_checks` of theirs) and the spread (max - min) / median of
    those medians."""
    timings = [
        time_call(
            fn,
            device=device,
            warmup=warmup if i == 0 else 0,
            min_run_time=min_run_time,
            retries=retries,
        )
        for i in range(repeats)
    ]
    medians = [t.median_ms for t in timings]
    median = statistics.median(medians)
    combined = Timing(
        median_ms=median,
        iqr_ms=statistics.median(t.iqr_ms for t in timings),
        runs=sum(t.runs for t in timings),
        calls_per_run=timings[0].calls_per_run,
        check=combine_checks([t.check for t in timings if t.check is not None]),
    )
    return combined, (max(medians) - min(medians)) / median
