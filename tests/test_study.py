"""The study as units (`effbench.study`): study.json checked as a model, a unit finished only
when its records are there and were made from the runs there now, results committed whole,
the cluster executor's logic through submitit's local executor (and the queue it reads, from a
stand-in `squeue` beside the real-SLURM tests), the plan of a dry run, and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from specs import TINY_BACKBONE, run_cli

from effbench.config.spec import ClusterSection
from effbench.env import scheduler
from effbench.errors import RunError, UsageError
from effbench.locks import ClaimError, claim
from effbench.results import JsonlWriter
from effbench.study import open_study
from effbench.study.cluster import ClusterExecutor
from effbench.study.machine import LocalExecutor
from effbench.study.runner import commit, prepare
from effbench.study.state import STUDY, read_state
from effbench.study.units import ACCURACY, MARK, RESULTS, Unit, finished

SPEC = (
    TINY_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[[models]]
name = "linformer"
attention = { kind = "linformer", k = 8 }

[train]
dataset = "synthetic"
seeds = [0, 1]
device = "cpu"

[scale]
resolutions = [16, 32]

[profile]
seq_lens = [17, 65]
"""
)


@pytest.fixture
def study(tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    return open_study(tmp_path / "study", spec, [], None, fresh=False)


def quick_unit(study, key: str, argv: list[str]) -> Unit:  # type: ignore[no-untyped-def]
    """A unit whose command is fast (`effbench --version`, or a failing one)."""
    return Unit(key, key, ACCURACY, argv, study.results / key, study.out / ".attempts" / key)


def finals(directory: Path, run_id: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rec = {"kind": "train", "status": "ok", "run_id": run_id, "time": "t", "model": "sdpa"}
    (directory / "train.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")


def test_units_are_runs_then_accuracy_then_timing_then_report(study) -> None:  # type: ignore[no-untyped-def]
    keys = [u.key for u in study.units()]
    assert keys[:4] == ["train:sdpa/seed0", "train:sdpa/seed1", "train:linformer/seed0",
                        "train:linformer/seed1"]  # fmt: skip
    assert keys[4:] == ["analyze", "resolution:sdpa/seed0", "resolution:sdpa/seed1",
                        "resolution:linformer/seed0", "resolution:linformer/seed1", "scale",
                        "profile", "report"]  # fmt: skip
    train = next(iter(study.units()))
    assert "--attention" in train.argv and "train.seeds=[0]" in train.argv
    assert [u.phase for u in study.units()] == sorted(u.phase for u in study.units())


def test_a_unit_is_finished_by_its_records_made_from_the_runs_there_now(study) -> None:  # type: ignore[no-untyped-def]
    analyze = next(u for u in study.units() if u.key == "analyze")
    for d in study.run_dirs():
        finals(d, "first")
    assert not finished(analyze)
    inputs = prepare(analyze)
    (analyze.attempt / "analyze-1.jsonl").write_text("{}\n", encoding="utf-8")
    commit(analyze, inputs)
    assert finished(analyze) and (study.results / "analyze" / MARK).is_file()
    assert not analyze.attempt.exists()
    finals(study.run_dirs()[0], "retrained")  # a run trained again: its analysis is stale
    assert not finished(analyze)
    inputs = prepare(analyze)  # a second attempt replaces the first's records whole
    (analyze.attempt / "analyze-2.jsonl").write_text("{}\n", encoding="utf-8")
    commit(analyze, inputs)
    assert sorted(p.name for p in (study.results / "analyze").glob("*.jsonl")) == [
        "analyze-2.jsonl"
    ]
    assert finished(analyze)


def test_a_training_unit_is_finished_by_its_final_record(study) -> None:  # type: ignore[no-untyped-def]
    train = next(iter(study.units()))
    assert not finished(train)
    finals(train.dest, "r")
    assert finished(train)
    (train.dest / "train.jsonl").unlink()  # a deleted run is not finished, whatever study.json says
    study.update(train, state="done")
    assert not finished(train)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "unreadable"),
        ('{"version": 2, "spec": {}, "spec_hash": 5, "units": {}}', "damaged (spec_hash"),
        (
            '{"version": 2, "spec": {}, "spec_hash": "x", "units": {"a": {"state": 1}}}',
            "damaged (units.a.state",
        ),
        ('{"spec": {}, "spec_hash": "x", "done": {}}', "an earlier effbench"),
        ("[1, 2]", "damaged"),
    ],
)
def test_a_damaged_study_file_is_one_line_with_the_way_out(tmp_path: Path, text: str,
                                                           says: str) -> None:  # fmt: skip
    path = tmp_path / STUDY
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunError) as err:
        read_state(path)
    (line,) = err.value.lines()
    assert says in line and "--fresh" in line and str(path) in line


def test_the_cluster_logic_through_submitits_local_executor(study) -> None:  # type: ignore[no-untyped-def]
    ok = quick_unit(study, "ok", ["--version"])
    bad = quick_unit(study, "bad", ["no-such-command"])
    executor = ClusterExecutor(study, ClusterSection(), cluster="local", poll_s=0.1)
    events: list[tuple[str, str]] = []
    failures = executor.run(study, [ok, bad], lambda e, u, d: events.append((e, u.key)))
    assert [f.key for f in failures] == ["bad"]
    assert "effbench exited 2" in failures[0].reason
    assert ("submitted", "ok") in events and ("done", "ok") in events
    assert finished(ok) and not finished(bad)
    state = json.loads((study.out / STUDY).read_text())["units"]
    assert state["ok"]["state"] == "done" and state["ok"]["job_id"]
    assert state["bad"]["state"] == "failed" and state["bad"]["attempts"] == 1
    # a second run resubmits only the failed unit
    events.clear()
    executor.run(study, [bad], lambda e, u, d: events.append((e, u.key)))
    assert json.loads((study.out / STUDY).read_text())["units"]["bad"]["attempts"] == 2


@pytest.fixture
def fake_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `squeue` that prints the file `queue` (the real one is tested in
    test_slurm.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    queue = tmp_path / "queue"
    queue.write_text("", encoding="utf-8")
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\ncat {queue}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return queue


def test_a_rerun_attaches_to_live_jobs_even_when_killed_before_the_id_was_written(
    study,
    fake_queue: Path,  # type: ignore[no-untyped-def]
) -> None:
    a, b, c = (quick_unit(study, k, ["--version"]) for k in ("a", "b", "c"))
    study.update(a, state="submitted", job_id="41", executor="slurm")
    for i, u in enumerate((b, c)):  # sbatch ran, then compare died before writing the ids
        study.update(u, state="submitting", batch="effbench-x-1-abc", index=i, executor="slurm")
    fake_queue.write_text("41|effbench-x-a|RUNNING\n77_1|effbench-x-1-abc|PENDING\n"
                          "77_0|effbench-x-1-abc|COMPLETED\n", encoding="utf-8")  # fmt: skip
    executor = ClusterExecutor(study, ClusterSection(), poll_s=0.01)
    live = executor.attach([a, b, c], lambda *_: None)
    assert live == {"a": "41", "c": "77_1"}  # b's job ended: it is not attached to
    assert study.record(c).job_id == "77_1" and study.record(c).state == "submitted"
    fake_queue.write_text("41|effbench-x-a|CANCELLED\n", encoding="utf-8")
    failures = executor.wait([a], {"a": "41"}, lambda *_: None)
    assert failures and "job 41 ended cancelled" in failures[0].reason, failures
    assert "filesystem the nodes share" in failures[0].reason


def test_locks_and_records_never_follow_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".effbench.lock").symlink_to(outside)
    with pytest.raises(ClaimError, match="symbolic link"):
        claim(out)
    (out / "r.jsonl").symlink_to(outside)
    with pytest.raises(RunError, match="symbolic link"):
        JsonlWriter(out / "r.jsonl")
    assert outside.read_text(encoding="utf-8") == "precious"


def test_compare_refuses_a_linked_study_lock(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious", encoding="utf-8")
    out = tmp_path / "study"
    out.mkdir()
    (out / ".effbench-study.lock").symlink_to(outside)
    code, text = run_cli("compare", "-s", str(spec), "-o", str(out))
    assert code == 2 and "symbolic link" in text
    assert outside.read_text(encoding="utf-8") == "precious"


def test_an_output_that_is_not_a_study_is_refused_unless_fresh(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("someone's report", encoding="utf-8")
    with pytest.raises(UsageError, match="not a study"):
        open_study(out, spec, [], None, fresh=False)
    open_study(out, spec, [], None, fresh=True)
    (aside,) = out.glob("previous-*")
    assert (aside / "report.html").read_text(encoding="utf-8") == "someone's report"


def test_the_dry_run_plans_jobs_and_gpu_hours_and_submits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "study"
    code, text = run_cli(
        "compare", "--recipe", "cifar10-gpu", "--seeds", "0", "1", "2", "--executor", "slurm",
        "--slurm-partition", "gpu", "--slurm-time", "240", "--slurm-gpus-per-run", "1",
        "--dry-run", "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    # 11 models x 3 seeds, each job at most 4 h on one GPU
    assert "train: 36 job(s) as an array, each 8 CPU(s), 1 GPU(s), at most 240 min" in text, text
    assert "144.0 GPU-hours" in text
    script = (out / "jobs" / "plan" / "train.sh").read_text(encoding="utf-8")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --array=0-35" in script
    assert "#SBATCH --time=240" in script and "--attention sdpa" in script
    assert not (out / "runs").exists() and not list((out / "jobs").glob("*.pkl"))


def test_devices_are_refused_on_the_cpu_and_slurm_options_are_checked(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    base = ("compare", "-s", str(spec), "-o", str(tmp_path / "s"))
    code, text = run_cli(*base, "--devices", "cpu,cpu")
    assert code == 2 and "give GPUs as cuda:0,cuda:1" in text
    code, text = run_cli(*base, "--devices", "cuda:0")
    assert code == 2 and "not on this machine (0 CUDA GPU(s))" in text
    code, text = run_cli(*base, "--executor", "slurm", "--slurm-arg", "nokey", "--dry-run")
    assert code == 2 and "give KEY=VALUE" in text
    code, text = run_cli(*base, "--executor", "slurm", "--slurm-time", "0", "--dry-run")
    assert code == 2 and "--slurm-time: Input should be greater than 0" in text
    code, text = run_cli(*base, "--dry-run")
    assert code == 2 and "add --executor slurm" in text
    assert not (tmp_path / "s" / RESULTS).exists()


def test_no_sbatch_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing of SLURM's there
    code, text = run_cli("compare", "-s", str(spec), "-o", str(tmp_path / "s"),
                         "--executor", "slurm")  # fmt: skip
    assert code == 2 and "no sbatch on this machine" in text and "--executor local" in text


def test_status_lists_every_unit(study) -> None:  # type: ignore[no-untyped-def]
    study.update(next(iter(study.units())), state="failed", reason="exit 2")
    code, text = run_cli("compare", "-s", str(study.spec_path), "-o", str(study.out), "--status")
    assert code == 0, text
    assert "train:sdpa/seed0" in text and "failed" in text and "exit 2" in text
    assert "profile" in text and "pending" in text


def test_records_carry_the_slurm_job() -> None:
    env = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2",
           "SLURMD_NODENAME": "gpu7"}  # fmt: skip
    assert scheduler(env) == {"slurm_job_id": "10_2", "slurm_array_task_id": 2, "node": "gpu7"}
    assert scheduler({"SLURM_JOB_ID": "12"})["slurm_job_id"] == "12"
    assert scheduler({}) == {}


def test_local_executor_runs_units_one_at_a_time_and_stops_at_a_failure(study) -> None:  # type: ignore[no-untyped-def]
    units = [quick_unit(study, k, a) for k, a in
             (("one", ["--version"]), ("two", ["nope"]), ("three", ["--version"]))]  # fmt: skip
    failures = LocalExecutor().run(study, units, lambda *_: None)
    assert [(f.key, f.code) for f in failures] == [("two", 2)]
    assert finished(units[0]) and not finished(units[2])  # nothing new after a failure


def test_every_file_effbench_writes_replaces_a_link_rather_than_writing_through_it(
    tmp_path: Path,
) -> None:
    from effbench.results import write_json_atomic, write_jsonl_atomic

    outside = tmp_path / "outside.txt"
    outside.write_text("precious", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    for name, write in (("a.json", lambda p: write_json_atomic(p, {"x": 1})),
                        ("b.jsonl", lambda p: write_jsonl_atomic(p, [{"x": 1}]))):  # fmt: skip
        (out / name).symlink_to(outside)
        write(out / name)
        assert not (out / name).is_symlink()
    (out / ".effbench-study.lock").symlink_to(outside)
    with pytest.raises(ClaimError, match="symbolic link"):
        claim(out, lock_name=".effbench-study.lock")
    assert outside.read_text(encoding="utf-8") == "precious"


def test_a_deleted_study_file_is_rebuilt_from_the_records(study) -> None:  # type: ignore[no-untyped-def]
    study.save()
    train = next(iter(study.units()))
    finals(train.dest, "r")
    (study.out / STUDY).unlink()
    again = open_study(study.out, study.spec_path, [], None, fresh=False)
    assert finished(next(iter(again.units())))
    other = study.spec_path.with_name("other.toml")
    other.write_text(SPEC.replace("k = 8", "k = 4"), encoding="utf-8")
    with pytest.raises(UsageError, match="run with other settings"):
        open_study(study.out, other, [], None, fresh=False)


def test_a_file_where_the_study_needs_a_directory_is_refused_up_front(study) -> None:  # type: ignore[no-untyped-def]
    study.out.mkdir(parents=True)
    (study.out / RESULTS).write_text("", encoding="utf-8")
    with pytest.raises(UsageError, match="a file where the study needs a directory"):
        open_study(study.out, study.spec_path, [], None, fresh=False)


def test_a_copied_run_is_counted_once_and_named(tmp_path: Path) -> None:
    from report_records import train

    from effbench.report.inputs import collect

    run = tmp_path / "runs" / "sdpa" / "seed0"
    run.mkdir(parents=True)
    (run / "train.jsonl").write_text(json.dumps(train("sdpa")) + "\n", encoding="utf-8")
    shutil.copytree(run, run.with_name("seed0-copy"))
    results = collect([tmp_path / "runs"])
    assert len(results.kind("train")) == 1
    (bad,) = results.bad
    assert "seed0-copy" in bad.path and "a copy): counted once" in bad.reason


def test_records_of_an_unknown_schema_version_are_skipped_with_the_reason() -> None:
    from effbench.report.checks import admit

    assert "schema_version 7, but this effbench reads version 1" in str(
        admit({"kind": "train", "schema_version": 7})
    )


def test_small_spec_faults_are_refused_in_a_few_lines() -> None:
    from effbench.config.budget import parse_budget
    from effbench.config.load import parse_spec
    from effbench.errors import SpecError

    with pytest.raises(ValueError, match="at most 1,000,000 epochs"):
        parse_budget("99999999999999999999ep")
    model = {"name": "l", "attention": {"kind": "linformer", "k": [16.0, 16]}}
    with pytest.raises(SpecError, match="lists 16 more than once"):
        parse_spec({"models": [model]})
    huge = {"name": "l", "attention": {"kind": "linformer", "k": list(range(-3000, 0))}}
    with pytest.raises(SpecError) as err:
        parse_spec({"models": [huge]})
    lines = err.value.lines()
    assert len(lines) == 21 and lines[-1].startswith("... and ")


def test_devices_run_training_units_at_once_each_pinned(study) -> None:  # type: ignore[no-untyped-def]
    from effbench.study.units import TRAIN

    units = [Unit(f"t{i}", "t", TRAIN, ["train", "--help"], study.out / f"t{i}") for i in range(3)]
    executor = LocalExecutor(devices=["cuda:0", "cuda:1"], threads=4)
    assert executor.extra(units[0], "cuda:1") == ["--device", "cuda:1", "--threads", "4"]
    events: list[tuple[str, str, str]] = []
    executor.run(study, units, lambda e, u, d: events.append((e, u.key, d)))
    starts = [(k, d) for e, k, d in events if e == "start"]
    assert starts[:2] == [("t0", "cuda:0"), ("t1", "cuda:1")]
    assert [e for e, _, _ in events][:2] == ["start", "start"]  # both ran at once
    assert ("start", "t2") in [(e, k) for e, k, _ in events]


def test_a_second_compare_into_a_study_in_use_is_refused(study) -> None:  # type: ignore[no-untyped-def]
    held = claim(study.out, what="study", lock_name=".effbench-study.lock")
    try:
        code, text = run_cli("compare", "-s", str(study.spec_path), "-o", str(study.out))
    finally:
        held.release()
    assert code == 2 and "this study is in use by pid" in text


def test_an_unpaired_row_names_the_predictions_file_and_why(tmp_path: Path) -> None:
    from effbench.report.comparison import answers

    run = tmp_path / "runs" / "sdpa" / "seed0"
    run.mkdir(parents=True)
    final = {"_source": str(run / "train.jsonl"), "test_top1": 0.5}
    mine, why = answers([final])
    assert mine is None and why == f"{run / 'predictions.safetensors'} is missing"
    (run / "predictions.safetensors").write_bytes(b"\x00\x01truncated")
    mine, why = answers([final])
    assert mine is None and "is not a readable predictions file" in str(why)


def test_a_signal_while_waiting_leaves_the_jobs_queued_for_the_rerun(
    study,
    fake_queue: Path,  # type: ignore[no-untyped-def]
) -> None:
    import signal
    import threading

    from effbench.study.machine import StudyInterrupted

    unit = quick_unit(study, "a", ["--version"])
    study.update(unit, state="submitted", job_id="41", executor="slurm")
    fake_queue.write_text("41|effbench-x-a|RUNNING\n", encoding="utf-8")
    executor = ClusterExecutor(study, ClusterSection(), poll_s=0.05)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(StudyInterrupted, match="SIGINT during waiting for the jobs"):
        executor.run(study, [unit], lambda *_: None)
    assert study.record(unit).job_id == "41" and study.record(unit).state == "running"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
