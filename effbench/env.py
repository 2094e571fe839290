"""The process a measurement runs in: the environment manifest every record carries, and what
effbench sets before torch loads so that CPU figures do not depend on how the machine happens
to be set up.

- **malloc.** glibc malloc hands every block above 32 MiB back to the kernel when it is freed,
  so each call of a large attention pays page faults for its temporaries (Linformer 1.6x,
  Performer 1.5x slower at 4,097 tokens than under tcmalloc). Measuring commands preload
  tcmalloc or jemalloc when one is installed (a re-execution before torch loads); otherwise
  they keep glibc malloc from returning large blocks (`mallopt`: no mmap for allocations, no
  trimming of the heap), which measures within a few per cent of tcmalloc.
  `EFFBENCH_ALLOCATOR`: `auto` (default), `system` (glibc malloc with those settings, no
  preload), `untuned` (glibc malloc as the C library sets it up).
- **OpenMP wait policy.** PyTorch's OpenMP threads spin for a long while at every barrier; when
  another process's threads hold the cores, each spin burns the time slice its partner needs,
  and small calls become 50-160x slower. A short spin (`GOMP_SPINCOUNT=1000`) keeps the
  quiet-machine speed and bounds that damage to a few times. A policy the user set
  (`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) is kept.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from effbench import __version__
from effbench.results import Env

ALLOCATOR_ENV = "EFFBENCH_ALLOCATOR"
ALLOCATOR_MODES = ("auto", "system", "untuned")
_REEXEC_MARK = "EFFBENCH_ALLOCATOR_REEXEC"
# Shared libraries tried in order; Debian/Ubuntu ship them in libtcmalloc-minimal4,
# libgoogle-perftools4 and libjemalloc2.
ALLOCATOR_LIBS = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
GLIBC_TUNED = "glibc malloc (no mmap, no trim)"

# The OpenMP spin before a waiting thread sleeps, in libgomp's iterations (its default is
# 300,000); chosen by benchmarks/bench_contention.py (docs/measuring-on-a-shared-cpu.md).
OPENMP_SPINCOUNT = 1000
_OPENMP_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_glibc_tuned = False  # set once mallopt has been applied in this process


def allocator_mode(environ: Mapping[str, str]) -> str:
    """EFFBENCH_ALLOCATOR's value, checked.

    Raises:
        ValueError: naming the values it may take.
    """
    mode = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if mode not in ALLOCATOR_MODES:
        raise ValueError(
            f"{ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r}: use {', '.join(ALLOCATOR_MODES)}"
        )
    return mode


def _preloaded_allocator(preload: str | None = None) -> str | None:
    """tcmalloc, jemalloc or mimalloc when loaded into this process (or named in `preload`)."""
    if preload is None:
        try:
            preload = Path("/proc/self/maps").read_text()
        except OSError:
            preload = os.environ.get("LD_PRELOAD", "")
    return next((n for n in ("tcmalloc", "jemalloc", "mimalloc") if n in preload), None)


def find_allocator(dirs: tuple[str, ...] = _LIB_DIRS) -> Path | None:
    """The first tcmalloc or jemalloc shared library installed in the usual places."""
    for name in ALLOCATOR_LIBS:
        for d in dirs:
            if (Path(d) / name).is_file():
                return Path(d) / name
    return None


def allocator_reexec_env(
    environ: Mapping[str, str], *, library: Path | None = None
) -> dict[str, str] | None:
    """The environment to re-execute a measuring command in, with tcmalloc or jemalloc
    preloaded; None when that is not wanted or not possible: off Linux, when an allocator is
    already preloaded, after one re-execution, when none is installed, or unless
    EFFBENCH_ALLOCATOR is `auto`."""
    if platform.system() != "Linux" or environ.get(_REEXEC_MARK):
        return None
    if allocator_mode(environ) != "auto":
        return None
    if _preloaded_allocator(environ.get("LD_PRELOAD", "")):
        return None
    library = library or find_allocator()
    if library is None:
        return None
    preload = " ".join(p for p in (str(library), environ.get("LD_PRELOAD", "")) if p)
    return {**environ, "LD_PRELOAD": preload, _REEXEC_MARK: "1"}


def tune_glibc_malloc() -> bool:
    """Keep glibc malloc from handing large blocks back to the kernel: allocations never use
    their own mmap (M_MMAP_MAX 0) and the heap is not trimmed below 2 GiB of free top
    (M_TRIM_THRESHOLD), so a freed temporary is reused by the next call instead of being
    faulted in again. Returns whether it was applied: not off glibc, nor under a preloaded
    allocator. Call it before large allocations (before torch loads, ideally)."""
    global _glibc_tuned
    if _glibc_tuned:
        return True
    if platform.system() != "Linux" or _preloaded_allocator():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt effect)
    except (OSError, AttributeError):
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    _glibc_tuned = ok
    return ok


def allocator_name() -> str:
    """The malloc this process runs with: tcmalloc or jemalloc when preloaded, else the libc's
    (saying when effbench tuned glibc's)."""
    preloaded = _preloaded_allocator()
    if preloaded:
        return preloaded
    if platform.system() != "Linux":
        return "system malloc"
    return GLIBC_TUNED if _glibc_tuned else "glibc malloc"


def openmp_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP settings to add before torch loads: the short spin, unless the user chose a
    wait policy."""
    if any(environ.get(k) for k in _OPENMP_KNOBS):
        return {}
    return {"GOMP_SPINCOUNT": str(OPENMP_SPINCOUNT)}


def openmp_name(environ: Mapping[str, str] | None = None) -> str:
    """The OpenMP wait policy of this process, as the environment set it."""
    environ = os.environ if environ is None else environ
    set_ = [f"{k}={environ[k]}" for k in _OPENMP_KNOBS if environ.get(k)]
    return ", ".join(set_) or "OpenMP default"


def prepare_measuring_process(
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str] | None:
    """Settle malloc and OpenMP for a measuring process, before torch loads.

    Sets the OpenMP defaults in `environ` (os.environ by default) and returns the environment
    to re-execute in when the process must start again for them to take effect: to preload
    tcmalloc or jemalloc, or because torch (and with it OpenMP) has already loaded. Otherwise
    it tunes glibc malloc in this process (unless EFFBENCH_ALLOCATOR=untuned) and returns None.

    Raises:
        ValueError: for an EFFBENCH_ALLOCATOR value it does not know.
    """
    environ = os.environ if environ is None else environ
    mode = allocator_mode(environ)
    added = openmp_defaults(environ)
    environ.update(added)
    reexec = allocator_reexec_env(environ)
    if reexec is None and added and "torch" in sys.modules:
        reexec = dict(environ)
    if reexec is not None:
        return reexec
    if mode != "untuned":
        tune_glibc_malloc()
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, dtype: str) -> Env:
    """The manifest carried by every record: software, hardware, threads, allocator, OpenMP
    wait policy, dtype."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return Env(
        effbench=__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if cuda else cpu_name(),
        threads=torch.get_num_threads(),
        allocator=allocator_name(),
        openmp=openmp_name(),
        dtype=dtype,
        cuda=torch.version.cuda if cuda else None,
        cudnn=torch.backends.cudnn.version() if cuda else None,
    )
