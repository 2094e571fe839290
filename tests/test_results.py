"""Results files: appended a record at a time, corrupt lines reported rather than fatal."""

from __future__ import annotations

import json
from pathlib import Path

from effbench.results import JsonlWriter, environment, read_jsonl, write_json_atomic


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
    assert env.allocator in ("tcmalloc", "jemalloc", "mimalloc", "glibc malloc", "system malloc")
