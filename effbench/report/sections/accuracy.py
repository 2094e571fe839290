"""The accuracy section: test accuracy with its 95 % interval and its paired difference from the
baseline, beside parameters, FLOPs, latency, training time and memory, one row per model,
budget and environment; summary: the best model of each comparison and those tied with it."""

from __future__ import annotations

from collections.abc import Sequence

from effbench import convergence, stats
from effbench.report.comparison import tied_with_best
from effbench.report.content import ModelRow, ReportData
from effbench.report.document import Part, Section
from effbench.report.format import contended_mark, mean_std, num

COLUMNS = [
    "model", "budget", "seeds ok", "top-1 %", "95 % CI", "Δ vs baseline (95 % CI)", "p",
    "p (Holm)", "P(beats)", "top-5 %", "params (M)", "GFLOPs / image", "latency ms",
    "train s / epoch", "train peak MiB", "env",
]  # fmt: skip
TEXT = (
    "Test accuracy of the weights with the best validation accuracy: mean ± standard "
    "deviation over seeds, and its 95 % interval (one seed: Wilson, over test images only, "
    "so run-to-run spread is not in it; several: a two-level bootstrap that resamples the "
    "seeds and the test images, with a t interval, so that it holds a new seed's spread). "
    "Models are compared only with models of the same dataset, resolution and "
    "budget (`80ep`: equal epochs; `5min`: equal training time; `…flop`: equal training "
    "compute). Δ is the accuracy difference from the baseline model ({baseline}) on the same "
    "test images, in points, with its 95 % interval: one seed, a paired bootstrap over "
    "images and McNemar's exact test for p; several, the two-level bootstrap of the "
    "difference (seed s of both from the same start), its t distribution giving p; P(beats) "
    "is the chance the model is the more accurate under that distribution; p (Holm) is p "
    "adjusted by Holm's method over every model compared with that baseline, and the "
    "summary's verdicts use p Holm-adjusted over the tests behind each sentence. Runs trained "
    "before effbench kept per-image predictions have an interval from their accuracy and test-set "
    "size, and no paired figures. A run that ended `nan` or `oom` is counted in the seeds "
    "column and named there. Latency is one inference batch of `effbench scale` at the "
    "trained resolution; training time is per epoch; peak memory is that of the run itself."
)
LEARNING = (
    " † marks a model with runs still learning when their budget ended ({rule}): its "
    "accuracy is what it reached within the budget, not what it reaches."
)
CONTENDED = (
    " * marks a figure timed while other work held the CPU (contended: a latency, "
    "or a training time that includes such epochs), so slower than the machine "
    "can do."
)


def _paired_cells(r: ModelRow, adjusted: float | None) -> list[str]:
    p = r.stats.paired if r.stats else None
    if p is None:
        return ["baseline" if _is_baseline(r) else "—", "—", "—", "—"]
    d = p.diff
    return [
        f"{100 * d.estimate:+.1f} ({100 * d.low:+.1f} to {100 * d.high:+.1f})",
        f"{p.p_value:.2g}",
        "—" if adjusted is None else f"{adjusted:.2g}",
        f"{p.p_beats:.2f}",
    ]


def holm_adjusted(rows: Sequence[ModelRow]) -> list[float | None]:
    """Each row's paired p against its baseline, Holm-adjusted over the rows of its
    comparison that were paired with that baseline (None for rows without a paired test)."""
    out: list[float | None] = [None] * len(rows)
    families: dict[tuple[object, ...], list[int]] = {}
    for i, r in enumerate(rows):
        if r.stats is not None and r.stats.paired is not None:
            families.setdefault((*r.comparison, r.env, r.stats.baseline), []).append(i)
    for members in families.values():
        ps = [rows[i].stats.paired.p_value for i in members]  # type: ignore[union-attr]
        for i, q in zip(members, stats.holm(ps), strict=True):
            out[i] = q
    return out


def _is_baseline(r: ModelRow) -> bool:
    return r.stats is not None and r.stats.paired is None and r.stats.answers is not None


def _cells(r: ModelRow, data: ReportData, adjusted: float | None) -> list[str]:
    failed = [f"seed {x['seed']}: {x['status']}" for x in r.runs if x not in r.ok]
    lat = r.latency
    ci = r.stats.ci if r.stats else None
    return [
        r.model + (" †" if r.learning else ""),
        r.budget or "—",
        f"{len(r.ok)}/{len(r.runs)}" + (f" ({'; '.join(failed)})" if failed else ""),
        mean_std(r.top1),
        f"{100 * ci.low:.1f}–{100 * ci.high:.1f}" if ci else "—",
        *_paired_cells(r, adjusted),
        mean_std(r.top5),
        num(r.params and r.params / 1e6),
        num(r.flops and r.flops / 1e9),
        num(lat and lat["infer_ms"]) + contended_mark(lat),
        num(r.epoch_s) + ("*" if r.epochs_contended else ""),
        num(r.peak_mib),
        r.env + (f" / {data.env(lat)}" if lat else ""),
    ]


def _verdict(rows: Sequence[ModelRow]) -> str | None:
    """The summary line of one comparison: its best model and the models tied with it."""
    entries = [(r.model, r.stats) for r in rows if r.stats is not None]
    found = tied_with_best(entries)
    if found is None:
        return None
    best, tied, how = found
    row = next(r for r in rows if r.model == best)
    ci = row.stats.ci if row.stats else None
    where = f"{row.dataset}, {row.image_size} px, budget {row.budget or '?'}"
    head = f"Most accurate ({where}): {best} with {mean_std(row.top1)} % test top-1" + (
        f" (95 % CI {100 * ci.low:.1f}–{100 * ci.high:.1f}, {len(row.ok)} seed(s))" if ci else ""
    )
    if len(entries) == 1:
        return head + "; no other model was trained under this budget."
    if tied:
        return (
            f"{head}; statistically tied with it ({how}, p ≥ {stats.ALPHA:.2f}): "
            f"{', '.join(tied)}. These models cannot be ranked on this test set."
        )
    return f"{head}; ahead of every other model ({how}, p < {stats.ALPHA:.2f})."


def learning_line(rows: Sequence[ModelRow]) -> str | None:
    """What a ranking of runs that were still learning measures, for one comparison."""
    still = [r.model for r in rows if r.learning]
    if not still:
        return None
    r = rows[0]
    return (
        f"Still learning when the budget ended ({r.dataset}, {r.image_size} px, budget "
        f"{r.budget or '?'}; {convergence.RULE}): {', '.join(still)}. A ranking of these runs "
        "is one of learning speed within the budget, not of what each mechanism reaches."
    )


def _resolution(rows: Sequence[ModelRow]) -> str | None:
    """The test set's resolution: the standard error of an accuracy at its size."""
    sized = [r for r in rows if r.stats and r.stats.n_test]
    if not sized:
        return None
    r = max(sized, key=lambda r: r.stats.ci.estimate if r.stats else 0)
    assert r.stats is not None and r.stats.n_test
    acc, n = r.stats.ci.estimate, r.stats.n_test
    se = stats.standard_error(acc, n)
    return (
        f"Test-set resolution: {n} images; one seed's accuracy near {100 * acc:.0f} % has a "
        f"standard error of {100 * se:.1f} points (95 % interval about ±{196 * se:.1f})."
    )


def section(data: ReportData) -> Part:
    rows = data.rows
    if not rows:
        return None, []
    sec = Section("accuracy", "Accuracy and cost")
    baseline = data.baseline_model or data.baseline(r.runs[0] for r in rows) or "none"
    contended = any(r.epochs_contended or contended_mark(r.latency) for r in rows)
    learning = LEARNING.format(rule=convergence.RULE) if any(r.learning for r in rows) else ""
    sec.text(TEXT.format(baseline=baseline) + (CONTENDED if contended else "") + learning)
    adjusted = holm_adjusted(rows)
    sec.table(COLUMNS, [_cells(r, data, q) for r, q in zip(rows, adjusted, strict=True)])
    summary = []
    for key in dict.fromkeys(r.comparison for r in rows):
        line = _verdict([r for r in rows if r.comparison == key])
        if line:
            summary.append(line)
    summary += [line for key in dict.fromkeys(r.comparison for r in rows)
                if (line := learning_line([r for r in rows if r.comparison == key]))]  # fmt: skip
    resolution = _resolution(rows)
    unpaired = [f"{r.model}: {r.stats.unpaired}" for r in rows if r.stats and r.stats.unpaired]
    if unpaired:
        summary.append(
            "Unpaired (no per-image predictions, so intervals from the records and z-tests): "
            + "; ".join(unpaired) + "."
        )  # fmt: skip
    return sec, summary + ([resolution] if resolution else [])
