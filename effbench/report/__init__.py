"""`effbench report`: result files -> one ReportData -> sections of tables and matplotlib
figures -> one self-contained HTML file and a Markdown file with its PNG figures beside it.

Reads only result files and never imports torch. The names below are imported on first use,
so that `effbench.report.format` (used by the CLI's own tables) loads without matplotlib.
No module here is named like a name below: an imported submodule would shadow it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from effbench.report.build import build_report
    from effbench.report.content import ReportData, build_data
    from effbench.report.document import Block, Report, Section
    from effbench.report.figures import Plot
    from effbench.report.format import mean_std
    from effbench.report.inputs import Results, collect
    from effbench.report.render import write_report
    from effbench.report.sections import SECTIONS
    from effbench.report.sections.pareto import pareto_front

_WHERE = {
    "build_report": "build",
    "Results": "inputs",
    "collect": "inputs",
    "ReportData": "content",
    "build_data": "content",
    "Block": "document",
    "Report": "document",
    "Section": "document",
    "Plot": "figures",
    "mean_std": "format",
    "write_report": "render",
    "SECTIONS": "sections",
    "pareto_front": "sections.pareto",
}
__all__ = [
    "SECTIONS",
    "Block",
    "Plot",
    "Report",
    "ReportData",
    "Results",
    "Section",
    "build_data",
    "build_report",
    "collect",
    "mean_std",
    "pareto_front",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
