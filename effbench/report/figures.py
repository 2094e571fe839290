"""The report's figures: the Plot a section embeds (PNG bytes, title, caption), one colour
per mechanism, and matplotlib through `matplotlib.figure.Figure` only, never pyplot."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effbench.config.attention import KINDS

FIGURE_DIR = "report_files"
# One colour per attention kind, in the configs' order (effbench.config.attention.KINDS),
# then colours for models of other kinds.
PALETTE = (
    "#4c72b0", "#8172b3", "#2f2f2f", "#dd8452", "#55a868", "#c44e52", "#937860",
    "#da8bc3", "#17becf", "#ccb974", "#64b5cd", "#8c8c8c", "#bcbd22", "#7f3c8d", "#e17c05",
)  # fmt: skip
# The variants of one option sweep share their kind's colour and differ in marker and dashes.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
DASHES = ("-", "--", "-.", ":")
PART_COLOURS = {"attention": "#c44e52", "mlp": "#4c72b0", "norm": "#55a868", "other": "#bbbbbb"}
DPI = 110
NAME_CHARS = 40  # a name drawn in a figure is cut to this many characters
STEM_CHARS = 80


@dataclass
class Plot:
    """A rendered figure: PNG bytes, a file stem, a title and a caption."""

    stem: str
    title: str
    caption: str
    png: bytes

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    @property
    def path(self) -> str:
        return f"{FIGURE_DIR}/{self.stem}.png"


def colour_of(model: str, kinds: Mapping[str, str]) -> str:
    """One colour per mechanism, the same in every figure: its kind's, in the configs' order."""
    kind = kinds.get(model, "")
    if kind in KINDS:
        return PALETTE[KINDS.index(kind)]
    others = sorted(m for m, k in kinds.items() if k not in KINDS)
    i = others.index(model) if model in others else 0
    spare = max(1, len(PALETTE) - len(KINDS))
    return PALETTE[(len(KINDS) + i % spare) % len(PALETTE)]


def blank_figure(width: float, height: float) -> Figure:
    """An empty figure of `width` x `height` inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def new_figure(panels: int, *, width: float = 5.2, height: float = 3.8) -> tuple[Figure, list[Any]]:
    """A figure of `panels` gridded axes in one row (two rows of two for four)."""
    rows, cols = (2, 2) if panels == 4 else (1, panels)
    fig = blank_figure(width * cols, height * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    return fig, axes


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at the report's resolution. A character of a name that the
    font lacks is drawn as a box, without a warning: the tables show the name as it is."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def plot(stem: str, title: str, caption: str, fig: Figure) -> Plot:
    """`fig` rendered, with the file stem, title and caption the report shows it under."""
    return Plot(stem, title, caption, render_png(fig))


def slug(*parts: Any) -> str:
    """A file stem from `parts`: lower case, anything but ASCII letters, digits, - and _ as
    '-', at most STEM_CHARS characters (`build_report` makes the stems of a report unique)."""
    text = "-".join(str(p) for p in parts)
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)
    return stem[:STEM_CHARS].strip("-").lower() or "figure"


def legend(ax: Any, **kwargs: Any) -> None:
    """The axes' legend, where any of its artists is labelled (else none, and no warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def literal(text: Any, limit: int = NAME_CHARS) -> str:
    """`text` (a model or class name from the records) to show as it is in a figure: `$`
    escaped so that matplotlib draws no mathtext, at most `limit` characters, and a space
    before a leading '_' (which would keep a legend entry out of the legend)."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    s = s.replace("$", r"\$")
    return " " + s if s.startswith("_") else s
