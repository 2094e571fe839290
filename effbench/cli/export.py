"""`effbench export`: every model whole on torch.export (static and dynamic batch), ONNX and
onnxruntime; a live kind x path matrix, one record per model and path in
<output>/export.jsonl, the ONNX files in <output>/export/."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.live import Live
from rich.table import Table

from effbench.cli.app import ListOptionCommand, app
from effbench.cli.console import closing_line, console, ms, warn_if_busy, whole_lines
from effbench.cli.options import (
    DEFAULT_RESULTS,
    DEFAULT_SPEC_PATH,
    AttentionOpt,
    BatchSizeOpt,
    DeviceOpt,
    ResultsOpt,
    SetOpt,
    SpecOpt,
    ThreadsOpt,
    spec_source,
)
from effbench.errors import UsageError
from effbench.plan import choose_device, resolve_spec

if TYPE_CHECKING:
    from effbench.config.spec import BenchSpec
    from effbench.deploy import ExportSettings

OpsetOpt = Annotated[int, typer.Option(help="ONNX opset the dynamo exporter writes (18 or newer).")]
MinRunTimeOpt = Annotated[
    float, typer.Option(help="Seconds of timing for eager and onnxruntime, each.")
]
MISSING_EXTRA = "install the deploy extra: pip install 'effbench[deploy]'"
PATH_STYLE = {"ok": "green", "unsupported": "yellow", "error": "red"}
CELL_CHARS = 60  # of a failure's reason in the matrix; the lines below it and the record hold all


@app.command(cls=ListOptionCommand)
def export(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    attention: AttentionOpt = None,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    opset: OpsetOpt = 18,
    min_run_time: MinRunTimeOpt = 0.2,
    threads: ThreadsOpt = None,
    output: ResultsOpt = DEFAULT_RESULTS,
    set_: SetOpt = None,
) -> None:
    """Whether each model deploys: torch.export (static, dynamic batch), ONNX, onnxruntime.

    Each model whole at the spec's resolution, each path tried on its own: ok, or the reason
    it failed (the first unsupported operator, a data-dependent shape, ...), the largest
    difference from eager PyTorch's outputs, and onnxruntime's latency beside eager's at the
    same batch. Needs the `deploy` extra (onnx, onnxscript, onnxruntime).
    """
    bench = resolve_spec(spec_source(spec), {}, attention, set_, tokens="image")
    if batch_size is None or batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a batch of at least 1")
    if opset < 18:
        raise UsageError(f"--opset {opset}: the dynamo exporter writes opset 18 or newer")
    if min_run_time <= 0:
        raise UsageError(f"--min-run-time {min_run_time}: give a positive number of seconds")
    from effbench.deploy import ExportSettings, missing_packages

    if missing_packages():
        raise UsageError(f"{MISSING_EXTRA} ({', '.join(missing_packages())} missing)")
    settings = ExportSettings(
        output=output, batch_size=batch_size, opset=opset, min_run_time=min_run_time
    )
    run_export(bench, settings, device=device or "auto", threads=threads)


def run_export(
    bench: BenchSpec, settings: ExportSettings, *, device: str, threads: int | None
) -> None:
    """Export every model of `bench`, with the live matrix, the failures' reasons in full
    and the closing line; records appended to <output>/export.jsonl."""
    import torch

    from effbench.deploy import EXPORT_DIR, export_paths, export_sweep, ort_providers
    from effbench.env import environment
    from effbench.locks import claimed
    from effbench.results import JsonlWriter, new_run_id

    where = choose_device(device, where="--device")
    if threads:
        torch.set_num_threads(threads)
    warn_if_busy(where, torch.get_num_threads())
    env = environment(str(where), "float32")
    out = settings.output
    results = out / "export.jsonl"
    paths = export_paths(ort_providers(where))
    console.print(
        f"{len(bench.models)} models x {len(paths)} paths at {bench.backbone.image_size} px, "
        f"batch {settings.batch_size}, float32, {where}, {env.threads} threads, "
        f"opset {settings.opset}"
    )
    done: list[Any] = []
    with (
        claimed([out], what="export output"),
        JsonlWriter(results) as writer,
        Live(matrix(done, paths), console=console) as live,
    ):
        sweep = export_sweep(bench, device=where, env=env, run_id=new_run_id(), settings=settings)
        for rec in sweep:
            writer.write(rec)
            done.append(rec)
            live.update(matrix(done, paths))
    if not console.is_terminal:
        console.print()
    for r in done:
        if r.status != "ok":
            line = f"{r.model} / {r.path}: {r.status} ({r.failure}): {r.error}"
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(closing_line(done, results) + f"; ONNX files: {out / EXPORT_DIR}")


def cell(r: Any) -> str:
    """A matrix cell: ok with the largest difference from eager (and in onnxruntime the
    latencies, `ort / eager ms`), or the status and the start of the reason."""
    style = PATH_STYLE.get(r.status, "red")
    if r.status != "ok":
        reason = r.error or r.failure or ""
        short = reason if len(reason) <= CELL_CHARS else reason[: CELL_CHARS - 1] + "…"
        return f"[{style}]{r.status}[/{style}]: {short}"
    text = f"[{style}]ok[/{style}]"
    if r.max_abs_diff is not None:
        text += " Δ0" if r.max_abs_diff == 0 else f" Δ{r.max_abs_diff:.1e}"
    if r.path == "onnx":
        text += f" opset {r.opset}" + ("" if r.dynamic_batch else ", static batch")
    if r.ort_ms is not None and r.eager_ms:
        star = "*" if r.contended else ""  # timed while other work held the CPU
        text += f", {ms(r.ort_ms)} / {ms(r.eager_ms)} ms = {r.ort_ms / r.eager_ms:.2f}x{star}"
    return text


def matrix(records: list[Any], paths: list[str]) -> Table:
    """The kind x path matrix of the records so far: one row per model."""
    table = Table(
        title="effbench export: ok Δ(max |output - eager|); onnxruntime ms / eager ms = ratio",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("model", no_wrap=True)
    for p in paths:
        table.add_column(p, no_wrap=True, overflow="ellipsis")
    rows: dict[str, dict[str, str]] = {}
    for r in records:
        rows.setdefault(r.model, {})[r.path] = cell(r)
    for model, cells in rows.items():
        table.add_row(model, *(cells.get(p, "") for p in paths))
    return whole_lines(table)
