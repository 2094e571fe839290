"""`effbench report`: the HTML and Markdown report from the result files, and a line saying
what went into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effbench.cli.app import app
from effbench.cli.console import console
from effbench.config.attention import BASELINE_KIND
from effbench.errors import UsageError

InputsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Result files or directories to read (default: results/ and runs/).",
        show_default=False,
    ),
]
ReportDirOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where report.html / report.md go (default: results/)."),
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="html, md or both.")]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        metavar="<model>",
        help="The model every accuracy is paired against (default: the first model of kind "
        f"{BASELINE_KIND}).",
    ),
]

FORMATS = {"html": ["html"], "md": ["md"], "both": ["html", "md"]}


def input_paths(inputs: list[Path] | None) -> list[Path]:
    """The paths to read: those given, else results/ and runs/ where they exist.

    Raises:
        EffbenchError: naming each missing path, or that there is nothing to read.
    """
    paths = inputs or [p for p in (Path("results"), Path("runs")) if p.exists()]
    missing = [p for p in paths if not p.exists()]
    if missing or not paths:
        raise UsageError(
            "\n".join(
                [f"{p}: no such file or directory" for p in missing]
                or ["no results/ or runs/ here: pass the result directories to read"]
            )
        )
    return paths


@app.command()
def report(
    inputs: InputsArg = None,
    output: ReportDirOpt = None,
    format_: FormatOpt = "both",
    baseline: BaselineOpt = None,
) -> None:
    """An HTML and a Markdown report from the results of train, profile, scale and analyze.

    The HTML is one self-contained file; the Markdown writes its PNG figures beside it.
    Accuracy beside cost, Pareto fronts, scaling and crossovers, time by part, training
    curves, fidelity and attention maps, each labelled with the environment it came from.
    """
    from effbench.locks import claimed
    from effbench.report import build_report, collect, write_report

    formats = FORMATS.get(format_.lower())
    if formats is None:
        raise UsageError(f"--format {format_!r}: choose html, md or both")
    paths = input_paths(inputs)
    results = collect(paths)
    if not results.records:
        skipped = (
            f" ({len(results.bad)} line(s) skipped, e.g. {results.bad[0].path}:"
            f"{results.bad[0].line}: {results.bad[0].reason})"
            if results.bad
            else ""
        )
        raise UsageError(f"no usable effbench records in {', '.join(map(str, paths))}{skipped}")
    trained = {r.get("model") for r in results.kind("train")}
    if baseline is not None and baseline not in trained:
        known = ", ".join(sorted(str(m) for m in trained)) or "none"
        raise UsageError(f"--baseline {baseline!r}: no trained model of that name ({known})")
    built = build_report(results, baseline=baseline)
    target = output or Path("results")
    with claimed([target], what="report output"):
        written = write_report(built, target, formats)
    console.print(
        f"{len(results.records)} records from {len(results.files)} file(s), "
        f"{len(built.sections)} sections, {len(built.figures())} figures"
        + (f"; {len(results.bad)} skipped line(s) listed in the report" if results.bad else "")
    )
    for path in written:
        console.print(f"Report: {path}")
