"""Timing repeats taken round-robin over a grid (`effbench.measure.Rounds`, `in_rounds`): the
order of the calls, what each call's `done` gets, a call failing in a later round, an
interrupt that keeps what was measured, and grids whose rounds still time inference in eval
mode after the training step has run."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from specs import TINY16_BACKBONE, run_cli
from torch import Tensor

from effbench.attention.sdpa import SdpaAttention
from effbench.measure import Repeats, Rounds, Timing
from effbench.results import read_jsonl
from effbench.sweep import in_rounds

CPU = torch.device("cpu")


def calls_in_order(log: list[str]) -> list[str]:
    """The log with back-to-back calls of one function counted once."""
    return [k for k, _ in itertools.groupby(log)]


def logging_fn(log: list[str], name: str) -> Callable[[], None]:
    def fn() -> None:
        log.append(name)

    return fn


def collect(into: dict[str, tuple[Timing, float, int]], name: str):
    def done(got: Repeats) -> None:
        into[name] = (got.timing, got.spread, got.taken)
        assert len(got.rounds_ms) == got.taken and all(ms > 0 for ms in got.rounds_ms)

    return done


def test_repeats_go_round_robin_and_each_call_gets_its_own() -> None:
    log: list[str] = []
    got: dict[str, tuple[Timing, float, int]] = {}
    rounds = Rounds(3)
    for name in "abc":
        call_ms = rounds.add(
            logging_fn(log, name),
            label=name,
            device=CPU,
            done=collect(got, name),
            warmup=2,
            min_run_time=0.01,
        )
        assert call_ms >= 0
    assert log == ["a", "a", "b", "b", "c", "c"]  # only warmed up while the grid is built
    assert not got  # nothing is handed over before the last round
    steps: list[tuple[str, int, int]] = []
    rounds.run(lambda what, done, of: steps.append((what, done, of)))
    assert calls_in_order(log[6:]) == list("abc" * 3)
    assert steps == [(f"round {r}/3: {n}", i, 3) for r in (1, 2, 3) for i, n in enumerate("abc")]
    for name in "abc":
        timing, spread, taken = got[name]
        assert taken == 3 and spread >= 0 and timing.median_ms > 0
        assert timing.check is not None and timing.check.attempts >= 3


def test_without_interleaving_each_call_is_done_at_once() -> None:
    log: list[str] = []
    got: dict[str, tuple[Timing, float, int]] = {}
    rounds = Rounds(3, interleave=False)
    for name in "ab":
        rounds.add(
            logging_fn(log, name), label=name, device=CPU, done=collect(got, name), warmup=0,
            min_run_time=0.01,
        )  # fmt: skip
        assert got[name][2] == 3
    rounds.run()
    assert calls_in_order(log) == ["a", "b"]
    assert not Rounds(1).interleave  # one repeat has nothing to interleave


def test_a_call_failing_in_a_later_round_keeps_its_repeats() -> None:
    got: dict[str, tuple[Timing, float, int]] = {}
    calls = {"n": 0}
    phase = {"later": False}

    def flaky() -> None:
        calls["n"] += 1
        if phase["later"]:
            raise RuntimeError("out of memory")

    rounds = Rounds(3)
    rounds.add(flaky, label="flaky", device=CPU, done=collect(got, "flaky"), warmup=0,
               min_run_time=0.01)  # fmt: skip
    rounds.add(lambda: None, label="fine", device=CPU, done=collect(got, "fine"), warmup=0,
               min_run_time=0.01)  # fmt: skip
    rounds.run(lambda what, done, of: phase.update(later=what.startswith("round 2")))
    assert got["flaky"][2] == 1 and got["fine"][2] == 3


def test_an_interrupt_keeps_the_points_measured_so_far() -> None:
    """A KeyboardInterrupt in round 2 still gives every point measured its record, with
    the repeats it has, and then goes on."""
    rounds = Rounds(3)
    state = {"round": 0}

    def start(name: str) -> Callable[[], tuple[str, int]]:
        out: dict[str, int] = {}

        def fn() -> None:
            if state["round"] == 2 and name == "b":
                raise KeyboardInterrupt

        def done(got: Repeats) -> None:
            out["taken"] = got.taken

        rounds.add(fn, label=name, device=CPU, done=done, warmup=0, min_run_time=0.01)
        return lambda: (name, out["taken"])

    def on_step(what: str, done: int, of: int) -> None:
        state["round"] = int(what[len("round ")]) if what.startswith("round ") else 0

    starts = [(n, lambda n=n: start(n)) for n in "abc"]
    got: list[tuple[str, int]] = []
    with pytest.raises(KeyboardInterrupt):
        for rec in in_rounds(rounds, starts, on_step):
            got.append(rec)
    assert got == [("a", 2), ("b", 1), ("c", 1)]


def test_a_points_calls_come_back_to_back_in_each_round_with_a_warm_up() -> None:
    """Calls added model by model are timed point by point: in each round the calls of one
    point (every model at one shape) back to back, so that their paired ratio sees the same
    machine; a call slow enough to be timed in one call gets one untimed call after each
    switch."""
    log: list[str] = []
    got: dict[str, tuple[Timing, float, int]] = {}
    rounds = Rounds(2)
    for model, n in itertools.product("ab", (1, 2)):
        name = f"{model}{n}"
        rounds.add(logging_fn(log, name), label=name, device=CPU, done=collect(got, name),
                   warmup=0, min_run_time=0.01, point=n)  # fmt: skip
    rounds.run()
    assert calls_in_order(log[4:]) == ["a1", "b1", "a2", "b2"] * 2
    slow: list[str] = []

    def sleepy(name: str) -> Callable[[], None]:
        def fn() -> None:
            slow.append(name)
            time.sleep(0.02)

        return fn

    rounds = Rounds(2)
    for name in "xy":
        rounds.add(sleepy(name), label=name, device=CPU, done=collect(got, name), warmup=0,
                   min_run_time=0.01, point=0)  # fmt: skip
    rounds.run()
    assert slow[2:] == ["x", "x", "y", "y"] * 2  # one untimed call, then the timed one
    assert got["x"][2] == 2 and got["x"][0].runs == 2  # one single-call run per repeat


def test_rounds_need_a_repeat() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Rounds(0)


SPEC = (
    TINY16_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = {{ kind = "sdpa" }}

[profile]
retries = 0  # no re-measuring (and back-off) on a busy test machine
seq_lens = [17, 26]
batch_size = 2
device = "cpu"
warmup = 0
min_run_time = 0.01
top_ops = 0
count_flops = false
{profile}

[scale]
retries = 0  # no re-measuring (and back-off) on a busy test machine
resolutions = [8, 16]
batch_size = 2
mode = "both"
device = "cpu"
warmup = 0
min_run_time = 0.01
breakdown = false
count_flops = false
top_ops = 0
"""
)


@pytest.mark.parametrize("command", ["profile", "scale"])
def test_rounds_time_inference_in_eval_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The backward / training step trains a copy, so that every inference-mode call of the
    rounds, which come after it, still runs the layer in eval mode."""
    seen: list[tuple[bool, bool]] = []
    real = SdpaAttention.attend

    def spy(self: SdpaAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        seen.append((torch.is_inference_mode_enabled(), self.training))
        return real(self, q, k, v)

    monkeypatch.setattr(SdpaAttention, "attend", spy)
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC.format(profile=""))
    code, out = run_cli(command, "-s", str(spec), "-o", str(tmp_path / "r"))
    assert code == 0, out
    inference = [training for infer, training in seen if infer]
    assert inference and not any(inference)
    assert any(training for infer, training in seen if not infer)
    (results,) = (tmp_path / "r").glob(f"{command}-*.jsonl")
    records, bad = read_jsonl(results)
    assert not bad
    timed = [r for r in records if r["kind"] == command]
    assert len(timed) == 2 and all(r["status"] == "ok" and r["repeats"] == 3 for r in timed)
    phases = ("fwd", "fwdbwd") if command == "profile" else ("infer", "train")
    for r in timed:
        for phase in phases:
            assert r[f"{phase}_ms"] > 0 and r[f"{phase}_repeat_spread"] >= 0
            assert r["cpu_checks"][phase]["attempts"] >= 3


def test_profile_can_take_its_repeats_back_to_back(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC.format(profile="repeats = 2\ninterleave = false"))
    code, out = run_cli("profile", "-s", str(spec), "-o", str(tmp_path / "r"))
    assert code == 0, out
    assert "2 repeats back to back" in out
    (results,) = (tmp_path / "r").glob("profile-*.jsonl")
    records, _ = read_jsonl(results)
    assert [r["repeats"] for r in records] == [2, 2]


def test_a_call_slower_than_the_run_time_is_timed_once_per_repeat() -> None:
    """Timer would spend a second call only on picking its block size."""
    calls = {"n": 0}

    def slow() -> None:
        calls["n"] += 1
        time.sleep(0.03)

    got: dict[str, tuple[Timing, float, int]] = {}
    rounds = Rounds(3)
    call_ms = rounds.add(slow, label="slow", device=CPU, done=collect(got, "slow"), warmup=1,
                         min_run_time=0.02)  # fmt: skip
    assert call_ms >= 30 and calls["n"] == 1
    rounds.run()
    timing, _, taken = got["slow"]
    assert calls["n"] == 1 + 3 and taken == 3
    assert timing.runs == 3 and timing.calls_per_run == 1 and timing.median_ms >= 30
