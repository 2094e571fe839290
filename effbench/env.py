"""The process a measurement runs in: the environment manifest every record carries, and what
effbench sets before torch loads so that CPU figures do not depend on how the machine happens
to be set up.

- **malloc.** glibc malloc hands every block above 32 MiB back to the kernel when it is freed,
  so each call of a large attention pays page faults for its temporaries (the figures:
  docs/measuring-on-a-shared-cpu.md, "malloc"). Measuring
  commands therefore re-execute, before torch loads, with mimalloc preloaded: the shared
  library that effbench's own install brings (the `cmeel-mimalloc` wheel, a dependency on
  Linux), so that every machine runs the same allocator whatever it has installed; failing
  that, tcmalloc or jemalloc when installed; failing that, glibc malloc with transparent huge
  pages for its blocks (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), which pays far fewer page
  faults. An allocator the user preloads is kept. `EFFBENCH_ALLOCATOR`: `auto` (default),
  `system` (glibc malloc with huge pages, no preload), `untuned` (glibc malloc as it comes).
- **OpenMP wait policy.** PyTorch's OpenMP threads spin for a long while at every barrier; when
  another process's threads hold the cores, each spin burns the time slice its partner needs,
  and beside one busy PyTorch process some points ran many times slower. A short spin
  (`GOMP_SPINCOUNT=1000`) keeps the idle-machine speed and bounds that damage (the figures:
  docs/measuring-on-a-shared-cpu.md, "Threads: the OpenMP wait policy"). A policy the user
  set (`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) is kept.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

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
BUNDLED_ALLOCATOR = "cmeel-mimalloc"  # the wheel that ships libmimalloc.so
_HUGE_PAGES = "glibc.malloc.hugetlb=1"  # madvise(MADV_HUGEPAGE) on malloc's memory (glibc 2.35+)
GLIBC_TUNED = "glibc malloc (huge pages)"

# The OpenMP spin before a waiting thread sleeps, in libgomp's iterations (its default is
# 300,000); chosen by benchmarks/bench_contention.py (docs/measuring-on-a-shared-cpu.md).
OPENMP_SPINCOUNT = 1000
_OPENMP_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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


def bundled_allocator() -> Path | None:
    """The mimalloc shared library that effbench's install brings (the cmeel-mimalloc wheel)."""
    try:
        files = importlib.metadata.files(BUNDLED_ALLOCATOR) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in sorted(files, key=lambda f: f.name):
        if f.name.startswith("libmimalloc.so"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def allocator_reexec_env(
    environ: Mapping[str, str], *, library: Path | None = None
) -> dict[str, str] | None:
    """The environment to re-execute a measuring command in, so that its malloc is settled
    before torch loads; None when nothing is to change: off Linux, after one re-execution,
    under an allocator the user preloaded, with EFFBENCH_ALLOCATOR=untuned, or when glibc's
    huge pages are already asked for.

    `auto`: mimalloc from effbench's install (`library` overrides it), else an installed
    tcmalloc or jemalloc, else glibc malloc with huge pages; `system`: glibc malloc with huge
    pages.
    """
    if platform.system() != "Linux" or environ.get(_REEXEC_MARK):
        return None
    mode = allocator_mode(environ)
    if mode == "untuned" or _preloaded_allocator(environ.get("LD_PRELOAD", "")):
        return None
    if mode == "auto":
        library = library or bundled_allocator() or find_allocator()
        if library is not None:
            preload = " ".join(p for p in (str(library), environ.get("LD_PRELOAD", "")) if p)
            return {**environ, "LD_PRELOAD": preload, _REEXEC_MARK: "1"}
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    return {
        **environ,
        "GLIBC_TUNABLES": ":".join(t for t in (tunables, _HUGE_PAGES) if t),
        _REEXEC_MARK: "1",
    }


def allocator_name() -> str:
    """The malloc this process runs with: tcmalloc, jemalloc or mimalloc when preloaded, else
    the libc's (saying when glibc's runs with huge pages)."""
    preloaded = _preloaded_allocator()
    if preloaded:
        return preloaded
    if platform.system() != "Linux":
        return "system malloc"
    if _HUGE_PAGES not in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc malloc"
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        thp = ""
    return "glibc malloc (huge pages off in the kernel)" if "[never]" in thp else GLIBC_TUNED


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
    to re-execute in when the process must start again for the settings to take effect: for
    the malloc (`allocator_reexec_env`), or because torch (and with it OpenMP) has already
    loaded. None: this process may go on as it is.

    Raises:
        ValueError: for an EFFBENCH_ALLOCATOR value it does not know.
    """
    environ = os.environ if environ is None else environ
    allocator_mode(environ)  # a bad value fails before anything changes
    added = openmp_defaults(environ)
    environ.update(added)
    reexec = allocator_reexec_env(environ)
    if reexec is None and added and "torch" in sys.modules:
        reexec = dict(environ)
    return reexec


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def scheduler(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The SLURM job a process runs in, from SLURM's variables ({} outside a job): the job id
    as submitit names it (an array task `<array job>_<index>`), the array index, the node."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return {}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        "slurm_job_id": f"{array}_{task}" if array and task else job,
        "slurm_array_task_id": int(task) if task and task.isdigit() else None,
        "node": env.get("SLURMD_NODENAME") or platform.node(),
    }


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
        **scheduler(),
    )
