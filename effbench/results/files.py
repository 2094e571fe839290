"""Files that a run writes and the report reads: JSON Lines written one record at a time (a
line whole or taken back, fsynced), whole files replaced atomically (a temporary of the
writer's own, the usual file mode), paths made from names kept inside their root, and run
ids, so that an interrupted run loses nothing it measured and never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from effbench.errors import RunError


def new_run_id() -> str:
    """Sortable and unique: a timestamp plus a short random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def inside(root: Path, *parts: str) -> Path:
    """`root / part / ...`, where each part must be one plain path component, so that what
    effbench writes there lies inside `root` whatever the part (a model name, a label).

    Raises:
        RunError: naming the part that would lead elsewhere.
    """
    for part in parts:
        if part in ("", ".", "..") or Path(part).name != part or "\\" in part:
            raise RunError(
                f"{part!r} would put files outside {root}: use letters, digits, _ . + - "
                "(not only dots) in names"
            )
    return root.joinpath(*parts)


class JsonlWriter:
    """Appends one JSON object per line, flushed and fsynced after each record. A record that
    cannot be written whole (a full disk) is taken back, so the file never ends in half a
    line. `new`: the file must not exist yet (a results file of its own)."""

    def __init__(self, path: Path, *, new: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_EXCL if new else 0)
        try:  # never through a symbolic link: it would append to a file outside the output
            self._fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise RunError(
                f"{path}: a symbolic link where effbench writes its records; remove the link"
            ) from None

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
        line = (json.dumps(data, sort_keys=False) + "\n").encode("utf-8")
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask), as `open` would give it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# The name of `replace_atomically`'s temporaries, `.<name>.<pid>-<6 hex>.tmp`: its writer's pid
# tells a killed writer's leftover (`effbench.locks` removes those) from a live one's file.
TEMPORARY = re.compile(r"\..+\.(\d+)-[0-9a-f]{6}\.tmp")


@contextlib.contextmanager
def replace_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is fsynced and renamed
    over `path`, so the file is always whole or absent. The temporary name is this process's
    own, and the file gets the usual mode whatever wrote it. A write that failed for want of
    space (some writers say so only in their own words) raises OSError ENOSPC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")  # see TEMPORARY
    try:
        try:
            yield tmp
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        except Exception as err:
            if not isinstance(err, OSError) and _disk_full(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: the file is whole or absent."""
    with replace_atomically(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSON Lines file by exactly `records`, whole or not at all."""
    with replace_atomically(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


class BadLine(BaseModel):
    """A line of a results file that could not be read, kept so that it can be reported."""

    path: str
    line: int
    reason: str


def read_jsonl(
    path: Path, check: Callable[[dict[str, Any]], str | None] | None = None
) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Every JSON object in a JSON Lines file, and the lines that were not one: not UTF-8
    text, not JSON (cut short, nested too deeply, an integer too long to read) or not a
    record. `check` says what is wrong with a record (None: nothing); a record it faults is
    a bad line too, with that reason."""
    good: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for i, raw in enumerate(_lines(path), start=1):
        if not raw.strip():
            continue
        obj = _parse_line(raw)
        if isinstance(obj, str):
            reason = obj + ("" if raw.endswith(b"\n") else " (the last line: cut short?)")
        elif check is None or (reason := check(obj)) is None:
            good.append(obj)
            continue
        bad.append(BadLine(path=str(path), line=i, reason=reason))
    return good, bad


def _parse_line(raw: bytes) -> dict[str, Any] | str:
    """The record on one line of a results file, or why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg}"
    except RecursionError:
        return "invalid JSON: nested too deeply to read"
    except ValueError as err:  # an integer of more digits than int() converts
        return f"invalid JSON: {str(err).split(':')[0]}"
    if not isinstance(obj, dict) or "kind" not in obj:
        return "not a result record"
    return obj


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from fh
