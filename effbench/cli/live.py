"""The grid runner that profile and scale share: the measuring process set up (device, threads,
memory cap, busy warning, run id, environment), then one table row and one JSON Lines record
per point as the points finish, under a live progress bar; SIGINT or SIGTERM ends it with
what it kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from effbench.cli.console import console, err_console, warn_if_busy, whole_lines
from effbench.errors import UsageError
from effbench.plan import choose_device
from effbench.signals import StopFlag

if TYPE_CHECKING:
    import torch

    from effbench.config.spec import ProfileSection, ScaleSection
    from effbench.results import Env


@dataclass(frozen=True)
class Measuring:
    """Where and as what a grid measures: its device, environment manifest and run id."""

    device: torch.device
    env: Env
    run_id: str

    def words(self, section: ProfileSection | ScaleSection) -> str:
        """Where and how the grid is timed, for the line above its table."""
        e = self.env
        compiled = f", torch.compile ({section.compile_mode})" if section.compile else ""
        return (
            f"{self.device}, {e.threads} threads, {e.allocator}, {e.openmp}{compiled}, "
            f"{timing_words(section)}"
        )


def batch_words(section: ProfileSection | ScaleSection) -> str:
    """'batch 8', or for `--batch max` the limit the search fills."""
    if section.batch_size != "max":
        return f"batch {section.batch_size}"
    limit = section.memory_limit or "nine tenths of the GPU's free memory"
    return f"the largest batch under {limit}"


def timing_words(section: ProfileSection | ScaleSection) -> str:
    """How a grid takes its timing repeats, for the line above its table."""
    if section.repeats == 1:
        return "1 repeat"
    order = "round-robin over the grid" if section.interleave else "back to back"
    return f"{section.repeats} repeats {order}"


def start_measuring(section: ProfileSection | ScaleSection, *, where: str) -> Measuring:
    """The device, threads and memory cap of a `[profile]` or `[scale]` section, with a warning
    when other work already uses the CPUs.

    Raises:
        EffbenchError: `where: ...` when the device cannot be used.
    """
    import torch  # heavy imports only once the spec is known to be good

    from effbench.env import environment
    from effbench.results import new_run_id

    device = choose_device(section.device, where=where)
    if section.batch_size == "max" and device.type == "cpu" and section.memory_limit is None:
        raise UsageError(
            "--batch max on the CPU needs --memory-limit SIZE (e.g. 2GiB): the memory each "
            "call may use, which the search fills and the process is held to"
        )
    if section.threads:
        torch.set_num_threads(section.threads)
    if device.type == "cpu":
        from effbench.measure import cap_cpu_memory

        cap_cpu_memory()  # a point too big for RAM becomes an `oom` record, not a killed run
    warn_if_busy(device, torch.get_num_threads())
    run_id = new_run_id()
    return Measuring(device, environment(str(device), section.dtype), run_id)


def grid_table(title: str, columns: dict[str, int | None]) -> Table:
    """A results table. On a terminal its columns have fixed widths (None: takes what is left,
    cut with an ellipsis), so that the live table keeps its shape as rows come; elsewhere (a
    log, a pipe) each column is as wide as its longest cell, which the console leaves whole."""
    fixed = console.is_terminal
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col, width in columns.items():
        table.add_column(
            col,
            no_wrap=True,
            overflow="ellipsis",
            min_width=width,
            max_width=width if fixed else None,
        )
    return whole_lines(table)


class StopOnSignal(StopFlag):
    """SIGINT and SIGTERM while a grid runs (`effbench.signals.StopFlag`). The first stops the
    grid before its next step (a point, or one timing of the rounds), so that what was
    measured is written whole; a second stops it at once, but not while a record is being
    written (`hold`). `over`: the grid has stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.over = False


class _StoppingColumn(ProgressColumn):
    """Says on the progress bar that a signal came and the grid stops after this step."""

    def __init__(self, stop: StopOnSignal) -> None:
        super().__init__()
        self.stop = stop

    def render(self, task: Task) -> Text:
        if self.stop.signum is None or self.stop.over:
            return Text("")
        return Text(f"{self.stop.name}: stopping after this step (again: at once)", "yellow")


def interrupted_line(
    stop: StopOnSignal, kept: list[Any], *, points: int, repeats: int, results: Path
) -> str:
    """What an interrupted grid kept (and how many of those with fewer timing repeats than
    asked: stopped during the rounds), where, and what running it again does."""
    if not kept:
        where = f"no point finished ({results} is empty)"
    else:
        where = f"kept {len(kept)} of {points} points in {results}"
        short = sum(1 for r in kept if r.status == "ok" and (r.repeats or 0) < repeats)
        if short:
            where += f" ({short} with fewer than the {repeats} timing repeats asked)"
    return (
        f"interrupted by {stop.name}: {where}; running the same command again measures all "
        f"{points} points anew, into a new file"
    )


def run_grid(
    sweep: Callable[..., Iterator[Any]],
    *,
    points: int,
    repeats: int,
    table: Table,
    row: Callable[[Any], list[str]],
    timed: Callable[[Any], bool],
    results: Path,
    what: str,
) -> list[Any]:
    """Draw `table` and a progress bar while `sweep(on_step=...)` yields one record per point
    (a failed point is a record, not an exception); each is appended to `results` as it
    comes. The sweep tells the bar what it measures (`OnStep`): each point, then each timing
    of the rounds when its `repeats` are interleaved.

    SIGINT or SIGTERM stops the sweep (`StopOnSignal`), which still hands over the points it
    measured; those with a timing (`timed`), or failed, are written. Then a line on stderr
    says what was kept where, and the command exits with 128 + the signal's number.

    Returns:
        The records, in order.

    Raises:
        typer.Exit: 130 (SIGINT) or 143 (SIGTERM) when a signal stopped the grid.
    """
    from effbench.results import JsonlWriter

    stop = StopOnSignal()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        _StoppingColumn(stop),
        console=console,
    )
    task = progress.add_task(what, total=points)
    group = Group(table, progress)

    def on_step(description: str, done: int, of: int) -> None:
        stop.check()
        progress.update(task, description=description, completed=done, total=of)

    done: list[Any] = []
    with stop.installed(), JsonlWriter(results, new=True) as writer, Live(group, console=console):
        try:
            for rec in sweep(on_step=on_step):
                stop.hold = True
                # a point cut short before any timing (its rounds had not begun) is left out
                if stop.signum is None or rec.status != "ok" or timed(rec):
                    writer.write(rec)
                    done.append(rec)
                    table.add_row(*row(rec))
                stop.hold = False
        except KeyboardInterrupt:
            if stop.signum is None:  # not a signal of ours (its handler was not installed)
                raise
        stop.hold = stop.over = True
        if stop.signum is None:
            progress.update(task, description=what, completed=points, total=points)
        else:
            done_of = {"completed": len(done), "total": points}
            progress.update(task, description=f"stopped by {stop.name}", **done_of)
    if not console.is_terminal:
        console.print()
    if stop.signum is not None:
        err_console.print(
            interrupted_line(stop, done, points=points, repeats=repeats, results=results),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + stop.signum)
    return done
