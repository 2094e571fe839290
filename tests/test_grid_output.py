"""What profile and scale print and keep: tables whole in a log (stdout not a terminal), and a
grid stopped by SIGINT or SIGTERM saying what it kept, with every kept point a whole record."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from specs import MINI, TINY16_BACKBONE, needs_mini, run_cli

from effbench.cli.console import Console, backend_note
from effbench.cli.profile import PROFILE_COLUMNS, profile_row
from effbench.cli.scale import scale_columns, scale_row
from effbench.measure.timing import Rounds, _Repeats
from effbench.results import ProfileRecord, ScaleRecord, read_jsonl

LONG_NAME = "sdpa-with-a-name-much-wider-than-its-column"

SPEC = (
    TINY16_BACKBONE
    + f"""
[[models]]
name = "{LONG_NAME}"
attention = {{ kind = "sdpa" }}

[[models]]
name = "linformer"
attention = {{ kind = "linformer", k = 8 }}

[profile]
retries = 0
seq_lens = [17, 26]
batch_size = 2
device = "cpu"
threads = 1
warmup = 0
min_run_time = 0.01
repeats = 1
count_flops = false

[scale]
retries = 0
resolutions = [8, 16]
batch_size = 2
mode = "infer"
device = "cpu"
threads = 1
warmup = 0
min_run_time = 0.01
repeats = 1
breakdown = false
count_flops = false
"""
)


CHECKPOINT_SPEC = """
[backbone]
image_size = 16
patch_size = 4
dim = 32
depth = 1
heads = 2

[[models]]
name = "LONG"
attention = {{ kind = "sdpa" }}

[train]
dataset = "cifar10"
data_dir = "{data_dir}"
download = false
epochs = 1
batch_size = 128
eval_batch_size = 512
device = "cpu"
threads = 1
output_dir = "{out}"

[scale]
retries = 0
batch_size = 2
mode = "infer"
device = "cpu"
threads = 1
warmup = 0
min_run_time = 0.01
repeats = 1
breakdown = false
count_flops = false
""".replace("LONG", LONG_NAME)


def write_spec(tmp_path: Path, spec: str = SPEC) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(spec)
    return p


def results_file(out: Path, kind: str) -> Path:
    (path,) = out.glob(f"{kind}-*.jsonl")
    return path


def plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def assert_rows_whole(output: str, headers: list[str], rows: list[list[str]]) -> None:
    """Every header on the header line, and each row's cells whole, in order, on one line."""
    lines = output.splitlines()
    assert any(all(h in line for h in headers) for line in lines), output
    for row in rows:
        pattern = r"\s+".join(re.escape(plain(c)) for c in row)
        assert any(re.search(pattern, line) for line in lines), (row, output)


# ---------------------------------------------------------------------------- tables in a log


@pytest.fixture
def no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COLUMNS from the environment the tests run in: the console chooses the width."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.mark.usefixtures("no_columns")
def test_profile_table_keeps_every_column_when_piped(tmp_path: Path) -> None:
    out = tmp_path / "res"
    code, output = run_cli("profile", "-s", str(write_spec(tmp_path)), "-o", str(out))
    assert code == 0, output
    recs = [ProfileRecord.model_validate(r) for r in read_jsonl(results_file(out, "profile"))[0]]
    assert len(recs) == 4
    assert any(backend_note(r) for r in recs)  # a note: the SDPA backend
    assert_rows_whole(output, list(PROFILE_COLUMNS), [profile_row(r) for r in recs])
    assert f"Results: {results_file(out, 'profile')}" in output  # the closing line, unbroken


@pytest.mark.usefixtures("no_columns")
def test_scale_tables_keep_every_column_when_piped(tmp_path: Path) -> None:
    out = tmp_path / "res"
    code, output = run_cli("scale", "-s", str(write_spec(tmp_path)), "-o", str(out))
    assert code == 0, output
    recs = read_jsonl(results_file(out, "scale"))[0]
    points = [ScaleRecord.model_validate(r) for r in recs if r["kind"] == "scale"]
    assert len(points) == 4
    assert any(r.note for r in points)  # linformer's k fitted to the tokens at 8 px
    columns = list(scale_columns(checkpoint=False, max_batch=False))
    rows = [[scale_row(r)[c] for c in columns] for r in points]
    assert_rows_whole(output, columns, rows)
    # the crossover table: every model on one line with all its metrics
    summary = next(line for line in output.splitlines() if "Crossover against" in line)
    assert "log-log slope against tokens" in summary
    model_lines = [line for line in output.splitlines() if line.lstrip().startswith(LONG_NAME)]
    assert any("base" in line and line.count("base") >= 2 for line in model_lines), output


@needs_mini
@pytest.mark.usefixtures("no_columns")
def test_scale_of_a_checkpoint_keeps_resolution_top1_and_note_when_piped(tmp_path: Path) -> None:
    """The table `scale --checkpoint` exists to show: each resolution's cost beside the trained
    model's top-1, one line per resolution."""
    spec = write_spec(tmp_path, CHECKPOINT_SPEC.format(data_dir=MINI, out=tmp_path / "runs"))
    code, output = run_cli("train", "-s", str(spec))
    assert code == 0, output
    run = tmp_path / "runs" / LONG_NAME / "seed0"
    out = tmp_path / "res"
    code, output = run_cli(
        "scale", "-s", str(spec), "--checkpoint", str(run), "--res", "8", "16", "-o", str(out)
    )
    assert code == 0, output
    points = [ScaleRecord.model_validate(r) for r in read_jsonl(results_file(out, "scale"))[0]]
    assert [r.image_size for r in points] == [8, 16]
    assert all(r.test_top1 is not None and backend_note(r) for r in points)
    columns = list(scale_columns(checkpoint=True, max_batch=False))
    rows = [[scale_row(r)[c] for c in columns] for r in points]
    assert_rows_whole(output, columns, rows)


def test_a_users_columns_still_sets_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = Console(file=io.StringIO())
    monkeypatch.setenv("COLUMNS", "60")
    assert piped.width == 60
    monkeypatch.delenv("COLUMNS")
    assert piped.width > 200
    assert Console(file=io.StringIO(), width=70).width == 70


# ---------------------------------------------------------------------------- stopped in process


def signal_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, nth: int, signum: int
) -> None:
    """Make the `nth` call of `owner.name` send `signum` to this process first."""
    original: Callable[..., Any] = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth:
            signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def interleaved(tmp_path: Path) -> Path:
    return write_spec(tmp_path, SPEC.replace("repeats = 1", "repeats = 3"))


def test_sigterm_in_the_rounds_keeps_every_point_with_the_repeats_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 points x 2 phases = 8 timings a round: the 12th is in round 2
    signal_on_call(monkeypatch, _Repeats, "take", 12, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "res"
    code, output = run_cli("profile", "-s", str(interleaved(tmp_path)), "-o", str(out))
    path = results_file(out, "profile")
    assert code == 143, output
    assert (
        f"interrupted by SIGTERM: kept 4 of 4 points in {path} (4 with fewer than the 3 timing "
        "repeats asked); running the same command again measures all 4 points anew" in output
    )
    recs, bad = read_jsonl(path)
    assert not bad and len(recs) == 4
    assert all(r["status"] == "ok" and 1 <= r["repeats"] < 3 and r["fwd_ms"] for r in recs)
    assert signal.getsignal(signal.SIGTERM) is before  # the grid's handler is gone again


def test_sigint_before_the_rounds_keeps_no_untimed_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the warm-up of the third phase (second point): two points measured but never timed
    signal_on_call(monkeypatch, Rounds, "add", 3, signal.SIGINT)
    out = tmp_path / "res"
    code, output = run_cli("profile", "-s", str(interleaved(tmp_path)), "-o", str(out))
    path = results_file(out, "profile")
    assert code == 130, output
    assert f"interrupted by SIGINT: no point finished ({path} is empty)" in output
    assert path.read_text() == ""
    assert "Results:" not in output  # no closing line as if the grid were done


def test_sigint_stops_scale_before_its_crossovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal_on_call(monkeypatch, _Repeats, "take", 2, signal.SIGINT)  # back to back: point 2
    out = tmp_path / "res"
    code, output = run_cli("scale", "-s", str(write_spec(tmp_path)), "-o", str(out))
    path = results_file(out, "scale")
    assert code == 130, output
    assert f"interrupted by SIGINT: kept 2 of 4 points in {path};" in output
    recs, bad = read_jsonl(path)
    assert not bad and [r["kind"] for r in recs] == ["scale", "scale"]
    assert "Crossover against" not in output


# ---------------------------------------------------------------------------- a real process

SUBPROCESS_SPEC = SPEC.replace("seq_lens = [17, 26]", "seq_lens = [17, 26, 33, 41, 50, 65]")


@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],  # SIGINT: for time
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signalled_profile_says_what_it_kept(tmp_path: Path, signum: int) -> None:
    """`python -m effbench profile` as a user runs it (through the entry point, which may
    re-execute itself with an allocator preloaded: same process id), stopped once its first
    record is written."""
    spec = write_spec(tmp_path, SUBPROCESS_SPEC)
    out = tmp_path / "res"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    cmd = [sys.executable, "-m", "effbench", "profile", "-s", str(spec), "-o", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(out.glob("profile-*.jsonl"))
            if files and files[0].read_text().strip():
                break
            time.sleep(0.02)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, stdout + stderr
    path = results_file(out, "profile")
    lines = path.read_text().splitlines()
    assert lines and all(json.loads(line)["kind"] == "profile" for line in lines)
    name = signal.Signals(signum).name
    match = re.search(rf"^interrupted by {name}: kept (\d+) of 12 points in (\S+); ", stderr, re.M)
    assert match, stderr
    assert int(match[1]) == len(lines) and match[2] == str(path)
    assert "Traceback" not in stderr
