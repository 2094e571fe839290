"""Results files: appended a record at a time, corrupt lines reported rather than fatal."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from effbench.results import (
    GLIBC_TUNING_ENV,
    JsonlWriter,
    environment,
    read_jsonl,
    write_json_atomic,
)


def test_writer_appends_and_reader_skips_corrupt_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path) as w:
        w.write({"kind": "profile", "i": 1})
    with JsonlWriter(path) as w:  # a second writer appends, never truncates
        w.write({"kind": "profile", "i": 2})
    with path.open("a") as fh:
        fh.write('{"kind": "profile", "i": 3\n')  # truncated line
        fh.write("[1, 2]\n")
    records, bad = read_jsonl(path)
    assert [r["i"] for r in records] == [1, 2]
    assert [(b.line, b.reason.split(":")[0]) for b in bad] == [
        (3, "invalid JSON"),
        (4, "not a result record"),
    ]


def test_atomic_json(tmp_path: Path) -> None:
    p = tmp_path / "d" / "spec.json"
    write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in p.parent.iterdir()] == ["spec.json"]


def test_environment_manifest() -> None:
    env = environment("cpu", "float32")
    assert env.device == "cpu" and env.threads >= 1 and env.torch and env.device_name
    assert env.allocator.split(" (")[0] in (
        "tcmalloc",
        "jemalloc",
        "mimalloc",
        "glibc malloc",
        "system malloc",
    )


@pytest.mark.skipif(
    platform.system() != "Linux" or "glibc" not in platform.libc_ver()[0],
    reason="glibc malloc tuning is Linux/glibc only",
)
@pytest.mark.parametrize(("setting", "tuned"), [("", True), ("default", False)])
def test_glibc_malloc_tuning_is_applied_and_reported(setting: str, tuned: bool) -> None:
    # In a fresh interpreter: the tuning lasts for the life of the process that applies it.
    code = (
        "from effbench.results import tune_glibc_malloc, allocator_name; "
        "print(tune_glibc_malloc(), allocator_name(), sep='|')"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env[GLIBC_TUNING_ENV] = setting
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    applied, name = out.split("|")
    assert applied == str(tuned)
    assert name == ("glibc malloc (mmap and trim off)" if tuned else "glibc malloc")
