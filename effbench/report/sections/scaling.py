"""The scaling section: whole-model time and memory against tokens for each scale series,
with crossovers against the baseline, log-log slopes, failed and contended points; summary:
the fastest model at the smallest and largest resolution and the inference crossovers."""

from __future__ import annotations

from typing import Any

from effbench.config.attention import BASELINE_KIND
from effbench.crossover import (
    METRICS,
    at_max_batch,
    baseline_label,
    is_contended,
    metrics_for,
    summarize,
    unresolved_at,
)
from effbench.ratios import fastest
from effbench.report.content import Record, ReportData, Series, env_key
from effbench.report.document import Part, Section
from effbench.report.figures import Plot, legend, new_figure, plot, slug
from effbench.report.format import crossover_words, evidence, num, px_list

Found = dict[str, dict[str, Any]]  # model -> crossover.summarize()'s entry


def section(data: ReportData) -> Part:
    if not data.series:
        return None, []
    sec = Section("scaling", "Scaling with resolution")
    sec.text(
        "Whole models from `effbench scale`, against the number of tokens (log-log). Grey "
        "lines show N and N² growth from the baseline's first point; a star marks where a "
        f"model overtakes `{BASELINE_KIND}` for good (its crossover). A time verdict is the "
        "ratio to the baseline at the same point from repeats taken back to back in each "
        "round, stated only where its 95 % interval (t over the rounds' log ratios) excludes "
        "1, else 'not resolved'. Crossover and slope tables follow each figure; failed points "
        "are listed, not dropped."
    )
    summary: list[str] = []
    for s in data.series:
        lines = _one_series(sec, data, s)
        instead = _compiled_sibling(s, data.series)
        if instead is None:
            summary += lines
        else:
            execution = env_key(instead.points[0])[-1]
            summary.append(
                f"{s.env}'s eager figures are launch-bound at "
                f"{px_list(sorted({r['image_size'] for r in s.points if r.get('launch_bound')}))}"
                f" (patch {s.patch}, batch {s.batch}, {s.precision}, mode {s.mode}); the verdicts "
                f"below come from the same device timed {execution} ({instead.env})."
            )
    return sec, summary


def _launch_bound(s: Series) -> int:
    return sum(bool(r.get("launch_bound")) for r in s.points)


def _compiled_sibling(s: Series, series: list[Series]) -> Series | None:
    """For an eager series with launch-bound points: the series of the same device, torch,
    threads, patch, batch, precision and mode timed compiled (or graph-replayed) with the
    fewest launch-bound points, when it has fewer; its verdicts are the ones to read."""
    if not s.points or not _launch_bound(s):
        return None
    key = env_key(s.points[0])
    if key[-1] != "eager":
        return None
    same = [
        o
        for o in series
        if o is not s
        and o.points
        and env_key(o.points[0])[:-1] == key[:-1]
        and env_key(o.points[0])[-1] != "eager"
        and (o.patch, o.batch, o.precision, o.mode) == (s.patch, s.batch, s.precision, s.mode)
    ]
    best = min(same, key=_launch_bound, default=None)
    return best if best is not None and _launch_bound(best) < _launch_bound(s) else None


def _one_series(sec: Section, data: ReportData, s: Series) -> list[str]:
    """The figure and tables of one series; returns its summary lines."""
    points = s.points
    bases = data.baselines(points)
    base = baseline_label(bases)
    found = summarize(points, baseline=bases, mode=s.mode)
    most = at_max_batch(points)
    metrics = metrics_for(s.mode, max_batch=most)
    batch = f"the largest batch under {_limit(points)}" if most else f"batch {s.batch}"
    where = f"{s.env}: patch {s.patch}, {batch}, {s.precision}, mode {s.mode}"
    stem = slug("scaling", s.env, s.patch, s.batch, s.precision, s.mode)
    sec.figure(_scaling_plot(data, points, found, metrics, where=where, stem=stem))
    models = data.order(r["model"] for r in points)
    sec.table(
        ["model", *(m.replace("_", " ") for m in metrics)],
        [
            [m, *(_crossover_cell(found[m], metric, m in bases) for metric in metrics)]
            for m in models
        ],
        title=f"Crossover against {base}, {where}",
    )
    if most:
        _throughput_table(sec, data, points, where)
    failed = [r for r in points if r.get("status") != "ok"]
    if failed:
        sec.table(
            ["model", "px", "tokens", "status", "error"],
            [_failed_cells(r) for r in failed],
            title=f"Failed points, {where}",
        )
    _energy_table(sec, data, points, where)
    contended = [r for r in points if any(is_contended(r, m) for m in metrics)]
    if contended:
        sec.table(
            ["model", "px", "tokens", "phase", "evidence"],
            [
                [r["model"], str(r["image_size"]), str(r["seq_len"]), *evidence(r)]
                for r in contended
            ],
            title=f"Contended points (timed while other work held the CPU), {where}",
        )
    bound = [r for r in points if r.get("launch_bound")]
    if bound:
        sizes = px_list(sorted({r["image_size"] for r in bound}))
        sec.text(
            f"{len(bound)} of these points are launch-bound ({sizes}): "
            "the GPU's kernels fill less than half of the timed forward, so the time measures "
            "Python, dispatch and kernel launches more than the mechanism. Compare compiled "
            "(`--compile`, `reduce-overhead` for CUDA graphs) figures there."
        )
    summary = _fastest(points, where, per_image=most)
    if base:
        summary.append(
            _crossovers_line(found, models, bases, where, metric=metrics[0])
            + (" Some of these figures are launch-bound." if bound else "")
        )
    if base and most:
        summary += _headroom_line(points, bases, where)
    return summary


def _headroom_line(points: list[Record], bases: list[str], where: str) -> list[str]:
    """Under `--batch max`, at the largest resolution: whose memory savings buy a larger
    batch than the baseline's, and whose do not (a throughput lead at an equal batch comes
    from less compute per image, not from memory)."""
    top = max(r["image_size"] for r in points)
    batch = {
        r["model"]: b["batch"]
        for r in points
        if r["image_size"] == top and (b := (r.get("max_batch") or {}).get("infer"))
    }
    base = max((batch[b] for b in bases if b in batch), default=None)
    if base is None:
        return []
    groups = {
        "larger": [m for m, b in batch.items() if m not in bases and b > base],
        "the same": [m for m, b in batch.items() if m not in bases and b == base],
        "smaller": [m for m, b in batch.items() if m not in bases and b < base],
    }
    said = "; ".join(
        f"{what} for {', '.join(f'{m} ({batch[m]:,})' for m in ms)}"
        for what, ms in groups.items()
        if ms
    )
    return [
        f"Largest inference batch at {top} px ({where}): {base:,} for {baseline_label(bases)}; "
        f"{said}. Where the batch is the same, a lead in throughput comes from less compute "
        "per image, not from memory."
    ]


def _energy_table(sec: Section, data: ReportData, points: list[Record], where: str) -> None:
    """Energy per image of inference and per training step, with mean watts, where NVML
    measured any (`effbench.measure.energy`); nothing where none was."""
    fields = ("infer_joules_per_image", "infer_watts", "train_joules_per_step", "train_watts")
    measured = [r for r in points if any(r.get(f) is not None for f in fields)]
    if not measured:
        return
    order = {m: i for i, m in enumerate(data.order(r["model"] for r in measured))}
    rows = sorted(measured, key=lambda r: (order[r["model"]], r["image_size"]))
    sec.table(
        ["model", "px", "tokens", "J/image (infer)", "W (infer)", "J/step (train)", "W (train)"],
        [
            [r["model"], str(r["image_size"]), str(r["seq_len"]), *(num(r.get(f)) for f in fields)]
            for r in rows
        ],
        title=f"Energy (NVML's counter, at least 2 s of calls per figure), {where}",
    )


def _limit(points: list[Record]) -> str:
    """The memory limit a `--batch max` series searched under, as words."""
    limits = {b["limit_mib"] for r in points for b in (r.get("max_batch") or {}).values() if b}
    if not limits:
        return "the memory limit"
    return " to ".join(f"{v:,.0f} MiB" for v in sorted({min(limits), max(limits)}))


def _throughput_table(sec: Section, data: ReportData, points: list[Record], where: str) -> None:
    """Per model and resolution under `--batch max`: the batch found, images per second, and
    the peak that batch reached, per phase."""
    order = {m: i for i, m in enumerate(data.order(r["model"] for r in points))}
    rates = {"infer": "images_per_s", "train": "train_images_per_s"}
    phases = [p for p in rates if any(p in (r.get("max_batch") or {}) for r in points)]
    rows = []
    for r in sorted(points, key=lambda r: (order[r["model"]], r["image_size"])):
        found = r.get("max_batch") or {}
        cells = [r["model"], str(r["image_size"]), str(r["seq_len"])]
        for phase in phases:
            b = found.get(phase)
            cells += [
                "-" if b is None else f"{b['batch']:,}",
                num(r.get(rates[phase])),
                "-" if b is None else num(b["peak_mib"]),
            ]
        rows.append(cells)
    heads = ["model", "px", "tokens"]
    for phase in phases:
        heads += [f"batch ({phase})", f"images/s ({phase})", f"peak MiB ({phase})"]
    sec.table(heads, rows, title=f"Throughput at the largest batch that fits, {where}")


def _failed_cells(r: Record) -> list[str]:
    err = (r.get("error") or "")[:160]
    return [r["model"], str(r["image_size"]), str(r["seq_len"]), r["status"], err]


def _crossover_cell(found: dict[str, Any], metric: str, is_base: bool) -> str:
    c = found["crossovers"].get(metric)
    cross = "baseline" if is_base else crossover_words(found, metric)
    if c is not None and c["at_start"]:
        cross += ", from the smallest"
    shaky = found.get("contended", {}).get(metric)
    rests = f"; rests on contended figures at {px_list(shaky)}" if shaky else ""
    return f"{cross}; slope {num(found['slopes'].get(metric))}{rests}"


def _crossovers_line(
    found: Found, models: list[str], bases: list[str], where: str, *, metric: str
) -> str:
    """Where each model overtakes the baseline in `metric` (the first of the series: time,
    or throughput at the largest batch), one sentence."""
    said = [
        f"{m} {crossover_words(found[m], metric)}"
        + (
            f" (rests on contended figures at {px_list(shaky)})"
            if (shaky := found[m].get("contended", {}).get(metric))
            else ""
        )
        for m in models
        if m not in bases
        and (found[m]["crossovers"].get(metric) or unresolved_at(found[m], metric))
    ]
    what = (
        "Throughput crossovers (time per image at each model's largest batch)"
        if metric.endswith("throughput")
        else f"{metric.split('_')[0].capitalize()} crossovers"
    )
    return (
        f"{what} against {baseline_label(bases)} ({where}; a verdict only where "
        "the paired ratio's 95 % interval excludes 1): "
        + ("; ".join(said) if said else "none in range")
        + "."
    )


def _fastest(points: list[Record], where: str, *, per_image: bool = False) -> list[str]:
    """The fastest model at the smallest and largest resolution, from figures that were
    not contended (those are left out, and counted): named only where its paired ratio to
    every other model is resolved (Holm over them, `ratios.fastest`). `per_image`: by time
    per image at each model's own largest batch (`--batch max`)."""
    field_, unit = ("infer_image_ms", "ms an image") if per_image else ("infer_ms", "ms a batch")
    sizes = sorted({r["image_size"] for r in points})
    parts = []
    for size in (sizes[0], sizes[-1]) if len(sizes) > 1 else sizes:
        timed = [r for r in points if r["image_size"] == size and r.get(field_) is not None]
        ok = [r for r in timed if not is_contended(r, "infer_time")]
        left_out = len(timed) - len(ok)
        note = f", {left_out} contended figure(s) left out" if left_out else ""
        found = fastest({r["model"]: r for r in ok}, field_)
        if found is not None:
            best = next(r for r in ok if r["model"] == found.model)
            if any(r.get("launch_bound") for r in ok):
                note += "; rests on launch-bound figures (GPU kernels under half the time)"
            ms = f"{num(best[field_])} {unit}" + (
                "" if found.paired else ", medians without paired rounds"
            )
            parts.append(
                f"at {size} px {found.model} ({ms}{note})"
                if found.resolved
                else f"at {size} px not resolved between {found.model} ({ms}) and "
                f"{', '.join(found.close)}{note}"
            )
        elif left_out:
            parts.append(f"at {size} px not decided (every figure there is contended)")
    return [f"Fastest inference ({where}): " + "; ".join(parts) + "."] if parts else []


# ---------------------------------------------------------------------------- the figure


def _scaling_plot(
    data: ReportData,
    points: list[Record],
    found: Found,
    metrics: list[str],
    *,
    where: str,
    stem: str,
) -> Plot:
    fig, axes = new_figure(len(metrics), width=4.4, height=3.6)
    bases = data.baselines(points)
    contended_labelled = False
    for ax, metric in zip(axes, metrics, strict=True):
        field_ = METRICS[metric]
        for m in data.order(r["model"] for r in points):
            contended_labelled |= _draw_model(
                ax, data, points, found, m, metric=metric, labelled=contended_labelled
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ref = sorted(
            (r["seq_len"], r[field_]) for r in points if r["model"] in bases and r.get(field_)
        )
        if ref:
            _guides(ax, ref[0], sorted({r["seq_len"] for r in points}))
        ax.set_xlabel("tokens N")
        unit = {"memory": "MiB", "throughput": "ms per image"}
        ax.set_ylabel(unit.get(metric.rsplit("_", 1)[1], "ms"))
        ax.set_title(metric.replace("_", " "), fontsize=10)
    legend(axes[0], fontsize=7, ncol=2)
    return plot(
        stem,
        f"Scaling, {where}",
        (
            "Time per image at each model's largest batch"
            if metrics[0].endswith("throughput")
            else "Time and peak memory"
        )
        + f" against tokens, {where}"
        + (
            "; × marks a figure timed while other work held the CPU (contended)."
            if contended_labelled
            else "."
        ),
        fig,
    )


def _draw_model(
    ax: Any,
    data: ReportData,
    points: list[Record],
    found: Found,
    m: str,
    *,
    metric: str,
    labelled: bool,
) -> bool:
    """One model's line, its contended points (×) and its crossover (★); returns whether
    it drew contended points."""
    field_ = METRICS[metric]
    mine = sorted((r["seq_len"], r[field_]) for r in points if r["model"] == m and r.get(field_))
    if not mine:
        return False
    ax.plot(*zip(*mine, strict=True), ms=3, **data.style(m), label=data.label(m))
    shaky = [
        (r["seq_len"], r[field_])
        for r in points
        if r["model"] == m and r.get(field_) and is_contended(r, metric)
    ]
    if shaky:
        ax.scatter(
            *zip(*shaky, strict=True),
            marker="x",
            s=50,
            color="black",
            zorder=5,
            label="contended" if not labelled else None,
        )
    c = found[m]["crossovers"].get(metric)
    y = dict(mine).get(c["tokens"]) if c is not None else None
    if c is not None and y is not None:
        ax.scatter(
            [c["tokens"]],
            [y],
            marker="*",
            s=140,
            color=data.colour(m),
            zorder=4,
            edgecolors="black",
            linewidths=0.5,
        )
    return bool(shaky)


def _guides(ax: Any, first: tuple[Any, Any], xs: list[Any]) -> None:
    """Grey N and N² lines from the baseline's first point, within the data's y range."""
    ylim = ax.get_ylim()  # the data's range: the guides must not stretch it
    n0, y0 = first
    ax.plot(xs, [y0 * x / n0 for x in xs], color="#aaaaaa", ls=":", lw=1, label="∝ N")
    ax.plot(xs, [y0 * (x / n0) ** 2 for x in xs], color="#aaaaaa", ls="--", lw=1, label="∝ N²")
    ax.set_ylim(*ylim)
