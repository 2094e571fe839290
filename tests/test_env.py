"""The measuring process: the environment manifest, the malloc (preloaded or tuned glibc) and
the OpenMP wait policy, settled before torch loads."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from effbench import env as envmod
from effbench.env import (
    ALLOCATOR_ENV,
    GLIBC_TUNED,
    OPENMP_SPINCOUNT,
    allocator_mode,
    allocator_reexec_env,
    environment,
    find_allocator,
    openmp_defaults,
    openmp_name,
)

linux = pytest.mark.skipif(platform.system() != "Linux", reason="glibc and /proc are Linux's")


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
    assert env.openmp


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
    assert allocator_reexec_env({ALLOCATOR_ENV: "untuned"}, library=lib) is None
    kept = allocator_reexec_env({"LD_PRELOAD": "/x/libfoo.so"}, library=lib)
    assert kept is not None and kept["LD_PRELOAD"] == f"{lib} /x/libfoo.so"


def test_allocator_mode_is_checked() -> None:
    assert allocator_mode({}) == "auto"
    assert allocator_mode({ALLOCATOR_ENV: "System"}) == "system"
    with pytest.raises(ValueError, match="use auto, system, untuned"):
        allocator_mode({ALLOCATOR_ENV: "tcmalloc"})


def test_openmp_defaults_keep_the_users_policy() -> None:
    assert openmp_defaults({}) == {"GOMP_SPINCOUNT": str(OPENMP_SPINCOUNT)}
    assert openmp_defaults({"OMP_WAIT_POLICY": "passive"}) == {}
    assert openmp_defaults({"GOMP_SPINCOUNT": "0"}) == {}
    assert openmp_name({}) == "OpenMP default"
    assert openmp_name({"GOMP_SPINCOUNT": "1000"}) == "GOMP_SPINCOUNT=1000"


def test_only_measuring_commands_prepare_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from effbench import launch

    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda exe, args, env: calls.append(args))
    monkeypatch.setattr("effbench.cli.main", lambda: None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("EFFBENCH_ALLOCATOR_REEXEC", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)  # restored after the test
    monkeypatch.setattr(envmod, "find_allocator", lambda *a: Path("/x/libtcmalloc_minimal.so.4"))
    monkeypatch.setattr(envmod, "_preloaded_allocator", lambda preload=None: None)
    monkeypatch.setattr(envmod.platform, "system", lambda: "Linux")
    monkeypatch.setattr(sys, "argv", ["effbench", "--help"])
    launch.main()
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["effbench", "profile", "-n", "65"])
    launch.main()
    assert calls and calls[0][1:] == ["-m", "effbench", "profile", "-n", "65"]


def test_unknown_allocator_mode_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from effbench import launch

    monkeypatch.setenv(ALLOCATOR_ENV, "tcmaloc")
    monkeypatch.setattr(sys, "argv", ["effbench", "profile"])
    with pytest.raises(SystemExit) as exc:
        launch.main()
    assert exc.value.code == 2


MANIFEST = """
import json, sys
from effbench.launch import MEASURING_COMMANDS
from effbench.env import prepare_measuring_process, environment
assert prepare_measuring_process() is None
import torch
print(json.dumps(environment("cpu", "float32").model_dump()))
"""


@linux
@pytest.mark.parametrize("mode", ["system", "untuned"])
def test_measuring_process_without_a_preloaded_allocator(mode: str) -> None:
    """EFFBENCH_ALLOCATOR=system tunes glibc malloc before torch loads (untuned leaves it);
    both get the short OpenMP spin, which the manifest names."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "LD_PRELOAD")}
    environ.pop("OMP_WAIT_POLICY", None)
    environ[ALLOCATOR_ENV] = mode
    out = subprocess.run(
        [sys.executable, "-c", MANIFEST],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    manifest = json.loads(out.stdout.strip().splitlines()[-1])
    assert manifest["allocator"] == (GLIBC_TUNED if mode == "system" else "glibc malloc")
    assert manifest["openmp"] == f"GOMP_SPINCOUNT={OPENMP_SPINCOUNT}"
