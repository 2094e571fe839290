"""`<output>/study.json`: the resolved spec of a study and the state of each of its units,
checked as a pydantic model on every read (a damaged file is one line naming it, never a
traceback). Torch-free.

The file is a journal, not the truth about what is finished: a unit is finished when its
records are there (`Study.finished`), checked on every rerun, so a lost or stale study.json
costs at most work done again, never a point recorded twice or a run missing unnoticed.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from effbench.errors import RunError
from effbench.results import write_json_atomic

STUDY = "study.json"
VERSION = 2

UnitState = Literal["pending", "submitting", "submitted", "running", "done", "failed"]
LIVE: frozenset[str] = frozenset({"submitting", "submitted", "running"})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class UnitRecord(BaseModel):
    """What the study knows of one unit: its state, where it ran, and why it failed."""

    model_config = ConfigDict(extra="forbid")

    state: UnitState = "pending"
    executor: str | None = None
    job_id: str | None = None  # the scheduler's id (an array task: <array>_<index>)
    batch: str | None = None  # the name of the submission it went out in (found again by it)
    index: int | None = Field(None, ge=0)  # its place in that submission's array
    attempts: int = Field(0, ge=0)
    reason: str | None = None
    since: str | None = None
    seconds: float | None = Field(None, ge=0)


class StudyFile(BaseModel):
    """The whole of study.json."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[2] = VERSION
    spec: dict[str, Any]
    spec_hash: str
    executor: str = "local"
    units: dict[str, UnitRecord] = Field(default_factory=dict)


def read_state(path: Path) -> StudyFile | None:
    """The study file at `path`, or None when there is none.

    Raises:
        RunError: unreadable, not JSON, of another version, or with fields of the wrong type;
            one line naming the file and the way out.
    """
    if not path.exists():
        return None
    way_out = (
        "delete it to rebuild it from the study's records (finished runs and results are "
        "kept; on a cluster, cancel the study's jobs first), or pass --fresh to start again"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: unreadable ({err}); {way_out}") from None
    if isinstance(data, dict) and "done" in data and "units" not in data:
        raise RunError(f"{path}: a study of an earlier effbench (no units); {way_out}")
    try:
        return StudyFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise RunError(f"{path}: damaged ({where}: {first['msg']}); {way_out}") from None


def write_state(path: Path, state: StudyFile) -> None:
    """Write study.json whole (a temporary and a rename)."""
    write_json_atomic(path, state.model_dump(mode="json"))
