"""The report's accuracy statistics from run directories: intervals, paired differences from the
baseline, ties named in the summary, budgets kept apart, and older runs without predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from report_records import train
from specs import run_cli

from effbench.report import build_report, collect
from effbench.results import PREDICTIONS, save_predictions, write_jsonl_atomic

N = 932
LABELS = np.random.default_rng(0).integers(0, 10, N)


def _run(root: Path, model: str, right: np.ndarray, *, seed: int = 0, budget: str = "80ep") -> Path:
    """A finished run directory: its final record and its per-image predictions."""
    d = root / budget / model / f"seed{seed}"
    predicted = np.where(right, LABELS, (LABELS + 1) % 10)
    record = train(model, seed=seed, budget=budget, test_top1=float(right.mean()), n_test=N)
    d.mkdir(parents=True)
    write_jsonl_atomic(d / "train.jsonl", [record])
    save_predictions(d, predicted, LABELS)
    return d


def _flips(right: np.ndarray, share: float, seed: int) -> np.ndarray:
    return right ^ (np.random.default_rng(seed).random(N) < share)


def _summary(root: Path, **kw: object) -> str:
    return "\n".join(build_report(collect([root]), **kw).summary)


def test_a_tie_is_named_and_a_clear_winner_is_not_called_tied(tmp_path: Path) -> None:
    base = np.random.default_rng(1).random(N) < 0.55
    _run(tmp_path, "sdpa", base)
    _run(tmp_path, "linformer", _flips(base, 0.03, 2))  # a few images either way
    _run(tmp_path, "performer", base & (np.random.default_rng(3).random(N) < 0.7))  # 16 pts less
    text = _summary(tmp_path)
    best = "sdpa" if base.mean() >= _flips(base, 0.03, 2).mean() else "linformer"
    other = "linformer" if best == "sdpa" else "sdpa"
    assert f"Most accurate (cifar10, 32 px, budget 80ep): {best}" in text
    assert (
        f"statistically tied with it (paired test, Holm-adjusted over 2 tests, p ≥ 0.05): {other}."
        in text
    )
    assert "performer." not in text.split("tied with it")[1]
    assert "Test-set resolution: 932 images" in text and "standard error of 1.6 points" in text


def test_a_clear_winner_is_ahead_and_the_table_pairs_against_the_baseline(tmp_path: Path) -> None:
    base = np.random.default_rng(4).random(N) < 0.45
    _run(tmp_path, "sdpa", base)
    _run(tmp_path, "hybrid", base | (np.random.default_rng(5).random(N) < 0.3))
    report = build_report(collect([tmp_path]))
    assert "Most accurate (cifar10, 32 px, budget 80ep): hybrid" in "\n".join(report.summary)
    assert "ahead of every other model (paired test, p < 0.05)" in "\n".join(report.summary)
    (table,) = [b for b in report.sections[0].blocks if b.kind == "table"]
    rows = {r[0]: r for r in table.rows}
    delta = rows["hybrid"][table.columns.index("Δ vs baseline (95 % CI)")]
    assert delta.startswith("+") and " to +" in delta  # the interval lies above zero
    assert rows["sdpa"][table.columns.index("Δ vs baseline (95 % CI)")] == "baseline"
    assert float(rows["hybrid"][table.columns.index("P(beats)")]) > 0.99
    low, high = map(float, rows["sdpa"][table.columns.index("95 % CI")].split("–"))
    assert low < 100 * base.mean() < high


def test_budgets_are_compared_apart_and_old_runs_still_render(tmp_path: Path) -> None:
    base = np.random.default_rng(6).random(N) < 0.5
    _run(tmp_path, "sdpa", base)
    _run(tmp_path, "sdpa", _flips(base, 0.1, 7), budget="5min")
    old = _run(tmp_path, "performer", _flips(base, 0.02, 8), budget="5min")
    (old / PREDICTIONS).unlink()  # trained before runs kept their predictions
    text = _summary(tmp_path)
    assert "budget 80ep): sdpa" in text and "no other model was trained under this budget" in text
    assert "budget 5min)" in text and "unpaired z-test" in text
    code, out = run_cli("report", str(tmp_path), "-o", str(tmp_path / "out"), "--format", "md")
    assert code == 0, out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| performer | 5min |" in md and "| sdpa | 80ep |" in md


def test_report_baseline_option(tmp_path: Path) -> None:
    base = np.random.default_rng(9).random(N) < 0.5
    _run(tmp_path, "sdpa", base)
    _run(tmp_path, "standard", _flips(base, 0.05, 10))
    code, out = run_cli("report", str(tmp_path), "-o", str(tmp_path / "o"), "--baseline", "nope")
    assert code == 2 and "--baseline 'nope'" in out and "sdpa, standard" in out
    report = build_report(collect([tmp_path]), baseline="standard")
    (table,) = [b for b in report.sections[0].blocks if b.kind == "table"]
    rows = {r[0]: r for r in table.rows}
    assert rows["standard"][table.columns.index("Δ vs baseline (95 % CI)")] == "baseline"
    assert rows["sdpa"][table.columns.index("p")] != "—"


def test_ahead_of_every_other_needs_every_holm_adjusted_p_below_005(tmp_path: Path) -> None:
    from effbench import stats

    best = np.zeros(N, dtype=bool)
    best[:500] = True
    others = []
    for k in range(2):  # each loses 18 of best's images and wins 7 others: p about 0.04 alone
        other = best.copy()
        other[100 * k : 100 * k + 18] = False
        other[600 + 50 * k : 600 + 50 * k + 7] = True
        others.append(other)
        assert 0.01 < stats.mcnemar(other, best) < 0.05
    _run(tmp_path, "sdpa", best)
    _run(tmp_path, "linformer", others[0])
    _run(tmp_path, "performer", others[1])
    text = _summary(tmp_path)
    assert "Most accurate (cifar10, 32 px, budget 80ep): sdpa" in text
    assert "statistically tied with it (paired test, Holm-adjusted over 2 tests, p ≥ 0.05)" in text
    report = build_report(collect([tmp_path]))
    (table,) = [b for b in report.sections[0].blocks if b.kind == "table"]
    rows = {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}
    raw, adj = float(rows["linformer"]["p"]), float(rows["linformer"]["p (Holm)"])
    assert raw < 0.05 <= adj
