"""The report's sections, in the order they appear. Each module's `section(data)` returns its
Section (None without data) and its summary lines; adding a section is one module and one
entry in SECTIONS."""

from __future__ import annotations

from collections.abc import Callable

from effbench.report.data import ReportData
from effbench.report.document import Part
from effbench.report.sections import (
    accuracy,
    breakdown,
    curves,
    environment,
    fidelity,
    maps,
    pareto,
    profile,
    resolution,
    scaling,
)

SECTIONS: tuple[Callable[[ReportData], Part], ...] = (
    accuracy.section,
    pareto.section,
    scaling.section,
    breakdown.section,
    profile.section,
    curves.section,
    resolution.section,
    fidelity.section,
    maps.section,
    environment.section,
)
