"""The report's sections, in the order they appear. Each module's `section(data)` returns its
Section (None without data) and its summary lines; adding a section is one module here and one
line in ORDER."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from effbench.report.content import ReportData
from effbench.report.document import Part

ORDER = (
    "accuracy",
    "pareto",
    "scaling",
    "breakdown",
    "profile",
    "curves",
    "resolution",
    "fidelity",
    "maps",
    "deployability",
    "environment",
)
"""The section modules of this package, in report order."""

SECTIONS: tuple[Callable[[ReportData], Part], ...] = tuple(
    importlib.import_module(f"{__name__}.{name}").section for name in ORDER
)
