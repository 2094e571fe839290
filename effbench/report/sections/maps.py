"""The maps section: each trained model's CLS attention over the patch grid for fixed test
images, per layer and as rollout, beside exact softmax attention from the same weights; maps
that are not distributions (signed, rows not summing to 1) on their own, diverging scale."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from effbench.report.content import Record, ReportData
from effbench.report.document import Part, Section
from effbench.report.figures import Plot, blank_figure, literal, plot, slug

Scale = dict[str, Any]  # imshow's cmap, vmin and vmax


def section(data: ReportData) -> Part:
    if not data.analyzed:
        return None, []
    sec = Section("maps", "Attention maps")
    sec.text(
        "The CLS token's attention over the patch grid (mean over heads) for fixed test "
        "images: for each image, the mechanism's effective map, what its layer applies to V "
        "(upper row), and exact softmax attention computed from the same trained weights "
        "(lower row), per layer and as rollout across layers. Where the mechanism's maps are "
        "distributions over the keys, each pair shares one colour scale from 0. Where they "
        "are not (see the fidelity section), the two rows are not comparable weight for "
        "weight: the mechanism's map gets its own scale, diverging around 0 (blue negative, "
        "red positive) when it has negative weights. Rollout divides each row by its sum of "
        "absolute weights: its sum, for a distribution."
    )
    mapless = [r["model"] for r in data.analyzed if r.get("has_map", True) is False]
    if mapless:
        sec.text(
            f"No map: {', '.join(mapless)} (the mechanism has no per-head map of what it "
            "applies to V; its output fidelity is in the section above)."
        )
    for r in data.analyzed:
        if r.get("has_map", True) is not False:
            sec.figure(_maps_plot(r))
    return sec, []


def _scale(values: list[float], *, signed: bool) -> Scale:
    """A colour scale for these weights: from 0 to the largest, or diverging around 0 when
    `signed`."""
    top = max(abs(v) for v in values) or 1.0
    if signed:
        return {"cmap": "RdBu_r", "vmin": -top, "vmax": top}
    return {"cmap": "magma", "vmin": 0, "vmax": top}


def panel_scales(r: Record, mine: list[Any], exact: list[Any]) -> tuple[Scale, Scale]:
    """Colour scales of a mechanism's (gh, gw) map and the exact one beside it: one shared
    sequential scale where the record's maps are distributions; else each its own, the
    mechanism's diverging where it has negative weights."""
    a = [v for row in mine for v in row]
    b = [v for row in exact for v in row]
    if r.get("map_row_stochastic", True) is not False and min(a) >= 0:
        shared = _scale(a + b, signed=False)
        return shared, shared
    return _scale(a, signed=min(a) < 0), _scale(b, signed=False)


def _maps_plot(r: Record) -> Plot:
    images = r["images"]
    cols = len(r["cls_maps"]) + 2
    fig = blank_figure(1.25 * cols, 2.5 * len(images) + 0.3)
    grid = fig.add_gridspec(2 * len(images), cols)
    classes = r.get("classes") or []

    def name(i: int) -> str:
        return literal(classes[i]) if 0 <= i < len(classes) else str(i)

    for i, img in enumerate(images):
        ax = fig.add_subplot(grid[2 * i : 2 * i + 2, 0])
        ax.imshow(img)
        ax.set_title(f"{name(r['labels'][i])}\n→ {name(r['predictions'][i])}", fontsize=7)
        ax.axis("off")
        for row, (maps, roll, tag) in enumerate(
            (
                (r["cls_maps"], r["rollout"], literal(r["model"])),
                (r["cls_maps_exact"], r["rollout_exact"], "exact"),
            )
        ):
            _map_row(fig, grid, r, i=i, row=row, maps=maps, roll=roll, tag=tag)
    gh, gw = r["grid"]
    title = f"{r['model']}: CLS attention, {r['image_size']} px, {gh}×{gw} patches"
    return plot(
        slug("maps", r["model"]), title, title + "; label → prediction above each image.", fig
    )


def _map_row(
    fig: Figure,
    grid: Any,
    r: Record,
    *,
    i: int,
    row: int,
    maps: list[Any],
    roll: list[Any],
    tag: str,
) -> None:
    """Image `i`'s maps of every layer and its rollout, in grid row 2i + `row`."""
    layers = len(r["cls_maps"])
    for layer in range(layers):
        ax = fig.add_subplot(grid[2 * i + row, layer + 1])
        scales = panel_scales(r, r["cls_maps"][layer][i], r["cls_maps_exact"][layer][i])
        ax.imshow(maps[layer][i], **scales[row])
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0 and row == 0:
            ax.set_title(f"layer {layer + 1}", fontsize=7)
        if layer == 0:
            ax.set_ylabel(tag, fontsize=7)
    ax = fig.add_subplot(grid[2 * i + row, layers + 1])
    ax.imshow(roll[i], **panel_scales(r, r["rollout"][i], r["rollout_exact"][i])[row])
    ax.set_xticks([])
    ax.set_yticks([])
    if i == 0 and row == 0:
        ax.set_title("rollout", fontsize=7)
