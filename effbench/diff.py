"""`effbench diff OLD NEW`: two result sets compared point by point (same kind of record,
model and point), so that a change of code can be checked for regressions in time, memory
and accuracy, each judged against the noise it carries.

Times: the ratio new / old of a point's median, with an interval on the log scale from the
two sides' rounds (`<phase>_rounds_ms`; a record without them: its repeat spread, read as the
range of its repeats). Old and new rounds come from different runs, so they are not paired.
Three rounds say little about their own spread, so each figure's variance is moderated
towards the one pooled over its kind, and the intervals are simultaneous over the figures
(Bonferroni): a diff of a hundred figures of the same code must not fail by chance. A whole
run is faster or slower as a piece (a drifting machine): the median log ratio over a kind's
matched times is its common shift, each point is judged relative to it, and the shift itself
against the run-to-run drift. Memory is judged on the threshold alone (with a slack of
MEMORY_SLACK_MIB); accuracy on Newcombe's interval of a difference (from each side's Wilson
interval). A figure is worse only where its whole interval lies beyond the threshold: beyond
the noise and the threshold both. Layer 1: no torch.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scipy import stats as sp

from effbench.errors import DataError, UsageError
from effbench.ratios import rounds_of
from effbench.stats import ALPHA, count_interval

THRESHOLD = 0.10  # a figure must be worse by more than this (beyond its noise) to fail
DRIFT = 0.20  # how far a whole run's timings move between runs of the same code
ACCURACY_POINTS = 1.0  # percentage points of top-1 an accuracy must drop by to fail
MEMORY_SLACK_MIB = 1.0  # a peak may grow by this much whatever the threshold

Verdict = Literal["worse", "better", "no change", "new point", "missing point"]

TIMES = {  # `*_image_ms`: per image or sequence under `--batch max` (absent elsewhere)
    "profile": ("fwd_ms", "fwdbwd_ms", "fwd_image_ms", "fwdbwd_image_ms"),
    "scale": ("infer_ms", "train_ms", "infer_image_ms", "train_image_ms"),
    "train": ("step_ms",),
}
MEMORY = {
    "profile": ("fwd_peak_mib", "fwdbwd_peak_mib"),
    "scale": ("infer_peak_mib", "train_peak_mib"),
    "train": ("peak_mib",),
}
SHIFTED = ("profile", "scale")  # kinds whose points are timed in one run: a common shift
PRIOR_DF = 4  # degrees of freedom the pooled variance adds to each figure's own
# d2(R): the expected range of R normal samples in standard deviations, which turns a
# repeat spread (max - min) / median into a standard deviation of the log times
RANGE_SIGMAS = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970}


@dataclass(frozen=True)
class Row:
    """One figure of one point (or a point present on one side only) and its verdict.

    `change`: new / old (times, memory) or new - old in percentage points (accuracy).
    `relative`: times of a kind with a common shift, `change` over it: what is judged.
    `low`, `high`: the interval of what is judged (`relative`, or `change`).
    """

    point: str
    figure: str
    family: Literal["time", "memory", "accuracy", "status", "point"]
    old: float | str | None
    new: float | str | None
    verdict: Verdict
    noise: str = ""
    change: float | None = None
    relative: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Shift:
    """A kind's common timing shift: the median new / old ratio over its matched times."""

    kind: str
    ratio: float
    figures: int
    drift: float
    verdict: Verdict

    def line(self) -> str:
        """'all profile timings 1.18x slower (common shift over 88 figures), within ...'."""
        size = max(self.ratio, 1 / self.ratio)
        way = " unchanged" if round(size, 2) == 1 else " slower" if self.ratio > 1 else " faster"
        inside = abs(math.log(self.ratio)) <= math.log1p(self.drift)
        where = "within" if inside else "beyond"
        judged = {"worse": ": worse", "better": ": better"}.get(self.verdict, "")
        return (
            f"all {self.kind} timings {size:.2f}x{way} (common shift over {self.figures} "
            f"figures), {where} the run-to-run drift of ±{percent(self.drift)}{judged}"
        )


@dataclass
class Diff:
    """Every row, the common shifts, notes on the inputs, and the rules they were judged by."""

    rows: list[Row]
    shifts: list[Shift]
    notes: list[str] = field(default_factory=list)
    threshold: float = THRESHOLD
    drift: float = DRIFT
    accuracy_points: float = ACCURACY_POINTS
    fail_on_missing: bool = False

    def regressions(self) -> list[str]:
        """What failed: each worse figure as 'point figure', each worse common shift, and
        (with `fail_on_missing`) each missing point."""
        out = [f"{s.kind} timings: common shift {s.ratio:.2f}x" for s in self.shifts]
        out = [o for o, s in zip(out, self.shifts, strict=True) if s.verdict == "worse"]
        for r in self.rows:
            if r.verdict == "worse" or (r.verdict == "missing point" and self.fail_on_missing):
                out.append(f"{r.point} {r.figure}".rstrip())
        return out


def percent(fraction: float) -> str:
    """0.1 -> "10 %"."""
    return f"{100 * fraction:g} %"


def parse_percent(text: str, option: str = "--threshold") -> float:
    """A fraction from '10%' or a bare number of percent ('10', '2.5').

    Raises:
        UsageError: text that is neither, or a negative share.
    """
    got = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%?\s*", text)
    if got is None:
        raise UsageError(f"{option} {text!r}: give a percentage such as 10% (or 10)")
    return float(got.group(1)) / 100


# ---------------------------------------------------------------------------- points


def point_of(r: Mapping[str, Any]) -> tuple[tuple[Any, ...], str] | None:
    """The key two records must share to be the same point (its configuration: a layer of
    another width, another patch size or budget is another point), and its name; None for
    kinds that hold no compared figure."""
    kind, model = r["kind"], r["model"]
    dtype = (r.get("env") or {}).get("dtype")
    compiled = " compiled" if r.get("compiled") else ""
    # `--batch max`: the batch is what each run found, so the point is "the largest batch"
    batch = "max" if r.get("batch_search") == "max" else r.get("batch_size")
    if kind == "profile":
        key = (kind, model, r["seq_len"], batch, dtype, bool(compiled), r["dim"])
        key += (r["heads"],)
        return key, f"profile {model} N={r['seq_len']} batch {batch} {dtype}{compiled}"
    if kind == "scale":
        where = f" of {r['checkpoint']}" if r.get("checkpoint") else ""
        key = (kind, model, r["image_size"], r["mode"], r["precision"], batch)
        key += (bool(compiled), r.get("checkpoint"), r["seq_len"])
        name = f"scale {model}{where} {r['image_size']}px {r['mode']} {r['precision']}"
        return key, f"{name} batch {batch}{compiled}"
    if kind == "train":
        key = (kind, model, r["seed"], r["dataset"], r["image_size"], r.get("budget"))
        name = f"train {model} seed {r['seed']} {r['dataset']} {r['image_size']}px"
        return key, name + (f" {r['budget']}" if r.get("budget") else "")
    return None


def index(records: Iterable[dict[str, Any]]) -> tuple[dict[tuple, tuple[str, dict]], int]:
    """Key -> (name, record) of each point, the latest record where several measured it
    (by their `time`), and how many were set aside so."""
    out: dict[tuple, tuple[str, dict]] = {}
    repeated = 0
    for r in records:
        got = point_of(r)
        if got is None:
            continue
        key, name = got
        if key in out:
            repeated += 1
            if str(r.get("time", "")) < str(out[key][1].get("time", "")):
                continue
        out[key] = (name, r)
    return out, repeated


def _figure(r: Mapping[str, Any], name: str) -> float | None:
    """A record's figure; a train run's `step_ms` is its training time per optimizer step."""
    if name == "step_ms":
        steps, seconds = r.get("steps"), r.get("train_s")
        return 1000 * seconds / steps if steps and seconds is not None else None
    value = r.get(name)
    return float(value) if isinstance(value, int | float) else None


# ---------------------------------------------------------------------------- time noise

Noise = tuple[float, int]  # (variance of one round's log time, rounds) of one record's time


def log_noise(r: Mapping[str, Any], name: str) -> Noise | None:
    """The round-to-round variance of a record's log time and its number of rounds: from its
    rounds, else from its repeat spread over its repeats; None: unknown."""
    rounds = rounds_of(r, name)
    if rounds and all(x > 0 for x in rounds):
        return statistics.variance([math.log(x) for x in rounds]), len(rounds)
    spread = r.get(name.removesuffix("_ms") + "_repeat_spread")
    repeats = r.get("repeats") or r.get(name.removesuffix("_ms") + "_runs") or 0
    if isinstance(spread, int | float) and repeats >= 2:
        sigma = math.log1p(spread) / RANGE_SIGMAS.get(repeats, RANGE_SIGMAS[9])
        return sigma * sigma, repeats
    return None


def _judge(low: float, high: float, worse_above: float, better_below: float) -> Verdict:
    if low > worse_above:
        return "worse"
    if high < better_below:
        return "better"
    return "no change"


@dataclass(frozen=True)
class _Timed:
    """One matched time before the common shift is known; `sides`: each side's noise."""

    point: str
    kind: str
    figure: str
    old: float
    new: float
    noise: str
    sides: tuple[Noise, Noise] | None = None

    @property
    def log_ratio(self) -> float:
        return math.log(self.new / self.old)

    def half(self, pooled: float, alpha: float) -> float:
        """The half-width of the log ratio's 1 - alpha interval (0: noise unknown): Student's
        t with the two sides' round variance moderated towards the kind's pooled one, as if
        PRIOR_DF more degrees of freedom had shown the pooled variance."""
        if self.sides is None:
            return 0.0
        (va, na), (vb, nb) = self.sides
        df = na + nb - 2
        own = ((na - 1) * va + (nb - 1) * vb) / df
        var = (PRIOR_DF * pooled + df * own) / (PRIOR_DF + df)
        return float(sp.t.ppf(1 - alpha / 2, PRIOR_DF + df)) * math.sqrt(var * (1 / na + 1 / nb))


def pooled(times: Sequence[_Timed], kind: str) -> float:
    """The round-to-round variance of log times pooled over a kind's records of both sides:
    a run's rounds are about as noisy at every point."""
    sides = [side for t in times if t.kind == kind and t.sides for side in t.sides]
    df = sum(n - 1 for _, n in sides)
    return sum(v * (n - 1) for v, n in sides) / df if df else 0.0


def timed(point: str, a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> _Timed | None:
    """The matched time `name` of two records, with its noise, where both have it."""
    old, new = _figure(a, name), _figure(b, name)
    if not old or not new or old <= 0 or new <= 0:
        return None
    kind = a["kind"]
    if kind not in SHIFTED:  # a run of its own each: its noise is the drift (`time_rows`)
        return _Timed(point, kind, name, old, new, "run drift")
    na, nb = log_noise(a, name), log_noise(b, name)
    if na is None or nb is None:
        return _Timed(point, kind, name, old, new, "noise unknown")
    how = "rounds" if rounds_of(a, name) and rounds_of(b, name) else "repeat spread"
    if a.get("contended") or b.get("contended"):
        how += ", contended"
    return _Timed(point, kind, name, old, new, how, (na, nb))


def common_shifts(times: Sequence[_Timed], drift: float, threshold: float) -> list[Shift]:
    """Per kind timed in one run, the median log ratio of its matched times, judged against
    the drift: worse when even the shift less the drift is beyond the threshold."""
    out = []
    for kind in SHIFTED:
        logs = [t.log_ratio for t in times if t.kind == kind]
        if not logs:
            continue
        c, d = statistics.median(logs), math.log1p(drift)
        verdict = _judge(c - d, c + d, math.log1p(threshold), -math.log1p(threshold))
        out.append(Shift(kind, math.exp(c), len(logs), drift, verdict))
    return out


def time_rows(
    times: Sequence[_Timed], drift: float, threshold: float
) -> tuple[list[Row], list[Shift]]:
    """The rows of matched times, each judged relative to its kind's common shift by its
    interval, simultaneous over the times with a known noise (Bonferroni: 1 - ALPHA / m), and
    the shifts; a train run's time is a run of its own, whose noise is the drift."""
    shifts = common_shifts(times, drift, threshold)
    logs = {s.kind: math.log(s.ratio) for s in shifts}
    alpha = ALPHA / max(1, sum(t.sides is not None for t in times))
    pools = {kind: pooled(times, kind) for kind in SHIFTED}
    rows = []
    for t in times:
        rel = t.log_ratio - logs.get(t.kind, 0.0)
        half, noise = t.half(pools.get(t.kind, 0.0), alpha), t.noise
        if t.noise == "run drift":
            half, noise = math.log1p(drift), f"run drift ±{percent(drift)}"
        low, high = rel - half, rel + half
        verdict = _judge(low, high, math.log1p(threshold), -math.log1p(threshold))
        rows.append(Row(
            t.point, t.figure, "time", t.old, t.new, verdict, noise,
            change=t.new / t.old, relative=math.exp(rel) if t.kind in logs else None,
            low=math.exp(low), high=math.exp(high),
        ))  # fmt: skip
    return rows, shifts


# ---------------------------------------------------------------------------- memory, accuracy


def memory_row(point: str, name: str, old: float, new: float, threshold: float) -> Row:
    """Peak memory, judged on the threshold and a slack of MEMORY_SLACK_MIB."""
    ratio = new / old if old > 0 else (1.0 if new == old else math.inf)
    verdict: Verdict = "no change"
    if new - old > MEMORY_SLACK_MIB and ratio > 1 + threshold:
        verdict = "worse"
    elif old - new > MEMORY_SLACK_MIB and ratio < 1 / (1 + threshold):
        verdict = "better"
    noise = f"exact (±{MEMORY_SLACK_MIB:g} MiB)"
    return Row(point, name, "memory", old, new, verdict, noise, change=ratio)


def accuracy_row(point: str, a: Mapping[str, Any], b: Mapping[str, Any], points: float) -> Row:
    """Top-1 new - old in percentage points with Newcombe's interval (from each side's Wilson
    interval over its test images); worse when the whole interval lies below -`points`."""
    old, new = float(a["test_top1"]), float(b["test_top1"])
    diff = 100 * (new - old)
    na, nb = a.get("n_test"), b.get("n_test")
    if not na or not nb:
        low = high = diff
        noise = "noise unknown"
    else:
        wa = count_interval(round(old * na), na)
        wb = count_interval(round(new * nb), nb)
        low = diff - 100 * math.hypot(old - wa.low, wb.high - new)
        high = diff + 100 * math.hypot(wa.high - old, new - wb.low)
        noise = f"Wilson, n={na}/{nb}"
    verdict: Verdict = "worse" if high < -points else "better" if low > points else "no change"
    return Row(point, "test_top1", "accuracy", old, new, verdict, noise, diff, None, low, high)


# ---------------------------------------------------------------------------- the whole diff


def _status_row(point: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> Row | None:
    """A row for a point that failed on either side; None where both are ok."""
    sa, sb = a.get("status", "ok"), b.get("status", "ok")
    if sa == sb == "ok":
        return None
    verdict: Verdict = "worse" if sa == "ok" else "better" if sb == "ok" else "no change"
    note = (b.get("error") or "") if sb != "ok" else ""
    return Row(point, "status", "status", sa, sb, verdict, note[:80])


def _figure_rows(
    point: str, a: Mapping[str, Any], b: Mapping[str, Any], accuracy_points: float, threshold: float
) -> list[Row]:
    """The memory and accuracy rows of two ok records of one point."""
    rows = []
    for name in MEMORY[a["kind"]]:
        old, new = _figure(a, name), _figure(b, name)
        if old is not None and new is not None:
            rows.append(memory_row(point, name, old, new, threshold))
    if a.get("test_top1") is not None and b.get("test_top1") is not None:
        rows.append(accuracy_row(point, a, b, accuracy_points))
    return rows


def _point_rows(
    point: str, a: Mapping[str, Any], b: Mapping[str, Any], points: float, threshold: float
) -> tuple[list[_Timed], list[Row]]:
    """A matched point's times (judged once the common shifts are known) and its other rows:
    its status where either side failed, else its memory and accuracy."""
    status = _status_row(point, a, b)
    if status is not None:
        return [], [status]
    most = a.get("batch_search") == "max"  # each run's own batch: per image only
    names = [n for n in TIMES[a["kind"]] if n.endswith("_image_ms") == most]
    got = [timed(point, a, b, name) for name in names]
    return [t for t in got if t is not None], _figure_rows(point, a, b, points, threshold)


def compare_sets(
    old: Iterable[dict[str, Any]],
    new: Iterable[dict[str, Any]],
    *,
    threshold: float = THRESHOLD,
    drift: float = DRIFT,
    accuracy_points: float = ACCURACY_POINTS,
    fail_on_missing: bool = False,
) -> Diff:
    """Every point of either side: its figures compared where both sides measured it, else a
    'new point' or 'missing point' row."""
    before, repeated_old = index(old)
    after, repeated_new = index(new)
    matched = {
        key: _point_rows(point, a, after[key][1], accuracy_points, threshold)
        for key, (point, a) in before.items()
        if key in after
    }
    timed_rows, shifts = time_rows([t for ts, _ in matched.values() for t in ts], drift, threshold)
    judged = iter(timed_rows)
    rows = []
    for key, (point, _) in before.items():
        if key not in matched:
            rows.append(Row(point, "", "point", None, None, "missing point"))
            continue
        ts, others = matched[key]
        rows += [next(judged) for _ in ts] + others
    rows += [
        Row(point, "", "point", None, None, "new point")
        for key, (point, _) in after.items()
        if key not in before
    ]
    notes = [
        f"{n} record(s) of the {side} set measured a point again: the latest of each is compared"
        for side, n in (("old", repeated_old), ("new", repeated_new))
        if n
    ]
    notes += _environments(before, after)
    return Diff(rows, shifts, notes, threshold, drift, accuracy_points, fail_on_missing)


def _machine(r: Mapping[str, Any]) -> str:
    env = r.get("env") or {}
    return f"{env.get('device_name')}, torch {env.get('torch')}, {env.get('threads')} threads"


def _environments(before: Mapping[tuple, tuple[str, dict]], after: Mapping) -> list[str]:
    """A note where the two sides were measured on different machines or software."""
    old = {_machine(r) for _, r in before.values()}
    new = {_machine(r) for _, r in after.values()}
    if old == new:
        return []
    return [f"measured elsewhere: old on {'; '.join(sorted(old))}; new on {'; '.join(sorted(new))}"]


def load_side(paths: Sequence[Path], side: str) -> tuple[list[dict[str, Any]], int]:
    """The records of one side (`effbench.report.collect`) and how many lines were skipped.

    Raises:
        UsageError: a path that does not exist.
        DataError: no record of a compared kind (profile, scale, train) under the paths.
    """
    from effbench.report.inputs import collect

    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"{side} {missing[0]}: no such file or directory")
    results = collect(paths)
    records = [r for r in results.records if point_of(r) is not None]
    if not records:
        where = ", ".join(map(str, paths))
        raise DataError(f"{side} {where}: no profile, scale or train records to compare")
    return records, len(results.bad)
