"""A study's units run phase by phase by an executor: finished units skipped (checked from
their records on every run), a phase's failures ending the study before the next phase, the
report always rendered where `compare` runs. Torch-free; never prints (events go to `on`)."""

from __future__ import annotations

from typing import Protocol

from effbench.study.machine import Failure, LocalExecutor, OnEvent
from effbench.study.units import ACCURACY, REPORT, TIMING, TRAIN, Study, Unit, finished


class Executor(Protocol):
    name: str

    def run(self, study: Study, units: list[Unit], on: OnEvent) -> list[Failure]: ...


def unit_states(study: Study) -> list[tuple[Unit, str]]:
    """Every unit with its state: 'done' when its records are there, else study.json's."""
    out = []
    for unit in study.units():
        if unit.phase == REPORT:
            continue
        if finished(unit):
            out.append((unit, "done"))
        else:  # study.json's word, but never "done" without the records
            state = study.record(unit).state
            out.append((unit, "pending" if state == "done" else state))
    return out


def drive(study: Study, executor: Executor, on: OnEvent) -> list[Failure]:
    """Run every unfinished unit, phase after phase; then the report (here). Returns the
    failures of the first phase that had any (the report is then not rendered)."""
    units = list(study.units())
    for phase in (TRAIN, ACCURACY, TIMING):
        todo = []
        for unit in (u for u in units if u.phase == phase):
            if finished(unit):
                if study.record(unit).state != "done":
                    study.update(unit, state="done", reason=None)
                on("skip", unit, "")
            else:
                todo.append(unit)
        if todo:
            failures = executor.run(study, todo, on)
            if failures:
                return failures
    report = [u for u in units if u.phase == REPORT]
    return LocalExecutor().run(study, report, on)
