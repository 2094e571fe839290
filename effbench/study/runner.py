"""Running one unit, the same way wherever it runs: in `compare`'s process tree (the local
executor) or inside a cluster job. The unit's command is a child `effbench` process; a unit
with an attempt directory has its records committed to `results/` only once the command
exited 0. Torch-free."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence

from effbench.results import write_json_atomic
from effbench.study.state import now
from effbench.study.units import MARK, Unit, inputs_of

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def command(unit: Unit, extra: Sequence[str] = (), *, torchrun: int = 0) -> list[str]:
    """The command line of a unit; `torchrun` > 1 starts a training unit under torchrun with
    that many processes (the DDP path of `effbench train`)."""
    if torchrun > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={torchrun}", "-m", "effbench", *unit.argv, *extra]  # fmt: skip
    return [sys.executable, "-m", "effbench", *unit.argv, *extra]


def prepare(unit: Unit) -> dict[str, str | None]:
    """Clear the unit's attempt directory (a killed attempt's leftovers) and return what it
    reads, as it is when the command starts."""
    if unit.attempt is not None:
        shutil.rmtree(unit.attempt, ignore_errors=True)
        unit.attempt.mkdir(parents=True)
    return inputs_of(unit)


def commit(unit: Unit, inputs: dict[str, str | None]) -> None:
    """Replace the unit's results by its attempt's, whole, with the mark that makes it
    finished. (A crash between the two renames leaves no results: the unit runs again.)"""
    if unit.attempt is None:
        return
    write_json_atomic(unit.attempt / MARK, {"unit": unit.key, "inputs": inputs, "at": now()})
    unit.dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if unit.dest.exists():
        old = unit.attempt.with_name(f".old-{unit.attempt.name}-{uuid.uuid4().hex[:8]}")
        unit.dest.rename(old)
    unit.attempt.rename(unit.dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _end_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this process when its parent dies (a `compare` killed with SIGKILL), so
    that a unit stops as on SIGTERM (a training writes its checkpoint) instead of running on
    as an orphan that holds its output. SIGUSR2 is ignored: SLURM sends it to every process
    of a job before its time limit, and it is for the job's wrapper (`UnitJob.checkpoint`),
    which then stops the unit with SIGTERM."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a unit's command as a child process, ended with its parent where the OS can."""
    linux = sys.platform.startswith("linux")
    return subprocess.Popen(argv, preexec_fn=_end_with_parent if linux else None)
