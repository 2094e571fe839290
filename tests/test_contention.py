"""Knowing when the CPU was not ours: the disturbance rule on constructed figures, re-measuring
a disturbed timing, and a real tiny `profile` beside a busy PyTorch process."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from specs import run_cli

from effbench import contention
from effbench.contention import (
    Counters,
    MachineLoad,
    Share,
    busy_warning,
    disturbance,
    machine_load,
    others_limit,
    share,
)
from effbench.measure import combine_checks, time_call, timing
from effbench.results import Contention, CpuCheck, ProfileRecord, Status, read_jsonl

TICKS = contention._TICKS_PER_S
linux = pytest.mark.skipif(platform.system() != "Linux", reason="/proc counters are Linux's")


def counters(wall_s: float, cpu_s: float, wait_s: float, busy_s: float) -> Counters:
    return Counters(
        wall_ns=int(wall_s * 1e9),
        cpu_ns=int(cpu_s * 1e9),
        wait_ns=int(wait_s * 1e9),
        busy_ticks=round(busy_s * TICKS),
    )


ZERO = counters(0, 0, 0, 0)


# ---------------------------------------------------------------------------- the rule


def test_share_from_counters() -> None:
    # 1 s of wall time, 2 threads on 2 CPUs: 1 s of our CPU, 1 s of waiting, 2 s busy in all
    s = share(ZERO, counters(1.0, 1.0, 1.0, 2.0), threads=2, cpus=2)
    assert s.wall_s == pytest.approx(1.0)
    assert s.cpu_share == pytest.approx(0.5)
    assert s.wait_share == pytest.approx(0.5)
    assert s.others_cpus == pytest.approx(1.0)
    # more threads than CPUs: only as many can run at once
    assert share(ZERO, counters(1.0, 2.0, 0, 2.0), threads=8, cpus=2).cpu_share == 1.0


def test_quiet_figures_are_not_disturbed() -> None:
    # as measured on a quiet 2-CPU machine: wait <= 1 %, others <= 0.05 CPUs
    quiet = share(ZERO, counters(0.3, 0.6, 0.003, 0.61), threads=2, cpus=2)
    assert disturbance(quiet) is None
    # missing counters (no schedstat, no /proc/stat) judge nothing
    bare = Share(wall_s=0.3, threads=2, cpus=2, cpu_share=0.4, wait_share=None, others_cpus=None)
    assert disturbance(bare) is None


def test_a_busy_neighbour_is_caught_by_either_counter() -> None:
    # one busy PyTorch process beside 2 threads on 2 CPUs: each counter alone suffices
    both = share(ZERO, counters(0.3, 0.3, 0.3, 0.6), threads=2, cpus=2)
    reason = disturbance(both)
    assert reason is not None and "waited for a CPU 50%" in reason and "1.0 of 2 CPUs" in reason
    waited = Share(wall_s=0.3, threads=2, cpus=2, cpu_share=0.7, wait_share=0.3, others_cpus=None)
    assert "waited" in (disturbance(waited) or "")
    busy = Share(wall_s=0.3, threads=2, cpus=2, cpu_share=1.0, wait_share=None, others_cpus=0.7)
    assert "other work" in (disturbance(busy) or "")


def test_other_work_on_idle_cpus_does_not_disturb() -> None:
    # 2 threads on 16 CPUs: 10 CPUs of other work leaves 4 idle
    s = Share(wall_s=1.0, threads=2, cpus=16, cpu_share=1.0, wait_share=0.0, others_cpus=10.0)
    assert disturbance(s) is None
    assert others_limit(2, 16) == pytest.approx(14 + 1.6)
    over = Share(wall_s=1.0, threads=2, cpus=16, cpu_share=1.0, wait_share=0.0, others_cpus=15.8)
    assert disturbance(over) is not None


def test_short_measurements_need_more_than_a_tick_of_other_work() -> None:
    # 20 ms on 2 CPUs: one tick per CPU is 1 CPU of apparent load; not enough evidence
    s = Share(wall_s=0.02, threads=2, cpus=2, cpu_share=1.0, wait_share=0.0, others_cpus=1.0)
    assert disturbance(s) is None


def test_median_of_repeats_is_contended_when_half_of_them_are() -> None:
    def check(disturbed: bool) -> CpuCheck:
        return CpuCheck(
            wall_s=0.2,
            threads=2,
            cpus=2,
            cpu_share=0.5 if disturbed else 1.0,
            wait_share=0.5 if disturbed else 0.0,
            others_cpus=1.0 if disturbed else 0.0,
            disturbed=disturbed,
            reason="busy" if disturbed else None,
        )

    one_of_three = combine_checks([check(True), check(False), check(False)])
    assert not one_of_three.disturbed and one_of_three.attempts == 3
    assert one_of_three.repeats == 3  # three timings, none measured again
    assert Contention(cpu_checks={"fwd": one_of_three, "fwdbwd": check(False)}).retried() == 0
    again = one_of_three.model_copy(update={"attempts": 5})
    assert Contention(cpu_checks={"fwd": again}).retried() == 2
    assert one_of_three.wait_share == pytest.approx(0.5 / 3)
    assert combine_checks([check(True), check(True), check(False)]).disturbed
    assert combine_checks([check(True), check(False)]).disturbed


def test_busy_warning_names_the_load_and_a_thread_count() -> None:
    busy = busy_warning(MachineLoad(others_cpus=1.0, cpus=2, loadavg=1.04), threads=2)
    assert busy is not None
    assert "1.0 of its 2 CPUs" in busy and "1.04" in busy and "--threads 1" in busy
    assert busy_warning(MachineLoad(others_cpus=0.02, cpus=2, loadavg=0.1), threads=2) is None
    assert busy_warning(MachineLoad(others_cpus=1.0, cpus=4, loadavg=1.0), threads=2) is None
    over = busy_warning(MachineLoad(others_cpus=0.0, cpus=2, loadavg=0.0), threads=4)
    assert over is not None and "more than the 2 CPUs" in over and "--threads 2" in over


# ---------------------------------------------------------------------------- re-measuring


class FakeTimer:
    """Stands in for torch.utils.benchmark.Timer: each measurement takes the next median."""

    medians: Iterator[float]

    def __init__(self, **kwargs: Any) -> None:
        pass

    def blocked_autorange(self, min_run_time: float) -> Any:
        m = next(self.medians)
        return type("M", (), {"median": m, "iqr": 0.0, "times": [m], "number_per_run": 1})()


def fake_clock(monkeypatch: pytest.MonkeyPatch, medians: list[float], waits: list[float]) -> None:
    """Measurements with the given medians (s) whose threads waited the given shares."""
    FakeTimer.medians = iter(medians)
    monkeypatch.setattr(timing.benchmark, "Timer", FakeTimer)
    monkeypatch.setattr(contention, "BACKOFF_S", 0.0)
    reads = iter(
        c
        for w in waits
        for c in (counters(0, 0, 0, 0), counters(1.0, 2.0, 2 * w, 2.0))  # 2 threads, 2 CPUs
    )
    monkeypatch.setattr(contention, "read_counters", lambda cpus=None: next(reads))
    monkeypatch.setattr(contention, "usable_cpus", lambda: frozenset({0, 1}))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)


def test_a_disturbed_timing_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch, medians=[0.050, 0.001], waits=[0.5, 0.0])
    t = time_call(lambda: None, device=torch.device("cpu"), warmup=0, retries=2)
    assert t.median_ms == pytest.approx(1.0)
    assert t.check is not None and not t.check.disturbed and t.check.attempts == 2


def test_a_timing_that_stays_disturbed_is_flagged_and_keeps_the_fastest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_clock(monkeypatch, medians=[0.050, 0.020, 0.080], waits=[0.5, 0.4, 0.5])
    t = time_call(lambda: None, device=torch.device("cpu"), warmup=0, retries=2)
    assert t.median_ms == pytest.approx(20.0)
    assert t.check is not None and t.check.disturbed and t.check.attempts == 3
    assert t.check.wait_share == pytest.approx(0.4) and "waited" in (t.check.reason or "")


def test_statuses_are_unchanged_and_contention_is_apart() -> None:
    assert set(get_args(Status)) == {"ok", "oom", "nan", "error"}
    fields = ProfileRecord.model_fields
    assert fields["contended"].default is None and fields["cpu_checks"].default is None


# ---------------------------------------------------------------------------- a busy neighbour

TINY = """
[backbone]
dim = 64
heads = 2

[[models]]
name = "sdpa"
attention = { kind = "sdpa" }
[[models]]
name = "linformer"
attention = { kind = "linformer", k = 16 }
[[models]]
name = "hybrid"
attention = { kind = "hybrid" }

[profile]
seq_lens = [17, 65]
batch_size = 4
device = "cpu"
warmup = 1
min_run_time = 0.1
backward = false
count_flops = false
top_ops = 0
retries = 1
"""

# A PyTorch process busy with small steps on every core, as a second training would be.
NEIGHBOUR = """
import sys, time, torch
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
x = torch.randn(64, 256)
m(x).sum().backward()
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    m(x).square().mean().backward()
"""


def profile_records(tmp_path: Path, spec: Path, name: str) -> dict[tuple[str, int], Any]:
    out = tmp_path / name
    code, output = run_cli("profile", "--spec", str(spec), "--output", str(out))
    assert code == 0, output
    (path,) = out.glob("profile-*.jsonl")
    records, bad = read_jsonl(path)
    assert not bad
    return {(r["model"], r["seq_len"]): r for r in records}


@pytest.mark.slow  # a profile beside a busy process (`.ci/run` runs the slow set)
@linux
def test_profile_beside_a_busy_pytorch_process(tmp_path: Path) -> None:
    """Every point of a profile run disturbed by a busy PyTorch process is either flagged as
    contended (with its evidence) or within 3x of the quiet run's time; statuses stay ok."""
    spec = tmp_path / "bench.toml"
    spec.write_text(TINY)
    quiet = profile_records(tmp_path, spec, "quiet")
    neighbour = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR, "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert neighbour.stdout is not None and neighbour.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        load = machine_load(0.3)
        busy = profile_records(tmp_path, spec, "busy")
    finally:
        neighbour.kill()
        neighbour.wait()
    assert load.others_cpus is not None and load.others_cpus > 0.5  # the counters see it
    assert busy.keys() == quiet.keys()
    for key, r in busy.items():
        assert r["status"] == "ok" and quiet[key]["status"] == "ok"
        check = r["cpu_checks"]["fwd"]
        assert r["contended"] == check["disturbed"]
        if r["contended"]:
            # each of the repeats was measured again once when disturbed (retries = 1), and
            # at least half of them were
            assert r["repeats"] < check["attempts"] <= 2 * r["repeats"] and check["reason"]
            assert check["wait_share"] > contention.WAIT_SHARE_LIMIT or check["others_cpus"] > 0
        else:
            assert r["fwd_ms"] <= 3 * quiet[key]["fwd_ms"], (key, r["fwd_ms"], quiet[key])
    for r in quiet.values():  # and the quiet run had the CPU to itself
        assert r["cpu_checks"]["fwd"]["wait_share"] < 0.5


def test_profile_warns_when_the_machine_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(TINY)
    monkeypatch.setattr(
        contention, "machine_load", lambda sample_s=0.3: MachineLoad(1.0, 2, loadavg=1.02)
    )
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    code, output = run_cli(
        "profile", "--spec", str(spec), "-o", str(tmp_path / "r"), "-a", "sdpa", "-n", "17"
    )
    assert code == 0, output
    assert "warning: the machine is busy" in output and "--threads 1" in output
