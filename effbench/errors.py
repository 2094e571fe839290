"""The errors a user can fix. Each carries message lines that say where the problem is and what
to change; the CLI prints them to stderr and exits 2. No torch."""

from __future__ import annotations


class EffbenchError(Exception):
    """Base of every user-facing error; `lines()` gives its `location: message` lines."""

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


class UsageError(EffbenchError, ValueError):
    """A command-line option or argument that cannot be used, with what to pass instead."""


class SpecError(EffbenchError, ValueError):
    """A spec that cannot be used; `issues` holds one (location, message) pair per problem."""

    def __init__(self, issues: list[tuple[str, str]], source: str = "bench.toml") -> None:
        self.issues = issues
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}:{loc}: {msg}" if loc else f"{self.source}: {msg}"
            for loc, msg in self.issues
        ]


class DataError(EffbenchError, ValueError):
    """A dataset that cannot be read, with what to change."""


class RunError(EffbenchError, ValueError):
    """A run directory or `--checkpoint` that cannot be used, with what to change."""


class TrainError(EffbenchError, RuntimeError):
    """A run that cannot start or continue, with what to change."""


class CheckpointError(TrainError):
    """A checkpoint that is missing, unreadable, or from another configuration."""
