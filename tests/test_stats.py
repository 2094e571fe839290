"""effbench.stats against known cases: interval coverage of a synthetic classifier, McNemar on a
constructed table, paired differences, ties."""

from __future__ import annotations

import numpy as np
import pytest

from effbench import stats


def test_wilson_interval_covers_a_synthetic_classifiers_true_accuracy() -> None:
    rng = np.random.default_rng(0)
    true, n = 0.55, 932
    draws = rng.random((2000, n)) < true
    covered = [stats.count_interval(int(d.sum()), n).contains(true) for d in draws]
    assert 0.93 <= np.mean(covered) <= 0.97  # a 95 % interval, within simulation noise
    one = stats.accuracy_interval(draws[0])
    assert one.method == "Wilson" and one.low < one.estimate < one.high
    assert one.high - one.low == pytest.approx(2 * 1.96 * stats.standard_error(0.55, n), rel=0.05)


def synthetic_family(rng: np.random.Generator, seeds: int, n: int, seed_sd: float) -> np.ndarray:
    """(seeds, n) right/wrong answers of a model whose expected accuracy over images and
    seeds is exactly 0.5: each test image drawn with its own chance (uniform 0.2-0.8), each
    seed shifting every chance by its own offset (normal, `seed_sd`)."""
    chance = rng.uniform(0.2, 0.8, n)
    offsets = rng.normal(0, seed_sd, (seeds, 1))
    return rng.random((seeds, n)) < np.clip(chance + offsets, 0, 1)


@pytest.mark.parametrize(("seeds", "seed_sd"), [(3, 0.0), (3, 0.03), (3, 0.06), (5, 0.03)])
def test_two_level_interval_covers_the_truth_with_seed_spread(seeds: int, seed_sd: float) -> None:
    """Over seeds and test images the two-level interval covers the model's expected
    accuracy at its nominal rate, whether the seeds spread or not; an interval over the
    images alone (the seeds' spread left out) does not once they spread."""
    rng = np.random.default_rng(seeds * 100 + int(seed_sd * 1000))
    covered, images_only = [], []
    for _ in range(300):
        answers = synthetic_family(rng, seeds, 400, seed_sd)
        ci = stats.two_level(answers, resamples=400)
        assert ci.method == stats.TWO_LEVEL and ci.low < ci.estimate < ci.high
        covered.append(ci.contains(0.5))
        x = answers.mean(0)
        half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
        images_only.append(abs(x.mean() - 0.5) <= half)
    assert 0.92 <= np.mean(covered) <= 0.985
    if seed_sd >= 0.06:
        assert np.mean(images_only) < 0.8


def test_several_seeds_get_the_two_level_interval() -> None:
    rng = np.random.default_rng(1)
    answers = synthetic_family(rng, 3, 932, 0.03)
    ci = stats.accuracy_interval(answers)
    assert ci.method == stats.TWO_LEVEL
    assert stats.accuracy_interval(answers[:1]).method == "Wilson"
    # paired seeds (each from the same start as the baseline's) remove their shared part
    base = synthetic_family(rng, 3, 932, 0.03)
    better = base | (rng.random(base.shape) < 0.1)
    paired = stats.paired_difference(better, base, paired_seeds=True)
    alone = stats.paired_difference(better, base)
    assert paired.test == stats.TWO_LEVEL and paired.diff.low > 0 and paired.p_value < 0.01
    assert paired.diff.high - paired.diff.low <= alone.diff.high - alone.diff.low


def test_mcnemar_on_a_constructed_table() -> None:
    # 10 images only the model gets right, 2 only the baseline, 100 both, 50 neither:
    # exact p = 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    model = np.array([1] * 10 + [0] * 2 + [1] * 100 + [0] * 50, dtype=bool)
    base = np.array([0] * 10 + [1] * 2 + [1] * 100 + [0] * 50, dtype=bool)
    assert stats.mcnemar(model, base) == pytest.approx(158 / 4096)
    assert stats.mcnemar(model, model) == 1.0


def test_paired_difference_separates_a_clear_winner_from_a_tie() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(932) < 0.5
    better = base | (rng.random(932) < 0.3)  # right wherever the baseline is, and more
    clear = stats.paired_difference(better, base)
    assert clear.test == "McNemar (exact)"
    assert clear.diff.low > 0 and clear.p_value < 1e-6 and clear.p_beats > 0.99
    noise = base ^ (rng.random(932) < 0.04)  # a few flips either way
    tie = stats.paired_difference(noise, base)
    assert tie.diff.low < 0 < tie.diff.high or tie.diff.estimate == 0
    assert tie.p_value > 0.05 and 0.05 < tie.p_beats < 0.95
    seeds = stats.paired_difference(np.stack([better, better]), np.stack([base, noise]))
    assert seeds.test == stats.TWO_LEVEL and seeds.p_value < 0.01
    with pytest.raises(ValueError):
        stats.paired_difference(base[:10], base)
    # The p-value alone (what the tie rule needs) is the same test, with or without bootstrap.
    assert stats.paired_p_value(noise, base) == tie.p_value
    assert stats.paired_p_value(np.stack([better, better]), np.stack([base, noise])) == (
        seeds.p_value
    )


def test_unpaired_tie_uses_the_test_set_resolution() -> None:
    assert stats.unpaired_tie(0.55, 932, 0.53, 932)  # 2 points: within 1.96 * 2.3 points
    assert not stats.unpaired_tie(0.60, 932, 0.50, 932)
    assert stats.standard_error(0.5, 1000) == pytest.approx(0.0158, abs=1e-4)


@pytest.mark.parametrize(
    ("raw", "adjusted"),
    [
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # Holm 1979's step-down
        ([0.01, 0.02, 0.03, 0.04, 0.05], [0.05, 0.08, 0.09, 0.09, 0.09]),  # made monotone
        ([0.5, 0.6], [1.0, 1.0]),  # capped at 1
        ([0.2], [0.2]),  # one test: unchanged
        ([], []),
    ],
)
def test_holm_adjusts_like_the_published_procedure(raw: list[float], adjusted: list[float]) -> None:
    assert stats.holm(raw) == pytest.approx(adjusted)


def test_unpaired_p_value_agrees_with_the_tie_rule() -> None:
    p = stats.unpaired_p_value(0.60, 932, 0.55, 932)
    assert 0.02 < p < 0.05 and not stats.unpaired_tie(0.60, 932, 0.55, 932)
    assert stats.unpaired_p_value(0.5, 100, 0.5, 100) == pytest.approx(1.0)
