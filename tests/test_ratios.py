"""Speed verdicts from paired rounds (`effbench.ratios`) under a fake timer whose rounds share
common-mode steps (a VM whose speed steps ~25 % between rounds) and add independent noise to
each call: the ratio's interval covers the true ratio at its nominal rate, a verdict is
withheld where the noise cannot resolve it, and two runs never contradict each other, where
comparing the medians alone does."""

from __future__ import annotations

import numpy as np
import pytest

from effbench import ratios
from effbench.crossover import summarize
from effbench.report.format import crossover_words


def fake_rounds(
    rng: np.random.Generator, times: dict[str, float], rounds: int, noise: float
) -> dict[str, list[float]]:
    """Each model's per-round times: its true time, times the round's common-mode step
    (1 or 1.25, the same for every call of the round), times its own log-normal noise."""
    steps = rng.choice([1.0, 1.25], size=rounds)
    return {m: list(t * steps * np.exp(rng.normal(0, noise, rounds))) for m, t in times.items()}


@pytest.mark.parametrize("rounds", [3, 5, 10])
def test_the_ratio_interval_covers_the_true_ratio_at_its_nominal_rate(rounds: int) -> None:
    rng = np.random.default_rng(rounds)
    covered = []
    for _ in range(1000):
        got = fake_rounds(rng, {"mine": 8.0, "base": 10.0}, rounds, noise=0.08)
        r = ratios.paired_ratio(got["mine"], got["base"])
        assert r is not None and r.rounds == rounds and r.low <= r.estimate <= r.high
        covered.append(r.low <= 0.8 <= r.high)
    assert 0.93 <= np.mean(covered) <= 0.97


def test_a_verdict_is_withheld_where_the_noise_cannot_resolve_it() -> None:
    rng = np.random.default_rng(7)
    close, clear = [], []
    for _ in range(500):
        got = fake_rounds(rng, {"mine": 9.7, "base": 10.0, "far": 5.0}, 3, noise=0.1)
        close.append(ratios.paired_ratio(got["mine"], got["base"]).verdict)
        clear.append(ratios.paired_ratio(got["far"], got["base"]).verdict)
    assert close.count("slower") / len(close) <= 0.03  # the wrong verdict: at most ~2.5 %
    assert close.count("not resolved") / len(close) >= 0.85
    assert clear.count("faster") / len(clear) >= 0.95
    assert ratios.paired_ratio([1.0], [2.0]) is None  # one round: no interval, no verdict


def test_two_runs_never_contradict_where_medians_alone_do() -> None:
    rng = np.random.default_rng(11)
    paired, medians = 0, 0
    for _ in range(400):
        runs = [fake_rounds(rng, {"mine": 9.7, "base": 10.0}, 3, noise=0.05) for _ in range(2)]
        said = [ratios.paired_ratio(g["mine"], g["base"]).verdict for g in runs]
        paired += {"faster", "slower"} <= set(said)
        # unpaired: each model's median, from rounds of its own (the steps differ)
        alone = [
            np.median(fake_rounds(rng, {"m": 9.7}, 3, 0.05)["m"])
            < np.median(fake_rounds(rng, {"b": 10.0}, 3, 0.05)["b"])
            for _ in range(2)
        ]
        medians += alone[0] != alone[1]
    assert paired <= 2  # both resolved and opposite: a 2.5 % error twice over
    assert medians >= 80  # the medians' verdict flips between runs


def _scale(model: str, res: int, rounds: list[float] | None) -> dict:
    return {"kind": "scale", "model": model, "image_size": res, "seq_len": (res // 8) ** 2 + 1,
            "infer_ms": None if rounds is None else float(np.median(rounds)),
            "infer_rounds_ms": rounds, "status": "ok" if rounds else "oom"}  # fmt: skip


def test_a_crossover_rests_on_resolved_points_and_says_which_are_open() -> None:
    base = {32: [1.0, 1.2, 1.0], 64: [2.0, 2.5, 2.1], 128: [8.0, 9.0, 8.2], 224: [30, 36, 31]}
    lin = {32: [2.0, 2.4, 2.0], 64: [1.9, 2.6, 2.2], 128: [4.0, 4.5, 4.1], 224: [9, 11, 9.4]}
    records = [_scale("sdpa", r, v) for r, v in base.items()]
    records += [_scale("lin", r, v) for r, v in lin.items()]
    found = summarize(records, baseline="sdpa", mode="infer")["lin"]
    verdicts = found["verdicts"]["infer_time"]
    assert [verdicts[r]["verdict"] for r in (32, 64, 128, 224)] == [
        "slower", "not resolved", "faster", "faster"
    ]  # fmt: skip
    assert found["crossovers"]["infer_time"] == {
        "resolution": 128,
        "tokens": 257,
        "at_start": False,
    }
    assert crossover_words(found, "infer_time") == "from 128 px (257 tokens), not resolved at 64 px"
    # open at the largest resolution: not resolved there, not "not reached"
    records[-1] = _scale("lin", 224, [28, 38, 30])
    found = summarize(records, baseline="sdpa", mode="infer")["lin"]
    assert found["crossovers"]["infer_time"] is None
    assert crossover_words(found, "infer_time") == "not resolved at 224 px"


def test_records_without_rounds_compare_medians_and_say_so() -> None:
    records = [
        {**_scale("sdpa", 32, [2.0, 2.0]), "infer_rounds_ms": None},
        {**_scale("lin", 32, [1.0, 1.0]), "infer_rounds_ms": None},
    ]
    found = summarize(records, baseline="sdpa", mode="infer")["lin"]
    assert found["verdicts"]["infer_time"][32] == {
        "ratio": 0.5,
        "verdict": "faster",
        "paired": False,
    }
    assert "from medians" in crossover_words(found, "infer_time")


def test_fastest_is_named_only_when_resolved_from_every_other_model() -> None:
    a = {"infer_ms": 1.0, "infer_rounds_ms": [1.0, 1.05, 0.98, 1.02]}
    b = {"infer_ms": 2.0, "infer_rounds_ms": [2.0, 2.1, 1.9, 2.05]}
    c = {"infer_ms": 1.02, "infer_rounds_ms": [0.97, 1.1, 1.0, 1.06]}
    clear = ratios.fastest({"a": a, "b": b}, "infer_ms")
    assert clear is not None and clear.model == "a" and clear.resolved
    close = ratios.fastest({"a": a, "b": b, "c": c}, "infer_ms")
    assert close is not None and close.model == "a" and close.close == ["c"]
    assert ratios.fastest({}, "infer_ms") is None


def test_one_round_gives_no_verdict_where_records_keep_rounds() -> None:
    records = [_scale("sdpa", 32, [2.0]), _scale("lin", 32, [1.0])]
    found = summarize(records, baseline="sdpa", mode="infer")["lin"]
    assert found["verdicts"]["infer_time"][32]["verdict"] == "not resolved"
    assert found["crossovers"]["infer_time"] is None
    assert crossover_words(found, "infer_time") == "not resolved at 32 px"
    one = ratios.fastest({"a": records[1], "b": records[0]}, "infer_ms")
    assert one is not None and not one.resolved and one.paired
