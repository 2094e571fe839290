"""Statistics of test-set accuracies (scipy.stats): the 95 % interval of an accuracy, a model's
paired difference from a baseline image by image (one seed: exact McNemar test and a paired
bootstrap over images; several: a two-level bootstrap over seeds and images, so that
run-to-run spread is in the interval), the chance it beats the baseline, Holm's adjustment
for a claim resting on several tests. Layer 1: numpy and scipy, no torch."""

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
    test: str  # "McNemar (exact)" or TWO_LEVEL


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


def accuracy_interval(correct: np.ndarray, *, resamples: int = RESAMPLES) -> Interval:
    """95 % interval of an accuracy from per-image right/wrong answers, (n,) or (seeds, n).

    One seed: the Wilson interval, over test images only (run-to-run spread is not in it).
    Several: `two_level` (seeds, then images), so that a new seed's spread is in it.
    """
    c = np.asarray(correct, dtype=float)
    if c.ndim == 1 or c.shape[0] == 1:
        flat = c.reshape(-1)
        return count_interval(int(flat.sum()), flat.size)
    return two_level(c, resamples=resamples)


TWO_LEVEL = "two-level bootstrap (seeds, then images)"


def two_level(
    a: np.ndarray,
    b: np.ndarray | None = None,
    *,
    paired_seeds: bool = False,
    resamples: int = RESAMPLES,
) -> Interval:
    """The 95 % interval of mean(a) (- mean(b)) over seeds and test images (`_two_level`)."""
    est, se, df = _two_level(a, b, paired_seeds=paired_seeds, resamples=resamples)
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    return Interval(est, est - half, est + half, TWO_LEVEL)


def _two_level(
    a: np.ndarray, b: np.ndarray | None, *, paired_seeds: bool, resamples: int
) -> tuple[float, float, float]:
    """(estimate, standard error, degrees of freedom) of mean(a) (- mean(b)) from (seeds, n)
    right/wrong answers on the same n test images, where both the seeds and the test images
    are samples.

    The two levels are bootstrapped each: the seeds (b's with a's draws when `paired_seeds`:
    seed s of both started from the same weights; drawn S - 1 from S, which makes this
    level's bootstrap variance the unbiased s^2 / S), and the test images (the same draws
    for a and b). Each level's variance also holds the seed-by-image noise once, so its
    residual mean square / (S n) is taken off once (a crossed design's variance of the mean:
    sigma_seeds^2 / S + sigma_images^2 / n + sigma_residual^2 / (S n)). With three or five
    seeds no percentile of a bootstrap covers the mean at its nominal rate (three seeds'
    resamples cannot leave their range), so the interval is the estimate +- t times that
    standard error, t with Welch-Satterthwaite degrees of freedom: near S - 1 where the
    seeds' spread dominates, large where the test set's does.
    """
    rng = np.random.default_rng(SEED)
    x = np.asarray(a, dtype=float)
    tables = [(x, 1.0)]
    if b is not None:
        y = np.asarray(b, dtype=float)
        tables = [(x - y, 1.0)] if paired_seeds else [(x, 1.0), (y, -1.0)]
    n = x.shape[1]
    parts: list[tuple[float, int]] = []
    for t, _ in tables:
        u = _seed_weights(rng, t.shape[0], resamples)
        parts.append((float(np.var(u @ t.mean(1), ddof=1)), t.shape[0] - 1))
    per_image = sum(sign * t.mean(0) for t, sign in tables)
    by_images = np.concatenate([
        rng.multinomial(n, np.full(n, 1 / n), size=min(_CHUNK, resamples - lo)) @ per_image / n
        for lo in range(0, resamples, _CHUNK)
    ])  # fmt: skip
    parts.append((float(np.var(by_images, ddof=1)), n - 1))
    overlap = [(_residual(t) / t.size, (t.shape[0] - 1) * (n - 1)) for t, _ in tables]
    var = max(sum(v for v, _ in parts) - sum(v for v, _ in overlap), max(v for v, _ in parts))
    return float(np.mean(per_image)), math.sqrt(var), _satterthwaite(var, parts + overlap)


_CHUNK = 500  # image resamples at a time: (chunk, n) weights stay small for 10,000 images


def _seed_weights(rng: np.random.Generator, seeds: int, resamples: int) -> np.ndarray:
    """(resamples, seeds) weights of seeds drawn S - 1 from S with replacement (one seed:
    itself)."""
    draws = max(seeds - 1, 1)
    return rng.multinomial(draws, np.full(seeds, 1 / seeds), size=resamples) / draws


def _residual(t: np.ndarray) -> float:
    """The residual mean square of a (seeds, images) table after both main effects."""
    s, n = t.shape
    if s < 2 or n < 2:
        return 0.0
    r = t - t.mean(1, keepdims=True) - t.mean(0, keepdims=True) + t.mean()
    return float((r * r).sum() / ((s - 1) * (n - 1)))


def _satterthwaite(total: float, parts: list[tuple[float, int]]) -> float:
    """Welch-Satterthwaite degrees of freedom of `total`, a sum of variances (some taken
    off) each estimated with its own degrees of freedom."""
    denom = sum(v * v / max(df, 1) for v, df in parts)
    return total * total / denom if denom > 0 else float("inf")


def mcnemar(model: np.ndarray, baseline: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two classifiers' right/wrong answers on the same
    images: a binomial test of the images only one of them gets right."""
    a, b = np.asarray(model, dtype=bool), np.asarray(baseline, dtype=bool)
    only_model, only_base = int((a & ~b).sum()), int((~a & b).sum())
    if only_model + only_base == 0:
        return 1.0
    return float(stats.binomtest(only_model, only_model + only_base, 0.5).pvalue)


def paired_difference(
    model: np.ndarray, baseline: np.ndarray, *, paired_seeds: bool = False
) -> Paired:
    """The model's accuracy minus the baseline's on the same images, (n,) or (seeds, n) each.

    One seed each: a paired bootstrap over images (BCa), P(beats) the share of its
    differences above zero (ties count half), and McNemar's exact test. Several seeds:
    `two_level` (`paired_seeds`: row s of both is the same seed, from the same start), its
    t distribution giving the two-sided p and P(beats).
    """
    a, b = per_image(model), per_image(baseline)
    if a.shape != b.shape:
        raise ValueError(f"paired answers need the same images: {a.shape} vs {b.shape}")
    if not (_one_seed(model) and _one_seed(baseline)):
        x, y = np.atleast_2d(model), np.atleast_2d(baseline)
        pair = paired_seeds and x.shape == y.shape
        est, se, df = _two_level(x, y, paired_seeds=pair, resamples=RESAMPLES)
        half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
        z = est / se if se > 0 else (math.inf if est > 0 else -math.inf if est < 0 else 0.0)
        diff = Interval(est, est - half, est + half, TWO_LEVEL)
        p = float(2 * stats.t.sf(abs(z), df)) if z == z else 1.0
        return Paired(diff, min(1.0, p), float(stats.t.cdf(z, df)), TWO_LEVEL)
    res = _bootstrap((a, b), paired=True)
    dist = np.asarray(res.bootstrap_distribution)
    p_beats = float((dist > 0).mean() + 0.5 * (dist == 0).mean())
    ci = res.confidence_interval
    diff = Interval(float(a.mean() - b.mean()), float(ci.low), float(ci.high), "paired bootstrap")
    p = mcnemar(np.reshape(model, -1), np.reshape(baseline, -1))
    return Paired(diff, p, p_beats, "McNemar (exact)")


def paired_p_value(model: np.ndarray, baseline: np.ndarray, *, paired_seeds: bool = False) -> float:
    """`paired_difference(model, baseline).p_value`, without the bootstrap where McNemar's
    test decides (one seed each)."""
    if _one_seed(model) and _one_seed(baseline) and np.size(model) == np.size(baseline):
        return mcnemar(np.reshape(model, -1), np.reshape(baseline, -1))
    return paired_difference(model, baseline, paired_seeds=paired_seeds).p_value


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
