"""Number and cell formatting for the report's tables and summary lines (no torch): numbers
to about three significant figures, percentages, mean ± std over seeds, contention marks."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from effbench.crossover import is_contended, phase_contended, unresolved_at


def num(v: Any, digits: int = 3) -> str:
    """About `digits` significant figures, thousands separated; '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def crossover_words(found: Mapping[str, Any], metric: str, unit: str = "px") -> str:
    """How a model's crossover against the baseline reads: 'from 128 px (1,025 tokens)'
    with the points below it that the noise did not resolve; else 'not resolved at 224 px'
    where the largest resolution's time verdict is open, else 'not reached in range'."""
    c = (found.get("crossovers") or {}).get(metric)
    verdicts = (found.get("verdicts") or {}).get(metric) or {}
    open_ = unresolved_at(found, metric)
    if c is None:
        top = max(verdicts, default=None)
        if top is not None and verdicts[top]["verdict"] == "not resolved":
            return f"not resolved at {top:,} {unit}"
        return "not reached in range"
    text = f"from {c['resolution']:,} {unit}"
    text += f" ({c['tokens']:,} tokens)" if unit == "px" else ""
    below = [r for r in open_ if r < c["resolution"]]
    if below:
        text += ", not resolved at " + ", ".join(f"{r:,} {unit}" for r in below)
    if any(v.get("paired") is False for v in verdicts.values()):
        text += ", from medians (records without paired rounds)"
    return text


def pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal; '-' for missing."""
    return "-" if v is None else f"{100 * v:.1f}"


def px_list(sizes: Iterable[int]) -> str:
    """'16 px, 32 px'."""
    return ", ".join(f"{s} px" for s in sizes)


def mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    """Mean ± sample standard deviation, both times `scale`, to one decimal: '-' for no
    values, the mean alone for one."""
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def contended_mark(point: Mapping[str, Any] | None) -> str:
    """'*' for a scale point whose inference latency is contended, else ''."""
    return "*" if point is not None and is_contended(point, "infer_time") else ""


def evidence(r: Mapping[str, Any]) -> list[str]:
    """[phases, evidence] of a contended record: which timings, and what the CPU showed."""
    checks = r.get("cpu_checks") or {}
    phases = [p for p in checks if phase_contended(r, p)]
    parts = []
    for p in phases:
        c = checks[p]
        bits = [f"CPU share {c.get('cpu_share', 0):.2f}"]
        if c.get("wait_share") is not None:
            bits.append(f"waited {c['wait_share']:.0%}")
        if c.get("others_cpus") is not None:
            bits.append(f"other work {c['others_cpus']:.1f} of {c.get('cpus')} CPUs")
        bits.append(f"{c.get('attempts', 1)} attempt(s)")
        parts.append(f"{p}: " + ", ".join(bits))
    return [", ".join(phases), "; ".join(parts)]
