"""`effbench diff` on hand-made result sets: the same code under a drifting machine is no
change, a point made slower or a failed point is a regression named in the output (exit 1),
points on one side only are listed, and inputs that cannot be compared exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_records import profile, scale, train
from specs import run_cli

from effbench.diff import compare_sets, parse_percent
from effbench.errors import UsageError

MODELS = ("sdpa", "linformer", "nystrom", "performer", "hybrid", "standard")
SEQ_LENS = (65, 257, 1025, 4097)
SLOW = ("sdpa", 257)  # the point a regression is put at


def grid(
    seed: int, *, factor: float = 1.0, noise: float = 0.12, rounds: int = 3, slow: float = 1.0
) -> list[dict[str, Any]]:
    """A profile grid whose every round is `factor` times the point's true time with
    log-normal noise of `noise`; the SLOW point's forward is `slow` times slower still."""
    rng = np.random.default_rng(seed)
    records = []
    for i, model in enumerate(MODELS):
        for n in SEQ_LENS:
            fields: dict[str, Any] = {"repeats": rounds, "fwd_peak_mib": 10.0 + n / 100}
            for phase, base in (("fwd", 1e-3 * n * (i + 1)), ("fwdbwd", 3e-3 * n * (i + 1))):
                mult = slow if (model, n) == SLOW and phase == "fwd" else 1.0
                times = base * factor * mult * np.exp(rng.normal(0, noise, rounds))
                fields[f"{phase}_ms"] = float(np.median(times))
                fields[f"{phase}_rounds_ms"] = [float(t) for t in times]
                fields[f"{phase}_repeat_spread"] = float(np.ptp(times) / np.median(times))
            records.append(profile(model, n, **fields))
    return records


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def diff(tmp_path: Path, old: list[dict], new: list[dict], *args: str) -> tuple[int, str]:
    a = write(tmp_path / "old" / "profile-a.jsonl", old)
    b = write(tmp_path / "new" / "profile-b.jsonl", new)
    return run_cli("diff", str(a.parent), str(b), *args)


@pytest.mark.parametrize(
    ("text", "fraction"), [("10%", 0.10), ("10", 0.10), ("2.5 %", 0.025), (".5", 0.005)]
)
def test_threshold_is_a_percentage(text: str, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["ten", "-5%", "", "10%%", "0.1x"])
def test_threshold_refuses_what_is_not_a_percentage(text: str) -> None:
    with pytest.raises(UsageError, match="--threshold"):
        parse_percent(text)


def test_same_code_under_drift_is_no_change(tmp_path: Path) -> None:
    code, out = diff(tmp_path, grid(1), grid(2, factor=1.2))
    assert code == 0, out
    assert "0 worse" in out and "no regression" in out
    assert "all profile timings 1.2" in out and "run-to-run drift of ±20 %\n" in out  # not worse
    code, out = diff(tmp_path, grid(1), grid(2, factor=0.9))
    assert code == 0 and "within the run-to-run drift" in out


@pytest.mark.parametrize("seed", range(10))
def test_same_code_with_noisy_rounds_never_fails(seed: int) -> None:
    # noise as this machine's (a profile point's rounds spread by 35 % at the median)
    result = compare_sets(grid(seed, noise=0.2), grid(100 + seed, factor=0.85, noise=0.2))
    assert not result.regressions(), result.regressions()


def test_one_point_twice_as_slow_is_a_regression_named(tmp_path: Path) -> None:
    code, out = diff(
        tmp_path, grid(1, noise=0.02), grid(2, noise=0.02, factor=1.15, slow=2.0), "--all"
    )
    assert code == 1, out
    assert "regressions: profile sdpa N=257 batch 2 float32 fwd_ms" in out
    assert "1 worse" in out  # the other 47 timings are the common shift
    result = compare_sets(grid(1, noise=0.02), grid(2, noise=0.02, slow=2.0))
    (row,) = [r for r in result.rows if r.verdict == "worse"]
    assert row.relative == pytest.approx(2.0, rel=0.1) and row.low > 1.1


def test_a_slowdown_below_the_threshold_is_no_change() -> None:
    result = compare_sets(grid(1, noise=0.01), grid(2, noise=0.01, slow=1.05))
    assert not result.regressions()


def test_every_point_slower_is_a_worse_common_shift(tmp_path: Path) -> None:
    code, out = diff(tmp_path, grid(1), grid(2, factor=2.0))
    assert code == 1, out
    assert "all profile timings 2.0" in out and "beyond the run-to-run drift" in out
    assert "regressions: profile timings: common shift 2.0" in out
    assert run_cli("diff", *(str(tmp_path / s) for s in ("old", "new")), "--drift", "150%")[0] == 0


def test_new_and_missing_points_are_listed_not_failed(tmp_path: Path) -> None:
    old, new = grid(1), grid(2)
    old = [r for r in old if r["seq_len"] != 65]  # 6 new points at 65 tokens
    new = [r for r in new if (r["model"], r["seq_len"]) != ("hybrid", 4097)]  # 1 missing
    code, out = diff(tmp_path, old, new)
    assert code == 0, out
    assert "6 new point, 1 missing point" in out
    assert "profile hybrid N=4097 batch 2 float32" in out and "missing point" in out
    code, out = run_cli("diff", str(tmp_path / "old"), str(tmp_path / "new"), "--fail-on-missing")
    assert code == 1 and "regressions: profile hybrid N=4097 batch 2 float32" in out


def test_a_point_that_failed_is_a_regression(tmp_path: Path) -> None:
    new = grid(2)
    new[0] = {**new[0], "status": "oom", "error": "out of memory", "fwd_ms": None}
    code, out = diff(tmp_path, grid(1), new)
    assert code == 1, out
    assert "regressions: profile sdpa N=65 batch 2 float32 status" in out
    back = compare_sets(new, grid(1))  # and a point that works again is better
    assert [r.verdict for r in back.rows if r.figure == "status"] == ["better"]


def test_memory_is_judged_on_the_threshold_and_a_slack() -> None:
    new = grid(1)
    new[0] = {**new[0], "fwd_peak_mib": new[0]["fwd_peak_mib"] * 1.3}  # 10.65 -> 13.8 MiB
    new[1] = {**new[1], "fwd_peak_mib": new[1]["fwd_peak_mib"] + 0.9}  # inside the slack
    rows = {(r.point, r.figure): r for r in compare_sets(grid(1), new).rows}
    assert rows["profile sdpa N=65 batch 2 float32", "fwd_peak_mib"].verdict == "worse"
    assert rows["profile sdpa N=257 batch 2 float32", "fwd_peak_mib"].verdict == "no change"


def test_accuracy_drop_beyond_its_interval_and_threshold() -> None:
    old = [train("sdpa", test_top1=0.80, n_test=10000), train("nystrom", test_top1=0.80)]
    new = [train("sdpa", test_top1=0.75, n_test=10000), train("nystrom", test_top1=0.78)]
    rows = {r.point: r for r in compare_sets(old, new).rows if r.family == "accuracy"}
    sdpa, nystrom = (
        rows["train sdpa seed 0 cifar10 32px 80ep"],
        rows["train nystrom seed 0 cifar10 32px 80ep"],
    )
    assert sdpa.verdict == "worse" and sdpa.change == pytest.approx(-5.0) and sdpa.high < -1
    assert nystrom.verdict == "no change" and nystrom.low < -2 < nystrom.high  # 1,000 images
    assert "Wilson" in nystrom.noise


def test_train_time_is_judged_against_the_drift() -> None:
    old, new = [train("sdpa", train_s=60.0)], [train("sdpa", train_s=72.0)]
    (time,) = [r for r in compare_sets(old, new).rows if r.figure == "step_ms"]
    assert time.verdict == "no change" and "run drift" in time.noise
    slow = compare_sets(old, [train("sdpa", train_s=120.0)])
    assert slow.regressions() == ["train sdpa seed 0 cifar10 32px 80ep step_ms"]


def test_records_without_rounds_use_their_repeat_spread() -> None:
    def plain(factor: float, spread: float | None) -> list[dict[str, Any]]:
        return [
            scale(m, 64, repeats=3, infer_ms=factor * (i + 1), infer_repeat_spread=spread)
            for i, m in enumerate(MODELS)
        ]

    result = compare_sets(plain(1.0, 0.05), plain(1.3, 0.05))
    assert {r.noise for r in result.rows if r.family == "time"} == {"repeat spread"}
    assert not result.regressions() and math.isclose(result.shifts[0].ratio, 1.3)
    unknown = compare_sets(plain(1.0, None), plain(1.0, None))
    assert {r.noise for r in unknown.rows if r.family == "time"} == {"noise unknown"}


def test_the_latest_record_of_a_point_is_compared(tmp_path: Path) -> None:
    early = [{**r, "time": "2026-01-01T00:00:00"} for r in grid(1, slow=3.0)]
    late = [{**r, "time": "2026-01-02T00:00:00"} for r in grid(1)]
    result = compare_sets(late + early, grid(2))  # by their time, not their order
    assert not result.regressions()
    assert "24 record(s) of the old set measured a point again" in result.notes[0]


def test_markdown_table_written_and_printed(tmp_path: Path) -> None:
    md = tmp_path / "diff.md"
    code, out = diff(tmp_path, grid(1), grid(2, slow=3.0), "--markdown", str(md))
    assert code == 1
    text = md.read_text()
    assert text.startswith("# effbench diff\n")
    assert "| point | figure | old | new |" in text
    assert "| profile sdpa N=257 batch 2 float32 | fwd_ms |" in text
    assert "**Regressions:** profile sdpa N=257 batch 2 float32 fwd_ms" in text
    code, out = run_cli("diff", str(tmp_path / "old"), str(tmp_path / "new"), "-f", "markdown")
    assert code == 1 and "| profile sdpa N=257 batch 2 float32 | fwd_ms |" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "new"], "OLD nowhere: no such file or directory"),
        (["old", "empty"], "NEW empty: no profile, scale or train records to compare"),
        (["old", "new", "--threshold", "lots"], "--threshold 'lots': give a percentage"),
        (["old", "new", "--format", "html"], "--format 'html': choose table or markdown"),
    ],
)
def test_inputs_that_cannot_be_compared_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    write(tmp_path / "old" / "a.jsonl", grid(1))
    write(tmp_path / "new" / "b.jsonl", grid(2))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "junk.jsonl").write_text("not json\n")
    monkeypatch.chdir(tmp_path)
    code, out = run_cli("diff", *args)
    assert code == 2, out
    assert out.strip() == message or out.strip().startswith(message), out
    assert len(out.strip().splitlines()) == 1


def test_max_batch_points_match_on_the_largest_batch_and_compare_per_image() -> None:
    """Under `--batch max` each run finds its own batch: the point is "the largest batch",
    and its time per image is compared (a batch twice as big takes about twice as long)."""

    def point(batch: int, per_image: float) -> dict[str, Any]:
        rounds = [per_image * f for f in (0.98, 1.0, 1.02)]
        return scale(
            "sdpa", 32, batch_search="max", batch_size=batch, infer_ms=per_image * batch,
            infer_rounds_ms=[t * batch for t in rounds], infer_image_ms=per_image,
            infer_image_rounds_ms=rounds,
        )  # fmt: skip

    same = compare_sets([point(100, 1.0)], [point(200, 1.0)])
    assert not same.regressions()
    assert [r.figure for r in same.rows if r.family == "time"] == ["infer_image_ms"]
    worse = compare_sets([point(100, 1.0)], [point(200, 2.0)])  # one point: its own shift
    assert worse.regressions() == ["scale timings: common shift 2.00x"]
