"""How a training run stops early: SIGTERM/SIGINT set a `StopFlag` (`effbench.signals`) the
loop checks between steps, and the run ends with `Interrupted` once its checkpoint is
written."""

from __future__ import annotations

from pathlib import Path

from effbench.signals import StopFlag

__all__ = ["Interrupted", "StopFlag"]


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was written (when the run had started)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by signal {signum}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
