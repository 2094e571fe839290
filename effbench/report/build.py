"""build_report: the ReportData once, then every section in order, and the summary lines
they return (plus one on contended timings)."""

from __future__ import annotations

import time
from collections import Counter

import matplotlib

from effbench import __version__
from effbench.report.content import ReportData, build_data
from effbench.report.document import Report, Section
from effbench.report.inputs import Results
from effbench.report.recommend import recommendation
from effbench.report.sections import SECTIONS


def _contended_line(data: ReportData) -> list[str]:
    contended = Counter(
        r["kind"] for r in data.kind("profile", "scale", "train_epoch") if r.get("contended")
    )
    if not contended:
        return []
    what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(contended.items()))
    return [
        f"Contended timings ({what} record(s)): measured while other work held the CPU, "
        "even after re-measuring. They are marked, left out of the fastest verdicts, and "
        "named where a crossover rests on them."
    ]


def _unique_stems(sections: list[Section]) -> None:
    """Number the figures whose file stems repeat (models whose names differ only in the
    characters a stem leaves out), so that no figure file overwrites another."""
    seen: set[str] = set()
    for plot in (b.figure for s in sections for b in s.blocks if b.figure is not None):
        stem, n = plot.stem, 1
        while stem in seen:
            n += 1
            stem = f"{plot.stem}-{n}"
        plot.stem = stem
        seen.add(stem)


def build_report(results: Results, *, baseline: str | None = None) -> Report:
    """Tables, figures and the summary from the records; a section only when it has data.
    Accuracies are paired against `baseline` (a model name; default: the baseline kind's)."""
    data = build_data(results, baseline=baseline)
    sections: list[Section] = []
    summary: list[str] = []
    with matplotlib.rc_context({"text.usetex": False}):  # names are drawn as they are
        for build in SECTIONS:
            section, lines = build(data)
            if section is not None:
                sections.append(section)
            summary += lines
    _unique_stems(sections)
    return Report(
        title="effbench report",
        generated=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        version=__version__,
        files=results.files,
        summary=summary + _contended_line(data),
        sections=sections,
        bad=results.bad,
        recommendation=recommendation(data),
    )
