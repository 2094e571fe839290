"""How a training run stops early: SIGTERM/SIGINT set a `StopFlag` the loop checks between
steps, and the run ends with `Interrupted` once its checkpoint is written."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was written (when the run had started)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by signal {signum}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
