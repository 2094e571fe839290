"""Who owns an output: a directory is claimed by one process at a time, for as long as it writes
there, so that two commands aimed at the same run or report cannot mix their files.

A claim is an OS lock (`flock`) on `<directory>/.effbench.lock`, whose text names the holder
(pid, host, command, start time). The lock dies with its process, so a claim left by a killed
process is taken over, with a note; a live holder gets the claimant refused at once. No torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from effbench.errors import EffbenchError
from effbench.results import TEMPORARY

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a lock file that names a holder is held
    fcntl = None  # type: ignore[assignment]

LOCK = ".effbench.lock"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class ClaimError(EffbenchError, RuntimeError):
    """An output another process is writing to."""


@dataclass
class Claim:
    """A held claim on `directory`; `stale` describes a dead holder it replaced, if any."""

    directory: Path
    fd: int
    lock_name: str = LOCK
    created: list[Path] = field(default_factory=list)  # directories made for the claim
    stale: str | None = None

    def release(self) -> None:
        """Drop the claim: the lock file goes, and so do the directories made for the claim
        when nothing was written into them."""
        lock = self.directory / self.lock_name
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(lock)):
                lock.unlink()
        os.close(self.fd)
        for d in reversed(self.created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty


def _holder_text() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["effbench", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )


def describe_holder(text: str) -> str:
    """'pid 123 on host (effbench train ..., since ...)' from a lock file's text."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _missing_parents(directory: Path) -> list[Path]:
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    return list(reversed(missing))


def _open_lock(lock: Path) -> int:
    """Open (or create) a lock file without following a symbolic link: a link there would
    make the holder's text overwrite whatever file it points to.

    Raises:
        ClaimError: the lock path is a link (or not a regular file).
    """
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    except OSError as err:
        if lock.is_symlink() or err.errno == errno.ELOOP:
            raise ClaimError(
                f"{lock}: a symbolic link where effbench keeps its lock file; remove the link "
                "(effbench never writes through one)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ClaimError(f"{lock}: not a regular file; remove it so that effbench can lock here")
    return fd


def claim(directory: Path, *, what: str = "output", lock_name: str = LOCK) -> Claim:
    """Claim `directory` (made when absent) for this process, through its lock file
    `lock_name` (a study claims its directory with its own lock, beside the report's).

    Raises:
        ClaimError: another live process holds it (the message names the directory and
            holder), or the lock path is a symbolic link.
        OSError: the directory cannot be made or written.
    """
    created = _missing_parents(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / lock_name
    while True:
        fd = _open_lock(lock)
        try:
            held = _lock(fd)
            previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if not held:
                raise ClaimError(
                    f"{directory}: this {what} is in use by {describe_holder(previous)}; wait "
                    "for it to finish, or choose another --output"
                )
            if not os.path.samestat(os.fstat(fd), os.stat(lock)):
                os.close(fd)  # the holder removed the file as we locked it: lock the new one
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        break
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode(), 0)
    remove_dead_temporaries(directory)
    stale = f"took over the claim of {describe_holder(previous)}, which is no longer running"
    return Claim(directory, fd, lock_name, created=created, stale=stale if previous else None)


def remove_dead_temporaries(directory: Path) -> None:
    """Remove the temporary files in `directory` that a killed writer left (its process is
    gone, so it can never finish them); a live writer's are left alone."""
    for path in directory.glob(".*.tmp"):
        m = TEMPORARY.fullmatch(path.name)
        if m and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _lock(fd: int) -> bool:
    """Lock `fd` without waiting; False when another process holds it."""
    if fcntl is None:  # pragma: no cover
        return os.fstat(fd).st_size == 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def claimed(
    directories: list[Path], *, what: str = "output", lock_name: str = LOCK
) -> Iterator[list[Claim]]:
    """Claim every directory (all or none) for the life of the block."""
    held: list[Claim] = []
    try:
        for d in directories:
            held.append(claim(d, what=what, lock_name=lock_name))
        yield held
    finally:
        for c in reversed(held):
            c.release()
