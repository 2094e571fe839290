"""The report's Recommendation block: a few lines at the top, derived only from the records and
their statistics. For each setting measured (dataset, resolution, budget and environment for
accuracy; device environment and scale series for cost): the mechanisms on the accuracy-cost
Pareto front, the ones statistically tied on accuracy, and from which resolution each
efficient mechanism pays off against the exact baseline in time and in memory. Then what the
data cannot support: one seed per model, launch-bound or contended timings, one environment."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from effbench.crossover import baseline_label, summarize
from effbench.report.comparison import tied_with_best
from effbench.report.content import ModelRow, ReportData, Series
from effbench.report.format import crossover_words
from effbench.report.sections.pareto import pareto_front


def recommendation(data: ReportData) -> list[str]:
    """The Recommendation lines; [] when there is nothing to compare."""
    lines: list[str] = []
    groups: dict[tuple[object, ...], list[ModelRow]] = {}
    for r in data.rows:
        if r.top1:
            groups.setdefault((*r.comparison, r.env), []).append(r)
    for rows in groups.values():
        if len(rows) >= 2:
            lines.append(_accuracy_line(rows))
    for s in data.series:
        line = _payoff_line(data, s)
        if line:
            lines.append(line)
    if lines:
        lines += _caveats(data, groups)
    return lines


def _cost(r: ModelRow) -> tuple[float | None, str]:
    if r.latency and r.latency.get("infer_ms") is not None:
        return float(r.latency["infer_ms"]), "inference latency"
    return (r.flops, "FLOPs") if r.flops else (None, "")


def _accuracy_line(rows: Sequence[ModelRow]) -> str:
    """Front, best and ties of one accuracy comparison."""
    first = rows[0]
    where = f"{first.dataset}, {first.image_size} px, budget {first.budget or '—'}, {first.env}"
    costs = [_cost(r) for r in rows]
    kind = "inference latency" if all(c[1] == "inference latency" for c in costs) else "FLOPs"
    pts = [
        (c[0], statistics.fmean(r.top1), r.model)
        for r, c in zip(rows, costs, strict=True)
        if c[0] is not None and c[1] == kind
    ]
    on_front = set(pareto_front([(x, y) for x, y, _ in pts]))
    front = [m for x, y, m in sorted(pts, key=lambda p: (p[0], -p[1])) if (x, y) in on_front]
    text = f"{where}: on the accuracy–{kind} front: {', '.join(front) or 'not measured'}."
    found = tied_with_best((r.model, r.stats) for r in rows if r.stats is not None)
    if found:
        best, tied, how = found
        text += (
            f" Most accurate {best}; statistically tied with it ({how}): {', '.join(tied)}."
            if tied
            else f" Most accurate {best}, ahead of every other model ({how})."
        )
        still = [r.model for r in rows if r.learning]
        if still:
            text += (
                f" Still learning when the budget ended: {', '.join(still)}, so this ranks "
                "learning speed within the budget, not what each reaches."
            )
    return text


def _payoff_line(data: ReportData, s: Series) -> str | None:
    """From which resolution each efficient mechanism beats the baseline in time and memory."""
    bases = data.baselines(s.points)
    if not bases:
        return None
    found = summarize(s.points, baseline=bases, mode=s.mode)
    parts = []
    for m in data.order(r["model"] for r in s.points):
        if m in bases or data.exact(m):
            continue
        cross = found[m]["crossovers"]
        time_ = "infer_time" if "infer_time" in cross else "train_time"
        mem = "infer_memory" if "infer_memory" in cross else "train_memory"
        parts.append(f"{m} {_words(found[m], time_)} in time, {_words(found[m], mem)} in memory")
    if not parts:
        return None
    where = f"{s.env}, patch {s.patch}, {s.precision}, mode {s.mode}"
    return (
        f"Pays off against {baseline_label(bases)} ({where}; in time only where the paired "
        "ratio's 95 % interval excludes 1): " + "; ".join(parts) + "."
    )


def _words(found: dict[str, object], metric: str) -> str:
    words = crossover_words(found, metric)
    return "not in the range measured" if words == "not reached in range" else words


def _caveats(data: ReportData, groups: dict[tuple[object, ...], list[ModelRow]]) -> list[str]:
    out = []
    rows = [r for rs in groups.values() for r in rs]
    if rows and max(len(r.ok) for r in rows) < 2:
        out.append(
            "Cannot conclude across training runs: one seed per model, so every interval is "
            "over test images only; train more seeds (--seeds 0 1 2) to see run-to-run spread."
        )
    elif rows:
        single = sorted({r.model for r in rows if len(r.ok) < 2})
        out.append(
            "Intervals over several seeds are two-level bootstraps (seeds, then test images): "
            "they hold run-to-run spread"
            + (f", except for {', '.join(single)} (one seed: test images only)." if single else ".")
        )
    points = [p for s in data.series for p in s.points]
    bound = sum(bool(p.get("launch_bound")) for p in points)
    if bound:
        out.append(
            f"{bound} scale point(s) are launch-bound: there the timings measure kernel "
            "launches more than the mechanism, and no pay-off read from them is firm."
        )
    contended = sum(bool(p.get("contended")) for p in points)
    if contended:
        out.append(f"{contended} scale point(s) were timed while other work held the CPU.")
    if len(data.envs.keys) == 1:
        out.append(
            "All figures come from one environment; costs on other hardware, or compiled, "
            "may order the mechanisms differently."
        )
    return out
