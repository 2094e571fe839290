"""The fidelity section: each trained model's attention against exact softmax attention per
layer (headline: output error of the attention, a residual branch apart; TV distance only for
distributions), Nystrom's pseudo-inverse explained, Performer's error against its features."""

from __future__ import annotations

import math
import statistics
from typing import Any

from effbench.report.content import FidelityRow, ReportData
from effbench.report.document import Part, Section
from effbench.report.figures import Plot, legend, new_figure, plot
from effbench.report.format import num

COLUMNS = [
    "model", "mean attention error", "worst layer", "map", "mean TV distance",
    "max |row sum − 1|", "residual branch size", "layer output with branch",
    "‖AZ − I‖ / ‖I‖", "‖AZA − A‖ / ‖A‖", "images",
]  # fmt: skip
# The TV column where there is none: for a mechanism without a map, and one with a map that is
# not a distribution.
NO_TV = {False: "— (no map)", True: "— (not a distribution)"}
# Rows further than this from summing to 1 are called so in the table's "map" column.
ROWS_OFF = 1e-3
TEXT = (
    "For every layer of each trained model, on its own Q, K and V from test images: the "
    "relative output error of its attention against exact softmax attention, "
    "‖attention − softmax‖ / ‖softmax‖ (the attention error), the headline for every "
    "mechanism (exact mechanisms read ~0). The total-variation distance between attention "
    "rows (0: identical, 1: disjoint) is shown only where the maps are distributions over "
    "the keys (non-negative rows that sum to 1); for a signed map, or rows that do not sum "
    "to 1, it has no meaning. Where a layer adds a branch that bypasses its map (Nystrom's "
    "depthwise convolution of V), the attention error is that of the attention part alone "
    "(map·V against softmax), and the branch's size (‖branch‖ / ‖softmax output‖) and the "
    "whole layer's output error are given apart: the branch is part of the model, not an "
    "approximation error of its attention."
)
NOT_STOCHASTIC = (
    "Maps that are not distributions over the keys (what these layers apply to V can have "
    "negative weights or rows that do not sum to 1, so no TV distance is given and their "
    "attention maps below read differently): {models}. Their headline is the attention error."
)
PRE_SIGNED = (
    "The analyze records of {models} predate signed maps: where a mechanism's map is not a "
    "distribution, their TV distance describes a row-normalised stand-in, not what the layer "
    "applies. Rerun `effbench analyze` for figures of the maps themselves."
)
NO_MAP = (
    "No per-head map (the mechanism declares none, so nothing it applies to V can be drawn "
    "or compared row by row; its attention error is that of its whole output): {models}."
)
PINV = (
    "Nystrom: ‖AZ − I‖ / ‖I‖ measures how far the iterative pseudo-inverse Z of the landmark "
    "kernel A is from inverting it; with the paper's initialisation and 6 iterations values "
    "near 0.9 are expected and harmless: A is nearly singular on peaked attention, and a "
    "fully converged or exact pseudo-inverse makes the output worse, not better. What the "
    "approximation F·Z·B needs is Z acting as a generalised inverse, A·Z·A ≈ A: the "
    "‖AZA − A‖ / ‖A‖ column, small when it does."
)


def headline(layer: dict[str, Any]) -> float:
    """A layer's approximation error: its attention part's where a branch bypasses the map,
    else its whole output's."""
    part = layer.get("attention_error")
    return layer["rel_output_error"] if part is None else part


def mean_headline(f: FidelityRow) -> float:
    """The mean of `headline` over the model's layers."""
    return statistics.fmean(headline(x) for x in f.record["layers"])


def section(data: ReportData) -> Part:
    rows = data.fidelity
    if not rows:
        return None, []
    sec = Section("fidelity", "How far from exact attention")
    sec.text(TEXT)
    signed = [f.model for f in rows if not f.row_stochastic and has_map(f)]
    if signed:
        sec.text(NOT_STOCHASTIC.format(models=", ".join(signed)))
    mapless = [f.model for f in rows if not has_map(f)]
    if mapless:
        sec.text(NO_MAP.format(models=", ".join(mapless)))
    old = [f.model for f in rows if "map_row_stochastic" not in f.record and has_map(f)]
    if old:
        sec.text(PRE_SIGNED.format(models=", ".join(old)))
    if any(f.pinv_residual is not None for f in rows):
        sec.text(PINV)
    sec.table(COLUMNS, [_cells(f) for f in rows])
    sec.figure(_layers_plot(data, rows))
    curves = [f for f in rows if f.record.get("performer_curve")]
    if curves:
        sec.figure(_performer_plot(data, curves))
    return sec, _summary(data, rows, signed, mapless)


def has_map(f: FidelityRow) -> bool:
    """Whether the model's mechanism has a per-head map (records from before the field do)."""
    return f.record.get("has_map", True) is not False


def _summary(
    data: ReportData, rows: list[FidelityRow], signed: list[str], mapless: list[str]
) -> list[str]:
    approx = sorted(
        (f for f in rows if not data.exact(f.model)),
        key=lambda f: math.inf if math.isnan(mean_headline(f)) else mean_headline(f),
    )
    if not approx:
        return []
    lines = [
        "Distance from exact attention (mean relative output error of the attention over "
        "layers): " + ", ".join(f"{f.model} {num(mean_headline(f))}" for f in approx) + "."
    ]
    if signed:
        lines.append(
            "Not distributions over the keys (signed maps or rows not summing to 1, compared "
            "by output error only): " + ", ".join(signed) + "."
        )
    if mapless:
        lines.append("No per-head map (output error only): " + ", ".join(mapless) + ".")
    return lines


def _cells(f: FidelityRow) -> list[str]:
    if not has_map(f):
        kind = "no map"
    elif f.row_stochastic:
        kind = "distribution"
    elif (f.min_weight or 0) < 0:
        kind = "signed"
    else:  # not a distribution by construction, though these maps may be close to one
        kind = "rows ≠ 1" if (f.max_row_dev or 0) > ROWS_OFF else "not guaranteed"
    branch = f.skip_rel_norm is not None
    return [
        f.model,
        num(mean_headline(f)),
        num(max(headline(x) for x in f.record["layers"])),
        kind,
        num(f.mean_tv) if f.row_stochastic else NO_TV[has_map(f)],
        num(f.max_row_dev),
        num(f.skip_rel_norm),
        num(f.mean_error) if branch else "-",
        num(f.pinv_residual),
        num(f.ginv_residual),
        str(f.images),
    ]


def _layers_plot(data: ReportData, rows: list[FidelityRow]) -> Plot:
    fig, axes = new_figure(2, width=4.6)
    for f in rows:
        layers = f.record["layers"]
        xs = [x["layer"] + 1 for x in layers]
        series = [[headline(x) for x in layers]]
        if f.row_stochastic:  # no TV distance for maps that are not distributions
            series.append([x.get("tv_mean") for x in layers])
        for ax, ys in zip(axes, series, strict=False):
            ax.plot(xs, ys, **data.style(f.model), label=data.label(f.model))
    for ax, label in zip(axes, ("relative output error", "mean TV distance"), strict=True):
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    legend(axes[0], fontsize=8)
    return plot(
        "fidelity-layers",
        "Fidelity per layer",
        "Relative output error of the attention (every mechanism; a residual branch left "
        "out) and total-variation distance (mechanisms whose maps are distributions) "
        "against exact attention, per layer.",
        fig,
    )


def _performer_plot(data: ReportData, curves: list[FidelityRow]) -> Plot:
    """Error against random feature count, with a 1/√m guide from each curve's first point."""
    fig, (ax,) = new_figure(1, width=5.5)
    for f in curves:
        pts = [(c["features"], c["rel_error"]) for c in f.record["performer_curve"]]
        ax.plot(*zip(*pts, strict=True), **data.style(f.model), label=data.label(f.model))
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
