"""`effbench scale`: whole ViTs across input resolutions, one table row and one record per
point, then crossovers against the baseline and log-log slopes; with `--checkpoint`, a trained
model's test accuracy at each resolution."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

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
    pct,
    status,
    whole_lines,
)
from effbench.cli.live import Measuring, batch_words, grid_table, run_grid, start_measuring
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
from effbench.plan import ScalePlan, check_checkpoint_data, plan_scale

if TYPE_CHECKING:
    from effbench.config.spec import BenchSpec

ResOpt = Annotated[
    list[int] | None,
    typer.Option(
        "--res",
        "-r",
        help="Input sides in pixels. Two values sweep a ladder between them (the ends and "
        "the powers of two in between, divisible by the patch); more are taken as given.",
    ),
]
PatchOpt = Annotated[
    int | None, typer.Option("--patch", "-p", help="Patch size (default: the backbone's).")
]
ModeOpt = Annotated[
    str | None,
    typer.Option(help="infer (forward only), train (one optimizer step) or both."),
]
BreakdownOpt = Annotated[
    bool | None,
    typer.Option(
        "--breakdown/--no-breakdown",
        help="Profile one forward per point: time in attention / MLP / norm / other.",
    ),
]
EnergyOpt = Annotated[
    bool | None,
    typer.Option(
        "--energy/--no-energy",
        help="Joules per image and per training step, and watts, from NVML's energy counter "
        "over 2 s or more of calls, apart from the timings (NVIDIA GPUs, with the energy "
        "extra: nvidia-ml-py). Default: on CUDA.",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="A trained run (runs/<model>/seed<N>): evaluate its test accuracy at each "
        "resolution (position embedding and Linformer projections interpolated).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="With --checkpoint: the dataset, when not where it was trained."),
]

SCALE_COLUMNS: dict[str, int | None] = {
    "model": 10,
    "px": 4,
    "N": 5,
    "status": 6,
    "batch": 5,
    "inf ms": 7,
    "img/s": 7,
    "inf MiB": 7,
    "step ms": 7,
    "step MiB": 8,
    "GFLOP": 7,
    "attn %": 6,
    "top-1": 5,
    "note": None,
}


def scale_row(r: Any) -> dict[str, str]:
    share = None
    if r.breakdown_ms and r.breakdown_step_ms:
        share = 100 * r.breakdown_ms["attention"] / r.breakdown_step_ms
    note = r.error or "; ".join(n for n in (contention_note(r), r.note, backend_note(r)) if n)
    cells = [
        r.model,
        str(r.image_size),
        str(r.seq_len),
        status(r),
        count(r.batch_size),
        ms(r.infer_ms),
        count(r.images_per_s),
        mib(r.infer_peak_mib),
        ms(r.train_ms),
        mib(r.train_peak_mib),
        gflop(r.flops_analytic),
        "-" if share is None else f"{share:.0f}",
        pct(r.test_top1),
        note_cell(note),
    ]
    return dict(zip(SCALE_COLUMNS, cells, strict=True))


def scale_columns(*, checkpoint: bool, max_batch: bool) -> dict[str, int | None]:
    """The table's columns: `top-1` with --checkpoint, `batch` with --batch max."""
    hidden = {c for c, shown in (("top-1", checkpoint), ("batch", max_batch)) if not shown}
    return {c: w for c, w in SCALE_COLUMNS.items() if c not in hidden}


def scale_timed(r: Any) -> bool:
    """Whether any timing of the point came (a point stopped before its rounds has none)."""
    return r.infer_ms is not None or r.train_ms is not None


def _crossover(s: Any, metric: str) -> str:
    c = s.crossovers.get(metric)
    verdicts = s.verdicts.get(metric) or {}
    if c is None:
        top = max(verdicts, key=int, default=None)
        open_ = top is not None and verdicts[top].verdict == "not resolved"
        return f"?{top}px" if open_ else "none"
    return f"{'≤' if c.at_start else ''}{c.resolution}px"


def scale_summary_table(summaries: list[Any], mode: str, *, max_batch: bool = False) -> Table:
    """Per model and metric: the crossover against the baseline, then the slope."""
    from effbench.crossover import metrics_for

    metrics = metrics_for(mode, max_batch=max_batch)
    base = summaries[0].baseline if summaries else None
    table = Table(
        title=f"Crossover against {base} · log-log slope against tokens",
        caption="crossover: the resolution from which it stays ahead (≤: from the smallest; "
        "?N: not resolved at N; none: not reached)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    for m in metrics:
        table.add_column(m.replace("_", " ").replace("memory", "mem"), justify="right")
    for s in summaries:
        cells = []
        for m in metrics:
            is_base = s.model in (base or "").removeprefix("best of ").split(", ")
            cross = "base" if is_base else _crossover(s, m)
            slope = "-" if s.slopes.get(m) is None else f"{s.slopes[m]:.2f}"
            cells.append(f"{cross} · {slope}" + ("*" if s.contended.get(m) else ""))
        table.add_row(s.model, *cells)
    if any(s.contended for s in summaries):
        table.caption += "; *: rests on contended figures (timed while other work held the CPU)"
    return whole_lines(table)


def headline(bench: BenchSpec, n_points: int, at: Measuring) -> str:
    """The line above the table: the grid and what it runs on."""
    sc = bench.scale
    return (
        f"{n_points} points: {len(bench.models)} models x {len(sc.resolutions)} resolutions "
        f"({', '.join(map(str, sc.resolutions))} px, patch {bench.scale_patch()}), "
        f"{batch_words(sc)}, {sc.mode}, {sc.dtype}, {at.words(sc)}"
    )


def measure(plan: ScalePlan, at: Measuring, results: Path) -> list[Any]:
    """Run the plan's grid under the live table; the records in order."""
    from effbench.results import write_json_atomic
    from effbench.sweep import checkpoint_sweep, scale_grid, scale_sweep

    bench, run = plan.spec, plan.run
    where = {"device": at.device, "env": at.env, "run_id": at.run_id}
    if run is not None:
        check_checkpoint_data(plan, at.device)  # a missing dataset fails before any point
        records = partial(checkpoint_sweep, bench, run, plan.state, **where)
    else:
        records = partial(scale_sweep, bench, **where)
    spec_path = results.with_name(results.name.removesuffix(".jsonl") + ".spec.json")
    write_json_atomic(spec_path, bench.model_dump(mode="json"))
    points = scale_grid(bench)
    columns = scale_columns(checkpoint=run is not None, max_batch=bench.scale.batch_size == "max")
    title = f"effbench scale on {at.env.device_name}" + (
        f": {run.entry.name} trained at {bench.backbone.image_size} px" if run else ""
    )
    console.print(headline(bench, len(points), at))
    return run_grid(
        records,
        points=len(points),
        repeats=bench.scale.repeats,
        table=grid_table(title, columns),
        row=lambda rec: [scale_row(rec)[c] for c in columns],
        timed=scale_timed,
        results=results,
        what="scaling",
    )


def summarize(plan: ScalePlan, done: list[Any], at: Measuring, results: Path) -> None:
    """Append the crossover and slope records to `results` and print their table."""
    from effbench.results import JsonlWriter
    from effbench.sweep import summary_records

    summaries = summary_records(plan.spec, done, env=at.env, run_id=at.run_id)
    with JsonlWriter(results) as writer:
        for s in summaries:
            writer.write(s)
    sc = plan.spec.scale
    console.print(scale_summary_table(summaries, sc.mode, max_batch=sc.batch_size == "max"))


@app.command(cls=ListOptionCommand)
def scale(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    attention: AttentionOpt = None,
    res: ResOpt = None,
    patch: PatchOpt = None,
    batch_size: GridBatchOpt = None,
    memory_limit: MemoryLimitOpt = None,
    mode: ModeOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    repeats: RepeatsOpt = None,
    interleave: InterleaveOpt = None,
    threads: ThreadsOpt = None,
    breakdown: BreakdownOpt = None,
    energy: EnergyOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = None,
    checkpoint: CheckpointOpt = None,
    data_dir: DataDirOpt = None,
    output: ResultsOpt = DEFAULT_RESULTS,
    set_: SetOpt = None,
) -> None:
    """Whole ViTs across input resolutions, and where each mechanism overtakes `sdpa`.

    Per model and resolution: latency, one training step, peak memory, FLOPs (analytic and
    counted two ways) and time by part; then the crossover against `sdpa` in time and memory
    and the log-log slope of each against the token count. With --checkpoint, one trained
    model's test accuracy at each resolution beside its cost.
    """
    overrides: dict[str, Any] = {
        "scale.patch_size": patch,
        "scale.batch_size": batch_size,
        "scale.memory_limit": memory_limit,
        "scale.mode": mode,
        "scale.dtype": dtype,
        "scale.device": device,
        "scale.repeats": repeats,
        "scale.interleave": interleave,
        "scale.breakdown": breakdown,
        "scale.energy": energy,
        "scale.threads": threads,
        "scale.compile": compile_,
        "scale.compile_mode": compile_mode,
    }
    plan = plan_scale(
        spec if checkpoint is not None else spec_source(spec),
        overrides,
        attention=attention,
        sets=set_,
        res=res,
        checkpoint=checkpoint,
        data_dir=data_dir,
    )
    at = start_measuring(plan.spec.scale, where="scale.device")
    results = output / f"scale-{at.run_id}.jsonl"
    done = measure(plan, at, results)
    if plan.run is None:
        summarize(plan, done, at, results)
    console.print(closing_line(done, results))
