"""The accuracy section: test accuracy over seeds beside parameters, FLOPs, latency, training
time and memory, one row per model and environment; summary: the most accurate model."""

from __future__ import annotations

import statistics

from effbench.report.data import ModelRow, ReportData
from effbench.report.document import Part, Section
from effbench.report.format import contended_mark, mean_std, num

COLUMNS = [
    "model", "seeds ok", "top-1 %", "top-5 %", "params (M)", "GFLOPs / image",
    "latency ms", "images/s", "train s / epoch", "train peak MiB", "env",
]  # fmt: skip
TEXT = (
    "Test accuracy of the weights with the best validation accuracy, mean ± standard "
    "deviation over seeds; a run that ended `nan` or `oom` is counted in the seeds "
    "column and named there. Latency and throughput are one inference batch of "
    "`effbench scale` at the trained resolution; training time is per epoch; peak "
    "memory is that of training. The last column names the environments of the "
    "training and of the latency figures."
)
CONTENDED = (
    " * marks a figure timed while other work held the CPU (contended: a latency, "
    "or a training time that includes such epochs), so slower than the machine "
    "can do."
)


def _cells(r: ModelRow, data: ReportData) -> list[str]:
    failed = [f"seed {x['seed']}: {x['status']}" for x in r.runs if x not in r.ok]
    lat = r.latency
    return [
        r.model,
        f"{len(r.ok)}/{len(r.runs)}" + (f" ({'; '.join(failed)})" if failed else ""),
        mean_std(r.top1),
        mean_std(r.top5),
        num(r.params and r.params / 1e6),
        num(r.flops and r.flops / 1e9),
        num(lat and lat["infer_ms"]) + contended_mark(lat),
        num(lat and lat.get("images_per_s")) + contended_mark(lat),
        num(r.epoch_s) + ("*" if r.epochs_contended else ""),
        num(r.peak_mib),
        r.env + (f" / {data.env(lat)}" if lat else ""),
    ]


def section(data: ReportData) -> Part:
    rows = data.rows
    if not rows:
        return None, []
    sec = Section("accuracy", "Accuracy and cost")
    contended = any(r.epochs_contended or contended_mark(r.latency) for r in rows)
    sec.text(TEXT + (CONTENDED if contended else ""))
    sec.table(COLUMNS, [_cells(r, data) for r in rows])
    best = max((r for r in rows if r.top1), key=lambda r: statistics.fmean(r.top1), default=None)
    if best is None:
        return sec, []
    return sec, [
        f"Most accurate: {best.model} with {mean_std(best.top1)} % test top-1 "
        f"({len(best.top1)} seed(s), {best.dataset}, {best.image_size} px)."
    ]
