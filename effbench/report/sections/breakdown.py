"""The breakdown section: inference time split into attention, MLP, norm and the rest, at
each scale series' largest resolution and for one profiled block."""

from __future__ import annotations

from effbench.report.content import Record, ReportData, Series
from effbench.report.document import Block, Part, Section
from effbench.report.figures import PART_COLOURS, Plot, blank_figure, literal, plot, slug
from effbench.report.format import num

PARTS = ("attention", "mlp", "norm", "other")
COLUMNS = [
    "model", "attention ms", "MLP ms", "norm ms", "other ms", "attention share",
    "profiled / timed",
]  # fmt: skip
TEXT = (
    "From `torch.profiler` with the attention, MLP and norm modules labelled: "
    "CPU time on CPU, CUDA kernel time on GPU; `other` is the rest of the call "
    "(embedding, residual additions, head). 'profiled / timed' compares the "
    "profiled call with the timed one: well above 1, the profiler's overhead; "
    "well below 1 on a GPU, a call bound by kernel launches."
)


def section(data: ReportData) -> Part:
    sec = Section("breakdown", "Where the time goes")
    for s in data.series:
        _one_series(sec, data, s)
    profiled = [r for r in data.kind("profile") if r.get("breakdown_ms")]
    if profiled:
        n = max(r["seq_len"] for r in profiled)
        rows = [r for r in profiled if r["seq_len"] == n]
        env = data.env(rows[0])
        sec.figure(
            _parts_plot(
                data,
                rows,
                f"One transformer block by part, {env}: {n} tokens (profile --breakdown)",
                slug("block-breakdown", env, n),
            )
        )
    if not sec.blocks:
        return None, []
    sec.blocks.insert(0, Block("text", text=TEXT))
    return sec, []


def _one_series(sec: Section, data: ReportData, s: Series) -> None:
    with_parts = [r for r in s.points if r.get("breakdown_ms")]
    if not with_parts:
        return
    size = max(r["image_size"] for r in with_parts)
    rows = [r for r in with_parts if r["image_size"] == size]
    where = f"{s.env}: {size} px, patch {s.patch}, batch {s.batch}, {s.precision}"
    source = rows[0].get("breakdown_source", "")
    sec.figure(
        _parts_plot(
            data,
            rows,
            f"Inference time by part, {where} ({source})",
            slug("breakdown", s.env, s.patch, s.batch, s.precision, size),
        )
    )
    order = data.order(x["model"] for x in rows)
    sec.table(
        COLUMNS,
        [_cells(r) for r in sorted(rows, key=lambda r: order.index(r["model"]))],
        title=where,
    )


def _cells(r: Record) -> list[str]:
    parts, step = r["breakdown_ms"], r.get("breakdown_step_ms")
    attention = parts.get("attention")
    return [
        r["model"],
        *(num(parts.get(p)) for p in PARTS),
        f"{100 * attention / step:.0f} %" if step and attention is not None else "-",
        num(step / r["infer_ms"]) if r.get("infer_ms") and step else "-",
    ]


def _parts_plot(data: ReportData, rows: list[Record], title: str, stem: str) -> Plot:
    """Stacked horizontal bars of each model's time by part."""
    models = data.order(r["model"] for r in rows)
    parts = {r["model"]: r["breakdown_ms"] for r in rows}
    fig = blank_figure(7.5, 0.45 * len(models) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    left = [0.0] * len(models)
    ys = range(len(models))  # positions, not categories: names are drawn as they are
    for part, colour in PART_COLOURS.items():
        widths = [parts[m].get(part, 0.0) for m in models]
        ax.barh(ys, widths, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(ys, [literal(m) for m in models])
    ax.invert_yaxis()
    ax.set_xlabel("ms per call")
    ax.legend(fontsize=8, ncol=4, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return plot(stem, title, title + ".", fig)
