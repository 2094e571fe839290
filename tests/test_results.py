"""Results files: appended a record at a time, corrupt lines reported rather than fatal."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from effbench.results import JsonlWriter, read_jsonl, write_json_atomic


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


@pytest.mark.skipif(platform.system() != "Linux", reason="RLIMIT_DATA capping is Linux only")
def test_cpu_memory_cap_turns_an_oversized_allocation_into_oom() -> None:
    # In a fresh interpreter: the cap lasts for the life of the process that sets it.
    code = """
import torch
from effbench.measure import cap_cpu_memory
from effbench.sweep import classify
assert cap_cpu_memory(extra_bytes=256 * 2**20) is not None
torch.ones(16 * 2**20)  # 64 MiB fits
try:
    torch.ones(2**30)  # 4 GiB does not
except RuntimeError as err:
    print(classify(err))
"""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "oom", out.stderr[-2000:]
