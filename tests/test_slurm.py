"""`effbench compare --executor slurm` on a real one-node SLURM cluster (Debian's slurm-wlm,
started by `.ci/slurm-up.sh`): units as jobs and arrays, a tiny study whose losses equal the
local executor's bit for bit, a cancelled job resubmitted alone and resumed from its
checkpoint, compare killed while its jobs run and attached to again, a job that fails at start.

Skipped where no cluster answers (`sinfo`), unless EFFBENCH_REQUIRE_SLURM is set (CI). The
whole studies are marked `slurm` and run apart from the default suite (`pytest -m slurm`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from specs import tiny_study

from effbench.config.spec import ClusterSection
from effbench.study import open_study
from effbench.study.cluster import ClusterExecutor
from effbench.study.units import ACCURACY, Unit, finished


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20, check=True).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return False
    return any(s.strip() in ("idle", "mixed", "allocated", "completing") for s in out.split())


UP = _cluster_up()
if not UP and os.environ.get("EFFBENCH_REQUIRE_SLURM"):
    raise RuntimeError("EFFBENCH_REQUIRE_SLURM is set but no SLURM cluster answers sinfo")
pytestmark = pytest.mark.skipif(
    not UP, reason="no SLURM cluster here (sinfo fails); `bash .ci/slurm-up.sh` starts one"
)

SPEC = tiny_study(
    """
dataset = "synthetic"
synthetic_samples = {samples}
epochs = {epochs}
batch_size = 256
eval_batch_size = 512
warmup_epochs = 0.5
device = "cpu"
threads = 1
""",
    seq_lens="[17]",
)
ENV = {**os.environ, "COLUMNS": "200", "EFFBENCH_POLL_S": "0.5"}


def write_spec(tmp_path: Path, samples: int = 512, epochs: int = 1) -> Path:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC.format(samples=samples, epochs=epochs), encoding="utf-8")
    return spec


def compare(spec: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "effbench", "compare", "-s", str(spec), "-o", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)  # fmt: skip


def finished_ok(proc: subprocess.Popen[str], limit_s: float = 600) -> str:
    text, _ = proc.communicate(timeout=limit_s)
    assert proc.returncode == 0, text
    return text


def units(out: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return json.loads((out / "study.json").read_text(encoding="utf-8"))["units"]


def records(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_until(check, limit_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < end, f"{what}: not within {limit_s} s"
        time.sleep(0.3)


def test_units_run_as_jobs_of_an_array_and_a_failure_says_why(tmp_path: Path) -> None:
    study = open_study(tmp_path / "study", write_spec(tmp_path), [], None, fresh=False)
    ok, bad = (Unit(k, k, ACCURACY, argv, study.results / k, study.out / ".attempts" / k)
               for k, argv in (("ok", ["--version"]), ("bad", ["no-such-command"])))  # fmt: skip
    executor = ClusterExecutor(study, ClusterSection(partition="debug"), poll_s=0.3)
    failures = executor.run(study, [ok, bad], lambda *_: None)
    assert [f.key for f in failures] == ["bad"] and "effbench exited 2" in failures[0].reason
    state = units(study.out)
    assert state["ok"]["state"] == "done" and state["ok"]["job_id"].endswith("_0")
    assert state["bad"]["job_id"].endswith("_1")  # one array
    assert finished(ok)


@pytest.mark.slurm
def test_a_tiny_study_on_slurm_equals_the_local_one(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    t0 = time.monotonic()
    finished_ok(compare(spec, tmp_path / "local", "--seeds", "0", "1"))
    local_s = time.monotonic() - t0
    t0 = time.monotonic()
    text = finished_ok(compare(spec, tmp_path / "slurm", "--seeds", "0", "1", "--executor",
                               "slurm", "--slurm-partition", "debug"))  # fmt: skip
    slurm_s = time.monotonic() - t0
    print(f"tiny study: local {local_s:.0f} s, slurm {slurm_s:.0f} s")
    assert "submitted job" in text and "Report:" in text
    jobs = units(tmp_path / "slurm")
    for model in ("sdpa", "linformer"):
        for seed in (0, 1):
            run = f"runs/{model}/seed{seed}/train.jsonl"
            here, there = records(tmp_path / "local" / run), records(tmp_path / "slurm" / run)
            assert [r.get("train_loss") for r in here] == [r.get("train_loss") for r in there]
            assert here[-1]["test_top1"] == there[-1]["test_top1"]
            assert {r["env"]["slurm_job_id"] for r in there} == {
                jobs[f"train:{model}/seed{seed}"]["job_id"]
            }
            assert "slurm_job_id" not in here[-1]["env"] or here[-1]["env"]["slurm_job_id"] is None
    scale = next((tmp_path / "slurm" / "results" / "scale").glob("*.jsonl"))
    assert records(scale)[0]["env"]["slurm_job_id"] == jobs["scale"]["job_id"]


@pytest.mark.slurm
def test_a_cancelled_job_is_resubmitted_alone_and_resumes(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, samples=6000, epochs=3), tmp_path / "study"
    first = compare(spec, out, "-a", "sdpa", "--seeds", "0", "1", "--executor", "slurm")
    ckpt = out / "runs" / "sdpa" / "seed0" / "checkpoint.pt"
    wait_until(ckpt.exists, 300, "a first checkpoint")
    job = units(out)["train:sdpa/seed0"]["job_id"]
    subprocess.run(["scancel", job], check=True)
    text, _ = first.communicate(timeout=600)
    assert first.returncode == 1, text
    assert f"train:sdpa/seed0 failed (job {job} ended" in text
    assert units(out)["train:sdpa/seed1"]["state"] == "done"

    text = finished_ok(compare(spec, out, "-a", "sdpa", "--seeds", "0", "1", "--executor",
                               "slurm"))  # fmt: skip
    assert "train:sdpa/seed1: done, skipped" in text
    assert text.count("train:sdpa/seed0: submitted") == 1
    assert "train:sdpa/seed1: submitted" not in text
    state = units(out)["train:sdpa/seed0"]
    assert state["attempts"] == 2 and state["job_id"] != job
    log = Path(out / "jobs" / f"{state['job_id']}_0_log.out").read_text(encoding="utf-8")
    assert "resuming sdpa seed 0 from" in log
    recs = records(out / "runs" / "sdpa" / "seed0" / "train.jsonl")
    assert [r["epoch"] for r in recs if r["kind"] == "train_epoch"] == [1, 2, 3]


@pytest.mark.slurm
def test_compare_killed_while_its_jobs_run_submits_nothing_twice(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, samples=4000, epochs=2), tmp_path / "study"
    args = ("-a", "sdpa", "--seeds", "0", "1", "--executor", "slurm")
    first = compare(spec, out, *args)
    wait_until(lambda: (out / "study.json").exists() and all(
        u.get("job_id") for k, u in units(out).items() if k.startswith("train")
    ) and len(units(out)) >= 2, 120, "the training jobs submitted")  # fmt: skip
    submitted = {k: u["job_id"] for k, u in units(out).items()}
    first.send_signal(signal.SIGKILL)
    first.wait()
    text = finished_ok(compare(spec, out, *args))
    assert "train:sdpa/seed0: submitted" not in text and "train:sdpa/seed1: submitted" not in text
    for key, job in submitted.items():
        assert units(out)[key]["job_id"] == job and units(out)[key]["attempts"] == 1
    assert "attached" in text or "done, skipped" in text


@pytest.mark.slurm
def test_a_job_that_fails_at_start_names_the_fix(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    text = spec.read_text(encoding="utf-8").replace(
        'dataset = "synthetic"', f'dataset = "cifar10"\ndata_dir = "{tmp_path / "none"}"\n'
        "download = false"
    )  # fmt: skip
    spec.write_text(text, encoding="utf-8")
    proc = compare(spec, tmp_path / "study", "-a", "sdpa", "--executor", "slurm")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "train:sdpa/seed0 failed (job" in out and "--data-dir" in out
    assert "effbench exited 2" in out


@pytest.mark.slurm
def test_a_job_at_its_time_limit_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, samples=6000, epochs=3), tmp_path / "study"
    proc = compare(spec, out, "-a", "sdpa", "--seeds", "0", "--executor", "slurm")
    run = out / "runs" / "sdpa" / "seed0"
    wait_until((run / "train.jsonl").exists, 300, "the first epoch")
    job = units(out)["train:sdpa/seed0"]["job_id"]
    # what SLURM sends 90 s before a time limit (--signal=USR2@90): submitit's signal
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    text = finished_ok(proc)
    state = units(out)["train:sdpa/seed0"]
    assert state["job_id"] == job and state["attempts"] == 1  # the same job, requeued
    log = (out / "jobs" / f"{job}_0_log.out").read_text(encoding="utf-8")
    assert "resuming sdpa seed 0 from" in log
    recs = records(run / "train.jsonl")
    assert [r["epoch"] for r in recs if r["kind"] == "train_epoch"] == [1, 2, 3]
    assert "Report:" in text
