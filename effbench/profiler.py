"""torch.profiler wrapper: the top operators (CPU) or kernels (CUDA) by self time, and traces
that Perfetto (Chrome trace JSON) and TensorBoard's profiler plugin open.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from effbench.results import OpTime


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
    with profile(activities=activities(device)) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if trace_dir is not None:
        write_traces(prof, trace_dir, worker=worker)
    return op_table(prof, device=device, top=top)


def write_traces(prof: profile, trace_dir: Path, *, worker: str) -> None:
    """One Chrome trace, saved as `trace.json` and again where TensorBoard's plugin looks:
    `tb/<worker>.pt.trace.json` (`tensorboard --logdir <trace_dir>/tb`)."""
    (trace_dir / "tb").mkdir(parents=True, exist_ok=True)
    trace = trace_dir / "trace.json"
    prof.export_chrome_trace(str(trace))
    shutil.copyfile(trace, trace_dir / "tb" / f"{worker}.pt.trace.json")
