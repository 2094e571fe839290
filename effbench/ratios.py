"""Speed verdicts with their uncertainty: the ratio of a model's time to another's at the same
point, from the repeats both took round by round (`<phase>_rounds_ms` of their records), with
its 95 % interval; a verdict ("faster", "slower") only where that interval excludes 1.

Within a round the calls of one point are timed back to back (`measure.Rounds`), so a slow
spell of the machine that spans both cancels in their ratio and what is left is noise that
differs between them. The interval is Student's t over the rounds' log ratios: with the
three to five rounds a grid takes, a bootstrap over rounds cannot cover the ratio at its
nominal rate (three rounds' resamples never leave their range: about 75 %). Layer 1: scipy,
no torch."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats as sp

from effbench.stats import ALPHA, holm

Verdict = Literal["faster", "slower", "not resolved"]
METHOD = "paired rounds, t interval of the log ratio"


@dataclass(frozen=True)
class Ratio:
    """time(mine) / time(other) at one point: the geometric mean over paired rounds, its 95 %
    interval, and the two-sided p of 'no difference'."""

    estimate: float
    low: float
    high: float
    p_value: float
    rounds: int

    @property
    def verdict(self) -> Verdict:
        if self.high < 1:
            return "faster"
        if self.low > 1:
            return "slower"
        return "not resolved"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.estimate,
            "low": self.low,
            "high": self.high,
            "p": self.p_value,
            "rounds": self.rounds,
            "verdict": self.verdict,
        }


def paired_ratio(mine: Sequence[float], other: Sequence[float]) -> Ratio | None:
    """The ratio of two calls' times from their repeats taken in the same rounds (index r of
    both: round r); None with fewer than two complete rounds (no interval: no verdict)."""
    logs = [
        math.log(a / b)
        for a, b in zip(mine, other, strict=False)
        if a is not None and b is not None and a > 0 and b > 0
    ]
    if len(logs) < 2:
        return None
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    df = len(logs) - 1
    se = sd / math.sqrt(len(logs))
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return Ratio(math.exp(mean), math.exp(mean), math.exp(mean), p, len(logs))
    half = float(sp.t.ppf(1 - ALPHA / 2, df)) * se
    p = float(2 * sp.t.sf(abs(mean) / se, df))
    return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), p, len(logs))


def rounds_field(field: str) -> str:
    """The record field that keeps, round by round, the repeats behind `field` (`infer_ms`
    -> `infer_rounds_ms`)."""
    return field.removesuffix("_ms") + "_rounds_ms"


def rounds_of(record: Mapping[str, Any], field: str) -> list[float] | None:
    """The per-round times behind a record's `<phase>_ms` figure (`field`), when it has two
    or more."""
    got = record.get(rounds_field(field))
    return list(got) if isinstance(got, list) and len(got) >= 2 else None


def keeps_rounds(record: Mapping[str, Any], field: str) -> bool:
    """Whether the record was written by an effbench that keeps rounds (even just one):
    without them a verdict can only compare medians."""
    return isinstance(record.get(rounds_field(field)), list)


def record_ratio(
    mine: Mapping[str, Any] | None, other: Mapping[str, Any] | None, field: str
) -> Ratio | None:
    """`paired_ratio` of two records' `field` (e.g. `infer_ms`) at one point."""
    if mine is None or other is None:
        return None
    a, b = rounds_of(mine, field), rounds_of(other, field)
    return paired_ratio(a, b) if a and b else None


@dataclass(frozen=True)
class Fastest:
    """The model with the smallest time at a point, and whether it is resolved ahead of every
    other (each paired ratio's p, Holm-adjusted over them, below ALPHA)."""

    model: str
    resolved: bool
    close: list[str]  # the models it is not resolved from
    paired: bool = True  # false: records without rounds, whose medians alone were compared


def fastest(points: Mapping[str, Mapping[str, Any]], field: str) -> Fastest | None:
    """Of model -> record at one point, the fastest by `field` (median), and the models its
    lead over is not resolved (a paired ratio whose Holm-adjusted p is not below ALPHA, or
    no paired rounds). Where no record has rounds (written before effbench kept them) the
    medians decide and `paired` says so."""
    timed = {m: r for m, r in points.items() if r.get(field) is not None}
    if not timed:
        return None
    best = min(timed, key=lambda m: timed[m][field])
    others = [m for m in timed if m != best]
    if not any(keeps_rounds(r, field) for r in timed.values()):
        return Fastest(best, True, [], paired=False)
    ratios = [record_ratio(timed[best], timed[m], field) for m in others]
    ps = holm([1.0 if q is None else q.p_value for q in ratios])
    close = [
        m
        for m, q, p in zip(others, ratios, ps, strict=True)
        if q is None or p >= ALPHA or q.estimate >= 1
    ]
    return Fastest(best, not close, close)
