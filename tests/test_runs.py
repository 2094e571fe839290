"""`effbench.runs`: the run-directory layout: where a run lives, whether one is there, which
checkpoint a resume continues from, its files, and finding and loading a trained run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from effbench.config.load import parse_spec
from effbench.config.spec import BenchSpec
from effbench.errors import CheckpointError, RunError, TrainError
from effbench.results import inside
from effbench.runs import (
    BEST,
    CHECKPOINT,
    FINAL,
    RECORDS,
    SPEC,
    completed,
    find_run,
    holds_run,
    load_state,
    load_weights,
    open_records,
    resume_checkpoint,
    run_dir,
    save_weights,
    taken_runs,
)

SPEC_DATA = {
    "models": [
        {"name": "a", "attention": {"kind": "sdpa"}},
        {"name": "b", "attention": {"kind": "standard"}},
    ]
}


def _bench(out: Path) -> BenchSpec:
    return parse_spec(SPEC_DATA, overrides={"train.output_dir": str(out)})


def test_run_dirs_and_which_hold_a_run(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "runs")
    a0 = run_dir(bench.train, "a", 0)
    assert a0 == tmp_path / "runs" / "a" / "seed0"
    runs = [(m, s) for m in bench.models for s in (0, 1)]
    assert taken_runs(bench.train, runs) == []
    a0.mkdir(parents=True)
    assert not holds_run(a0)  # an empty directory holds nothing
    (a0 / RECORDS).write_text("")
    assert not holds_run(a0)  # nor a run that failed before its first record
    (a0 / RECORDS).write_text('{"kind": "train_epoch"}\n')
    b1 = run_dir(bench.train, "b", 1)
    b1.mkdir(parents=True)
    (b1 / CHECKPOINT).write_bytes(b"x")
    assert holds_run(a0) and holds_run(b1)
    assert taken_runs(bench.train, runs) == [a0, b1]


def test_resume_checkpoint_fresh_auto_and_path(tmp_path: Path) -> None:
    run = tmp_path / "m" / "seed0"
    assert resume_checkpoint(run, None) is None  # fresh, nothing there
    assert resume_checkpoint(run, "auto") is None  # auto without a checkpoint: start anew
    run.mkdir(parents=True)
    (run / CHECKPOINT).write_bytes(b"x")
    with pytest.raises(TrainError, match="already holds a run"):
        resume_checkpoint(run, None)
    assert resume_checkpoint(run, "auto") == run / CHECKPOINT
    assert resume_checkpoint(run, str(run)) == run / CHECKPOINT  # a run directory
    assert resume_checkpoint(tmp_path, str(run / CHECKPOINT)) == run / CHECKPOINT
    with pytest.raises(CheckpointError, match=r"not found \(from --resume"):
        resume_checkpoint(run, str(tmp_path / "nope.pt"))


def test_open_records_keeps_exactly_the_history(tmp_path: Path) -> None:
    run = tmp_path / "m" / "seed0"
    with open_records(run, spec={"x": 1}, history=[{"epoch": 1}, {"epoch": 2}]) as w:
        w.write({"epoch": 3})
    with open_records(run, spec={"x": 2}, history=[{"epoch": 1}]) as w:
        w.write({"kind": "train", "status": "ok"})
    assert json.loads((run / SPEC).read_text()) == {"x": 2}
    lines = [json.loads(line) for line in (run / RECORDS).read_text().splitlines()]
    assert lines == [{"epoch": 1}, {"kind": "train", "status": "ok"}]
    assert completed(run) == {"kind": "train", "status": "ok"}
    assert completed(tmp_path) is None


def test_weights_round_trip_and_find_run(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "runs")
    run = run_dir(bench.train, "b", 0)
    with pytest.raises(RunError, match="no such run directory"):
        find_run(run)
    run.mkdir(parents=True)
    with pytest.raises(RunError, match=r"no spec\.json"):
        find_run(run)
    (run / SPEC).write_text(json.dumps(bench.model_dump(mode="json")))
    with pytest.raises(RunError, match=re.escape(f"neither {FINAL} nor {BEST}")):
        find_run(run)
    net = torch.nn.Linear(3, 2)
    save_weights(net, run / BEST)
    found = find_run(run / BEST)  # a file inside the run names it too
    assert found.directory == run and found.entry.name == "b" and found.weights == run / BEST
    other = torch.nn.Linear(3, 2)
    load_weights(other, run / BEST)
    assert all(torch.equal(x, y) for x, y in zip(net.parameters(), other.parameters(), strict=True))
    save_weights(net, run / FINAL)
    assert find_run(run).weights == run / FINAL  # the selected weights first
    (run / FINAL).write_bytes(b"garbage")
    with pytest.raises(RunError, match="corrupt or unreadable"):
        load_state(find_run(run))
    (run / SPEC).write_text("{")
    with pytest.raises(RunError, match="corrupt"):
        find_run(run)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b", ""])
def test_a_run_directory_stays_inside_the_output(tmp_path: Path, name: str) -> None:
    """Names the spec refuses are refused here too, for callers that skip the spec."""
    bench = parse_spec({"models": [{"name": "a", "attention": {"kind": "sdpa"}}]},
                       overrides={"train.output_dir": str(tmp_path)})  # fmt: skip
    with pytest.raises(RunError, match="would put files outside"):
        run_dir(bench.train, name, 0)
    assert run_dir(bench.train, "a.b+c", 0) == tmp_path / "a.b+c" / "seed0"
    assert inside(tmp_path, "x", "y.z") == tmp_path / "x" / "y.z"
    with pytest.raises(RunError, match=f"outside {tmp_path}"):
        inside(tmp_path, "x", name)  # every path effbench makes from a name
