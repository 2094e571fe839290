"""The resolution section: trained models evaluated at other input sizes
(`effbench scale --checkpoint`), accuracy against resolution."""

from __future__ import annotations

from effbench.report.content import ReportData
from effbench.report.document import Part, Section
from effbench.report.figures import legend, new_figure, plot
from effbench.report.format import pct


def section(data: ReportData) -> Part:
    recs = [r for r in data.kind("scale") if r.get("checkpoint")]
    if not recs:
        return None, []
    sec = Section("resolution", "Accuracy at other resolutions")
    sec.text(
        "A trained model evaluated at other input sizes by `effbench scale --checkpoint` "
        "(position embedding and Linformer projections interpolated). The dotted line marks "
        "the trained resolution."
    )
    fig, (ax,) = new_figure(1, width=6.5, height=3.8)
    rows = []
    for m in data.order(r["model"] for r in recs):
        mine = sorted(((r["image_size"], r) for r in recs if r["model"] == m), key=lambda p: p[0])
        pts = [(s, 100 * r["test_top1"]) for s, r in mine if r.get("test_top1") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), **data.style(m), label=data.label(m))
        trained = mine[0][1].get("trained_image_size")
        if trained:
            ax.axvline(trained, color=data.colour(m), ls=":", lw=1)
        rows.append(
            [
                m,
                str(trained),
                *(
                    f"{s} px: "
                    + (pct(r.get("test_top1")) if r.get("status") == "ok" else r["status"])
                    for s, r in mine
                ),
            ]
        )
    ax.set_xlabel("input side, px")
    ax.set_ylabel("test top-1 %")
    legend(ax, fontsize=8)
    sec.figure(
        plot(
            "accuracy-resolution",
            "Accuracy against resolution",
            "Test top-1 at each evaluated resolution.",
            fig,
        )
    )
    width = max(len(r) for r in rows)
    sec.table(
        ["model", "trained px", *(["top-1 %"] * (width - 2))],
        [r + [""] * (width - len(r)) for r in rows],
    )
    return sec, []
