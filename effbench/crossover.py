"""What a scale grid shows, from its records alone (no torch): the crossover resolution at
which each mechanism beats the `sdpa` baseline (in time: resolved by paired ratios, so that a
crossover is only stated where the noise allows), and log-log slopes of time and memory
against tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from effbench.ratios import keeps_rounds, record_ratio, rounds_field

# Summary metric -> the scale record field it reads.
METRICS = {
    "infer_time": "infer_ms",
    "infer_memory": "infer_peak_mib",
    "train_time": "train_ms",
    "train_memory": "train_peak_mib",
    # `--batch max`: time per image at each model's own largest batch (1 / throughput)
    "infer_throughput": "infer_image_ms",
    "train_throughput": "train_image_ms",
}
# Time metric -> the timed phase whose CPU check says whether its figure is contended.
TIMED_PHASE = {
    "infer_time": "infer",
    "train_time": "train",
    "infer_throughput": "infer",
    "train_throughput": "train",
}
# Slopes are fitted over the points with at least this fraction of the largest token count:
# the upper part of the range, where the leading term dominates.
SLOPE_SPAN = 1 / 16


def metrics_for(mode: str, *, max_batch: bool = False) -> list[str]:
    """The summary metrics that a scale mode measures: time and memory at a fixed batch, or
    with `max_batch` (`--batch max`, where each model has its own batch and its peak is
    the limit) throughput alone."""
    kinds = ("throughput",) if max_batch else ("time", "memory")
    return [
        m
        for m in METRICS
        if (mode == "both" or m.startswith(mode)) and m.rsplit("_", 1)[1] in kinds
    ]


def at_max_batch(records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether scale records were measured under `--batch max`."""
    return any(r.get("batch_search") == "max" for r in records)


def phase_contended(record: Mapping[str, Any], phase: str) -> bool:
    """Whether the record's `phase` timing (fwd, fwdbwd, infer, train) was measured while
    other work held the CPU (its CPU check stayed disturbed after re-measuring)."""
    checks = record.get("cpu_checks") or {}
    return isinstance(checks, Mapping) and bool((checks.get(phase) or {}).get("disturbed"))


def is_contended(record: Mapping[str, Any], metric: str) -> bool:
    """Whether the record's figure for the summary `metric` is contended (memory never is)."""
    phase = TIMED_PHASE.get(metric)
    return phase is not None and phase_contended(record, phase)


def crossover(
    mine: Mapping[int, float | None], base: Mapping[int, float | None]
) -> tuple[int, bool] | None:
    """The smallest resolution from which `mine` is below `base` at it and every larger one.

    Both map resolution -> figure, None where the point failed (out of memory, error): a
    failed baseline counts as beaten, a failed `mine` as not ahead; where both failed the
    resolution is left out. Returns (resolution, whether that is the smallest compared) or
    None when `mine` is not ahead at the largest resolution compared ("not reached").
    """
    compared = sorted(
        r for r in set(mine) | set(base) if (mine.get(r), base.get(r)) != (None, None)
    )
    ahead = []
    for r in compared:
        m, b = mine.get(r), base.get(r)
        ahead.append(m is not None and (b is None or m < b))
    return _ahead_from(compared, ahead)


def _ahead_from(compared: Sequence[int], ahead: Sequence[bool]) -> tuple[int, bool] | None:
    """The first of `compared` from which every `ahead` is true, and whether that is the
    first of all; None when the last is not ahead."""
    if not ahead or not ahead[-1]:
        return None
    first = len(ahead) - 1
    while first > 0 and ahead[first - 1]:
        first -= 1
    return compared[first], first == 0


def loglog_slope(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    slope, _ = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
    return float(slope)


def upper_slope(by_tokens: Mapping[int, float | None]) -> tuple[float | None, list[int]]:
    """The log-log slope over the upper part of the token range (>= SLOPE_SPAN of the
    largest measured), and the token counts it used."""
    measured = {n: v for n, v in by_tokens.items() if v is not None and v > 0}
    if not measured:
        return None, []
    top = max(measured)
    used = sorted(n for n in measured if n >= top * SLOPE_SPAN)
    if len(used) < 2:  # a narrow ladder: fit its two largest points
        used = sorted(measured)[-2:]
    return loglog_slope((n, measured[n]) for n in used), used


def baseline_label(baselines: Sequence[str]) -> str | None:
    """How a report or record names the baseline: its model, or 'best of a, b' for several."""
    if not baselines:
        return None
    return baselines[0] if len(baselines) == 1 else "best of " + ", ".join(baselines)


def best_of(records: Iterable[dict[str, Any]], field: str) -> dict[int, float | None]:
    """Per resolution, the smallest `field` among `records` (None where every one failed)."""
    return {res: None if r is None else r[field] for res, r in best_records(records, field).items()}


def best_records(
    records: Iterable[dict[str, Any]], field: str, at: str = "image_size"
) -> dict[int, dict[str, Any] | None]:
    """Per point (`at`: a record's resolution or sequence length), the record with the
    smallest `field` (None where every one failed)."""
    out: dict[int, dict[str, Any] | None] = {}
    for r in records:
        v, res, held = r.get(field), r[at], out.get(r[at])
        if v is not None and (held is None or v < held[field]):
            out[res] = r
        else:
            out.setdefault(res, None)
    return out


def point_verdicts(
    mine: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]],
    field: str,
    at: str = "image_size",
) -> dict[int, dict[str, Any]]:
    """Per point (`at`: resolution, or `seq_len` for a profile), `mine` against the baseline
    (the best of them there) in a time `field`: the paired ratio of their rounds with its
    95 % interval and verdict (`effbench.ratios`). A failed baseline counts as beaten and a
    failed `mine` as slower; records without rounds (written before effbench kept them)
    compare their medians and say `paired: false`."""
    own = {r[at]: r for r in mine}
    bases = best_records(base, field, at)
    out: dict[int, dict[str, Any]] = {}
    for res in sorted(set(own) | set(bases)):
        m, b = own.get(res), bases.get(res)
        mv, bv = (m or {}).get(field), (b or {}).get(field)
        if mv is None and bv is None:
            continue
        if mv is None or bv is None:
            out[res] = {"verdict": "faster" if mv is not None else "slower", "failed": True}
            continue
        q = record_ratio(m, b, field)
        if q is not None:
            out[res] = q.as_dict() | {"paired": True}
        elif keeps_rounds(m, field) or keeps_rounds(b, field):  # one round: no interval
            out[res] = {"ratio": mv / bv, "verdict": "not resolved", "paired": True}
            taken = [len(r.get(rounds_field(field)) or []) for r in (m, b)]
            out[res]["rounds"] = min(taken)
        else:
            out[res] = {"ratio": mv / bv, "verdict": "faster" if mv < bv else "slower"}
            out[res]["paired"] = False
    return out


def resolved_crossover(verdicts: Mapping[int, Mapping[str, Any]]) -> tuple[int, bool] | None:
    """The smallest resolution from which every verdict is `faster` (resolved ahead), and
    whether that is the smallest compared; None when the largest is not."""
    compared = sorted(verdicts)
    return _ahead_from(compared, [verdicts[r]["verdict"] == "faster" for r in compared])


def crossing(hit: tuple[int, bool] | None, tokens: Mapping[int, int]) -> dict[str, Any] | None:
    """A crossover found at (point, whether the first) as its record fields, or None."""
    if hit is None:
        return None
    return {"resolution": hit[0], "tokens": tokens[hit[0]], "at_start": hit[1]}


def summarize(
    records: list[dict[str, Any]], *, baseline: str | Sequence[str] | None, mode: str
) -> dict[str, dict[str, Any]]:
    """Per model of a scale grid's records: crossovers against the baseline and slopes.

    `baseline`: one model, or several (the SDPA backends, say), whose best figure at each
    resolution is the one to beat.

    Returns model -> {"crossovers": {metric: {resolution, tokens, at_start} | None},
    "verdicts": {time metric: {resolution: point verdict}}, "slopes": {metric: slope |
    None}, "slope_tokens": {metric: [tokens...]}, "contended": {metric: [resolutions...]}}.
    A time crossover rests on paired verdicts (`point_verdicts`): from its resolution up,
    every ratio's interval is below 1; a memory crossover on the figures (peak memory has
    no run-to-run noise). The baseline gets no crossovers. `contended` lists, per time
    metric, the resolutions where this model's figure (or the baseline's, which its
    crossover compares against) was contended: what rests on them is uncertain.
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "scale":
            by_model.setdefault(r["model"], []).append(r)
    tokens = {r["image_size"]: r["seq_len"] for rs in by_model.values() for r in rs}
    bases = [baseline] if isinstance(baseline, str) else list(baseline or [])
    base = [r for b in bases for r in by_model.get(b, [])]
    out: dict[str, dict[str, Any]] = {}
    for model, rs in by_model.items():
        found: dict[str, Any] = {"crossovers": {}, "verdicts": {}, "slopes": {}}
        found |= {"slope_tokens": {}, "contended": {}}
        for metric in metrics_for(mode, max_batch=at_max_batch(rs)):
            field = METRICS[metric]
            shaky = sorted({r["image_size"] for r in (*rs, *base) if is_contended(r, metric)})
            if shaky:
                found["contended"][metric] = shaky
            slope, found["slope_tokens"][metric] = upper_slope(
                {r["seq_len"]: r.get(field) for r in rs}
            )
            found["slopes"][metric] = slope
            if model in bases or not base:
                continue
            if metric in TIMED_PHASE:
                found["verdicts"][metric] = point_verdicts(rs, base, field)
                hit = resolved_crossover(found["verdicts"][metric])
            else:
                hit = crossover({r["image_size"]: r.get(field) for r in rs}, best_of(base, field))
            found["crossovers"][metric] = crossing(hit, tokens)
        out[model] = found
    return out


def unresolved_at(found: Mapping[str, Any], metric: str) -> list[int]:
    """The resolutions where a model's time verdict against the baseline is not resolved."""
    verdicts = (found.get("verdicts") or {}).get(metric) or {}
    return [r for r, v in sorted(verdicts.items()) if v["verdict"] == "not resolved"]
