"""Results files: appended a record at a time, corrupt lines reported rather than fatal."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

from effbench.results import (
    ALLOCATOR_ENV,
    JsonlWriter,
    allocator_reexec_env,
    environment,
    find_allocator,
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


def test_allocator_reexec_env(tmp_path: Path) -> None:
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    assert find_allocator((str(tmp_path),)) == lib
    assert find_allocator((str(tmp_path / "none"),)) is None
    base = {"PATH": "/usr/bin"}
    env = allocator_reexec_env(base, library=lib)
    if platform.system() != "Linux":
        assert env is None
        return
    assert env is not None and env["LD_PRELOAD"] == str(lib) and env["PATH"] == "/usr/bin"
    # Never twice, never over a preloaded allocator, never when the user says so.
    assert allocator_reexec_env(env, library=lib) is None
    assert allocator_reexec_env({"LD_PRELOAD": "/x/libjemalloc.so.2"}, library=lib) is None
    assert allocator_reexec_env({ALLOCATOR_ENV: "system"}, library=lib) is None
    kept = allocator_reexec_env({"LD_PRELOAD": "/x/libfoo.so"}, library=lib)
    assert kept is not None and kept["LD_PRELOAD"] == f"{lib} /x/libfoo.so"


def test_only_measuring_commands_reexec(monkeypatch: pytest.MonkeyPatch) -> None:
    from effbench import cli

    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda exe, args, env: calls.append(args))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(
        "effbench.results.find_allocator", lambda *a: Path("/x/libtcmalloc_minimal.so.4")
    )
    monkeypatch.setattr("effbench.results._preloaded_allocator", lambda preload=None: None)
    monkeypatch.setattr("effbench.results.platform.system", lambda: "Linux")
    cli.reexec_with_allocator(["effbench", "--help"])
    assert calls == []
    cli.reexec_with_allocator(["effbench", "profile", "-n", "65"])
    assert calls and calls[0][1:] == ["-m", "effbench", "profile", "-n", "65"]


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
