"""The fidelity section: how far each trained model's attention is from exact softmax
attention, per layer (output error for every mechanism; total-variation distance only where the
maps are distributions), a residual branch measured apart, Nystrom's pseudo-inverse explained,
and Performer's error against its feature count; summary: the approximate mechanisms ranked by
their mean relative output error."""

from __future__ import annotations

import math

from effbench.report.data import FidelityRow, ReportData, by_error
from effbench.report.document import Part, Section
from effbench.report.figures import Plot, new_figure, plot
from effbench.report.format import num

COLUMNS = [
    "model", "mean rel. output error", "worst layer", "attention part alone",
    "residual branch size", "mean TV distance", "map", "max |row sum − 1|",
    "‖AZ − I‖ / ‖I‖", "‖AZA − A‖ / ‖A‖", "images",
]  # fmt: skip
TEXT = (
    "For every layer of each trained model, on its own Q, K and V from test images: the "
    "relative output error against exact softmax attention, ‖attend − softmax‖ / ‖softmax‖, "
    "the headline for every mechanism. The total-variation distance between attention rows "
    "(0: identical, 1: disjoint) is shown only where the maps are distributions over the keys "
    "(non-negative rows that sum to 1); for signed maps it has no meaning. Exact mechanisms "
    "should read ~0. Where a layer adds a branch that bypasses its map (Nystrom's depthwise "
    "convolution of V), the error of the attention part alone and the branch's size "
    "(‖branch‖ / ‖softmax output‖) are given apart: the branch is part of the model, not an "
    "approximation error of its attention."
)
NOT_STOCHASTIC = (
    "Maps that are not distributions over the keys (what these layers apply to V has "
    "negative weights or rows that do not sum to 1, so their attention maps below are "
    "signed and read differently): {models}."
)
PINV = (
    "‖AZ − I‖ / ‖I‖ measures how far Nystrom's iterative pseudo-inverse Z of the landmark "
    "kernel A is from inverting it; with the paper's initialisation and 6 iterations values "
    "near 0.9 are usual and harmless (more iterations, or an exact pseudo-inverse, make the "
    "output worse on peaked attention). What the approximation F·Z·B needs is Z acting as a "
    "generalised inverse, A·Z·A ≈ A: the ‖AZA − A‖ / ‖A‖ column."
)


def section(data: ReportData) -> Part:
    rows = data.fidelity
    if not rows:
        return None, []
    sec = Section("fidelity", "How far from exact attention")
    sec.text(TEXT)
    signed = [f.model for f in rows if not f.row_stochastic]
    if signed:
        sec.text(NOT_STOCHASTIC.format(models=", ".join(signed)))
    if any(f.pinv_residual is not None for f in rows):
        sec.text(PINV)
    sec.table(COLUMNS, [_cells(f) for f in rows])
    sec.figure(_layers_plot(data, rows))
    curves = [f for f in rows if f.record.get("performer_curve")]
    if curves:
        sec.figure(_performer_plot(data, curves))
    approx = [f for f in by_error(rows) if not data.exact(f.model)]
    if not approx:
        return sec, []
    return sec, [
        "Distance from exact attention (mean relative output error over layers): "
        + ", ".join(f"{f.model} {num(f.mean_error)}" for f in approx)
        + "."
    ]


def _cells(f: FidelityRow) -> list[str]:
    if f.row_stochastic:
        kind = "distribution"
    else:
        kind = "signed" if (f.min_weight or 0) < 0 else "rows ≠ 1"
    return [
        f.model,
        num(f.mean_error),
        num(f.worst_error),
        num(f.attention_error),
        num(f.skip_rel_norm),
        num(f.mean_tv) if f.row_stochastic else "— (not a distribution)",
        kind,
        num(f.max_row_dev),
        num(f.pinv_residual),
        num(f.ginv_residual),
        str(f.images),
    ]


def _layers_plot(data: ReportData, rows: list[FidelityRow]) -> Plot:
    fig, axes = new_figure(2, width=4.6)
    for f in rows:
        layers = f.record["layers"]
        xs = [x["layer"] + 1 for x in layers]
        for ax, key in zip(axes, ("rel_output_error", "tv_mean"), strict=True):
            if key == "tv_mean" and not f.row_stochastic:
                continue  # no TV distance for signed maps
            ax.plot(
                xs,
                [x.get(key) for x in layers],
                marker="o",
                color=data.colour(f.model),
                label=f.model,
            )
    for ax, label in zip(axes, ("relative output error", "mean TV distance"), strict=True):
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    return plot(
        "fidelity-layers",
        "Fidelity per layer",
        "Relative output error (every mechanism) and total-variation distance (mechanisms "
        "whose maps are distributions) against exact attention, per layer.",
        fig,
    )


def _performer_plot(data: ReportData, curves: list[FidelityRow]) -> Plot:
    """Error against random feature count, with a 1/√m guide from each curve's first point."""
    fig, (ax,) = new_figure(1, width=5.5)
    for f in curves:
        pts = [(c["features"], c["rel_error"]) for c in f.record["performer_curve"]]
        ax.plot(*zip(*pts, strict=True), marker="o", color=data.colour(f.model), label=f.model)
        m0, e0 = pts[0]
        ax.plot(
            [p[0] for p in pts],
            [e0 * math.sqrt(m0 / p[0]) for p in pts],
            color="#aaaaaa",
            ls="--",
            lw=1,
            label="∝ 1/√m",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("random features m")
    ax.set_ylabel("relative output error")
    ax.legend(fontsize=8)
    return plot(
        "performer-features",
        "Performer error against feature count",
        "Mean relative output error of FAVOR+ with fresh features on the trained layers' Q, K, V.",
        fig,
    )
