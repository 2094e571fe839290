"""The profile section: forward and forward + backward milliseconds of one attention layer
from `effbench profile`, one table per environment, contended and launch-bound points named."""

from __future__ import annotations

from effbench.crossover import (
    baseline_label,
    crossing,
    phase_contended,
    point_verdicts,
    resolved_crossover,
)
from effbench.report.content import Record, ReportData
from effbench.report.document import Part, Section
from effbench.report.format import crossover_words, evidence, num


def section(data: ReportData) -> Part:
    recs = data.kind("profile")
    if not recs:
        return None, []
    sec = Section("profile", "The attention layer alone")
    sec.text(
        "Forward (and forward + backward) milliseconds of one attention layer from "
        "`effbench profile`, per environment."
    )
    by_env: dict[str, list[Record]] = {}
    for r in recs:
        by_env.setdefault(data.env(r), []).append(r)
    summary: list[str] = []
    for env, rs in by_env.items():
        # the newest record of each model and length: a profile run again replaces the old
        latest = {
            (r["model"], r["seq_len"]): r for r in sorted(rs, key=lambda r: r.get("time", ""))
        }
        _one_env(sec, data, env, latest)
        summary += _against_baseline(sec, data, env, list(latest.values()))
    return sec, summary


def _cell(r: Record | None) -> str:
    if r is None:
        return ""
    if r.get("status") != "ok":
        return r["status"]
    fwd, fb = (
        num(r.get(f"{p}_ms")) + ("*" if phase_contended(r, p) else "") for p in ("fwd", "fwdbwd")
    )
    return f"{fwd}{'†' if r.get('launch_bound') else ''} / {fb}"


def _one_env(
    sec: Section, data: ReportData, env: str, latest: dict[tuple[str, int], Record]
) -> None:
    rs = list(latest.values())
    lengths = sorted({r["seq_len"] for r in rs})
    rows = [
        [m, *(_cell(latest.get((m, n))) for n in lengths)]
        for m in data.order(r["model"] for r in rs)
    ]
    batch = rs[0].get("batch_size")
    dtype = (rs[0].get("env") or {}).get("dtype")
    sec.table(
        ["model", *(f"N = {n}" for n in lengths)],
        rows,
        title=f"{env}: batch {batch}, {dtype}; forward / forward + backward ms",
    )
    bound = [r for r in latest.values() if r.get("launch_bound")]
    if bound:
        sec.text(
            f"† {len(bound)} of these forwards are launch-bound: the GPU's kernels fill less "
            "than half of the timed call, so the figure measures Python, dispatch and kernel "
            "launches more than the mechanism, and a comparison there says little about it."
        )
    shaky = [r for r in latest.values() if r.get("contended")]
    if shaky:
        sec.text(
            f"* {len(shaky)} of these points were timed while other work held the CPU "
            "(contended, still so after re-measuring): their times are slower than "
            "the machine can do."
        )
        sec.table(
            ["model", "tokens", "phase", "evidence"],
            [[r["model"], str(r["seq_len"]), *evidence(r)] for r in shaky],
            title=f"Contended points, {env}",
        )


PHASES = {"fwd": "forward", "fwdbwd": "forward + backward"}


def _against_baseline(sec: Section, data: ReportData, env: str, points: list[Record]) -> list[str]:
    """Each layer's time over the baseline's at every N, from the rounds both took back to
    back, with the 95 % interval and a verdict only where it excludes 1; the summary: from
    which N each layer is faster for good."""
    bases = data.baselines(points)
    if not bases:
        return []
    base = [r for r in points if r["model"] in bases]
    lengths = sorted({r["seq_len"] for r in points})
    said = []
    for phase, words in PHASES.items():
        rows, line = [], []
        for m in data.order(r["model"] for r in points):
            if m in bases:
                continue
            mine = [r for r in points if r["model"] == m]
            verdicts = point_verdicts(mine, base, f"{phase}_ms", at="seq_len")
            if not verdicts:
                continue
            rows.append([m, *(_verdict_cell(verdicts.get(n)) for n in lengths)])
            at = crossing(resolved_crossover(verdicts), {n: n for n in lengths})
            found = {"crossovers": {phase: at}, "verdicts": {phase: verdicts}}
            line.append(f"{m} {crossover_words(found, phase, unit='tokens')}")
        if not rows:
            continue
        sec.table(
            ["model", *(f"N = {n}" for n in lengths)],
            rows,
            title=f"{env}: {words} time over {baseline_label(bases)}'s, 95 % interval, verdict",
        )
        said.append(
            f"The attention layer alone, {words}, faster than {baseline_label(bases)} ({env}; "
            "a verdict only where the paired ratio's 95 % interval excludes 1): "
            + "; ".join(line)
            + "."
        )
    return said


def _verdict_cell(v: dict[str, object] | None) -> str:
    if v is None:
        return ""
    if v.get("failed"):
        return str(v["verdict"]) + " (one side failed)"
    ratio = f"{num(v.get('ratio'))}×"
    if v.get("low") is not None:
        ratio += f" ({num(v['low'])}–{num(v['high'])})"
    return f"{ratio} {v['verdict']}" + ("" if v.get("paired") else ", unpaired medians")
