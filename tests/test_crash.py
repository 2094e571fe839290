"""Crash consistency: `effbench train` and `effbench profile` killed with SIGKILL at seeded random
moments, in their own process groups. A training run resumed with `--resume auto` after every
kill ends with the losses of an uninterrupted run, one record per epoch and no stray files; a
killed profile sweep keeps every finished point as a valid record."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from specs import TINY_BACKBONE, TINY_MODELS, run_cli

from effbench.plan import plan_train
from effbench.results import ProfileRecord, TrainEpochRecord, TrainRecord, read_jsonl
from effbench.runs import BEST, CHECKPOINT, FINAL, RECORDS, SPEC, resume_checkpoint
from effbench.train.checkpoint import load_checkpoint

WAIT_S = 120.0  # generous: the machine may be shared
EPOCHS = 8
MODEL = "performer"  # random features redrawn during training: the RNG state must resume too

TRAIN_SPEC = (
    TINY_BACKBONE
    + """{models}
[train]
dataset = "synthetic"
synthetic_samples = 1024
download = false
epochs = {epochs}
batch_size = 64
eval_batch_size = 256
lr = 2e-3
warmup_epochs = 0.5
mixup = 0.2
random_erasing = 0.25
device = "cpu"
checkpoint_every = 1
output_dir = "{out}"
"""
)

PROFILE_SPEC = """
[backbone]
image_size = 16
patch_size = 4
dim = 32
heads = 2
{models}
[profile]
retries = 0
batch_size = 2
device = "cpu"
warmup = 0
min_run_time = 0.01
"""

# What a finished run directory holds (`effbench.runs`); anything else is a leftover.
RUN_FILES = {RECORDS, SPEC, CHECKPOINT, BEST, FINAL, "predictions.safetensors"}

# Fields that must come out of a resumed run exactly as out of an uninterrupted one.
EPOCH_FIELDS = ("epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1", "lr")
FINAL_FIELDS = ("status", "epochs_run", "steps", "best_epoch", "best_val_top1", "test_loss")
FINAL_FIELDS += ("test_top1", "test_top5", "images")


def _env() -> dict[str, str]:
    return {**os.environ, "EFFBENCH_ALLOCATOR": "system", "OMP_NUM_THREADS": "1"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m effbench ARGS` in a new session: its process group holds whatever process
    the launcher re-executes into, so `os.killpg` reaches the one that really works."""
    return subprocess.Popen(
        [sys.executable, "-m", "effbench", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> str:
    """SIGKILL the whole process group; its output so far."""
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL, f"it ended before the kill:\n{out.decode()}"
    return out.decode()


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {WAIT_S} s:\n{out.decode()[-3000:]}")
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def _wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """Poll `ready()` every 10 ms until it is true; fail if the process ends or time runs out."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if proc.poll() is not None:
            out = proc.communicate()[0].decode()
            pytest.fail(f"ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} after {WAIT_S} s")
        time.sleep(0.01)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _records(path: Path) -> list[dict]:
    """Every line of a records file, each of which must be a whole JSON record."""
    good, bad = read_jsonl(path)
    assert not bad, bad
    assert len(good) == len(_lines(path))
    return good


def _train_spec(tmp_path: Path, out: Path, *, epochs: int = EPOCHS) -> Path:
    spec = tmp_path / f"{out.name}.toml"
    spec.write_text(TRAIN_SPEC.format(models=TINY_MODELS, epochs=epochs, out=out))
    return spec


def _train_args(spec: Path, *extra: str) -> list[str]:
    return ["train", "--spec", str(spec), "-a", MODEL, *extra]


def _same_run(got: list[dict], want: list[dict]) -> None:
    """`got` holds the epoch records and final record of `want`, figure for figure."""
    kinds = ["train_epoch"] * EPOCHS + ["train"]
    assert [r["kind"] for r in got] == kinds == [r["kind"] for r in want]
    assert [r["epoch"] for r in got[:-1]] == list(range(1, EPOCHS + 1))  # once each, in order
    for a, b in zip(got[:-1], want[:-1], strict=True):
        TrainEpochRecord.model_validate(a)
        assert {k: a[k] for k in EPOCH_FIELDS} == {k: b[k] for k in EPOCH_FIELDS}
    TrainRecord.model_validate(got[-1])
    assert {k: got[-1][k] for k in FINAL_FIELDS} == {k: want[-1][k] for k in FINAL_FIELDS}


def _temporary(p: Path) -> bool:
    """A temporary of `replace_atomically` (`.<name>...tmp`)."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def _no_leftovers(out: Path, run: Path) -> None:
    """Only a finished run's own files below `out`: no lock file, no stray records, no
    temporary a killed writer left (the resumed run removed it)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files if p.parent == run} == RUN_FILES
    assert json.loads((run / SPEC).read_text())["models"]
    stray = [p for p in files if p.parent != run]
    assert all(p.parent == out and p.name.startswith("summary-") for p in stray), stray
    assert all(json.loads(p.read_text())["models"] for p in stray)


@pytest.mark.slow  # three training runs (`.ci/run` runs the slow set)
def test_sigkilled_training_resumes_to_the_uninterrupted_losses(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    # The uninterrupted run, alongside the interrupted ones (one thread each).
    whole_out = tmp_path / "whole"
    whole = _start(_train_args(_train_spec(tmp_path, whole_out)), tmp_path)

    out = tmp_path / "cut"
    spec = _train_spec(tmp_path, out)
    run = out / MODEL / "seed0"
    records = run / RECORDS

    # 1. Killed before its first checkpoint, once its records file is open (epoch 1 under
    # way); then a plain re-run, allowed since nothing is kept, killed alike.
    ckpt = run / CHECKPOINT
    for _ in range(2):
        if ckpt.exists():  # the kill came late: a plain re-run would be refused
            break
        inode = _inode(records)
        proc = _start(_train_args(spec), tmp_path)
        _wait_until(proc, lambda: _inode(records) not in (None, inode), "records file")  # noqa: B023
        _kill(proc)
        if not ckpt.exists():  # the kill came before the first checkpoint, as it should
            assert (run / SPEC).is_file() and _lines(records) == []
            # nothing that reads as a run is left: a plain re-run may start, --resume auto anew
            assert resume_checkpoint(run, None) is None and resume_checkpoint(run, "auto") is None
            plan_train(spec, {}, attention=[MODEL]).check_free()

    # 2.-4. Killed at random moments: after 0-2 more epoch records, then 0-0.3 s on (an
    # epoch takes about 0.2 s; at least three are left to run, so the kill finds it working).
    for kill in range(3):
        before, inode, anew = len(_lines(records)), _inode(records), not ckpt.exists()
        target = min(before + rng.randint(0, 2), EPOCHS - 3)
        delay = rng.uniform(0.0, 0.3)
        proc = _start(_train_args(spec, "--resume", "auto"), tmp_path)
        # the resumed run rewrites the records file to its checkpoint's epochs first
        _wait_until(
            proc,
            lambda: _inode(records) != inode and len(_lines(records)) >= target,  # noqa: B023
            f"{target} epoch records",
        )
        time.sleep(delay)
        output = _kill(proc)
        if anew:
            words = " ".join(output.split())  # the console wraps long lines
            assert "no checkpoint" in words and "starting anew" in words, output
        done = _records(records)  # every line whole, every epoch once
        assert [r["epoch"] for r in done] == list(range(1, len(done) + 1))
        saved = load_checkpoint(ckpt)["epoch"] if ckpt.exists() else 0
        # the record of an epoch follows its checkpoint (every epoch here)
        assert len(done) in (saved - 1, saved), (len(done), saved)
        if kill == 1 and saved:
            # A kill between a checkpoint and its epoch's record, mid-way through writing that
            # record, leaves this behind (too rare to wait for): it must resume alike.
            whole_lines = records.read_text().splitlines(keepends=True)[: saved - 1]
            records.write_text("".join(whole_lines) + '{"kind": "train_epoch", "epo')

    # 5. Resumed once more, to the end.
    _finish(_start(_train_args(spec, "--resume", "auto"), tmp_path))
    _finish(whole)
    want = _records(whole_out / MODEL / "seed0" / RECORDS)
    _same_run(_records(records), want)
    _no_leftovers(out, run)
    _no_leftovers(whole_out, whole_out / MODEL / "seed0")


# A process killed inside `replace_atomically`, mid-way through writing `sys.argv[1]`.
DYING_WRITER = """
import os, signal, sys
from pathlib import Path
from effbench.results import replace_atomically
with replace_atomically(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temporary_is_gone_once_the_run_is_done(tmp_path: Path) -> None:
    """SIGKILL while the first checkpoint (or the records, or the best weights) is written
    leaves a temporary beside it; the run continued with --resume auto to the end leaves none."""
    out = tmp_path / "runs"
    spec = _train_spec(tmp_path, out, epochs=2)
    run = out / MODEL / "seed0"
    for name in (CHECKPOINT, RECORDS, BEST):
        dead = subprocess.run(
            [sys.executable, "-c", DYING_WRITER, str(run / name)], env=_env(), timeout=WAIT_S
        )
        assert dead.returncode == -signal.SIGKILL
    assert len([p for p in run.iterdir() if _temporary(p)]) == 3  # what the kills left
    code, output = run_cli(*_train_args(spec, "--resume", "auto"))
    assert code == 0, output
    assert {p.name for p in run.iterdir() if not _temporary(p)} == RUN_FILES
    # the run that took the directory removed what the killed writers left
    assert sorted(p.name for p in run.iterdir() if _temporary(p)) == []


def test_sigkilled_profile_sweep_keeps_every_finished_point(tmp_path: Path) -> None:
    rng = random.Random(7)
    spec = tmp_path / "bench.toml"
    spec.write_text(PROFILE_SPEC.format(models=TINY_MODELS))
    out = tmp_path / "results"
    args = ["profile", "-s", str(spec), "-o", str(out), "-a", "sdpa", "linformer", "nystrom"]
    args += ["-n", "17", "26", "37", "--repeats", "1", "--min-run-time", "0.01"]
    proc = _start(args, tmp_path)
    lines = rng.randint(1, 3)  # of the 9 points

    def finished() -> bool:
        return sum(len(_lines(p)) for p in out.glob("profile-*.jsonl")) >= lines

    _wait_until(proc, finished, f"{lines} profile records")
    time.sleep(rng.uniform(0.0, 0.3))
    _kill(proc)
    files = sorted(out.glob("profile-*.jsonl"))
    assert len(files) == 1, files
    recs = _records(files[0])
    assert lines <= len(recs) < 9
    for r in recs:
        rec = ProfileRecord.model_validate(r)
        assert rec.status == "ok" and rec.fwd_ms and rec.fwd_ms > 0, r
    assert [(r["model"], r["seq_len"]) for r in recs] == [
        (m, n) for m in ("sdpa", "linformer", "nystrom") for n in (17, 26, 37)
    ][: len(recs)]
    # the resolved spec beside it is whole; nothing else that reads as results is there
    assert json.loads(files[0].with_suffix(".spec.json").read_text())["profile"]["seq_lens"]
    shown = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert shown == {files[0].name, files[0].stem + ".spec.json"}
