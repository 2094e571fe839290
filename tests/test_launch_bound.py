"""Launch-bound points: a GPU timing whose kernels fill less than half of its wall time is
flagged in its record, and the report marks it and says when a verdict rests on it. The
kernel time itself is measured on CUDA only; here it is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import report_records as rec
import torch
from specs import run_cli

from effbench.config.load import parse_spec
from effbench.env import environment
from effbench.measure import Rounds
from effbench.measure.profiler import LAUNCH_BOUND_SHARE, kernel_time_ms, launch_bound
from effbench.sweep.profile import Point, start_point


@pytest.mark.parametrize(
    ("kernel_ms", "wall_ms", "bound"),
    [
        (0.3, 2.7, True),  # the committed H200 sdpa point at 65 tokens: 11 % kernels
        (9.9, 77.8, True),
        (5.0, 5.2, False),
        (2.5, 5.0, False),  # exactly half: not below it
        (None, 2.0, None),  # off CUDA
        (0.1, None, None),  # a failed point has no wall time
        (0.1, 0.0, None),
    ],
)
def test_the_flag_is_kernel_time_under_half_the_wall_time(
    kernel_ms: float | None, wall_ms: float | None, bound: bool | None
) -> None:
    assert LAUNCH_BOUND_SHARE == 0.5
    assert launch_bound(kernel_ms, wall_ms) is bound


def test_no_kernel_time_off_cuda() -> None:
    assert kernel_time_ms(lambda: torch.ones(3).sum(), device=torch.device("cpu")) is None


def test_a_profile_record_carries_the_flag_of_its_figures() -> None:
    spec = parse_spec({"models": [{"name": "sdpa", "attention": {"kind": "sdpa"}}]})

    def measured(kernel_ms: float | None) -> Any:
        def measure(spec: Any, point: Any, *, out: dict[str, Any], **_: Any) -> None:
            out.update(fwd_ms=2.7, fwd_kernel_ms=kernel_ms)

        record = start_point(
            spec,
            Point(spec.models[0], 65),
            device=torch.device("cpu"),
            env=environment("cpu", "float32"),
            run_id="r",
            rounds=Rounds(1),
            measure=measure,
        )
        return record()

    assert measured(0.3).launch_bound is True
    assert measured(2.0).launch_bound is False
    assert measured(None).launch_bound is None


def test_the_report_marks_launch_bound_points_and_verdicts(tmp_path: Path) -> None:
    records = [
        rec.profile("sdpa", 65, fwd_ms=2.7, fwd_kernel_ms=0.3, launch_bound=True),
        rec.profile("sdpa", 4097, fwd_ms=5.2, fwd_kernel_ms=5.0, launch_bound=False),
        rec.scale("sdpa", 32, infer_ms=2.7, infer_kernel_ms=0.3, launch_bound=True),
        rec.scale("sdpa", 512, infer_ms=9.0, infer_kernel_ms=8.5, launch_bound=False),
        rec.scale("nystrom", 32, infer_ms=2.9, infer_kernel_ms=0.4, launch_bound=True),
        rec.scale("nystrom", 512, infer_ms=8.0, infer_kernel_ms=7.5, launch_bound=False),
    ]
    results = tmp_path / "results"
    results.mkdir()
    (results / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out = run_cli("report", str(results), "-o", str(tmp_path / "out"))
    assert code == 0, out
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "2.70† / " in page and "5.20† / " not in page  # the profile cell, marked
    assert "† 1 of these forwards are launch-bound" in page
    assert "2 of these points are launch-bound (32 px)" in page
    fastest = next(line for line in page.splitlines() if "Fastest inference" in line)
    small, large = fastest.split("; at 512 px")
    assert "rests on launch-bound figures" in small and "launch-bound" not in large


def test_verdicts_come_from_compiled_figures_where_eager_ones_are_launch_bound(
    tmp_path: Path,
) -> None:
    graphs = {"compiled": True, "compile_mode": "reduce-overhead"}
    records = [
        rec.scale("sdpa", 32, infer_ms=2.7, infer_kernel_ms=0.3, launch_bound=True),
        rec.scale("sdpa", 512, infer_ms=9.0, infer_kernel_ms=8.5, launch_bound=False),
        rec.scale("nystrom", 32, infer_ms=2.6, infer_kernel_ms=0.4, launch_bound=True),
        rec.scale("nystrom", 512, infer_ms=8.0, infer_kernel_ms=7.5, launch_bound=False),
        rec.scale("sdpa", 32, infer_ms=0.4, infer_kernel_ms=0.3, launch_bound=False, **graphs),
        rec.scale("sdpa", 512, infer_ms=8.6, infer_kernel_ms=8.5, launch_bound=False, **graphs),
        rec.scale("nystrom", 32, infer_ms=0.5, infer_kernel_ms=0.4, launch_bound=False, **graphs),
        rec.scale("nystrom", 512, infer_ms=7.6, infer_kernel_ms=7.5, launch_bound=False, **graphs),
    ]
    results = tmp_path / "results"
    results.mkdir()
    (results / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out = run_cli("report", str(results), "-o", str(tmp_path / "out"))
    assert code == 0, out
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "E1's eager figures are launch-bound at 32 px" in summary
    assert "timed compiled reduce-overhead (E2)" in summary
    fastest = [line for line in summary.splitlines() if "Fastest inference" in line]
    assert fastest and all("E2" in line for line in fastest)  # only the compiled verdict
    assert "at 32 px sdpa (0.400 ms" in fastest[0] or "at 32 px sdpa (0.4" in fastest[0]
