"""`effbench.convergence`: the stated rule on constructed curves, and the report's word on
runs that were still learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_records import epoch, train

from effbench.convergence import still_learning


def test_a_falling_curve_is_still_learning_and_a_flat_one_is_not() -> None:
    falling = [2.3, 2.0, 1.8, 1.65, 1.55, 1.47, 1.41, 1.36]  # ~3-5 % less per epoch at the end
    flat = [2.3, 1.5, 1.2, 1.1, 1.05, 1.04, 1.04, 1.035]  # under 1 % at the end
    assert still_learning(falling, best_epoch=4) is True
    assert still_learning(flat, best_epoch=4) is False
    assert still_learning(flat, best_epoch=8) is True  # its best validation epoch is the last
    assert still_learning(flat, best_epoch=None) is False
    assert still_learning([2.3, 2.0], best_epoch=2) is None  # too short to say


@pytest.mark.parametrize("n", [3, 4, 5, 10, 100])
def test_the_rule_holds_at_every_length(n: int) -> None:
    converged = [1.0] * n
    assert still_learning(converged, best_epoch=1) is False
    assert still_learning([2.0 * 0.97**i for i in range(n)], best_epoch=1) is True  # 3 % an epoch


def test_the_report_calls_a_ranking_of_learning_runs_one_of_learning_speed(tmp_path: Path) -> None:
    from effbench.report.build import build_report
    from effbench.report.inputs import collect

    lines = [train("sdpa", still_learning=True, best_epoch=2), train("linformer")]
    # an older run without the field: its epoch records decide
    lines += [{k: v for k, v in train("performer", best_epoch=1).items()
               if k != "still_learning"}]  # fmt: skip
    lines += [epoch("performer", epoch=e, train_loss=2.3 - 0.2 * e) for e in (1, 2, 3, 4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = build_report(collect([tmp_path]))
    summary = "\n".join(report.summary)
    assert "Still learning when the budget ended" in summary
    assert ": sdpa, performer." in summary or ": performer, sdpa." in summary
    assert "learning speed within the budget" in summary
    (table,) = [b for b in report.sections[0].blocks if b.kind == "table"]
    names = [r[0] for r in table.rows]
    assert "sdpa †" in names and "linformer" in names and "performer †" in names
