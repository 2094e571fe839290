"""`effbench profile`: each attention layer alone across sequence lengths, one table row and
one record per point."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from effbench.cli.app import ListOptionCommand, app
from effbench.cli.console import (
    backend_note,
    closing_line,
    console,
    contention_note,
    count,
    gflop,
    mib,
    ms,
    note_cell,
    status,
)
from effbench.cli.live import batch_words, grid_table, run_grid, start_measuring
from effbench.cli.options import (
    DEFAULT_RESULTS,
    DEFAULT_SPEC_PATH,
    AttentionOpt,
    CompileModeOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    GridBatchOpt,
    InterleaveOpt,
    MemoryLimitOpt,
    RepeatsOpt,
    ResultsOpt,
    SetOpt,
    SpecOpt,
    ThreadsOpt,
    spec_source,
)
from effbench.plan import resolve_spec

if TYPE_CHECKING:
    from effbench.config.spec import BenchSpec

SeqLenOpt = Annotated[
    list[int] | None,
    typer.Option("--seq-len", "-n", help="Token counts (CLS included), e.g. -n 65 257 1025."),
]
TraceOpt = Annotated[
    bool | None,
    typer.Option(
        "--trace/--no-trace",
        help="Write a Chrome/Perfetto trace and a TensorBoard profiler directory per point.",
    ),
]
MinRunTimeOpt = Annotated[float | None, typer.Option(help="Seconds of timing per repeat.")]
BreakdownOpt = Annotated[
    bool | None,
    typer.Option(
        "--breakdown/--no-breakdown",
        help="Also profile one transformer block per point: time in attention / MLP / "
        "norm / other (CPU time, or CUDA kernel time on a GPU).",
    ),
]

# Column -> fixed width; the note (errors, SDPA backend) takes what is left.
PROFILE_COLUMNS: dict[str, int | None] = {
    "model": 10,
    "N": 5,
    "status": 6,
    "batch": 5,
    "fwd ms": 7,
    "f+b ms": 7,
    "fwd MiB": 7,
    "GFLOP": 7,
    "GFLOP/s": 7,
    "note": None,
}


def breakdown_note(parts: dict[str, float] | None, step: float | None, what: str) -> str:
    """'attn 61% mlp 22% norm 5% other 12% of <what>' from a breakdown."""
    if not parts or not step:
        return ""
    share = " ".join(f"{k[:4]} {100 * v / step:.0f}%" for k, v in parts.items())
    return f"{share} of {what}"


def profile_row(r: Any) -> list[str]:
    notes = [
        contention_note(r),
        backend_note(r),
        breakdown_note(r.breakdown_ms, r.breakdown_step_ms, "a block"),
    ]
    note = r.error or "; ".join(n for n in notes if n)
    return [
        r.model,
        str(r.seq_len),
        status(r),
        count(r.batch_size),
        ms(r.fwd_ms),
        ms(r.fwdbwd_ms),
        mib(r.fwd_peak_mib),
        gflop(r.flops_analytic),
        "-" if r.fwd_gflops_per_s is None else f"{r.fwd_gflops_per_s:,.1f}",
        note_cell(note),
    ]


def profile_timed(r: Any) -> bool:
    """Whether any timing of the point came (a point stopped before its rounds has none)."""
    return r.fwd_ms is not None or r.fwdbwd_ms is not None


@app.command(cls=ListOptionCommand)
def profile(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    attention: AttentionOpt = None,
    seq_len: SeqLenOpt = None,
    batch_size: GridBatchOpt = None,
    memory_limit: MemoryLimitOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    trace: TraceOpt = None,
    min_run_time: MinRunTimeOpt = None,
    repeats: RepeatsOpt = None,
    interleave: InterleaveOpt = None,
    breakdown: BreakdownOpt = None,
    threads: ThreadsOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = None,
    output: ResultsOpt = DEFAULT_RESULTS,
    set_: SetOpt = None,
) -> None:
    """Time, memory and FLOPs of each attention layer alone, across sequence lengths."""
    overrides = {
        "profile.seq_lens": seq_len or None,
        "profile.batch_size": batch_size,
        "profile.memory_limit": memory_limit,
        "profile.dtype": dtype,
        "profile.device": device,
        "profile.trace": trace,
        "profile.min_run_time": min_run_time,
        "profile.repeats": repeats,
        "profile.interleave": interleave,
        "profile.breakdown": breakdown,
        "profile.threads": threads,
        "profile.compile": compile_,
        "profile.compile_mode": compile_mode,
    }
    run_profile(
        resolve_spec(spec_source(spec), overrides, attention, set_, tokens="profile"), output
    )


def run_profile(bench: BenchSpec, output: Path) -> None:
    """Measure the profile grid of `bench` into a new results file in `output`, with the
    table, the progress bar and the closing line."""
    pr = bench.profile

    from effbench.results import write_json_atomic
    from effbench.sweep import profile_grid, profile_sweep

    at = start_measuring(pr, where="profile.device")
    results = output / f"profile-{at.run_id}.jsonl"
    write_json_atomic(output / f"profile-{at.run_id}.spec.json", bench.model_dump(mode="json"))
    trace_root = output / "traces" / f"profile-{at.run_id}" if pr.trace else None
    points = profile_grid(bench)
    console.print(
        f"{len(points)} points: {len(bench.models)} models x {len(pr.seq_lens)} lengths, "
        f"{batch_words(pr)}, {pr.dtype}, {at.words(pr)}"
    )
    sweep = partial(
        profile_sweep, bench, device=at.device, env=at.env, run_id=at.run_id, trace_root=trace_root
    )
    done = run_grid(
        sweep,
        points=len(points),
        repeats=pr.repeats,
        table=grid_table(f"effbench profile on {at.env.device_name}", PROFILE_COLUMNS),
        row=profile_row,
        timed=profile_timed,
        results=results,
        what="profiling",
    )
    console.print(closing_line(done, results))
    if trace_root is not None:
        console.print(f"Traces: {trace_root} (trace.json opens in Perfetto; tb/ in TensorBoard)")
