"""How a long command stops early: SIGINT/SIGTERM set a `StopFlag` that the work checks
between steps, so that what it finished is kept whole; a second signal stops it at once. The
training loop and the profile/scale grids share it; a training run then ends with
`Interrupted` once its checkpoint is written. No torch."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class StopFlag:
    """Set by SIGINT or SIGTERM; the work checks it between steps. A second signal raises
    KeyboardInterrupt at once, unless `hold` says a write is under way. A signal that the
    process ignores (SIGINT in a background job) stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hold = False  # something must not be cut in two now (a record being written)
        self._count = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self._count += 1
        if self._count > 1 and not self.hold:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt once a signal has come."""
        if self.signum is not None:
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    old[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was written (when the run had started)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by signal {signum}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
