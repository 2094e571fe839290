"""What the commands print with: the consoles (as wide as a table needs when not writing to a
terminal), record status styles, number formatting for the tables, error lines and the
busy-machine warning, and the closing line of a sweep."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich import console as rich_console
from rich.console import ConsoleDimensions
from rich.table import Table

from effbench.errors import EffbenchError

EXIT_USAGE = 2

# The width of a console that writes to a pipe or a file (a log, CI), where no terminal says
# how wide a line may be: wide enough that no table is squeezed, cut or wrapped.
PIPED_WIDTH = 1000


class Console(rich_console.Console):
    """A rich Console that, when not writing to a terminal and given no width (argument or
    `COLUMNS`), is PIPED_WIDTH wide instead of rich's 80 columns (or the width of a terminal
    that only stdin or stderr is), so that a table in a log keeps every column and every cell
    on its line. On a terminal it is rich's Console.

    The commands print with `console` and `err_console`; a command that needs a console of its
    own (quiet outside the main process, say) should make it from this class.
    """

    def __init__(self, *args: Any, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, width=width, **kwargs)
        self._width = width  # rich read COLUMNS here once; `size` reads it each time

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not _columns_set() and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        rich_console.Console.size.fset(self, new_size)


def _columns_set() -> bool:
    """Whether the user set the line width with the COLUMNS environment variable."""
    return os.environ.get("COLUMNS", "").isdigit()


console = Console()
err_console = Console(stderr=True)


def whole_lines(table: Table) -> Table:
    """`table`, made at least as wide as its title and caption when `console` is not writing to
    a terminal, so that in a log they stay one line each, as its rows do."""
    if not console.is_terminal:
        texts = [t for t in (table.title, table.caption) if isinstance(t, str)]
        table.min_width = max([table.min_width or 0, *(len(t) for t in texts)])
    return table


# The colour of each record status in the tables.
STATUS_STYLE = {"ok": "green", "oom": "yellow", "nan": "magenta", "error": "red"}


def fail(lines: list[str]) -> typer.Exit:
    """Print `location: message` lines to stderr; the caller raises the returned Exit(2)."""
    for line in lines:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


@contextmanager
def located(prefix: object) -> Iterator[None]:
    """Put `prefix: ` before the message of an EffbenchError raised inside."""
    try:
        yield
    except EffbenchError as err:
        raise EffbenchError(f"{prefix}: {err}") from None


def warn_if_busy(device: Any, threads: int) -> None:
    """Warn on stderr when other work already uses the CPUs a CPU measurement needs."""
    if device.type != "cpu":
        return
    from effbench.contention import busy_warning, machine_load

    text = busy_warning(machine_load(), threads)
    if text:
        err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


def status(r: Any) -> str:
    """The record's status; `ok*` (yellow) when a timing of it is contended."""
    if r.status == "ok" and getattr(r, "contended", False):
        return "[yellow]ok*[/yellow]"
    style = STATUS_STYLE[r.status]
    return f"[{style}]{r.status}[/{style}]"


def contention_note(r: Any) -> str:
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


def backend_note(r: Any) -> str:
    """'sdpa flash_cpu' (and a warning for the math fallback) for a record that names one."""
    if not r.sdpa_backend:
        return ""
    return f"sdpa {r.sdpa_backend}" + (" (math fallback!)" if r.sdpa_math_fallback else "")


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


# The most of a note (an error, the SDPA backend, a contention check) a table row shows; the
# record holds all of it.
NOTE_CHARS = 200


def note_cell(text: str) -> str:
    """A table's note cell: `text`, or its first NOTE_CHARS characters ending in '…'."""
    return text if len(text) <= NOTE_CHARS else text[: NOTE_CHARS - 1] + "…"


# ---------------------------------------------------------------------------- numbers


def mib(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def ms(v: float | None) -> str:
    """Four significant figures or so: 0.9621, 7.272, 103.6, 1,429."""
    if v is None:
        return "-"
    digits = 0 if v >= 1000 else 1 if v >= 100 else 2 if v >= 10 else 3
    return f"{v:,.{digits}f}"


def gflop(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e9:,.3f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def count(v: float | None) -> str:
    """A rate or count without decimals: 1,429."""
    return "-" if v is None else f"{v:,.0f}"
