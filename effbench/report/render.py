"""Rendering a Report: the Jinja2 templates (autoescaped HTML, Markdown with escaped cells)
and writing report.html / report.md (with its PNGs in report_files/) atomically."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from effbench.report.document import Report
from effbench.report.figures import FIGURE_DIR
from effbench.results import replace_atomically

TEMPLATES = "effbench.report"


def _environment() -> Any:
    import jinja2

    root = resources.files(TEMPLATES) / "templates"
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8")),
        autoescape=jinja2.select_autoescape(["html"]),  # by the template name's ending
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


MD_MARKS = frozenset("\\|*_[]$~")
"""Characters escaped with a backslash in Markdown text: table pipes, emphasis, links, math
and strike-through. Backticks are kept: the report's own text marks commands with them."""


def md_cell(text: Any) -> str:
    """Text safe in Markdown, inside a table cell too: its marks escaped, no raw HTML (&, <
    and > as entities), no line breaks."""
    out = "".join(f"\\{c}" if c in MD_MARKS else c for c in str(text))
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(out.splitlines())


def render(report: Report, fmt: str) -> str:
    """The report as `fmt` ('html' or 'md') text."""
    env = _environment()
    env.filters["md"] = md_cell
    return env.get_template(f"report.{fmt}").render(report=report)


def write_report(report: Report, output: Path, formats: Iterable[str]) -> list[Path]:
    """Write report.html (self-contained) and/or report.md with its PNGs in report_files/."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt == "md":
            figures = output / FIGURE_DIR
            figures.mkdir(exist_ok=True)
            for plot in report.figures():
                with replace_atomically(figures / f"{plot.stem}.png") as tmp:
                    tmp.write_bytes(plot.png)
        path = output / f"report.{fmt}"
        with replace_atomically(path) as tmp:
            tmp.write_text(render(report, fmt), encoding="utf-8")
        written.append(path)
    return written
