"""The errors a user can fix. Each carries message lines that say where the problem is and what
to change; the CLI prints them to stderr and exits 2. No torch."""

from __future__ import annotations

import errno


class EffbenchError(Exception):
    """Base of every user-facing error; `lines()` gives its `location: message` lines."""

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


MAX_LINES = 20  # problems of one spec printed, at most


class UsageError(EffbenchError, ValueError):
    """A command-line option or argument that cannot be used, with what to pass instead."""


class SpecError(EffbenchError, ValueError):
    """A spec that cannot be used; `issues` holds one (location, message) pair per problem.

    `origins` maps a dotted key to where its value came from when that was not the spec file
    (`--set train.lr`, `--lr (train.lr)`): problems at or under that key are blamed on it.
    """

    def __init__(
        self,
        issues: list[tuple[str, str]],
        source: str = "bench.toml",
        origins: dict[str, str] | None = None,
    ) -> None:
        self.issues = issues
        self.source = source
        self.origins = origins or {}
        super().__init__("\n".join(self.lines()))

    def _origin(self, loc: str) -> str | None:
        keys = [k for k in self.origins if loc == k or loc.startswith((f"{k}.", f"{k}["))]
        return max(keys, key=len) if keys else None

    def lines(self) -> list[str]:
        out = []
        for loc, msg in self.issues:
            key = self._origin(loc)
            if key is not None:
                where = self.origins[key] + ("" if loc == key else f" at {loc}")
                out.append(f"{where}: {msg}")
            elif loc:
                out.append(f"{self.source}:{loc}: {msg}")
            else:
                out.append(f"{self.source}: {msg}")
        if len(out) > MAX_LINES:  # a huge sweep's thousand problems: the first ones say enough
            out = [*out[:MAX_LINES], f"... and {len(out) - MAX_LINES} more problems like these"]
        return out


class DataError(EffbenchError, ValueError):
    """A dataset that cannot be read, with what to change."""


class RunError(EffbenchError, ValueError):
    """A run directory or `--checkpoint` that cannot be used, with what to change."""


class TrainError(EffbenchError, RuntimeError):
    """A run that cannot start or continue, with what to change."""


class CheckpointError(TrainError):
    """A checkpoint that is missing, unreadable, or from another configuration."""


_NO_PERMISSION = (
    "no permission to write there: write elsewhere with --output, or change its permissions"
)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere with --output",
    errno.EDQUOT: "the disk quota is spent: free some space, or write elsewhere with --output",
    errno.EACCES: _NO_PERMISSION,
    errno.EPERM: _NO_PERMISSION,
    errno.EROFS: "the file system is read-only: write elsewhere with --output",
    errno.ENOTDIR: "a file stands where a directory should be: move it away, or choose "
    "another --output",
    errno.EISDIR: "a directory stands where a file should be: move it away, or choose "
    "another --output",
    errno.EEXIST: "a file of that name is already there: move it away, or choose another --output",
}


def os_error_line(err: OSError) -> str:
    """One line for a failed read or write: the path, the cause, and what to change."""
    where = err.filename if err.filename is not None else "a file effbench writes"
    cause = err.strerror or str(err) or type(err).__name__
    hint = _OS_HINTS.get(err.errno or 0)
    return f"{where}: {cause}" + (f"; {hint}" if hint else "")
