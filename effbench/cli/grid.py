"""The grid runner that profile and scale share: the measuring process set up (device, threads,
memory cap, busy warning, run id, environment), then one table row and one JSON Lines record
per point as the points finish, under a live progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from effbench.cli.console import console, warn_if_busy
from effbench.plan import choose_device

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
        return (
            f"{self.device}, {e.threads} threads, {e.allocator}, {e.openmp}, "
            f"{timing_words(section)}"
        )


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
    if section.threads:
        torch.set_num_threads(section.threads)
    if device.type == "cpu":
        from effbench.measure import cap_cpu_memory

        cap_cpu_memory()  # a point too big for RAM becomes an `oom` record, not a killed run
    warn_if_busy(device, torch.get_num_threads())
    run_id = new_run_id()
    return Measuring(device, environment(str(device), section.dtype), run_id)


def grid_table(title: str, columns: dict[str, int | None]) -> Table:
    """A results table of fixed-width columns (None: takes what is left)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col, width in columns.items():
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    return table


def run_grid(
    sweep: Callable[..., Iterator[Any]],
    *,
    points: int,
    table: Table,
    row: Callable[[Any], list[str]],
    results: Path,
    what: str,
) -> list[Any]:
    """Draw `table` and a progress bar while `sweep(on_step=...)` yields one record per point
    (a failed point is a record, not an exception); each is appended to `results` as it
    comes. The sweep tells the bar what it measures (`OnStep`): each point, then each timing
    of the rounds when its repeats are interleaved.

    Returns:
        The records, in order.
    """
    from effbench.results import JsonlWriter

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(what, total=points)

    def on_step(description: str, done: int, of: int) -> None:
        progress.update(task, description=description, completed=done, total=of)

    done: list[Any] = []
    with JsonlWriter(results) as writer, Live(Group(table, progress), console=console):
        for rec in sweep(on_step=on_step):
            writer.write(rec)
            done.append(rec)
            table.add_row(*row(rec))
        progress.update(task, description=what, completed=points, total=points)
    if not console.is_terminal:
        console.print()
    return done
