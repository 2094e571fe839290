"""The report's Recommendation block on constructed records: the Pareto front, a tie, a clear
winner, where efficient mechanisms pay off, and what the data cannot support."""

from __future__ import annotations

from pathlib import Path

from report_records import scale, train

from effbench.report import build_report, collect
from effbench.results import write_jsonl_atomic


def recommend(tmp_path: Path, records: list[dict]) -> list[str]:
    write_jsonl_atomic(tmp_path / "records.jsonl", records)
    return build_report(collect([tmp_path])).recommendation


JITTER = {"sdpa": (0.98, 1.0, 1.03)}  # each round's time over the median: paired rounds


def cost(model: str, infer: dict[int, float], mem: dict[int, float], **kw: object) -> list:
    jitter = JITTER.get(model, (1.01, 0.99, 1.0))
    return [
        scale(model, px, infer_ms=ms, infer_peak_mib=mem[px],
              infer_rounds_ms=[ms * f for f in jitter], **kw)
        for px, ms in infer.items()
    ]  # fmt: skip


def test_a_tie_the_front_and_the_pay_off(tmp_path: Path) -> None:
    records = [
        train("sdpa", test_top1=0.60, n_test=1000, seq_len=17),
        train("linformer", test_top1=0.59, n_test=1000, seq_len=17),  # within the test set's noise
        train("performer", test_top1=0.40, n_test=1000, seq_len=17),
        *cost("sdpa", {32: 1.0, 64: 4.0, 128: 16.0}, {32: 10, 64: 40, 128: 160}),
        *cost("linformer", {32: 1.5, 64: 3.0, 128: 6.0}, {32: 12, 64: 20, 128: 40}),
        *cost("performer", {32: 0.5, 64: 2.0, 128: 5.0}, {32: 15, 64: 45, 128: 50}),
    ]
    lines = recommend(tmp_path, records)
    acc = next(line for line in lines if "front" in line)
    assert "cifar10, 32 px, budget 80ep" in acc
    # latency at 32 px: performer 0.5 (40 %), sdpa 1.0 (60 %), linformer 1.5 (59 %)
    assert "accuracy–inference latency front: performer, sdpa." in acc
    assert "Most accurate sdpa; statistically tied with it" in acc and "linformer" in acc
    pay = next(line for line in lines if line.startswith("Pays off against sdpa"))
    assert "linformer from 64 px (65 tokens) in time, from 64 px (65 tokens) in memory" in pay
    assert "performer from 32 px (17 tokens) in time, from 128 px (257 tokens) in memory" in pay
    assert any("one seed per model" in line for line in lines)
    assert any("one environment" in line for line in lines)


def test_a_clear_winner_and_launch_bound_figures(tmp_path: Path) -> None:
    records = [
        train("sdpa", test_top1=0.50, n_test=5000),
        train("nystrom", test_top1=0.70, n_test=5000),
        *cost("sdpa", {32: 1.0, 64: 2.0}, {32: 10, 64: 20}, launch_bound=True),
        *cost("nystrom", {32: 2.0, 64: 3.0}, {32: 20, 64: 30}, launch_bound=True),
    ]
    lines = recommend(tmp_path, records)
    acc = next(line for line in lines if "front" in line)
    assert "Most accurate nystrom, ahead of every other model" in acc
    assert "nystrom not in the range measured in time" in "\n".join(lines)
    assert any("4 scale point(s) are launch-bound" in line for line in lines)


def test_nothing_to_recommend_from_one_model(tmp_path: Path) -> None:
    assert recommend(tmp_path, [train("sdpa")]) == []
