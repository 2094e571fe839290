"""torch.profiler wrapper: the top operators (CPU) or kernels (CUDA) by self time, the time
of a model split into attention / MLP / norm / other, and traces that Perfetto (Chrome trace
JSON) and TensorBoard's profiler plugin open.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from effbench.results import OpTime

# What the profiler's C++ side prints to the process's stderr on every start and stop, and
# once without a GPU: noise to whoever reads the command's output.
NATIVE_NOISE = ("SyncActivityProfilerHandler", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Capture file descriptor 2 while the profiler runs and write back every line that is
    not `NATIVE_NOISE` (C++ prints there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(x for x in lines if not any(n in x for n in NATIVE_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def activities(device: torch.device) -> list[ProfilerActivity]:
    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    return acts


def op_table(prof: profile, *, device: torch.device, top: int) -> list[OpTime]:
    """The `top` entries by self time: CUDA kernel time on GPU, CPU time otherwise."""
    cuda = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
        total_us = e.device_time_total if cuda else e.cpu_time_total
        if self_us > 0:
            rows.append(
                OpTime(name=e.key, self_ms=self_us / 1e3, total_ms=total_us / 1e3, calls=e.count)
            )
    rows.sort(key=lambda r: r.self_ms, reverse=True)
    return rows[:top]


# Below this share of kernel time in the wall time, a timing measures launches (Python,
# dispatch, the driver) more than the kernels: the point is launch-bound.
LAUNCH_BOUND_SHARE = 0.5


def kernel_time_ms(fn: Callable[[], Any], *, device: torch.device, calls: int = 3) -> float | None:
    """Milliseconds of GPU work (kernels and copies) per call of fn, from the profiler's
    device events over `calls` calls after one untimed call; None off CUDA."""
    if device.type != "cuda":
        return None
    fn()
    with native_noise_filtered(), profile(activities=activities(device)) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
    device_us = sum(
        e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA
    )
    return device_us / 1e3 / calls


def launch_bound(kernel_ms: float | None, wall_ms: float | None) -> bool | None:
    """Whether a timing is launch-bound: its kernels fill less than LAUNCH_BOUND_SHARE of
    its wall time. None when either figure is missing (off CUDA, or a failed point)."""
    if kernel_ms is None or not wall_ms:
        return None
    return kernel_ms / wall_ms < LAUNCH_BOUND_SHARE


def profile_call(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    top: int,
    trace_dir: Path | None = None,
    worker: str = "effbench",
) -> list[OpTime]:
    """Run fn once under torch.profiler; return its top ops and, with `trace_dir`, write
    `trace_dir/trace.json` (Chrome/Perfetto) and `trace_dir/tb/` (TensorBoard profiler plugin).
    """
    with native_noise_filtered(), profile(activities=activities(device)) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if trace_dir is not None:
        write_traces(prof, trace_dir, worker=worker)
    return op_table(prof, device=device, top=top)


def write_traces(prof: profile, trace_dir: Path, *, worker: str) -> None:
    """One Chrome trace, saved as `trace.json` and again where TensorBoard's plugin looks:
    `tb/<worker>.pt.trace.json` (`tensorboard --logdir <trace_dir>/tb`)."""
    from effbench.results import replace_atomically

    (trace_dir / "tb").mkdir(parents=True, exist_ok=True)
    trace = trace_dir / "trace.json"
    # whole or absent, and never written through a link left where a trace goes
    with replace_atomically(trace) as tmp:
        prof.export_chrome_trace(str(tmp))
    with replace_atomically(trace_dir / "tb" / f"{worker}.pt.trace.json") as tmp:
        shutil.copyfile(trace, tmp)


# ---------------------------------------------------------------------------- breakdown

# record_function labels of the parts of a model, and of one whole call around them.
PARTS = ("attention", "mlp", "norm")
STEP_LABEL = "effbench.step"


def _part_of(module: nn.Module) -> str | None:
    from effbench.attention.base import Attention
    from effbench.model import Mlp

    if isinstance(module, Attention):
        return "attention"
    if isinstance(module, Mlp):
        return "mlp"
    if isinstance(module, nn.LayerNorm):
        return "norm"
    return None


def _labelled_forward(label: str, forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return forward(*args, **kwargs)

    return run


@contextlib.contextmanager
def labelled(model: nn.Module) -> Iterator[None]:
    """Wrap the forward of every attention, MLP and norm module of `model` in a
    `record_function` range named after its part, for as long as the context lasts."""
    patched = []
    for module in model.modules():
        part = _part_of(module)
        if part is not None and "forward" not in vars(module):
            module.forward = _labelled_forward(part, module.forward)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@dataclass(frozen=True)
class Breakdown:
    """Time per call of one profiled callable, split by part (milliseconds)."""

    parts_ms: dict[str, float]  # attention, mlp, norm, other
    step_ms: float  # the whole call, as the profiler saw it
    source: str  # "CPU time" or "CUDA kernel time"
    top_ops: list[OpTime]
    kernel_names: list[str]  # CUDA kernels that ran (empty on CPU)
    op_names: list[str]  # aten operators that ran


def breakdown(
    fn: Callable[[], Any], *, model: nn.Module, device: torch.device, calls: int = 3, top: int = 8
) -> Breakdown:
    """Profile `calls` calls of fn with `model`'s parts labelled; split the median call's time.

    On CPU a part's time is the wall time of its ranges; on CUDA, the time of the kernels
    launched inside them. `other` is the rest of the call (embedding, residual additions,
    head, and on CPU the dispatch between parts), so the parts sum to the call's time. The
    call reported is the one with the median total, so that one slow call (a page fault, the
    profiler's own start) does not move the figures; the top-ops table averages all calls.
    """
    cuda = device.type == "cuda"
    with labelled(model):
        fn()  # the first call under new wrappers pays one-off costs; keep it out
        with native_noise_filtered(), profile(activities=activities(device)) as prof:
            for _ in range(calls):
                with record_function(STEP_LABEL):
                    fn()
            if cuda:
                torch.cuda.synchronize(device)
    events = prof.events()
    # CPU ranges only: on CUDA each range also has a GPU-side copy with the same name
    on_cpu = [e for e in events if e.device_type == DeviceType.CPU]
    steps = sorted((e for e in on_cpu if e.name == STEP_LABEL), key=lambda e: e.time_range.start)
    assert len(steps) == calls, f"profiled {len(steps)} calls of {calls}"
    starts = [e.time_range.start for e in steps]
    per_call = [dict.fromkeys(PARTS, 0.0) for _ in steps]
    kernels: set[str] = set()
    ops: set[str] = set()

    def elapsed_ms(e: Any) -> float:
        return (e.device_time_total if cuda else e.cpu_time_total) / 1e3

    for e in events:
        if e.device_type == DeviceType.CUDA:
            kernels.add(e.name)
        elif e.name in PARTS:
            i = bisect.bisect_right(starts, e.time_range.start) - 1
            per_call[i][e.name] += elapsed_ms(e)
        elif e.name.startswith("aten::"):
            ops.add(e.name)
    totals = [elapsed_ms(e) for e in steps]
    median = sorted(range(calls), key=totals.__getitem__)[calls // 2]
    step = totals[median]
    parts = dict(per_call[median])
    parts["other"] = max(0.0, step - sum(parts.values()))
    table = [
        OpTime(name=o.name, self_ms=o.self_ms / calls, total_ms=o.total_ms / calls, calls=o.calls)
        for o in op_table(prof, device=device, top=top + len(PARTS) + 1)
        if o.name not in (*PARTS, STEP_LABEL)
    ][:top]
    return Breakdown(
        parts_ms=parts,
        step_ms=step,
        source="CUDA kernel time" if cuda else "CPU time",
        top_ops=table,
        kernel_names=sorted(kernels),
        op_names=sorted(ops),
    )
