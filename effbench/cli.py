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
from effbench.config.spec import (
    DEFAULT_SPEC,
    BenchSpec,
    Dtype,
    SpecError,
    load_spec,
    parse_set,
    parse_spec,
    select_models,
)

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


DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads for torch (default: torch's, one per core)."),
]
ResultsOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Results directory (created if absent).")
]
# The colour of each record status in the tables.
STATUS_STYLE = {"ok": "green", "oom": "yellow", "nan": "magenta", "error": "red"}


def _status(r: Any) -> str:
    """The record's status; `ok*` (yellow) when a timing of it is contended."""
    if r.status == "ok" and getattr(r, "contended", False):
        return "[yellow]ok*[/yellow]"
    style = STATUS_STYLE[r.status]
    return f"[{style}]{r.status}[/{style}]"


def _contention_note(r: Any) -> str:
    """'contended: fwd waited 48%, other work 1.0 CPUs' for a contended record, else ''."""
    phases = r.contended_phases()
    if not phases:
        return ""
    c = r.cpu_checks[phases[0]]
    evidence = []
    if c.wait_share is not None:
        evidence.append(f"waited {c.wait_share:.0%}")
    if c.others_cpus is not None:
        evidence.append(f"other work {c.others_cpus:.1f} CPUs")
    return f"contended: {'/'.join(phases)} " + ", ".join(evidence)


def closing_line(records: list[Any], results: Path) -> str:
    """Status counts, contended and re-measured points, and where the results are."""
    statuses = Counter(r.status for r in records)
    line = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + "."
    contended = sum(bool(r.contended) for r in records)
    recovered = sum(1 for r in records if not r.contended and r.retried() > 0)
    if recovered:
        line += f" {recovered} re-measured after other work disturbed them."
    if contended:
        line += (
            f" {contended} contended (ok*): timed while other work held the CPU, even after "
            "re-measuring, so slower than this machine can do; rerun on an idle machine or "
            "with fewer --threads."
        )
    return f"{line} Results: {results}"


def warn_if_busy(device: Any, threads: int) -> None:
    """Warn on stderr when other work already uses the CPUs a CPU measurement needs."""
    if device.type != "cpu":
        return
    from effbench.contention import busy_warning, machine_load

    text = busy_warning(machine_load(), threads)
    if text:
        err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any spec key: --set train.lr=3e-4 backbone.depth=4 (values are TOML; "
        "applied after the other options).",
    ),
]


def resolve_spec(
    path: Path,
    overrides: dict[str, Any],
    attention: list[str] | None,
    sets: list[str] | None = None,
) -> BenchSpec:
    try:
        overrides = {**overrides, **parse_set(sets or [])}
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


def grid_table(title: str, columns: dict[str, int | None]) -> Table:
    """A results table of fixed-width columns (None: takes what is left)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col, width in columns.items():
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    return table


def grid_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


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


def _breakdown_note(parts: dict[str, float] | None, step: float | None, what: str) -> str:
    """'attn 61% mlp 22% norm 5% other 12% of <what>' from a breakdown."""
    if not parts or not step:
        return ""
    share = " ".join(f"{k[:4]} {100 * v / step:.0f}%" for k, v in parts.items())
    return f"{share} of {what}"


def _backend_note(r: Any) -> str:
    if not r.sdpa_backend:
        return ""
    return f"sdpa {r.sdpa_backend}" + (" (math fallback!)" if r.sdpa_math_fallback else "")


def profile_row(r: Any) -> list[str]:
    notes = [
        _contention_note(r),
        _backend_note(r),
        _breakdown_note(r.breakdown_ms, r.breakdown_step_ms, "a block"),
    ]
    note = r.error or "; ".join(n for n in notes if n)
    return [
        r.model,
        str(r.seq_len),
        _status(r),
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
    device: DeviceOpt = None,
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
    breakdown: Annotated[
        bool | None,
        typer.Option(
            "--breakdown/--no-breakdown",
            help="Also profile one transformer block per point: time in attention / MLP / "
            "norm / other (CPU time, or CUDA kernel time on a GPU).",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    output: ResultsOpt = Path("results"),
    set_: SetOpt = None,
) -> None:
    """Time, memory and FLOPs of each attention layer alone, across sequence lengths."""
    overrides = {
        "profile.seq_lens": seq_len or None,
        "profile.batch_size": batch_size,
        "profile.dtype": dtype,
        "profile.device": device,
        "profile.trace": trace,
        "profile.min_run_time": min_run_time,
        "profile.breakdown": breakdown,
        "profile.threads": threads,
    }
    bench = resolve_spec(spec, overrides, attention, set_)

    import torch  # heavy imports only once the spec is known to be good

    from effbench.device import resolve_device
    from effbench.env import environment
    from effbench.results import JsonlWriter, new_run_id, write_json_atomic
    from effbench.sweep import profile_grid, run_point

    try:
        dev = resolve_device(bench.profile.device)
    except ValueError as err:
        raise fail([f"profile.device: {err}"]) from None
    if bench.profile.threads:
        torch.set_num_threads(bench.profile.threads)
    if dev.type == "cpu":
        from effbench.measure import cap_cpu_memory

        cap_cpu_memory()  # a point too big for RAM becomes an `oom` record, not a killed run
    warn_if_busy(dev, torch.get_num_threads())
    run_id = new_run_id()
    env = environment(str(dev), bench.profile.dtype)
    results_path = output / f"profile-{run_id}.jsonl"
    write_json_atomic(output / f"profile-{run_id}.spec.json", bench.model_dump(mode="json"))
    trace_root = output / "traces" / f"profile-{run_id}" if bench.profile.trace else None

    points = profile_grid(bench)
    table = grid_table(f"effbench profile on {env.device_name}", PROFILE_COLUMNS)
    progress = grid_progress()
    task = progress.add_task("profiling", total=len(points))
    done: list[Any] = []
    console.print(
        f"{len(points)} points: {len(bench.models)} models x {len(bench.profile.seq_lens)} "
        f"lengths, batch {bench.profile.batch_size}, {bench.profile.dtype}, {dev}, "
        f"{env.threads} threads, {env.allocator}, {env.openmp}"
    )
    with JsonlWriter(results_path) as writer, Live(Group(table, progress), console=console):
        for point in points:
            progress.update(task, description=f"{point.model.name} N={point.seq_len}")
            rec = run_point(bench, point, device=dev, env=env, run_id=run_id, trace_root=trace_root)
            writer.write(rec)
            done.append(rec)
            table.add_row(*profile_row(rec))
            progress.advance(task)
    if not console.is_terminal:
        console.print()
    console.print(closing_line(done, results_path))
    if trace_root is not None:
        console.print(f"Traces: {trace_root} (trace.json opens in Perfetto; tb/ in TensorBoard)")


# ---------------------------------------------------------------------------- train


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def train_summary(finals: list[dict[str, Any]]) -> tuple[Table, list[dict[str, Any]]]:
    """Per model: test accuracy mean ± std over seeds, cost, and each run's status."""
    table = Table(title="effbench train: test accuracy of the best-validation weights")
    for col in ("model", "seeds", "top-1 %", "top-5 %", "params", "GFLOP/img", "img/s", "min"):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows: list[dict[str, Any]] = []
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in finals:
        by_model.setdefault(r["model"], []).append(r)
    for model, runs in by_model.items():
        ok = [r for r in runs if r["status"] == "ok"]
        top1 = [r["test_top1"] for r in ok]
        top5 = [r["test_top5"] for r in ok]
        speeds = [r["images_per_s"] for r in ok if r.get("images_per_s")]
        speed = sum(speeds) / len(speeds) if speeds else None
        contended = sum(r.get("contended_epochs") or 0 for r in runs)
        failed = [f"seed {r['seed']}: {r['status']}" for r in runs if r["status"] != "ok"]
        rows.append(
            {
                "model": model,
                "seeds": [r["seed"] for r in runs],
                "ok": len(ok),
                "test_top1": top1,
                "test_top5": top5,
                "params": runs[0]["params"],
                "flops_per_image": runs[0]["flops_per_image"],
                "images_per_s": speed,
                "contended_epochs": contended,
                "total_s": [r["total_s"] for r in runs],
                "failed": failed,
            }
        )
        minutes = sum(r["total_s"] for r in runs) / len(runs) / 60
        table.add_row(
            model,
            f"{len(ok)}/{len(runs)}" + (f" ({'; '.join(failed)})" if failed else ""),
            _mean_std(top1),
            _mean_std(top5),
            f"{runs[0]['params']:,}",
            f"{runs[0]['flops_per_image'] / 1e9:.3f}",
            "-" if speed is None else f"{speed:,.0f}" + ("*" if contended else ""),
            f"{minutes:.1f}",
        )
    if any(r["contended_epochs"] for r in rows):
        table.caption = (
            "img/s*: some epochs were timed while other work held the CPU (contended), so the "
            "speed is lower than this machine can do"
        )
    return table, rows


@app.command(cls=ListOptionCommand)
def train(
    spec: SpecOpt = Path(DEFAULT_SPEC),
    attention: AttentionOpt = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seeds", help="Seeds, several allowed: --seeds 0 1 2.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="cifar10, imagenet100 or synthetic.")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="CIFAR-10: a cifar-10-batches-py directory or its parent (downloaded there "
            "when absent). ImageNet-100: the root holding train/ and val/."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (the same for every model).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Global batch size.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW peak learning rate.")] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."),
    ] = None,
    compile_: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile; compile time is recorded."),
    ] = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option("--tensorboard/--no-tensorboard", help="Also write TensorBoard scalars."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Runs directory: <output>/<model>/seed<seed>/."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="'auto': continue each run from its checkpoint (finished runs are skipped); "
            "or the path of one run's checkpoint or directory."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Train ViTs that differ only in their attention, under one budget, and test each once.

    Each model x seed writes <output>/<model>/seed<seed>/: train.jsonl (one record per
    epoch, then the final record), spec.json, checkpoint.pt and model.safetensors. Runs under
    torchrun as DDP (one process per GPU, or gloo on CPU).
    """
    overrides = {
        "train.seeds": seeds or None,
        "train.dataset": dataset,
        "train.data_dir": None if data_dir is None else str(data_dir),
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.precision": precision,
        "train.compile": compile_,
        "train.device": device,
        "train.threads": threads,
        "train.tensorboard": tensorboard,
        "train.output_dir": None if output is None else str(output),
    }
    bench = resolve_spec(spec, overrides, attention, set_)
    cfg = bench.train
    runs = [(m, s) for m in bench.models for s in cfg.seeds]
    if resume not in (None, "auto") and len(runs) > 1:
        raise fail(
            [
                f"--resume {resume}: a checkpoint path resumes one run; pick one model and one "
                "seed, or use --resume auto"
            ]
        )

    import torch

    from effbench.errors import DataError, TrainError
    from effbench.results import new_run_id, write_json_atomic
    from effbench.runs import completed, holds_run, run_dir
    from effbench.train import (
        Interrupted,
        StopFlag,
        Trainer,
        TrainProgress,
        init_distributed,
    )

    try:
        dist = init_distributed(cfg.device)
    except ValueError as err:
        raise fail([f"train.device: {err}"]) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet = not dist.main
    out = Console(quiet=quiet)
    if dist.main and dist.world == 1:
        warn_if_busy(dist.device, torch.get_num_threads())
    if resume is None:
        taken = [d for d in (run_dir(cfg, m.name, s) for m, s in runs) if holds_run(d)]
        if taken:
            raise fail(
                [f"{d} already holds a run" for d in taken]
                + [
                    "pass --resume auto to continue (finished runs are skipped), or "
                    "--output DIR for new runs"
                ]
            )
    run_id = new_run_id()
    stop = StopFlag()
    finals: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=out,
        disable=quiet or not out.is_terminal,
        transient=False,
    )
    out.print(
        f"{len(runs)} run(s): {len(bench.models)} model(s) x {len(cfg.seeds)} seed(s), "
        f"{cfg.dataset}, {cfg.epochs} epochs, batch {cfg.batch_size}, {dist.device}"
        + (f", {dist.world} processes" if dist.world > 1 else "")
    )
    try:
        with stop.installed(), progress:
            runs_task = progress.add_task("runs", total=len(runs), note="")
            for entry, seed in runs:
                name = f"{entry.name} seed {seed}"
                directory = run_dir(cfg, entry.name, seed)
                done = completed(directory) if resume == "auto" else None
                if done is not None:
                    out.print(f"{name}: already finished ({done['status']}), skipped")
                    finals.append(done)
                    progress.advance(runs_task)
                    continue
                epoch_task = progress.add_task(name, total=cfg.epochs, note="")
                batch_task = progress.add_task("  batches", total=None, note="")

                def on_batch(phase: str, i: int, n: int, _t: Any = batch_task) -> None:
                    progress.update(_t, description=f"  {phase}", completed=i, total=n)

                trainer = Trainer(
                    bench,
                    entry,
                    seed,
                    dist=dist,
                    run_id=run_id,
                    resume=resume,
                    stop=stop,
                    progress=TrainProgress(
                        on_batch=on_batch,
                        on_message=lambda text: out.print(text, markup=False, highlight=False),
                    ),
                )
                for rec in trainer.run():
                    if rec.kind == "train_epoch":
                        progress.update(epoch_task, completed=rec.epoch, note=_epoch_note(rec))
                        out.print(f"{name} epoch {rec.epoch}/{rec.epochs}: {_epoch_note(rec)}")
                    else:
                        finals.append(rec.model_dump(mode="json"))
                        out.print(f"{name}: {_final_note(rec)}")
                progress.remove_task(batch_task)
                progress.advance(runs_task)
    except Interrupted as err:
        where = f"; checkpoint {err.checkpoint}" if err.checkpoint else ""
        err_console.print(
            f"stopped by signal {err.signum}{where}. Continue with the same command and "
            "--resume auto."
        )
        raise typer.Exit(err.exit_code) from None
    except (DataError, TrainError) as err:
        raise fail([str(err)]) from None
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    table, rows = train_summary(finals)
    out.print(table)
    if dist.main and finals:
        path = Path(cfg.output_dir) / f"summary-{run_id}.json"
        write_json_atomic(path, {"run_id": run_id, "models": rows})
        out.print(f"Runs in {cfg.output_dir}/<model>/seed<seed>/; summary: {path}")
    if any(r["status"] != "ok" for r in finals):
        raise typer.Exit(1)


def _epoch_note(rec: Any) -> str:
    val = f", val {_pct(rec.val_top1)}%" if rec.val_top1 is not None else ""
    contended = f" ({_contention_note(rec)})" if rec.contended else ""
    return (
        f"loss {rec.train_loss:.3f}, train {_pct(rec.train_top1)}%{val}, "
        f"{rec.images_per_s:,.0f} img/s{contended}, {rec.epoch_s:.1f} s"
    )


def _final_note(rec: Any) -> str:
    if rec.status != "ok":
        return f"[{rec.status}] {rec.error}"
    return (
        f"test top-1 {_pct(rec.test_top1)}%, top-5 {_pct(rec.test_top5)}% "
        f"(weights of epoch {rec.best_epoch}), {rec.total_s / 60:.1f} min"
    )


# ---------------------------------------------------------------------------- scale

SCALE_COLUMNS: dict[str, int | None] = {
    "model": 10,
    "px": 4,
    "N": 5,
    "status": 6,
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
    note = r.error or "; ".join(n for n in (_contention_note(r), r.note, _backend_note(r)) if n)
    cells = [
        r.model,
        str(r.image_size),
        str(r.seq_len),
        _status(r),
        _ms(r.infer_ms),
        "-" if r.images_per_s is None else f"{r.images_per_s:,.0f}",
        _mib(r.infer_peak_mib),
        _ms(r.train_ms),
        _mib(r.train_peak_mib),
        _gflop(r.flops_analytic),
        "-" if share is None else f"{share:.0f}",
        _pct(r.test_top1),
        note[:80],
    ]
    return dict(zip(SCALE_COLUMNS, cells, strict=True))


def _crossover(c: Any) -> str:
    if c is None:
        return "none"
    return f"{'≤' if c.at_start else ''}{c.resolution}px"


def scale_summary_table(summaries: list[Any], mode: str) -> Table:
    """Per model and metric: the crossover against the baseline, then the slope."""
    from effbench.crossover import metrics_for

    metrics = metrics_for(mode)
    base = summaries[0].baseline if summaries else None
    table = Table(
        title=f"Crossover against {base} · log-log slope against tokens",
        caption="crossover: the resolution from which it stays ahead (≤: from the smallest; "
        "none: not reached in range)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    for m in metrics:
        table.add_column(m.replace("_", " ").replace("memory", "mem"), justify="right")
    for s in summaries:
        cells = []
        for m in metrics:
            cross = "base" if s.model == base else _crossover(s.crossovers.get(m))
            slope = "-" if s.slopes.get(m) is None else f"{s.slopes[m]:.2f}"
            cells.append(f"{cross} · {slope}" + ("*" if s.contended.get(m) else ""))
        table.add_row(s.model, *cells)
    if any(s.contended for s in summaries):
        table.caption += "; *: rests on contended figures (timed while other work held the CPU)"
    return table


@app.command(cls=ListOptionCommand)
def scale(
    spec: SpecOpt = Path(DEFAULT_SPEC),
    attention: AttentionOpt = None,
    res: Annotated[
        list[int] | None,
        typer.Option(
            "--res",
            "-r",
            help="Input sides in pixels. Two values sweep a ladder between them (the ends and "
            "the powers of two in between, divisible by the patch); more are taken as given.",
        ),
    ] = None,
    patch: Annotated[
        int | None, typer.Option("--patch", "-p", help="Patch size (default: the backbone's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Batch size.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="infer (forward only), train (one optimizer step) or both."),
    ] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    repeats: Annotated[
        int | None, typer.Option(help="Timed repeats per point; their spread is recorded.")
    ] = None,
    threads: ThreadsOpt = None,
    breakdown: Annotated[
        bool | None,
        typer.Option(
            "--breakdown/--no-breakdown",
            help="Profile one forward per point: time in attention / MLP / norm / other.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A trained run (runs/<model>/seed<N>): evaluate its test accuracy at each "
            "resolution (position embedding and Linformer projections interpolated).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="With --checkpoint: the dataset, when not where it was trained."),
    ] = None,
    output: ResultsOpt = Path("results"),
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
        "scale.mode": mode,
        "scale.dtype": dtype,
        "scale.device": device,
        "scale.repeats": repeats,
        "scale.breakdown": breakdown,
        "scale.threads": threads,
    }
    # With --checkpoint and no bench.toml here, the run's own spec gives the [scale] defaults.
    own_spec = checkpoint is not None and spec == Path(DEFAULT_SPEC) and not spec.exists()
    if not own_spec:
        bench = resolve_spec(spec, overrides, attention, set_)

    import torch  # heavy imports only once the spec is known to be good

    from effbench.config.spec import resolution_ladder
    from effbench.data import DataError
    from effbench.device import resolve_device
    from effbench.env import environment
    from effbench.errors import ScaleError
    from effbench.results import JsonlWriter, new_run_id, write_json_atomic
    from effbench.runs import find_run, load_state
    from effbench.sweep import (
        checkpoint_spec,
        checkpoint_sweep,
        scale_grid,
        scale_sweep,
        summary_records,
    )

    run = None
    if checkpoint is not None:
        if attention:
            raise fail(["--attention: a --checkpoint evaluates the model it was trained with"])
        try:
            run = find_run(checkpoint)
        except ScaleError as err:
            raise fail(str(err).splitlines()) from None
        if patch is None:
            overrides["scale.patch_size"] = run.spec.backbone.patch_size
    if res:  # with --checkpoint the patch is known from here on, without it from the spec
        patch_size = overrides["scale.patch_size"] or bench.scale_patch()
        try:
            overrides["scale.resolutions"] = (
                resolution_ladder(res[0], res[1], patch_size) if len(res) == 2 else res
            )
        except ValueError as err:
            raise fail([f"--res: {err}"]) from None
    if run is not None and own_spec:
        try:
            bench = parse_spec(
                run.spec.model_dump(mode="json"),
                overrides={**overrides, **parse_set(set_ or [])},
                source=str(run.directory / "spec.json"),
            )
        except SpecError as err:
            raise fail(err.lines()) from None
    else:
        bench = resolve_spec(spec, overrides, attention, set_)
    if bench.scale_problems() and run is None:
        raise fail(SpecError(bench.scale_problems(), str(spec)).lines())
    state = None
    if run is not None:
        try:
            bench = checkpoint_spec(run, bench, None if data_dir is None else str(data_dir))
            state = load_state(run)
        except ScaleError as err:
            raise fail(str(err).splitlines()) from None
    elif not any(m.attention.kind == "sdpa" for m in bench.models):
        # crossovers need the baseline: add the spec's sdpa model, or a default one
        names = [m.name for m in bench.models]
        bench = resolve_spec(spec, overrides, [*names, "sdpa"], set_)
    try:
        dev = resolve_device(bench.scale.device)
    except ValueError as err:
        raise fail([f"scale.device: {err}"]) from None
    if bench.scale.threads:
        torch.set_num_threads(bench.scale.threads)
    if dev.type == "cpu":
        from effbench.measure import cap_cpu_memory

        cap_cpu_memory()  # a point too big for RAM becomes an `oom` record, not a killed run
    warn_if_busy(dev, torch.get_num_threads())
    run_id = new_run_id()
    env = environment(str(dev), bench.scale.dtype)
    results_path = output / f"scale-{run_id}.jsonl"
    if run is not None:
        from effbench.data import eval_loader

        try:  # a missing dataset is an error before any point runs
            eval_loader(bench, device=dev)
        except DataError as err:
            raise fail([f"--checkpoint {run.directory}: {err}"]) from None
        records = checkpoint_sweep(bench, run, state, device=dev, env=env, run_id=run_id)
    else:
        records = scale_sweep(bench, device=dev, env=env, run_id=run_id)
    write_json_atomic(output / f"scale-{run_id}.spec.json", bench.model_dump(mode="json"))

    sc = bench.scale
    points = scale_grid(bench)
    columns = {c: w for c, w in SCALE_COLUMNS.items() if run is not None or c != "top-1"}
    table = grid_table(
        f"effbench scale on {env.device_name}"
        + (f": {run.entry.name} trained at {bench.backbone.image_size} px" if run else ""),
        columns,
    )
    progress = grid_progress()
    task = progress.add_task("scaling", total=len(points))
    console.print(
        f"{len(points)} points: {len(bench.models)} models x {len(sc.resolutions)} resolutions "
        f"({', '.join(map(str, sc.resolutions))} px, patch {bench.scale_patch()}), "
        f"batch {sc.batch_size}, {sc.mode}, {sc.dtype}, {dev}, {env.threads} threads, "
        f"{env.allocator}, {env.openmp}, {sc.repeats} repeats"
    )
    done: list[Any] = []
    with JsonlWriter(results_path) as writer:
        with Live(Group(table, progress), console=console):
            for point in points:
                progress.update(task, description=f"{point.model.name} {point.image_size}px")
                rec = next(records)  # a failed point is a record, not an exception
                writer.write(rec)
                done.append(rec)
                row = scale_row(rec)
                table.add_row(*(row[c] for c in columns))
                progress.advance(task)
        if not console.is_terminal:
            console.print()
        if run is None:
            summaries = summary_records(bench, done, env=env, run_id=run_id)
            for s in summaries:
                writer.write(s)
            console.print(scale_summary_table(summaries, sc.mode))
    console.print(closing_line(done, results_path))


# ---------------------------------------------------------------------------- analyze


@app.command()
def analyze(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Trained runs (runs/<model>/seed<N>), one or more.", show_default=False
        ),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The dataset, when not where the runs were trained."),
    ] = None,
    device: DeviceOpt = "auto",
    output: ResultsOpt = Path("results"),
) -> None:
    """Attention maps and fidelity of trained models against exact attention.

    From each run's own weights on test images: per layer, the relative output error and
    total-variation distance against exact softmax attention, Nystrom's pseudo-inverse
    residual, Performer's error against its feature count, and CLS attention maps with
    rollout beside the exact ones. Written to <output>/analyze-<run>.jsonl for
    `effbench report`.
    """
    import dataclasses

    from effbench.analyze import analyze_run
    from effbench.config.spec import SpecError, parse_spec
    from effbench.data import DataError
    from effbench.device import resolve_device
    from effbench.env import environment
    from effbench.errors import ScaleError
    from effbench.results import JsonlWriter, new_run_id
    from effbench.runs import find_run, load_state

    try:
        dev = resolve_device(device or "auto")
    except ValueError as err:
        raise fail([f"--device: {err}"]) from None
    found = []
    for path in runs:
        try:
            run = find_run(path)
            if data_dir is not None:
                data = run.spec.model_dump(mode="json")
                data["train"]["data_dir"] = str(data_dir)
                run = dataclasses.replace(run, spec=parse_spec(data, source=str(run.directory)))
            found.append((run, load_state(run)))
        except (ScaleError, SpecError) as err:
            raise fail(str(err).splitlines()) from None
    run_id = new_run_id()
    env = environment(str(dev), "float32")
    path = output / f"analyze-{run_id}.jsonl"
    with JsonlWriter(path) as writer:
        for run, state in found:
            console.print(f"{run.entry.name} ({run.directory}): analysing...")
            try:
                rec = analyze_run(run, state, device=dev, env=env, run_id=run_id)
            except DataError as err:
                raise fail([f"{run.directory}: {err}"]) from None
            writer.write(rec)
            errors = [x.rel_output_error for x in rec.layers]
            tv = [x.tv_mean for x in rec.layers]
            console.print(
                f"  {len(rec.layers)} layers on {rec.n_images} test images: relative output "
                f"error {min(errors):.3g}-{max(errors):.3g}, mean TV distance "
                f"{sum(tv) / len(tv):.3g} against exact attention"
            )
    console.print(f"Results: {path}")


# ---------------------------------------------------------------------------- report


@app.command()
def report(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Result files or directories to read (default: results/ and runs/).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where report.html / report.md go (default: results/)."
        ),
    ] = None,
    format_: Annotated[
        str,
        typer.Option("--format", "-f", help="html, md or both."),
    ] = "both",
) -> None:
    """An HTML and a Markdown report from the results of train, profile, scale and analyze.

    The HTML is one self-contained file; the Markdown writes its PNG figures beside it.
    Accuracy beside cost, Pareto fronts, scaling and crossovers, time by part, training
    curves, fidelity and attention maps, each labelled with the environment it came from.
    """
    from effbench.report import build_report, collect, write_report

    formats = {"html": ["html"], "md": ["md"], "both": ["html", "md"]}.get(format_.lower())
    if formats is None:
        raise fail([f"--format {format_!r}: choose html, md or both"])
    paths = inputs or [p for p in (Path("results"), Path("runs")) if p.exists()]
    missing = [p for p in paths if not p.exists()]
    if missing or not paths:
        raise fail(
            [f"{p}: no such file or directory" for p in missing]
            or ["no results/ or runs/ here: pass the result directories to read"]
        )
    results = collect(paths)
    if not results.records:
        raise fail([f"no effbench records in {', '.join(map(str, paths))}"])
    built = build_report(results)
    written = write_report(built, output or Path("results"), formats)
    console.print(
        f"{len(results.records)} records from {len(results.files)} file(s), "
        f"{len(built.sections)} sections, {len(built.figures())} figures"
        + (f"; {len(results.bad)} unreadable line(s) listed in the report" if results.bad else "")
    )
    for path in written:
        console.print(f"Report: {path}")


def main() -> None:
    """Run the command line (`effbench.launch.main` prepares the process first)."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; records already written are kept")
        sys.exit(130)


if __name__ == "__main__":
    main()
