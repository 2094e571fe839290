"""`effbench compare`'s options and what it prints: the executor chosen from the options, a
line per unit event, the state table (--status), the plan (--dry-run), the verdict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from effbench.cli.console import console, err_console
from effbench.errors import UsageError

if TYPE_CHECKING:
    from effbench.config.spec import ClusterSection
    from effbench.study import Study, Unit
    from effbench.study.drive import Executor

QuickOpt = Annotated[bool, typer.Option(help="The whole pipeline small: the cpu-mini recipe.")]
SeedsOpt = Annotated[list[int] | None, typer.Option(help="Seeds: --seeds 0 1 2.")]
BudgetOpt = Annotated[
    str | None, typer.Option(help="What each run may spend: 30ep, 10min, 2e15flop.")
]
DatasetOpt = Annotated[str | None, typer.Option(help="cifar10, imagenet100 or synthetic.")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Where the dataset is.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="The study's directory.")]
FRESH = "Move a study with other settings (or an output that is not a study) aside."
FreshOpt = Annotated[bool, typer.Option(help=FRESH)]
ExecutorOpt = Annotated[
    Literal["local", "slurm"],
    typer.Option(help="Where units run: local (here) or slurm (jobs through submitit)."),
]
DevicesOpt = Annotated[
    str | None,
    typer.Option(help="Local: one training run per GPU at once, e.g. cuda:0,cuda:1,cuda:2."),
]
DRY = "Slurm: show the jobs, resources and GPU-hours, write the job scripts; submit nothing."
DryRunOpt = Annotated[bool, typer.Option(help=DRY)]
StatusOpt = Annotated[bool, typer.Option(help="Show every unit's state; run nothing.")]
PartitionOpt = Annotated[str | None, typer.Option(help="Slurm partition ([cluster] partition).")]
TimeOpt = Annotated[int | None, typer.Option(help="Minutes each job may run ([cluster] time_min).")]
GpusOpt = Annotated[
    int | None, typer.Option(help="GPUs per training run; more than one runs torchrun.")
]
CpusOpt = Annotated[int | None, typer.Option(help="CPUs per job ([cluster] cpus_per_run).")]
MemOpt = Annotated[str | None, typer.Option(help="Memory per job, as sbatch --mem: 32G.")]
AccountOpt = Annotated[str | None, typer.Option(help="Slurm account to charge.")]
SlurmArgOpt = Annotated[
    list[str] | None, typer.Option(help="Any other sbatch option, KEY=VALUE: constraint=a100.")
]

WORDS = {
    "start": "started", "done": "done", "failed": "FAILED", "submitted": "submitted",
    "running": "running", "attached": "still in the queue, attached:", "skip": "done, skipped",
}  # fmt: skip


def cluster_options(base: ClusterSection, given: dict[str, Any]) -> ClusterSection:
    """[cluster] of the spec with the --slurm-* options that were given laid over it.

    Raises:
        UsageError: a --slurm-arg without '='.
    """
    from pydantic import ValidationError

    update = {k: v for k, v in given.items() if v is not None and k != "args"}
    args = dict(base.args)
    for item in given.get("args") or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--slurm-arg {item!r}: give KEY=VALUE, e.g. constraint=a100")
        args[key.strip().removeprefix("--")] = value
    try:
        return type(base).model_validate({**base.model_dump(), **update, "args": args})
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0])
        option = "--slurm-time" if key == "time_min" else f"--slurm-{key.replace('_', '-')}"
        raise UsageError(f"{option}: {first['msg']}") from None


def _devices(devices: str) -> tuple[list[str], int]:
    """The GPUs of --devices and the CPU threads each run gets.

    Raises:
        UsageError: an entry that is not cuda:N, or no such GPU here (a CPU-only machine).
    """
    names = [d.strip() for d in devices.split(",") if d.strip()]
    bad = [d for d in names if not (d.startswith("cuda:") and d[5:].isdigit())]
    if bad or not names:
        raise UsageError(
            f"--devices {devices}: give GPUs as cuda:0,cuda:1,...; on the CPU runs are not "
            "run side by side (their timings and images/s would contend)"
        )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in names if int(d[5:]) >= count]
    if missing:
        raise UsageError(
            f"--devices: {', '.join(missing)} not on this machine ({count} CUDA GPU(s)); on a "
            "CPU-only machine drop --devices (concurrent runs would contend for the cores)"
        )
    return names, max(1, (os.cpu_count() or 1) // len(names))


def make_executor(study: Study, kind: str, devices: str | None, options: ClusterSection,
                  *, dry_run: bool) -> Executor | None:  # fmt: skip
    """The executor of the options; None after printing a dry run's plan.

    Raises:
        UsageError: options of the other executor, no sbatch, an unknown partition.
    """
    from effbench.study.machine import LocalExecutor

    if kind == "local":
        if dry_run:
            raise UsageError("--dry-run shows a cluster plan: add --executor slurm")
        if devices is None:
            return LocalExecutor()
        names, threads = _devices(devices)
        return LocalExecutor(devices=names, threads=threads)
    if devices is not None:
        raise UsageError("--devices is for --executor local; on SLURM each job gets its GPUs")
    from effbench.study.cluster import ClusterExecutor, check_slurm, plan_lines

    if dry_run:
        units = [u for u in study.units() if u.phase < 3]
        for line in plan_lines(study, options, units):
            console.print(line, markup=False, highlight=False)
        return None
    check_slurm(options.partition)
    poll = float(os.environ.get("EFFBENCH_POLL_S", "10"))
    return ClusterExecutor(study, options, poll_s=poll)


def on_event(event: str, unit: Unit, detail: str) -> None:
    """One line per unit event."""
    style = {"failed": "bold red", "done": "green"}.get(event)
    text = f"{unit.key}: {WORDS.get(event, event)}" + (f" {detail}" if detail else "")
    console.print(text, style=style, markup=False, highlight=False)


def run_study(study: Study, runner: Executor) -> None:
    """Claim the study, run it, and end with the first failure's status (the way on said).

    Raises:
        typer.Exit: a unit failed, or a signal stopped the study.
    """
    from effbench.locks import claimed
    from effbench.study.drive import drive
    from effbench.study.machine import StudyInterrupted

    with claimed([study.out], what="study", lock_name=".effbench-study.lock"):
        study.save()
        try:
            failures = drive(study, runner, on_event)
        except StudyInterrupted as err:
            local = runner.name == "local"
            jobs = "" if local else (
                "; the study's jobs go on in the queue and the rerun attaches to them (scancel "
                "stops them)"
            )  # fmt: skip
            err_console.print(
                f"{err}; run the same command again to go on from there (finished units are "
                f"kept{jobs})"
            )
            raise typer.Exit(128 + err.signum) from None
    if failures:
        for f in failures:
            err_console.print(f"{f.key} failed ({f.reason})", markup=False)
        err_console.print(
            "fix what it says above and run the same command again: finished units are kept, "
            "failed ones run again"
        )
        raise typer.Exit(failures[0].code)
    console.print(f"study finished: {study.out}")


def print_status(study: Study) -> None:
    """Every unit's state, job and reason; finished means its records are there."""
    from effbench.study.drive import unit_states

    table = Table(title=f"study {study.out}")
    for col in ("unit", "state", "where", "job", "tries", "why"):
        table.add_column(col)
    for unit, state in unit_states(study):
        rec = study.record(unit)
        table.add_row(unit.key, state, rec.executor or "-", rec.job_id or "-",
                      str(rec.attempts), rec.reason or "")  # fmt: skip
    console.print(table)


def print_verdict(report_md: Path) -> None:
    """The report's path and its Recommendation and Summary lines."""
    if not report_md.is_file():
        return
    text = report_md.read_text(encoding="utf-8")
    for title in ("Recommendation", "Summary"):
        part = text.split(f"\n## {title}\n", 1)
        if len(part) == 2:
            console.print(f"[bold]{title}[/bold]")
            for line in part[1].split("\n## ", 1)[0].strip().splitlines():
                if line.strip():
                    console.print(line, markup=False, highlight=False)
    console.print(f"Report: {report_md.with_suffix('.html')} and {report_md}")
