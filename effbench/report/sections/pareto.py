"""The Pareto section: mean test accuracy against inference latency, FLOPs and training
memory, with the front of the models no other beats in both."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from effbench.report.content import ModelRow, ReportData
from effbench.report.document import Part, Section
from effbench.report.figures import literal, new_figure, plot

AXES: list[tuple[str, Callable[[ModelRow], float | None]]] = [
    ("inference latency, ms / batch", lambda r: r.latency and r.latency["infer_ms"]),
    ("GFLOPs / image", lambda r: r.flops and r.flops / 1e9),
    ("training peak memory, MiB", lambda r: r.peak_mib),
]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when lower x and higher y are better, by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _error_bar(r: ModelRow, y: float) -> list[list[float]] | None:
    """The row's 95 % accuracy interval as matplotlib's (below, above) error around y (%)."""
    ci = r.stats.ci if r.stats else None
    if ci is None:
        return None
    return [[max(0.0, y - 100 * ci.low)], [max(0.0, 100 * ci.high - y)]]


def section(data: ReportData) -> Part:
    rows = [r for r in data.rows if r.top1]
    if len(rows) < 2:
        return None, []
    axes_spec = [(label, f) for label, f in AXES if sum(f(r) is not None for r in rows) >= 2]
    if not axes_spec:
        return None, []
    fig, axes = new_figure(len(axes_spec), width=4.6)
    for ax, (label, get) in zip(axes, axes_spec, strict=True):
        pts = [(get(r), 100 * statistics.fmean(r.top1), r) for r in rows]
        pts = [p for p in pts if p[0] is not None]
        for x, y, r in pts:
            style = data.style(r.model)
            ax.errorbar([x], [y], yerr=_error_bar(r, y), fmt=style["marker"],
                        color=style["color"], ms=6, capsize=3, lw=1, zorder=3)  # fmt: skip
            ax.annotate(
                data.label(r.model), (x, y), textcoords="offset points", xytext=(4, 4),
                fontsize=8,
            )  # fmt: skip
        for group, models in data.swept().items():  # each option sweep as one curve
            curve = sorted((x, y) for x, y, r in pts if r.model in models)
            if len(curve) > 1:
                ax.plot(*zip(*curve, strict=True), color=data.colour(models[0]), lw=1.2,
                        alpha=0.8, zorder=2, label=literal(group))  # fmt: skip
        front = pareto_front([(x, y) for x, y, _ in pts])
        ax.step(*zip(*front, strict=True), where="post", color="#999999", lw=1, ls="--", zorder=2)
        xs = [x for x, _, _ in pts]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 %")
        if data.swept():
            ax.legend(fontsize=7, title="option sweeps", title_fontsize=7)
    sec = Section("pareto", "Accuracy against cost")
    sec.text(
        "Each point is a model (mean top-1 over its seeds; the bars are its 95 % interval). "
        "The dashed line is the Pareto front: the models that no other beats in both "
        "accuracy and that cost. Points whose bars overlap are not resolved by this test set."
        + (
            " A solid line joins the variants of one option sweep (one mechanism at several "
            "settings): its trade-off curve."
            if data.swept()
            else ""
        )
    )
    sec.figure(
        plot(
            "pareto",
            "Accuracy against latency, FLOPs and memory",
            "Higher and further left is better; the front joins the models not dominated.",
            fig,
        )
    )
    return sec, []
