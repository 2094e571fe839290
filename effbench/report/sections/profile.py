"""The profile section: forward and forward + backward milliseconds of one attention layer
from `effbench profile`, one table per environment, contended and launch-bound points named."""

from __future__ import annotations

from effbench.crossover import phase_contended
from effbench.report.data import Record, ReportData
from effbench.report.document import Part, Section
from effbench.report.format import evidence, num


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
    for env, rs in by_env.items():
        _one_env(sec, data, env, rs)
    return sec, []


def _cell(r: Record | None) -> str:
    if r is None:
        return ""
    if r.get("status") != "ok":
        return r["status"]
    fwd, fb = (
        num(r.get(f"{p}_ms")) + ("*" if phase_contended(r, p) else "") for p in ("fwd", "fwdbwd")
    )
    return f"{fwd}{'†' if r.get('launch_bound') else ''} / {fb}"


def _one_env(sec: Section, data: ReportData, env: str, rs: list[Record]) -> None:
    lengths = sorted({r["seq_len"] for r in rs})
    latest = {(r["model"], r["seq_len"]): r for r in sorted(rs, key=lambda r: r.get("time", ""))}
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
