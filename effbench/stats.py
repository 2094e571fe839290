"""Statistics of test-set accuracies (scipy.stats): the 95 % interval of an accuracy, a model's
paired difference from a baseline image by image (exact McNemar test for one seed, paired
bootstrap over images for several), the chance it beats the baseline, and which models are
statistically tied with the best. Layer 1: numpy and scipy, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 9999
SEED = 0  # bootstrap resampling is seeded: the same inputs give the same report


@dataclass(frozen=True)
class Interval:
    """An estimate (a fraction, or a difference of fractions) and its 95 % interval."""

    estimate: float
    low: float
    high: float
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Paired:
    """A model against the baseline on the same test images."""

    diff: Interval  # accuracy(model) - accuracy(baseline)
    p_value: float  # two-sided: no difference
    p_beats: float  # probability the model's accuracy is the higher
    test: str  # "McNemar (exact)" or "paired bootstrap"


def standard_error(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on n test images (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def count_interval(correct: int, n: int) -> Interval:
    """95 % Wilson score interval of `correct` right answers out of `n` (one seed, or where only
    the accuracy and the test-set size are known)."""
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return Interval(correct / n, float(ci.low), float(ci.high), "Wilson")


def per_image(correct: np.ndarray) -> np.ndarray:
    """(seeds, n) or (n,) right/wrong answers -> the seed-averaged correctness of each image."""
    c = np.asarray(correct, dtype=float)
    return c if c.ndim == 1 else c.mean(axis=0)


def accuracy_interval(correct: np.ndarray) -> Interval:
    """95 % interval of an accuracy from per-image right/wrong answers, (n,) or (seeds, n).

    One seed: the Wilson interval. Several: a BCa bootstrap over test images of the seeds'
    mean accuracy (images are resampled with all of their seeds, so the interval covers the
    test set's sampling and the spread between seeds as it shows on those images).
    """
    c = np.asarray(correct, dtype=float)
    if c.ndim == 1 or c.shape[0] == 1:
        flat = c.reshape(-1)
        return count_interval(int(flat.sum()), flat.size)
    x = per_image(c)
    res = _bootstrap((x,))
    ci = res.confidence_interval
    return Interval(float(x.mean()), float(ci.low), float(ci.high), "bootstrap over images")


def mcnemar(model: np.ndarray, baseline: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two classifiers' right/wrong answers on the same
    images: a binomial test of the images only one of them gets right."""
    a, b = np.asarray(model, dtype=bool), np.asarray(baseline, dtype=bool)
    only_model, only_base = int((a & ~b).sum()), int((~a & b).sum())
    if only_model + only_base == 0:
        return 1.0
    return float(stats.binomtest(only_model, only_model + only_base, 0.5).pvalue)


def paired_difference(model: np.ndarray, baseline: np.ndarray) -> Paired:
    """The model's accuracy minus the baseline's on the same images, (n,) or (seeds, n) each.

    The interval is a paired bootstrap over images (BCa); P(beats) is the share of bootstrap
    differences above zero (ties count half). The test is McNemar's exact test when both
    have one seed, else the paired bootstrap's two-sided p-value.
    """
    a, b = per_image(model), per_image(baseline)
    if a.shape != b.shape:
        raise ValueError(f"paired answers need the same images: {a.shape} vs {b.shape}")
    res = _bootstrap((a, b), paired=True)
    dist = np.asarray(res.bootstrap_distribution)
    p_beats = float((dist > 0).mean() + 0.5 * (dist == 0).mean())
    ci = res.confidence_interval
    diff = Interval(float(a.mean() - b.mean()), float(ci.low), float(ci.high), "paired bootstrap")
    if _one_seed(model) and _one_seed(baseline):
        p = mcnemar(np.reshape(model, -1), np.reshape(baseline, -1))
        return Paired(diff, p, p_beats, "McNemar (exact)")
    p = float(min(1.0, 2 * min((dist <= 0).mean(), (dist >= 0).mean())))
    return Paired(diff, p, p_beats, "paired bootstrap")


def paired_p_value(model: np.ndarray, baseline: np.ndarray) -> float:
    """`paired_difference(model, baseline).p_value`, without the bootstrap where McNemar's
    test decides (one seed each)."""
    if _one_seed(model) and _one_seed(baseline) and np.size(model) == np.size(baseline):
        return mcnemar(np.reshape(model, -1), np.reshape(baseline, -1))
    return paired_difference(model, baseline).p_value


def _one_seed(answers: np.ndarray) -> bool:
    return np.ndim(answers) == 1 or np.shape(answers)[0] == 1


def unpaired_tie(acc_a: float, n_a: int, acc_b: float, n_b: int) -> bool:
    """Whether two accuracies on (possibly) different test images are within the noise of a
    two-sided z-test at ALPHA (used where per-image answers are missing)."""
    return unpaired_p_value(acc_a, n_a, acc_b, n_b) >= ALPHA


def unpaired_p_value(acc_a: float, n_a: int, acc_b: float, n_b: int) -> float:
    """The two-sided z-test's p-value for two accuracies on (possibly) different test images."""
    se = math.hypot(standard_error(acc_a, n_a), standard_error(acc_b, n_b))
    if se == 0:
        return 1.0 if acc_a == acc_b else 0.0
    return float(2 * stats.norm.sf(abs(acc_a - acc_b) / se))


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the i-th smallest p times the
    number of tests not yet rejected (m - i), made monotone and capped at 1. A claim resting
    on all of them holds where every adjusted p is below ALPHA, with the family-wise error
    at most ALPHA (Holm 1979)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _bootstrap(data: tuple[np.ndarray, ...], *, paired: bool = False) -> Any:
    """scipy's bootstrap of mean(data[0]) (- mean(data[1])), seeded; BCa unless every resample
    gives the same value (then BCa is undefined and the percentile interval is exact)."""

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return xs[0].mean(axis=axis) - (xs[1].mean(axis=axis) if len(xs) > 1 else 0)

    varying = data[0] - data[1] if paired else data[0]
    return stats.bootstrap(
        data,
        statistic,
        paired=paired,
        vectorized=True,
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        method="BCa" if np.ptp(varying) > 0 else "percentile",
        rng=np.random.default_rng(SEED),
    )
