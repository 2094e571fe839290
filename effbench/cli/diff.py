"""`effbench diff OLD NEW`: two result sets compared point by point (`effbench.diff`), a table
(or Markdown) of what changed, and exit status 1 where a figure got worse beyond its noise and
the threshold, so that CI can stop on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from effbench.cli.app import app
from effbench.cli.console import console, whole_lines
from effbench.errors import UsageError

if TYPE_CHECKING:
    from effbench.diff import Diff, Row

SideArg = Annotated[Path, typer.Argument(help="A result file or directory.", show_default=False)]
ThresholdOpt = Annotated[
    str,
    typer.Option(
        metavar="PERCENT",
        help="How much worse a time or peak memory must be, beyond its noise, to fail: 10% "
        "(a bare number is percent too).",
    ),
]
DriftOpt = Annotated[
    str,
    typer.Option(
        metavar="PERCENT",
        help="How far all timings of a run move between runs of the same code on this "
        "machine; a common shift within it is no change (0% on a steady machine).",
    ),
]
AccuracyOpt = Annotated[
    float,
    typer.Option(
        metavar="POINTS",
        help="How many percentage points of top-1 an accuracy must drop by, beyond its "
        "interval, to fail.",
    ),
]
MissingOpt = Annotated[
    bool, typer.Option("--fail-on-missing", help="A point only OLD measured fails too.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Show every row, unchanged ones too.")]
MarkdownOpt = Annotated[
    Path | None, typer.Option(metavar="FILE", help="Also write the result as Markdown there.")
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table or markdown (printed).")]

HEADER = ("point", "figure", "old", "new", "change", "judged (interval)", "noise", "verdict")
STYLE = {"worse": "red", "better": "green", "new point": "cyan", "missing point": "yellow"}


@app.command()
def diff(
    old: SideArg,
    new: SideArg,
    threshold: ThresholdOpt = "10%",  # effbench.diff.THRESHOLD
    drift: DriftOpt = "20%",  # effbench.diff.DRIFT
    accuracy_threshold: AccuracyOpt = 1.0,  # effbench.diff.ACCURACY_POINTS
    fail_on_missing: MissingOpt = False,
    all_rows: AllOpt = False,
    markdown: MarkdownOpt = None,
    format_: FormatOpt = "table",
) -> None:
    """Compare two result sets point by point: regressions in time, memory and accuracy.

    Times are judged against their noise (both sides' rounds or repeat spreads) relative
    to the common shift of a whole run, which is judged against --drift; peak memory
    against --threshold alone; top-1 against its Wilson intervals. Exit status 1 when a
    figure or a common shift got worse beyond its noise and the threshold (each named),
    0 otherwise; 2 for inputs that cannot be compared.
    """
    from effbench import diff as d

    if format_ not in ("table", "markdown"):
        raise UsageError(f"--format {format_!r}: choose table or markdown")
    if accuracy_threshold < 0:
        raise UsageError(f"--accuracy-threshold {accuracy_threshold:g}: give 0 or more points")
    limits = d.parse_percent(threshold), d.parse_percent(drift, "--drift")
    (before, bad_old), (after, bad_new) = d.load_side([old], "OLD"), d.load_side([new], "NEW")
    result = d.compare_sets(
        before, after, threshold=limits[0], drift=limits[1],
        accuracy_points=accuracy_threshold, fail_on_missing=fail_on_missing,
    )  # fmt: skip
    if bad_old or bad_new:
        result.notes.append(f"lines skipped as unreadable: {bad_old} old, {bad_new} new")
    text = as_markdown(result, all_rows)
    if markdown is not None:
        markdown.write_text(text, encoding="utf-8")
    if format_ == "markdown":
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        show(result, all_rows)
    if result.regressions():
        raise typer.Exit(1)


def show(result: Diff, every: bool) -> None:
    """Print the summary, the table of the rows to show and the regressions by name."""
    for line in summary(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    rows = shown(result, every)
    if rows:
        table = Table(title="effbench diff", box=box.SIMPLE_HEAD, collapse_padding=True)
        for name in HEADER:
            table.add_column(name, no_wrap=True)
        for row in rows:
            table.add_row(*(escape(c) for c in cells(row)), style=STYLE.get(row.verdict))
        console.print(whole_lines(table))
    failed = result.regressions()
    line = "regressions: " + "; ".join(failed) if failed else "no regression"
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _value(row: Row, value: float | str | None) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if row.family == "accuracy":
        return f"{100 * value:.2f} %"
    return f"{value:.4g}" + (" MiB" if row.family == "memory" else " ms")


def cells(row: Row) -> tuple[str, ...]:
    """A row as the table's text cells (HEADER)."""
    change = judged = ""
    if row.family == "time" and row.change is not None:
        change = f"{row.change:.2f}x"
        judged = f"{row.relative or row.change:.2f}x ({row.low:.2f}–{row.high:.2f})"
        judged += " vs shift" if row.relative is not None else ""
    elif row.family == "memory" and row.change is not None:
        change = judged = f"{row.change:.2f}x"
    elif row.family == "accuracy" and row.change is not None:
        change = f"{row.change:+.2f} pt"
        judged = f"{row.change:+.2f} pt ({row.low:+.2f} to {row.high:+.2f})"
    old, new = _value(row, row.old), _value(row, row.new)
    return (row.point, row.figure, old, new, change, judged, row.noise, row.verdict)


def shown(result: Diff, every: bool = False) -> list[Row]:
    """The rows to show: every one, or those whose verdict is not 'no change'."""
    return [r for r in result.rows if every or r.verdict != "no change"]


def summary(result: Diff) -> list[str]:
    """What a reader needs above the table: the counts, the rule, the shifts and the notes."""
    from effbench.diff import percent

    verdicts = [r.verdict for r in result.rows]
    points = len({r.point for r in result.rows})
    counts = ", ".join(
        f"{verdicts.count(v)} {v}" for v in ("worse", "better", "new point", "missing point")
    )
    lines = [
        f"{len(result.rows)} rows over {points} points: {counts}, the rest no change",
        f"rule: worse when the whole interval (95 %, simultaneous over the times) is beyond "
        f"the threshold: times and memory {percent(result.threshold)}, accuracy "
        f"{result.accuracy_points:g} pt of top-1",
    ]
    return lines + [s.line() for s in result.shifts] + result.notes


def as_markdown(result: Diff, every: bool = False) -> str:
    """The diff as Markdown: the summary as a list, the table, then the regressions."""
    out = ["# effbench diff", "", *(f"- {line}" for line in summary(result)), ""]
    rows = shown(result, every)
    if rows:
        out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
        out.append("")
    failed = result.regressions()
    out.append(f"**Regressions:** {'; '.join(failed)}" if failed else "No regression.")
    return "\n".join(out) + "\n"
