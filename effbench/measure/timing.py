"""Latency: `time_call` (median and IQR of blocked_autorange with a CPU-contention check and
retries), its repeats round-robin over many calls or back to back (`Rounds`), and the CPU
checks that say whether the process had its CPUs."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# torch.utils.benchmark imports cpp_extension, which warns on a machine without a CUDA
# toolkit; effbench builds no extensions
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from effbench import contention  # noqa: E402
from effbench.results import CpuCheck  # noqa: E402


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
    call_s: float | None = None,
) -> Timing:
    """Median and IQR of fn's time over repeated blocks, after `warmup` untimed calls.

    torch.utils.benchmark.Timer picks the calls per block and synchronises CUDA; it runs with
    torch's current thread count (Timer alone would default to one thread). When `call_s`
    (one warm call's seconds) is known and at least `min_run_time`, one call is the
    measurement: Timer would spend a second call only on picking the block size. Around the
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
        if call_s is not None and call_s >= min_run_time:
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            median, iqr, runs, calls = time.perf_counter() - t0, 0.0, 1, 1
        else:
            m = timer.blocked_autorange(min_run_time=min_run_time)
            median, iqr, runs, calls = m.median, m.iqr, len(m.times), m.number_per_run
        check = cpu_check(before, device=device, cpus=cpus)
        timing = Timing(
            median_ms=median * 1e3, iqr_ms=iqr * 1e3, runs=runs, calls_per_run=calls, check=check
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
        repeats=sum(c.repeats for c in checks),
        disturbed=2 * len(bad) >= len(checks),
        reason=f"{len(bad)} of {len(checks)} repeats: {bad[0].reason}" if bad else None,
    )


def combine_repeats(timings: list[Timing]) -> tuple[Timing, float]:
    """Several repeats of one call as one timing: the median of their medians (IQR: their
    median IQR; runs: all of them; check: `combine_checks` of theirs), and the spread
    (max - min) / median of those medians."""
    medians = [t.median_ms for t in timings]
    median = statistics.median(medians)
    checks = [t.check for t in timings if t.check is not None]
    combined = Timing(
        median_ms=median,
        iqr_ms=statistics.median(t.iqr_ms for t in timings),
        runs=sum(t.runs for t in timings),
        calls_per_run=timings[0].calls_per_run,
        check=combine_checks(checks) if checks else None,
    )
    return combined, (max(medians) - min(medians)) / median


@dataclass(frozen=True)
class Repeats:
    """A call's repeats, combined: the timing (`combine_repeats`), their spread, and each
    repeat's median in milliseconds in the order taken: with interleaving, repeat r was
    taken in round r, right beside the same round's repeats of every other call at its
    point, which is what a paired ratio between two calls rests on."""

    timing: Timing
    spread: float
    rounds_ms: list[float]

    @property
    def taken(self) -> int:
        return len(self.rounds_ms)


# What a finished call's repeats are handed to.
Done = Callable[[Repeats], None]
# Told before each timing of a round: what is timed, how many of the round's timings came
# before it, and how many the round has.
OnStep = Callable[[str, int, int], None]


@dataclass
class _Repeats:
    """One call's repeats so far."""

    label: str
    fn: Callable[[], Any]
    device: torch.device
    min_run_time: float
    retries: int
    done: Done
    call_s: float
    point: object = None
    timings: list[Timing] = dataclasses.field(default_factory=list)
    failed: bool = False

    def take(self, *, switched: bool = False) -> None:
        """One repeat. After a switch from another call, one untimed call first where a
        repeat is a single call (shorter calls get theirs from the Timer's block-size
        calibration), so that no repeat pays for the previous call's caches and allocator
        state."""
        self.timings.append(
            time_call(
                self.fn,
                device=self.device,
                warmup=int(switched and self.call_s >= self.min_run_time),
                min_run_time=self.min_run_time,
                retries=self.retries,
                call_s=self.call_s,
            )
        )

    def finish(self) -> None:
        timing, spread = combine_repeats(self.timings)
        self.done(Repeats(timing, spread, [t.median_ms for t in self.timings]))


class Rounds:
    """Timed repeats of many calls, taken round-robin as `benchmarks/bench_attention.py` takes
    them: every call once per round, so that a slow spell of a shared machine, or a change in
    the process's state (its allocator's, its caches'), hits all of them alike instead of the
    few that were being timed when it came.

    `add` only warms a call up; `run` then takes `repeats` rounds over every call added and
    hands each call's combined timing to its `done`. No repeat is taken while the grid is
    still being built and measured in other ways, so that every repeat of every call is
    taken under the same conditions (timed then, a call's first repeat once disagreed with
    the attention benchmark's figure). Until `run`, every call, with the model and input it
    holds, stays alive. With `interleave=False`, `add` takes all repeats back to back and
    calls `done` before it returns.
    """

    def __init__(self, repeats: int, *, interleave: bool = True) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, not {repeats}")
        self.repeats = repeats
        self.interleave = interleave and repeats > 1
        self._pending: list[_Repeats] = []

    def add(
        self,
        fn: Callable[[], Any],
        *,
        label: str,
        device: torch.device,
        done: Done,
        warmup: int = 1,
        min_run_time: float = 0.2,
        retries: int = 0,
        point: object = None,
    ) -> float:
        """Warm fn up (at least one call) and return the last warm-up call's milliseconds;
        its repeats come with `run`, or at once when not interleaving. Calls of one `point`
        (the same shape for every model) are timed back to back in each round."""
        for _ in range(max(warmup, 1) - 1):
            fn()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        call_s = time.perf_counter() - t0
        call = _Repeats(label, fn, device, min_run_time, retries, done, call_s, point)
        if self.interleave:
            self._pending.append(call)
        else:
            for _ in range(self.repeats):
                call.take()
            call.finish()
        return call_s * 1e3

    def run(self, on_step: OnStep | None = None) -> None:
        """The rounds over every call added, then each call's `done`. In each round the calls
        of one point come back to back, in the order added.

        A call that raises in a round keeps the repeats it has and leaves the rounds (rare:
        it ran while warming up). On KeyboardInterrupt every call with a repeat is still
        finished with those it has before the interrupt goes on.
        """
        first = {}
        for c in self._pending:
            first.setdefault(c.point, len(first))
        order = sorted(self._pending, key=lambda c: first[c.point])  # stable
        try:
            for r in range(1, self.repeats + 1):
                live = [c for c in order if not c.failed]
                for i, call in enumerate(live):
                    if on_step is not None:
                        on_step(f"round {r}/{self.repeats}: {call.label}", i, len(live))
                    try:
                        call.take(switched=len(live) > 1)
                    except Exception:
                        call.failed = True
        finally:
            self.finish()

    def finish(self) -> None:
        """Hand every call added so far that has a repeat its repeats, and forget them all
        (a call without one never calls its `done`)."""
        calls, self._pending = self._pending, []
        for call in calls:
            if call.timings:
                call.finish()
