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
    bundled_allocator,
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
    # Never twice, never over a preloaded allocator, never when the user says untuned.
    assert allocator_reexec_env(env, library=lib) is None
    assert allocator_reexec_env({"LD_PRELOAD": "/x/libjemalloc.so.2"}, library=lib) is None
    assert allocator_reexec_env({ALLOCATOR_ENV: "untuned"}, library=lib) is None
    kept = allocator_reexec_env({"LD_PRELOAD": "/x/libfoo.so"}, library=lib)
    assert kept is not None and kept["LD_PRELOAD"] == f"{lib} /x/libfoo.so"
    # system: glibc malloc with huge pages, the user's own tunables kept
    glibc = allocator_reexec_env({ALLOCATOR_ENV: "system", "GLIBC_TUNABLES": "a=1"}, library=lib)
    assert glibc is not None and "LD_PRELOAD" not in glibc
    assert glibc["GLIBC_TUNABLES"] == "a=1:glibc.malloc.hugetlb=1"
    assert allocator_reexec_env({**glibc, "EFFBENCH_ALLOCATOR_REEXEC": ""}) is None


def test_the_install_brings_mimalloc() -> None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("cmeel-mimalloc is a dependency on Linux x86_64 and aarch64 only")
    lib = bundled_allocator()
    assert lib is not None and lib.name.startswith("libmimalloc.so") and lib.is_file()


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


SPEC = """
[backbone]
dim = 32
heads = 2
[[models]]
name = "linformer"
attention = { kind = "linformer", k = 8 }
[profile]
seq_lens = [17]
batch_size = 2
device = "cpu"
warmup = 0
min_run_time = 0.01
backward = false
count_flops = false
top_ops = 0
"""


@linux
@pytest.mark.parametrize(
    ("mode", "allocator"),
    [
        ("auto", None),
        pytest.param("system", GLIBC_TUNED, marks=pytest.mark.slow),  # for time: each is a
        pytest.param("untuned", "glibc malloc", marks=pytest.mark.slow),  # torch start
    ],
)
def test_the_command_settles_malloc_and_openmp_before_torch_loads(
    tmp_path: Path, mode: str, allocator: str | None
) -> None:
    """`python -m effbench profile` as a user runs it: auto preloads the bundled mimalloc (or
    an installed tcmalloc/jemalloc), system runs glibc malloc with huge pages, untuned glibc
    as it comes; all get the short OpenMP spin; the records name both."""
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC)
    drop = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "LD_PRELOAD", "GLIBC_TUNABLES")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    environ.pop("EFFBENCH_ALLOCATOR_REEXEC", None)
    environ[ALLOCATOR_ENV] = mode
    out = tmp_path / "r"
    subprocess.run(
        [sys.executable, "-m", "effbench", "profile", "--spec", str(spec), "-o", str(out)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (path,) = out.glob("profile-*.jsonl")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["status"] == "ok"
    expected = allocator
    if expected is None:  # auto
        found = bundled_allocator() or envmod.find_allocator()
        expected = GLIBC_TUNED if found is None else envmod._preloaded_allocator(str(found))
    assert record["env"]["allocator"] == expected
    assert record["env"]["openmp"] == f"GOMP_SPINCOUNT={OPENMP_SPINCOUNT}"
