"""Crossovers against the baseline and log-log slopes, computed from plain records (no torch)."""

from __future__ import annotations

import math

import pytest

from effbench.crossover import crossover, loglog_slope, upper_slope


def test_crossover_from_records() -> None:
    base = {32: 1.0, 64: 2.0, 128: 8.0, 224: 30.0}
    assert crossover({32: 2.0, 64: 3.0, 128: 5.0, 224: 9.0}, base) == (128, False)
    assert crossover({32: 0.5, 64: 1.0, 128: 5.0, 224: 9.0}, base) == (32, True)
    # ahead early, behind at the end: not reached
    assert crossover({32: 0.5, 64: 1.0, 128: 9.0, 224: 31.0}, base) is None
    # a failed baseline point (None) is beaten; a failed own point is not ahead
    assert crossover({32: 2.0, 64: 3.0, 128: 9.0, 224: 9.0}, {**base, 224: None}) == (224, False)
    assert crossover({32: 2.0, 64: 1.0, 128: 5.0, 224: None}, base) is None
    assert crossover({32: None}, {32: None}) is None


def test_loglog_slopes() -> None:
    tokens = [65, 257, 1025, 4097, 16385]
    assert loglog_slope((n, 3.0 * n**2) for n in tokens) == pytest.approx(2.0)
    slope, used = upper_slope({n: 5.0 * n + (1e4 if n < 300 else 0.0) for n in tokens})
    assert used == [1025, 4097, 16385]  # the upper part: >= 1/16 of the largest
    assert slope == pytest.approx(1.0)
    assert upper_slope({65: 1.0, 257: None}) == (None, [65])
    two = pytest.approx(math.log(4) / math.log(257 / 65))
    assert upper_slope({65: 1.0, 257: 4.0}) == (two, [65, 257])
