"""Whether the CPU was ours while we timed: the process's CPU time, its threads' run-queue wait
and the machine's busy time around each timed measurement, and the rule that calls one
disturbed. No torch here: the rule is plain arithmetic on counters that Linux keeps.

Counters (Linux; elsewhere only the process's CPU time is there, and nothing is judged):

- the process's CPU time, all threads (`time.process_time_ns`);
- the time its threads were runnable but waiting for a CPU (`/proc/self/task/*/schedstat`,
  second field, nanoseconds): the direct sign of another process holding the cores;
- the busy time of the CPUs this process may run on (`/proc/stat`, in clock ticks; steal time
  counts as busy: a hypervisor giving the core to another machine is contention too), from
  which the process's own CPU time is subtracted to give the load of other work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# A measurement is disturbed when its threads waited for a CPU more than this share of the
# time they should have run (quiet machines: <= 0.01; one busy neighbour: 0.3-0.5) ...
WAIT_SHARE_LIMIT = 0.10
# ... or when other work used more of the process's CPUs than it left idle, by more than this
# many CPUs (at least OTHERS_SLACK_MIN; /proc/stat counts in 10 ms ticks per CPU, so the
# slack grows with the CPU count).
OTHERS_SLACK_MIN = 0.3
OTHERS_SLACK_PER_CPU = 0.1
# Re-measurement after a disturbed one waits this long, doubling each time.
BACKOFF_S = 0.5

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask; all of them where unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Counters:
    """A snapshot of the clocks the rule compares; None where the system does not keep one."""

    wall_ns: int
    cpu_ns: int  # this process, all threads
    wait_ns: int | None  # this process's threads, runnable but not running
    busy_ticks: int | None  # the usable CPUs, all processes (steal included)


def _wait_ns() -> int | None:
    total, seen = 0, False
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total if seen else None


def _busy_ticks(cpus: frozenset[int]) -> int | None:
    """user + nice + system + irq + softirq + steal of the given CPUs (not idle, not iowait;
    guest time is already inside user)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total, seen = 0, False
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if int(name[3:]) not in cpus:
            continue
        f = [int(v) for v in rest.split()]
        total += sum(f[:8]) - f[3] - f[4]  # user nice system idle iowait irq softirq steal
        seen = True
    return total if seen else None


def read_counters(cpus: frozenset[int] | None = None) -> Counters:
    return Counters(
        wall_ns=time.perf_counter_ns(),
        cpu_ns=time.process_time_ns(),
        wait_ns=_wait_ns(),
        busy_ticks=_busy_ticks(cpus if cpus is not None else usable_cpus()),
    )


@dataclass(frozen=True)
class Share:
    """What the process got of the machine between two snapshots.

    cpu_share: its CPU time / (wall time x the threads it could run at once);
    wait_share: its threads' run-queue wait / (wall time x those threads);
    others_cpus: CPUs kept busy by other work on average (its usable CPUs only).
    """

    wall_s: float
    threads: int  # threads that could run at once: min(torch threads, usable CPUs)
    cpus: int
    cpu_share: float
    wait_share: float | None
    others_cpus: float | None


def share(before: Counters, after: Counters, *, threads: int, cpus: int) -> Share:
    wall = max(after.wall_ns - before.wall_ns, 1) / 1e9
    demand = max(1, min(threads, cpus))
    cpu = (after.cpu_ns - before.cpu_ns) / 1e9
    wait = None
    if before.wait_ns is not None and after.wait_ns is not None:
        wait = (after.wait_ns - before.wait_ns) / 1e9 / (wall * demand)
    others = None
    if before.busy_ticks is not None and after.busy_ticks is not None:
        busy = (after.busy_ticks - before.busy_ticks) / _TICKS_PER_S
        others = max(0.0, (busy - cpu) / wall)
    return Share(
        wall_s=wall,
        threads=demand,
        cpus=cpus,
        cpu_share=cpu / (wall * demand),
        wait_share=wait,
        others_cpus=others,
    )


def others_limit(threads: int, cpus: int) -> float:
    """Load of other work above which it competes with `threads` threads on `cpus` CPUs."""
    idle = cpus - max(1, min(threads, cpus))
    return idle + max(OTHERS_SLACK_MIN, OTHERS_SLACK_PER_CPU * cpus)


def disturbance(s: Share) -> str | None:
    """Why a measurement with these figures was not the process's alone; None when it was.

    Disturbed: its threads waited for a CPU more than WAIT_SHARE_LIMIT of the time, or other
    work kept more CPUs busy than this process left idle (plus a slack, and the resolution of
    the tick counts over the measurement's length). A counter that is missing judges nothing.
    """
    reasons = []
    if s.wait_share is not None and s.wait_share > WAIT_SHARE_LIMIT:
        reasons.append(f"its threads waited for a CPU {s.wait_share:.0%} of the time")
    # /proc/stat counts whole ticks per CPU: over a short measurement the load of other work
    # is known only to about one tick per CPU, so that much more is needed to call it busy.
    resolution = s.cpus / (_TICKS_PER_S * s.wall_s)
    if s.others_cpus is not None and s.others_cpus > others_limit(s.threads, s.cpus) + resolution:
        reasons.append(f"other work kept {s.others_cpus:.1f} of {s.cpus} CPUs busy")
    return "; ".join(reasons) or None


# ---------------------------------------------------------------------------- before a run


@dataclass(frozen=True)
class MachineLoad:
    """Other work on this process's CPUs just now, and the 1-minute load average."""

    others_cpus: float | None
    cpus: int
    loadavg: float | None


def machine_load(sample_s: float = 0.3) -> MachineLoad:
    """Sample the busy time of the usable CPUs over `sample_s` seconds while this process
    sleeps: what other work is using now."""
    cpus = usable_cpus()
    before = read_counters(cpus)
    time.sleep(sample_s)
    s = share(before, read_counters(cpus), threads=1, cpus=len(cpus))
    try:
        loadavg: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):
        loadavg = None
    return MachineLoad(others_cpus=s.others_cpus, cpus=len(cpus), loadavg=loadavg)


def busy_warning(load: MachineLoad, threads: int) -> str | None:
    """A warning when other work already uses CPUs that `threads` threads need; else None."""
    problems = []
    if threads > load.cpus:
        problems.append(
            f"{threads} threads are more than the {load.cpus} CPUs this process may use, so "
            "they compete with each other"
        )
    busy = load.others_cpus
    if busy is not None and busy > others_limit(threads, load.cpus):
        avg = "" if load.loadavg is None else f", load average {load.loadavg:.2f}"
        problems.append(
            f"the machine is busy: other work is using {busy:.1f} of its {load.cpus} CPUs"
            f"{avg}, and effbench runs {threads} thread(s)"
        )
    if not problems:
        return None
    fewer = max(1, load.cpus - round(busy or 0.0))
    return (
        "; ".join(problems)
        + ". Timings will be slowed: disturbed points are re-measured and flagged as "
        f"contended. Stop the other work, or pass --threads {min(fewer, threads)}."
    )
