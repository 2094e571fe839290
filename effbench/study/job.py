"""What a cluster job runs: one unit, through submitit. Imported in the job and where jobs are
submitted, never on a spec-error or help path (it imports submitit)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import Any

import submitit

from effbench.study.runner import commit, prepare, start
from effbench.study.units import Unit


class UnitFailed(RuntimeError):
    """The unit's command exited non-zero inside its job."""


class UnitJob(submitit.helpers.Checkpointable):
    """Run one unit's command in the job and commit its records. On a time limit or a
    preemption (submitit's signal), the command is stopped with SIGTERM (a training run writes
    its checkpoint) and the unit is requeued to resume, at most `max_requeues` times."""

    def __init__(self, unit: Unit, argv: list[str], max_requeues: int, requeues: int = 0) -> None:
        self.unit = unit
        self.argv = argv
        self.max_requeues = max_requeues
        self.requeues = requeues
        self._child: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _child=None)

    def __call__(self) -> str:
        inputs = prepare(self.unit)
        self._child = start(self.argv)
        code = self._child.wait()
        if code != 0:
            how = f"exited {code}"
            if code > 128 and code - 128 in signal.valid_signals():
                how += f" (stopped by {signal.Signals(code - 128).name})"
            raise UnitFailed(f"{self.unit.key}: effbench {how}")
        commit(self.unit, inputs)
        return self.unit.key

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
        if self.requeues >= self.max_requeues:
            return None  # submitit ends the job: "checkpoint function returned None"
        again = UnitJob(self.unit, self.argv, self.max_requeues, self.requeues + 1)
        return submitit.helpers.DelayedSubmission(again)
