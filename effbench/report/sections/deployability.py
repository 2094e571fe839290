"""The deployability section: from `effbench export`, one kind x path matrix per environment
and resolution (torch.export static and with a dynamic batch, ONNX, onnxruntime): ok with the
largest difference from eager PyTorch and onnxruntime's latency over eager's, or the failure
and its reason; the summary names the models onnxruntime runs and those it does not."""

from __future__ import annotations

from typing import get_args

from effbench.report.content import Record, ReportData
from effbench.report.document import Part, Section
from effbench.report.format import num
from effbench.results import ExportRecord

PATHS: tuple[str, ...] = get_args(ExportRecord.model_fields["path"].annotation)
RUNTIME = "onnxruntime"
REASON_CHARS = 80  # of a failure's reason in a cell; the list below the table holds all

TEXT = (
    "Each model whole, from `effbench export`: `torch.export` with a static shape and with a "
    "dynamic batch dimension, ONNX through the dynamo exporter, and that file in onnxruntime. "
    "ok cells give the largest |output − eager output| (Δ) over the batches checked, and in "
    "onnxruntime its milliseconds for one batch beside eager PyTorch's on the same device, "
    "threads and batch (the ratio below 1: onnxruntime is faster). A failed path gives its "
    "status and reason; each path was tried on its own."
)


def section(data: ReportData) -> Part:
    recs = data.kind("export")
    if not recs:
        return None, []
    sec = Section("deployability", "Deployability")
    sec.text(TEXT)
    groups: dict[tuple[str, int, int], list[Record]] = {}
    for r in recs:
        groups.setdefault((data.env(r), r["image_size"], r["batch_size"]), []).append(r)
    summary: list[str] = []
    for (env, size, batch), rs in groups.items():
        # the newest record of each model and path: an export run again replaces the old
        latest = {(r["model"], r["path"]): r for r in sorted(rs, key=lambda r: r.get("time", ""))}
        summary += _one_matrix(sec, data, f"{env}: {size} px, batch {batch}", latest)
    return sec, summary


def cell(r: Record | None) -> str:
    """ok with Δ (and onnxruntime's ms over eager's), or the status and the reason's start."""
    if r is None:
        return ""
    if r.get("status") != "ok":
        reason = str(r.get("error") or r.get("failure") or "")
        if len(reason) > REASON_CHARS:
            reason = reason[: REASON_CHARS - 1] + "…"
        return f"{r.get('status')}: {reason}"
    parts = ["ok"]
    if r.get("max_abs_diff") is not None:
        parts.append(f"Δ {num(r['max_abs_diff'], 2)}")
    if r.get("path") == "onnx" and r.get("dynamic_batch") is False:
        parts.append("static batch")
    ort, eager = r.get("ort_ms"), r.get("eager_ms")
    if ort is not None and eager:
        star = "*" if r.get("contended") else ""
        parts.append(f"{num(ort)} / {num(eager)} ms = {num(ort / eager, 2)}×{star}")
    return ", ".join(parts)


def _one_matrix(
    sec: Section, data: ReportData, title: str, latest: dict[tuple[str, str], Record]
) -> list[str]:
    paths = [p for p in PATHS if any(path == p for _, path in latest)]
    models = data.order(m for m, _ in latest)
    rows = [[m, *(cell(latest.get((m, p))) for p in paths)] for m in models]
    sec.table(["model", *paths], rows, title=f"{title}; onnxruntime ms / eager ms = ratio")
    failed = [r for r in latest.values() if r.get("status") != "ok"]
    if failed:
        sec.bullets([f"{r['model']}, {r['path']}: {r.get('error')}" for r in failed])
    if any(r.get("contended") for r in latest.values()):
        sec.text("* timed while other work held the CPU: the latencies are slower than usual.")
    runtime = [r for r in latest.values() if r["path"].startswith(RUNTIME)]
    if not runtime:
        return []
    ok = data.order(r["model"] for r in runtime if r.get("status") == "ok")
    not_ok = data.order(r["model"] for r in runtime if r.get("status") != "ok")
    line = f"Deployability ({title}): onnxruntime runs {', '.join(ok) or 'no model'}"
    return [line + (f"; not {', '.join(not_ok)}." if not_ok else ".")]
