"""`effbench train`: every model x seed of the spec under one budget, with progress per run,
epoch lines, and a summary table of test accuracy (mean ± std over seeds) beside cost."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from effbench.cli.app import ListOptionCommand, app
from effbench.cli.console import Console, contention_note, err_console, pct, warn_if_busy
from effbench.cli.options import (
    DEFAULT_SPEC_PATH,
    AttentionOpt,
    CompileModeOpt,
    DeviceOpt,
    RecipeOpt,
    SetOpt,
    SpecOpt,
    ThreadsOpt,
    spec_source,
)
from effbench.errors import UsageError
from effbench.locks import claimed
from effbench.plan import TrainPlan, plan_train, start_distributed

if TYPE_CHECKING:
    from effbench.config.spec import ModelEntry
    from effbench.train import Dist, StopFlag

SeedsOpt = Annotated[
    list[int] | None, typer.Option("--seeds", help="Seeds, several allowed: --seeds 0 1 2.")
]
DatasetOpt = Annotated[str | None, typer.Option(help="cifar10, imagenet100 or synthetic.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="CIFAR-10: a cifar-10-batches-py directory or its parent (downloaded there "
        "when absent). ImageNet-100: the root holding train/ and val/."
    ),
]
EpochsOpt = Annotated[
    int | None, typer.Option(help="Epochs (the same for every model); the same as --budget NEp.")
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        metavar="<budget>",
        help="What each run may spend, the same for every model: '30ep' (epochs), '5min' "
        "(minutes of training steps, validation not counted; also '300s', '1.5h') or "
        "'2e15flop' (training FLOPs: analytic forward FLOPs per image x 3 x images). Each "
        "model trains as many steps as fit, with warm-up + cosine laid over the budget. "
        "Default: train.budget, else train.epochs.",
    ),
]
GlobalBatchOpt = Annotated[
    int | None, typer.Option("--batch-size", "-b", help="Global batch size.")
]
LrOpt = Annotated[float | None, typer.Option(help="AdamW peak learning rate.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option("--compile/--no-compile", help="torch.compile; compile time is recorded."),
]
TensorboardOpt = Annotated[
    bool | None,
    typer.Option("--tensorboard/--no-tensorboard", help="Also write TensorBoard scalars."),
]
RunsOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Runs directory: <output>/<model>/seed<seed>/."),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        help="'auto': continue each run from its checkpoint (finished runs are skipped); "
        "or the path of one run's checkpoint or directory."
    ),
]


@app.command(cls=ListOptionCommand)
def train(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    recipe: RecipeOpt = None,
    attention: AttentionOpt = None,
    seeds: SeedsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    epochs: EpochsOpt = None,
    budget: BudgetOpt = None,
    batch_size: GlobalBatchOpt = None,
    lr: LrOpt = None,
    precision: PrecisionOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    tensorboard: TensorboardOpt = None,
    output: RunsOpt = None,
    resume: ResumeOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train ViTs that differ only in their attention, under one budget, and test each once.

    Each model x seed writes <output>/<model>/seed<seed>/: train.jsonl (one record per
    epoch, then the final record), spec.json, checkpoint.pt and model.safetensors. Runs under
    torchrun as DDP (one process per GPU, or gloo on CPU).
    """
    if epochs is not None and budget is not None:
        raise UsageError("give --epochs or --budget, not both (--epochs N is --budget Nep)")

    spec = spec_source(spec, recipe)
    overrides = {
        "train.seeds": seeds or None,
        "train.dataset": dataset,
        "train.data_dir": None if data_dir is None else str(data_dir),
        "train.epochs": epochs,
        "train.budget": f"{epochs}ep" if epochs is not None and budget is None else budget,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.precision": precision,
        "train.compile": compile_,
        "train.compile_mode": compile_mode,
        "train.device": device,
        "train.threads": threads,
        "train.tensorboard": tensorboard,
        "train.output_dir": None if output is None else str(output),
    }
    run_plan(plan_train(spec, overrides, attention=attention, sets=set_, resume=resume))


def run_plan(plan: TrainPlan) -> None:
    """Claim the plan's run directories, check them, train every run, print the summary."""
    cfg = plan.spec.train

    import torch

    from effbench.results import new_run_id

    dist = start_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Console(quiet=not dist.main)
    if dist.main and dist.world == 1:
        warn_if_busy(dist.device, torch.get_num_threads())
    # each run directory is this process's until it ends: a second train aimed at one is refused
    dirs = [plan.directory(e, s) for e, s in plan.runs] if dist.main else []
    with claimed(dirs, what="run directory") as claims:
        plan.check_free()
        for c in claims:
            if c.stale:
                err_console.print(f"note: {c.directory}: {c.stale}", markup=False)
        run_id = new_run_id()
        finals = train_until_stopped(plan, dist=dist, run_id=run_id, out=out)
        write_summary(finals, plan=plan, dist=dist, run_id=run_id, out=out)


def train_until_stopped(
    plan: TrainPlan, *, dist: Dist, run_id: str, out: Console
) -> list[dict[str, Any]]:
    """`train_runs`; a stopping signal ends the command with the trainer's exit code and a
    line saying how to continue. Leaves the process group (torchrun) either way."""
    import torch

    from effbench.train import Interrupted

    try:
        return train_runs(plan, dist=dist, run_id=run_id, out=out)
    except Interrupted as err:
        where = f"; checkpoint {err.checkpoint}" if err.checkpoint else ""
        err_console.print(
            f"stopped by signal {err.signum}{where}. Continue with the same command and "
            "--resume auto."
        )
        raise typer.Exit(err.exit_code) from None
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train_runs(plan: TrainPlan, *, dist: Dist, run_id: str, out: Console) -> list[dict[str, Any]]:
    """Every run of the plan in turn, skipping finished ones under `--resume auto`.

    Returns:
        The final record of each run, as JSON data.
    """
    from effbench.train import StopFlag

    cfg = plan.spec.train
    stop = StopFlag()
    finals: list[dict[str, Any]] = []
    quiet = not dist.main
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
        f"{len(plan.runs)} run(s): {len(plan.spec.models)} model(s) x {len(cfg.seeds)} "
        f"seed(s), {cfg.dataset}, budget {cfg.run_budget()}, batch {cfg.batch_size}, "
        f"{dist.device}" + (f", {dist.world} processes" if dist.world > 1 else "")
    )
    with stop.installed(), progress:
        runs_task = progress.add_task("runs", total=len(plan.runs), note="")
        for entry, seed in plan.runs:
            done = plan.finished(entry, seed)
            if done is not None:
                out.print(f"{entry.name} seed {seed}: already finished ({done['status']}), skipped")
                finals.append(done)
            else:
                finals += train_one(
                    plan, entry, seed, dist=dist, run_id=run_id, stop=stop, progress=progress
                )
            progress.advance(runs_task)
    return finals


def train_one(
    plan: TrainPlan,
    entry: ModelEntry,
    seed: int,
    *,
    dist: Dist,
    run_id: str,
    stop: StopFlag,
    progress: Progress,
) -> list[dict[str, Any]]:
    """One model x seed: a progress bar per epoch and per batch, a line per epoch.

    Returns:
        Its final record, as JSON data, in a list.
    """
    from effbench.train import Trainer, TrainProgress

    out = progress.console
    name = f"{entry.name} seed {seed}"
    epoch_task = progress.add_task(name, total=plan.spec.train.run_budget().epochs, note="")
    batch_task = progress.add_task("  batches", total=None, note="")

    def on_batch(phase: str, i: int, n: int) -> None:
        progress.update(batch_task, description=f"  {phase}", completed=i, total=n)

    def on_message(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    trainer = Trainer(
        plan.spec,
        entry,
        seed,
        dist=dist,
        run_id=run_id,
        resume=plan.resume,
        stop=stop,
        progress=TrainProgress(on_batch=on_batch, on_message=on_message),
    )
    finals = []
    for rec in trainer.run():
        if rec.kind == "train_epoch":
            progress.update(epoch_task, completed=rec.epoch, note=epoch_note(rec))
            of = f"/{rec.epochs}" if rec.epochs is not None else ""
            out.print(f"{name} epoch {rec.epoch}{of}: {epoch_note(rec)}")
        else:
            finals.append(rec.model_dump(mode="json"))
            out.print(f"{name}: {final_note(rec)}")
    progress.remove_task(batch_task)
    return finals


def epoch_note(rec: Any) -> str:
    val = f", val {pct(rec.val_top1)}%" if rec.val_top1 is not None else ""
    contended = f" ({contention_note(rec)})" if rec.contended else ""
    return (
        f"loss {rec.train_loss:.3f}, train {pct(rec.train_top1)}%{val}, "
        f"{rec.images_per_s:,.0f} img/s{contended}, {rec.epoch_s:.1f} s"
    )


def final_note(rec: Any) -> str:
    if rec.status != "ok":
        return f"[{rec.status}] {rec.error}"
    return (
        f"test top-1 {pct(rec.test_top1)}%, top-5 {pct(rec.test_top5)}% "
        f"(weights of epoch {rec.best_epoch}), {rec.total_s / 60:.1f} min"
    )


# ---------------------------------------------------------------------------- summary


def summary_rows(finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, in order: its seeds, test accuracies, cost and failed runs (summary JSON)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in finals:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, runs in by_model.items():
        ok = [r for r in runs if r["status"] == "ok"]
        speeds = [r["images_per_s"] for r in ok if r.get("images_per_s")]
        rows.append(
            {
                "model": model,
                "seeds": [r["seed"] for r in runs],
                "ok": len(ok),
                "test_top1": [r["test_top1"] for r in ok],
                "test_top5": [r["test_top5"] for r in ok],
                "params": runs[0]["params"],
                "flops_per_image": runs[0]["flops_per_image"],
                "images_per_s": sum(speeds) / len(speeds) if speeds else None,
                "contended_epochs": sum(r.get("contended_epochs") or 0 for r in runs),
                "total_s": [r["total_s"] for r in runs],
                "failed": [f"seed {r['seed']}: {r['status']}" for r in runs if r["status"] != "ok"],
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """Per model: test accuracy mean ± std over seeds, cost, and each run's status."""
    from effbench.report.format import mean_std

    table = Table(title="effbench train: test accuracy of the best-validation weights")
    for col in ("model", "seeds", "top-1 %", "top-5 %", "params", "GFLOP/img", "img/s", "min"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        failed, speed = row["failed"], row["images_per_s"]
        table.add_row(
            row["model"],
            f"{row['ok']}/{len(row['seeds'])}" + (f" ({'; '.join(failed)})" if failed else ""),
            mean_std(row["test_top1"]),
            mean_std(row["test_top5"]),
            f"{row['params']:,}",
            f"{row['flops_per_image'] / 1e9:.3f}",
            "-" if speed is None else f"{speed:,.0f}" + ("*" if row["contended_epochs"] else ""),
            f"{sum(row['total_s']) / len(row['total_s']) / 60:.1f}",
        )
    if any(r["contended_epochs"] for r in rows):
        table.caption = (
            "img/s*: some epochs were timed while other work held the CPU (contended), so the "
            "speed is lower than this machine can do"
        )
    return table


def write_summary(
    finals: list[dict[str, Any]], *, plan: TrainPlan, dist: Dist, run_id: str, out: Console
) -> None:
    """Print the summary table, write summary-<run>.json (main process), exit 1 on a failed run."""
    from effbench.results import write_json_atomic

    rows = summary_rows(finals)
    out.print(summary_table(rows))
    output_dir = plan.spec.train.output_dir
    if dist.main and finals:
        path = Path(output_dir) / f"summary-{run_id}.json"
        write_json_atomic(path, {"run_id": run_id, "models": rows})
        out.print(f"Runs in {output_dir}/<model>/seed<seed>/; summary: {path}")
    if any(r["status"] != "ok" for r in finals):
        raise typer.Exit(1)
