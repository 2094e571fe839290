"""Crossovers against the baseline and log-log slopes, computed from plain records (no torch)."""

from __future__ import annotations

import math

import pytest

from effbench.crossover import (
    baseline_label,
    best_of,
    crossover,
    loglog_slope,
    summarize,
    upper_slope,
)


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


def _point(model: str, res: int, ms: float | None) -> dict:
    return {"kind": "scale", "model": model, "image_size": res, "seq_len": (res // 8) ** 2 + 1,
            "infer_ms": ms, "status": "ok" if ms is not None else "oom"}  # fmt: skip


def test_the_baseline_is_the_best_of_the_sdpa_backends_at_each_resolution() -> None:
    # flash is fastest small, the math path fails large: the best of them is the one to beat
    flash = [_point("flash", 32, 1.0), _point("flash", 64, 3.0), _point("flash", 128, 12.0)]
    math_ = [_point("math", 32, 2.0), _point("math", 64, 2.5), _point("math", 128, None)]
    lin = [_point("lin", 32, 1.5), _point("lin", 64, 2.8), _point("lin", 128, 4.0)]
    assert best_of([*flash, *math_], "infer_ms") == {32: 1.0, 64: 2.5, 128: 12.0}
    assert best_of(math_[2:], "infer_ms") == {128: None}
    found = summarize([*flash, *math_, *lin], baseline=["flash", "math"], mode="infer")
    assert found["lin"]["crossovers"]["infer_time"]["resolution"] == 128  # not 64: math wins
    alone = summarize([*flash, *lin], baseline="flash", mode="infer")
    assert alone["lin"]["crossovers"]["infer_time"]["resolution"] == 64
    assert found["flash"]["crossovers"] == found["math"]["crossovers"] == {}
    assert baseline_label(["flash", "math"]) == "best of flash, math"
    assert baseline_label(["sdpa"]) == "sdpa" and baseline_label([]) is None
