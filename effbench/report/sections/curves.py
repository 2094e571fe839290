"""The curves section: training loss and validation accuracy per epoch, mean over seeds."""

from __future__ import annotations

import statistics

from effbench.report.content import Record, ReportData
from effbench.report.document import Part, Section
from effbench.report.figures import Plot, new_figure, plot, slug

CURVES = (("train_loss", "training loss", 1.0), ("val_top1", "validation top-1 %", 100.0))


def section(data: ReportData) -> Part:
    epochs = [r for r in data.kind("train_epoch") if r.get("status") == "ok"]
    if not epochs:
        return None, []
    sec = Section("curves", "Training curves")
    sec.text(
        "Mean over seeds at each epoch; validation accuracy is on the split held out of the "
        "training set."
    )
    for metric, label, scale in CURVES:
        figure = _curve(data, epochs, metric, label=label, scale=scale)
        if figure is not None:
            sec.figure(figure)
    return sec, []


def _curve(
    data: ReportData, epochs: list[Record], metric: str, *, label: str, scale: float
) -> Plot | None:
    """`metric` per epoch for every model; None when no model has it."""
    fig, (ax,) = new_figure(1, width=6.5, height=3.8)
    drawn = False
    for m in data.order(r["model"] for r in epochs):
        per_epoch: dict[int, list[float]] = {}
        for r in epochs:
            if r["model"] == m and r.get(metric) is not None:
                per_epoch.setdefault(r["epoch"], []).append(r[metric] * scale)
        if per_epoch:
            xs = sorted(per_epoch)
            means = [statistics.fmean(per_epoch[x]) for x in xs]
            ax.plot(xs, means, ms=3, **data.style(m), label=data.label(m))
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.legend(fontsize=8, ncol=2)
    title = label.capitalize()
    return plot(slug("curve", metric), title, f"{title} per epoch, every model.", fig)
