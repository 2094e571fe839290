"""How accurate each trained model is and which differences the test set can resolve: each
accuracy row's 95 % interval, its paired difference from the baseline on the same images, and
the models statistically tied with the best of a comparison (`effbench.stats`)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effbench import stats
from effbench.errors import RunError
from effbench.results import PREDICTIONS, load_predictions

Record = dict[str, Any]


@dataclass(frozen=True)
class RowStats:
    """The statistics of one accuracy row (a model over its seeds)."""

    ci: stats.Interval  # of the mean top-1 over seeds
    n_test: int | None
    answers: np.ndarray | None  # (seeds, n) right/wrong per test image, when predictions exist
    paired: stats.Paired | None = None  # against the comparison's baseline
    baseline: str | None = None
    unpaired: str | None = None  # why there are no per-image answers (which file, what)
    seeds: tuple[object, ...] = ()  # the seed of each row of `answers`


def budget_of(final: Record) -> str | None:
    """What the run could spend: its `budget`, else (older records) its epochs."""
    if final.get("budget"):
        return str(final["budget"])
    return f"{final['epochs']}ep" if final.get("epochs") else None


def answers(finals: Sequence[Record]) -> tuple[np.ndarray | None, str | None]:
    """(seeds, n) right/wrong answers of runs whose directories keep their predictions
    (`results.PREDICTIONS` beside the records file), all on the same test labels and agreeing
    with the records' accuracy; else (None, which file and why)."""
    rows, labels, first = [], None, ""
    for r in finals:
        directory = Path(str(r.get("_source", ""))).parent
        where = directory / PREDICTIONS
        try:
            pred = load_predictions(directory)
        except RunError as err:
            return None, str(err).split("; delete it")[0]
        if pred is None:
            return None, f"{where} is missing"
        predicted, label = pred
        if labels is not None and not np.array_equal(label, labels):
            return None, f"{where} is of another test set than {first}"
        if abs(float((predicted == label).mean()) - float(r["test_top1"])) > 1e-6:
            return None, f"{where} does not give the run's test accuracy (other weights)"
        labels, first = label, str(where)
        rows.append(predicted == label)
    return (np.stack(rows), None) if rows else (None, None)


def row_stats(ok: Sequence[Record]) -> RowStats | None:
    """The interval of a row's accuracy: from its per-image answers when it has them, else
    from the records' accuracies and test-set size (binomial, one pooled count)."""
    if not ok:
        return None
    n = ok[0].get("n_test")
    mine, why = answers(ok)
    if mine is not None:
        seeds = tuple(r.get("seed") for r in ok)
        return RowStats(stats.accuracy_interval(mine), mine.shape[1], mine, seeds=seeds)
    if not n:
        return None
    acc = statistics.fmean(r["test_top1"] for r in ok)
    ci = stats.count_interval(round(acc * n * len(ok)), n * len(ok))
    return RowStats(ci, int(n), None, unpaired=why)


def with_baseline(row: RowStats, base: RowStats | None, baseline: str | None) -> RowStats:
    """`row` with its paired difference from `base` (same test images only)."""
    if base is None or row.answers is None or base.answers is None:
        return row
    if row.answers.shape[1] != base.answers.shape[1]:
        return row
    paired = stats.paired_difference(row.answers, base.answers, paired_seeds=_same_seeds(row, base))
    return RowStats(row.ci, row.n_test, row.answers, paired, baseline, row.unpaired, row.seeds)


def _same_seeds(a: RowStats, b: RowStats) -> bool:
    """Whether row s of both answers is the same seed (the same start: their runs pair)."""
    return bool(a.seeds) and a.seeds == b.seeds and None not in a.seeds


def _test_first(part: str) -> tuple[bool, str]:
    return (part.startswith("Holm"), part)


def tied_with_best(
    entries: Iterable[tuple[str, RowStats]],
) -> tuple[str, list[str], str] | None:
    """(best model, the models statistically tied with it, how ties were decided) among
    (model, stats) entries of one comparison: the best against each other model, by a paired
    test on the same images when both have per-image answers, else a two-proportion z-test;
    "ahead of" a model needs its p, Holm-adjusted over all those tests, below 0.05, so that
    "ahead of every other model" holds with a family-wise error of at most 5 %."""
    entries = list(entries)
    if not entries:
        return None
    best, top = max(entries, key=lambda e: e[1].ci.estimate)
    others, ps, how = [], [], set()
    for model, st in entries:
        if model == best:
            continue
        a, b = st.answers, top.answers
        if a is not None and b is not None and a.shape[1] == b.shape[1]:
            ps.append(stats.paired_p_value(a, b, paired_seeds=_same_seeds(st, top)))
            how.add("paired test")
        else:
            ps.append(stats.unpaired_p_value(
                st.ci.estimate, st.n_test or 1, top.ci.estimate, top.n_test or 1
            ))  # fmt: skip
            how.add("unpaired z-test")
        others.append(model)
    tied = [m for m, q in zip(others, stats.holm(ps), strict=True) if q >= stats.ALPHA]
    if len(ps) > 1:
        how.add(f"Holm-adjusted over {len(ps)} tests")
    return best, tied, ", ".join(sorted(how, key=_test_first)) or "—"
