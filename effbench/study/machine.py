"""The local executor: a study's units as child processes of `compare`, one at a time, or with
`--devices` one training run per GPU at once (each pinned to its device, the CPU threads split
between them). Accuracy and timing units always run alone. Torch-free."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from effbench.study.runner import command, commit, prepare, start
from effbench.study.state import now
from effbench.study.units import TRAIN, Study, Unit, finished

# (event, unit, detail): "start", "done", "failed", "submitted", "running", "attached"
OnEvent = Callable[[str, Unit, str], None]


@dataclass(frozen=True)
class Failure:
    """A unit that failed: its key, why (one line) and the exit status it ended with."""

    key: str
    reason: str
    code: int = 1


class StudyInterrupted(Exception):
    """SIGINT or SIGTERM reached `compare` while units ran; they were passed the signal and
    have ended, keeping what they finished."""

    def __init__(self, signum: int, during: str) -> None:
        self.signum = signum
        self.during = during
        super().__init__(f"interrupted by {signal.Signals(signum).name} during {during}")


@dataclass
class LocalExecutor:
    """Units as child processes here. `devices`: run training units at once, one per device,
    with `threads` CPU threads each."""

    devices: list[str] | None = None
    threads: int | None = None
    name: str = "local"

    def extra(self, unit: Unit, slot: str | None) -> list[str]:
        if slot is None or unit.phase != TRAIN:
            return []
        threads = [] if self.threads is None else ["--threads", str(self.threads)]
        return ["--device", slot, *threads]

    def run(self, study: Study, units: list[Unit], on: OnEvent) -> list[Failure]:
        """Run `units` (one phase) to their end; return the failures, one line each. A first
        failure starts nothing new; the units running then finish.

        Raises:
            StudyInterrupted: SIGINT or SIGTERM arrived (passed on to every child first).
        """
        slots: list[str | None] = (
            list(self.devices) if self.devices and units and units[0].phase == TRAIN else [None]
        )
        pending, running = list(units), {}  # slot -> (unit, child, inputs, start)
        failures: list[Failure] = []
        caught: list[int] = []

        def forward(signum: int, _frame: Any) -> None:
            caught.append(signum)
            for _, child, _, _ in running.values():
                child.send_signal(signum)

        before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while pending or running:
                for slot in [s for s in slots if s not in running]:
                    if not pending or caught or failures:
                        break
                    unit = pending.pop(0)
                    inputs = prepare(unit)
                    rec = study.record(unit)
                    study.update(unit, state="running", executor=self.name, job_id=None,
                                 attempts=rec.attempts + 1, since=now(), reason=None)  # fmt: skip
                    on("start", unit, slot or "")
                    running[slot] = (unit, start(command(unit, self.extra(unit, slot))),
                                     inputs, time.perf_counter())  # fmt: skip
                if not pending or caught or failures:
                    pending.clear()
                self._reap(study, running, failures, on)
                if running:
                    time.sleep(0.05)
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)
        if caught:
            raise StudyInterrupted(caught[0], ", ".join(u.key for u in units))
        return failures

    def _reap(self, study: Study, running: dict[Any, Any], failures: list[Failure],
              on: OnEvent) -> None:  # fmt: skip
        for slot, (unit, child, inputs, t0) in list(running.items()):
            code = child.poll()
            if code is None:
                continue
            del running[slot]
            seconds = round(time.perf_counter() - t0, 1)
            if code == 0 or (unit.phase == TRAIN and finished(unit)):  # (a run ended nan: kept)
                commit(unit, inputs)
                study.update(unit, state="done", seconds=seconds)
                on("done", unit, f"{seconds:.0f} s")
            else:
                reason = f"exit {code}" if code > 0 else f"killed by signal {-code}"
                study.update(unit, state="failed", reason=reason, seconds=seconds)
                failures.append(Failure(unit.key, reason, code if code > 0 else 1))
                on("failed", unit, reason)
