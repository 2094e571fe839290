"""The `effbench` command line. The only module that prints, draws progress or exits."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand

from effbench import __version__
from effbench.spec import DEFAULT_SPEC, BenchSpec, Dtype, SpecError, load_spec, select_models

EXIT_USAGE = 2

console = Console()
err_console = Console(stderr=True)


class ListOptionCommand(TyperCommand):
    """Lets list options take several values after one flag: `--seq-len 65 257 1025`.

    Click wants the flag repeated (`--seq-len 65 --seq-len 257`); this rewrites the first
    form into the second before parsing. Both forms work.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        multi: set[str] = set()
        for p in self.params:
            if getattr(p, "multiple", False):
                multi.update(getattr(p, "opts", ()))
        out: list[str] = []
        current: str | None = None
        for a in args:
            if a.startswith("-"):
                current = a if a in multi else None
                out.append(a)
            elif current is not None and out and out[-1] != current:
                out += [current, a]
            else:
                out.append(a)
        return super().parse_args(ctx, out)


app = typer.Typer(
    help="effbench: which attention should a Vision Transformer use? Measured, side by side.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"effbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """effbench: which attention should a Vision Transformer use? Measured, side by side."""


def fail(lines: list[str]) -> typer.Exit:
    """Print `location: message` lines to stderr; the caller raises the returned Exit(2)."""
    for line in lines:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


SpecOpt = Annotated[
    Path,
    typer.Option("--spec", "-s", help="Benchmark spec (TOML).", show_default=True),
]
AttentionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--attention",
        "-a",
        help="Models to run: model names or attention kinds from the spec, several allowed, "
        "or 'all' (default).",
    ),
]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option(help="Compute dtype (overrides the spec).", case_sensitive=False),
]


def resolve_spec(path: Path, overrides: dict[str, Any], attention: list[str] | None) -> BenchSpec:
    try:
        return select_models(load_spec(path, overrides), attention)
    except SpecError as err:
        raise fail(err.lines()) from None


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _ms(v: float | None) -> str:
    """Four significant figures or so: 0.9621, 7.272, 103.6, 1,429."""
    if v is None:
        return "-"
    digits = 0 if v >= 1000 else 1 if v >= 100 else 2 if v >= 10 else 3
    return f"{v:,.{digits}f}"


def _gflop(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e9:,.3f}"


# Column -> fixed width; the note (errors, SDPA backend) takes what is left.
PROFILE_COLUMNS: dict[str, int | None] = {
    "model": 10,
    "N": 5,
    "status": 6,
    "fwd ms": 7,
    "f+b ms": 7,
    "fwd MiB": 7,
    "GFLOP": 7,
    "GFLOP/s": 7,
    "note": None,
}


def profile_row(r: Any) -> list[str]:
    note = r.error or (f"sdpa {r.sdpa_backend}" if r.sdpa_backend else "")
    style = {"ok": "green", "oom": "yellow", "nan": "magenta", "error": "red"}[r.status]
    return [
        r.model,
        str(r.seq_len),
        f"[{style}]{r.status}[/{style}]",
        _ms(r.fwd_ms),
        _ms(r.fwdbwd_ms),
        _mib(r.fwd_peak_mib),
        _gflop(r.flops_analytic),
        "-" if r.fwd_gflops_per_s is None else f"{r.fwd_gflops_per_s:,.1f}",
        note[:80],
    ]


@app.command(cls=ListOptionCommand)
def profile(
    spec: SpecOpt = Path(DEFAULT_SPEC),
    attention: AttentionOpt = None,
    seq_len: Annotated[
        list[int] | None,
        typer.Option("--seq-len", "-n", help="Token counts (CLS included), e.g. -n 65 257 1025."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Batch size.")
    ] = None,
    dtype: DtypeOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    trace: Annotated[
        bool | None,
        typer.Option(
            "--trace/--no-trace",
            help="Write a Chrome/Perfetto trace and a TensorBoard profiler directory per point.",
        ),
    ] = None,
    min_run_time: Annotated[
        float | None, typer.Option(help="Seconds of timing per measurement.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Results directory (created if absent).")
    ] = Path("results"),
) -> None:
    """Time, memory and FLOPs of each attention layer alone, across sequence lengths."""
    overrides = {
        "profile.seq_lens": seq_len or None,
        "profile.batch_size": batch_size,
        "profile.dtype": dtype,
        "profile.device": device,
        "profile.trace": trace,
        "profile.min_run_time": min_run_time,
    }
    bench = resolve_spec(spec, overrides, attention)

    import torch  # noqa: F401 - heavy imports only once the spec is known to be good

    from effbench.results import JsonlWriter, environment, new_run_id, write_json_atomic
    from effbench.sweep import profile_grid, resolve_device, run_point

    try:
        dev = resolve_device(bench.profile.device)
    except ValueError as err:
        raise fail([f"profile.device: {err}"]) from None
    if dev.type == "cpu":
        from effbench.measure import cap_cpu_memory

        cap_cpu_memory()  # a point too big for RAM becomes an `oom` record, not a killed run
    run_id = new_run_id()
    env = environment(str(dev), bench.profile.dtype)
    results_path = output / f"profile-{run_id}.jsonl"
    write_json_atomic(output / f"profile-{run_id}.spec.json", bench.model_dump(mode="json"))
    trace_root = output / "traces" / f"profile-{run_id}" if bench.profile.trace else None

    points = profile_grid(bench)
    table = Table(
        title=f"effbench profile on {env.device_name}",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for col, width in PROFILE_COLUMNS.items():
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("profiling", total=len(points))
    statuses: Counter[str] = Counter()
    console.print(
        f"{len(points)} points: {len(bench.models)} models x {len(bench.profile.seq_lens)} "
        f"lengths, batch {bench.profile.batch_size}, {bench.profile.dtype}, {dev}, "
        f"{env.threads} threads, {env.allocator}"
    )
    with JsonlWriter(results_path) as writer, Live(Group(table, progress), console=console):
        for point in points:
            progress.update(task, description=f"{point.model.name} N={point.seq_len}")
            rec = run_point(bench, point, device=dev, env=env, run_id=run_id, trace_root=trace_root)
            writer.write(rec)
            statuses[rec.status] += 1
            table.add_row(*profile_row(rec))
            progress.advance(task)
    if not console.is_terminal:
        console.print()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    console.print(f"{summary}. Results: {results_path}")
    if trace_root is not None:
        console.print(f"Traces: {trace_root} (trace.json opens in Perfetto; tb/ in TensorBoard)")


# Commands that time things: run under tcmalloc or jemalloc when one is installed.
MEASURING_COMMANDS = frozenset({"profile"})


def reexec_with_allocator(argv: list[str]) -> None:
    """Replace this process by the same command with tcmalloc/jemalloc preloaded, when the
    command measures and `results.allocator_reexec_env` finds a reason and a library."""
    if not MEASURING_COMMANDS.intersection(argv[1:2]):
        return
    import os

    from effbench.results import allocator_reexec_env

    env = allocator_reexec_env(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "effbench", *argv[1:]], env)


def main() -> None:
    """Console-script entry point."""
    reexec_with_allocator(sys.argv)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; records already written are kept")
        sys.exit(130)


if __name__ == "__main__":
    main()
