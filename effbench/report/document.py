"""What the templates render: a Report of Sections, each a list of Blocks (text, table,
figure, details, list)."""

from __future__ import annotations

from dataclasses import dataclass, field

from effbench.report.figures import Plot
from effbench.results import BadLine


@dataclass
class Block:
    """One element of a section; `kind` says which of the other fields it uses."""

    kind: str  # text | table | figure | details | list
    text: str = ""
    title: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    figure: Plot | None = None


@dataclass
class Section:
    """A titled part of the report (its id is the HTML anchor)."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, text: str) -> None:
        self.blocks.append(Block("text", text=text))

    def table(self, columns: list[str], rows: list[list[str]], title: str = "") -> None:
        self.blocks.append(Block("table", columns=columns, rows=rows, title=title))

    def figure(self, plot: Plot) -> None:
        self.blocks.append(Block("figure", figure=plot, title=plot.title))

    def details(self, title: str, text: str) -> None:
        self.blocks.append(Block("details", title=title, text=text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(Block("list", items=items))


Part = tuple[Section | None, list[str]]
"""What a section function returns: its section (None without data) and its summary lines."""


@dataclass
class Report:
    """Everything the templates render."""

    title: str
    generated: str
    version: str
    files: list[str]
    summary: list[str]
    sections: list[Section]
    bad: list[BadLine]
    recommendation: list[str] = field(default_factory=list)

    def figures(self) -> list[Plot]:
        """Every figure of every section, in order."""
        return [b.figure for s in self.sections for b in s.blocks if b.figure is not None]
