"""The largest batch that fits a memory limit, found the way "Which Transformer to Favor"
(Nauen et al.) finds it: double the batch from a start while a straight line fitted to the
peak memory measured so far predicts that twice the batch still fits, then try the batch the
line puts at the limit, refitting the line after each candidate, and step down (by
STEP_DOWN) from a candidate that does not fit.

The search only measures peak memory; it never times. A batch that runs out of memory, or
whose measured peak is above the limit, does not fit, so a line that predicts wrongly costs a
step down, never a batch over the limit. The functions here take the peak measurement as an
argument, so that they are tested against a memory model as well as a real process.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

START = 4
"""The batch the doubling starts from (halved while it does not fit)."""
STEP_DOWN = 0.95
"""Each candidate after a miss is at most this fraction of the last (one step)."""
MAX_TRIALS = 32
"""Candidates tried after the doubling, at most (each one refits the line)."""


class NothingFits(Exception):
    """Not even a batch of one fits under the limit."""


@dataclass(frozen=True)
class Trial:
    """One batch tried: its peak memory in bytes, None where it ran out of memory."""

    batch: int
    peak: int | None

    def fits(self, limit: int) -> bool:
        return self.peak is not None and self.peak <= limit


@dataclass
class Search:
    """The batch found, its peak, and every batch tried on the way (in order)."""

    batch: int
    peak: int
    limit: int
    tried: list[Trial] = field(default_factory=list)
    slope: float | None = None  # bytes per image of the last fitted line
    intercept: float | None = None
    capped: bool = False  # stopped at the largest batch allowed, not at the limit

    def as_dict(self, unit: float = 1.0) -> dict[str, object]:
        """The search as record fields, memory in `unit`s (MiB: 2**20)."""
        return {
            "batch": self.batch,
            "peak_mib": self.peak / unit,
            "limit_mib": self.limit / unit,
            "tried": [[t.batch, None if t.peak is None else t.peak / unit] for t in self.tried],
            "mib_per_image": None if self.slope is None else self.slope / unit,
            "capped": self.capped,
        }


def fit_line(trials: list[Trial], limit: int) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of peak against batch over the trials that fit; with
    one batch measured, the line through the origin (which overestimates where memory has a
    fixed part, so it errs towards smaller batches). None where memory does not grow with the
    batch: at small batches a fixed part and noise can hide the growth, and then the line
    says nothing about larger batches (which are doubled to regardless: each batch tried is
    measured under the limit anyway)."""
    pts = [(t.batch, float(t.peak)) for t in trials if t.fits(limit) and t.peak is not None]
    if not pts:
        return None
    if len({b for b, _ in pts}) == 1:
        b, p = pts[-1]
        return 0.0, p / b
    slope, intercept = statistics.linear_regression([b for b, _ in pts], [p for _, p in pts])
    return (intercept, slope) if slope > 0 else None


def predicted(line: tuple[float, float] | None, batch: int) -> float:
    """The line's peak at `batch`; -inf where there is no line (so the batch doubles)."""
    return -math.inf if line is None else line[0] + line[1] * batch


def find_max_batch(
    peak_at: Callable[[int], int | None],
    limit: int,
    *,
    start: int = START,
    largest: int = 1 << 16,
) -> Search:
    """The largest batch (up to `largest`) whose peak memory, as `peak_at` measures it (None:
    out of memory), is at most `limit` bytes.

    Raises:
        NothingFits: when a batch of one does not fit.
    """
    tried: list[Trial] = []

    def trial(batch: int) -> Trial:
        t = Trial(batch, peak_at(batch))
        tried.append(t)
        return t

    b = max(1, min(start, largest))
    too_big = largest + 1  # the smallest batch known not to fit
    while not trial(b).fits(limit):
        if b == 1:
            raise NothingFits(f"a batch of 1 does not fit under {limit} bytes")
        too_big, b = b, b // 2
    if b > 1:  # a second batch, so that the line has a slope and an intercept of its own
        trial(b // 2)
    while 2 * b < min(too_big, largest + 1) and predicted(fit_line(tried, limit), 2 * b) <= limit:
        if not trial(2 * b).fits(limit):
            too_big = 2 * b
            break
        b *= 2
    best = b
    for _ in range(MAX_TRIALS):  # refit after each: the line sharpens as batches come in
        line = fit_line(tried, limit)
        if line is None:
            break
        candidate = min(math.floor((limit - line[0]) / line[1]), too_big - 1, largest)
        if candidate <= best:
            break
        if trial(candidate).fits(limit):
            best = candidate
        else:  # the next candidate is at most STEP_DOWN of this one
            too_big = min(candidate, math.floor(candidate * STEP_DOWN) + 1)
    line = fit_line(tried, limit)
    peak = next(t.peak for t in reversed(tried) if t.batch == best and t.peak is not None)
    return Search(
        batch=best,
        peak=peak,
        limit=limit,
        tried=tried,
        slope=None if line is None else line[1],
        intercept=None if line is None else line[0],
        capped=best == largest,
    )
