"""What a user can cause never ends in a traceback or a lost result: outputs are claimed by one
process at a time, resumes check their settings, failed writes and unreadable images are one
line, and every spec problem is blamed on where its value came from."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from specs import TINY_BACKBONE
from typer.testing import CliRunner

from effbench.cli import app
from effbench.config.overrides import parse_set
from effbench.errors import SpecError, os_error_line
from effbench.locks import LOCK, ClaimError, claim, claimed
from effbench.plan import resolve_spec
from effbench.results import JsonlWriter, replace_atomically
from effbench.results import files as results_mod

ROOT = Path(__file__).resolve().parents[1]

SPEC = (
    TINY_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = {{ kind = "sdpa" }}

[[models]]
name = "lin"
attention = {{ kind = "linformer", k = 64 }}

[profile]
retries = 0
seq_lens = [17]
batch_size = 2
device = "cpu"
warmup = 0
repeats = 1
min_run_time = 0.01
breakdown = false

[train]
dataset = "{dataset}"
data_dir = "{data_dir}"
download = false
epochs = 1
batch_size = {batch}
eval_batch_size = 64
workers = {workers}
device = "cpu"
output_dir = "{out}"
synthetic_samples = 128
"""
)


def write_spec(
    tmp_path: Path, *, dataset: str = "synthetic", data_dir: Path | None = None, **kw: object
) -> Path:
    p = tmp_path / "bench.toml"
    values = {"batch": 32, "workers": 0, "out": tmp_path / "runs"} | kw
    p.write_text(SPEC.format(dataset=dataset, data_dir=data_dir or tmp_path, **values))
    return p


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


# ---------------------------------------------------------------------------- claims


def test_a_claimed_directory_is_refused_naming_its_holder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    first = claim(target, what="run directory")
    assert (target / LOCK).is_file() and first.stale is None
    with pytest.raises(ClaimError) as err:
        claim(target, what="run directory")  # a second open file: flock refuses it too
    assert str(target) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    first.release()
    assert not (tmp_path / "a").exists()  # made for the claim, left empty: removed
    with claimed([target]) as held:
        (target / "x").write_text("kept")
        assert held[0].stale is None
    assert (target / "x").read_text() == "kept" and not (target / LOCK).exists()


def test_claims_of_a_live_and_a_dead_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from effbench.locks import claim
        claim(__import__("pathlib").Path({str(tmp_path)!r}))
        print("held", os.getpid(), flush=True)
        if sys.argv[1] == "die":
            os._exit(0)  # killed, in effect: no release
        time.sleep(60)
        """
    )
    live = subprocess.Popen(
        [sys.executable, "-c", code, "live"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert live.stdout.readline().split()[0] == "held"
        with pytest.raises(ClaimError, match=f"in use by pid {live.pid} "):
            claim(tmp_path)
    finally:
        live.kill()
        live.wait()
    dead = subprocess.run(
        [sys.executable, "-c", code, "die"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    word, pid = dead.stdout.split()
    assert word == "held"
    taken = claim(tmp_path)
    assert taken.stale is not None
    assert taken.stale.startswith(f"took over the claim of pid {pid} on ")
    assert taken.stale.endswith("which is no longer running")
    taken.release()


def test_train_refuses_a_run_directory_in_use_and_writes_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    run = tmp_path / "runs" / "sdpa" / "seed0"
    held = claim(run, what="run directory")
    try:
        code, out = cli("train", "-s", str(spec), "-a", "sdpa")
    finally:
        held.release()
    assert code == 2 and f"{run}: this run directory is in use by pid {os.getpid()}" in out
    assert not run.exists()
    code, out = cli("train", "-s", str(spec), "-a", "sdpa")
    assert code == 0, out
    assert not (run / LOCK).exists() and (run / "train.jsonl").is_file()


def test_report_output_in_use_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    assert cli("train", "-s", str(spec), "-a", "sdpa")[0] == 0
    held = claim(tmp_path / "rep", what="report output")
    try:
        code, out = cli("report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep"))
    finally:
        held.release()
    assert code == 2 and "report output is in use" in out
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------------------- resume


def test_resume_auto_refuses_a_finished_run_trained_otherwise(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    assert cli("train", "-s", str(spec), "-a", "sdpa")[0] == 0
    records = tmp_path / "runs" / "sdpa" / "seed0" / "train.jsonl"
    before = records.read_text()
    code, out = cli("train", "-s", str(spec), "-a", "sdpa", "--epochs", "2", "--resume", "auto")
    assert code == 2, out
    assert "was trained with other settings" in out and "train.epochs: run 1, now 2" in out
    assert "already finished" not in out and records.read_text() == before
    code, out = cli("train", "-s", str(spec), "-a", "sdpa", "--resume", "auto")
    assert code == 0 and "already finished (ok), skipped" in out
    # neutral settings (threads, where the data is) may differ
    code, out = cli("train", "-s", str(spec), "-a", "sdpa", "--threads", "1", "--resume", "auto")
    assert code == 0 and "already finished" in out
    run = tmp_path / "runs" / "sdpa" / "seed0"
    code, out = cli("train", "-s", str(spec), "-a", "sdpa", "--lr", "0.5", "--resume", str(run))
    assert code == 2 and "train.lr: run 0.001, now 0.5" in out


# ---------------------------------------------------------------------------- I/O failures


def test_a_record_that_cannot_be_written_whole_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path, new=True) as w:
        w.write({"a": 1})
        real = os.write

        def half_then_full(fd: int, data: bytes) -> int:
            if len(data) > 4:
                return real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(results_mod.os, "write", half_then_full)
        with pytest.raises(OSError, match="No space"):
            w.write({"b": "x" * 100})
        monkeypatch.setattr(results_mod.os, "write", real)
        w.write({"c": 3})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"c": 3}]
    with pytest.raises(FileExistsError):
        JsonlWriter(path, new=True)  # a results file of its own: never shared


def test_replace_atomically_says_the_disk_is_full_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.pt"
    path.write_text("old")
    full = type("Usage", (), {"free": 0})()
    monkeypatch.setattr(results_mod.shutil, "disk_usage", lambda _: full)
    with pytest.raises(OSError) as err, replace_atomically(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64 vs 0")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert "the disk is full" in os_error_line(err.value)


def test_files_get_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spec = write_spec(tmp_path)
        assert cli("train", "-s", str(spec), "-a", "sdpa")[0] == 0
    finally:
        os.umask(old)
    run = tmp_path / "runs" / "sdpa" / "seed0"
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes["model.safetensors"] == modes["train.jsonl"] == modes["spec.json"] == 0o644


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "No space left on device; the disk is full"),
        (errno.EACCES, "Permission denied; no permission to write there"),
        (errno.EROFS, "Read-only file system; the file system is read-only"),
    ],
)
def test_a_failed_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    def fail(self: JsonlWriter, record: object) -> None:
        raise OSError(code, os.strerror(code), str(self.path))

    monkeypatch.setattr(JsonlWriter, "write", fail)
    spec = write_spec(tmp_path)
    code_, out = cli("profile", "-s", str(spec), "-a", "sdpa", "-o", str(tmp_path / "p"))
    assert code_ == 2
    lines = [line for line in out.splitlines() if words in line]
    assert len(lines) == 1 and "profile-" in lines[0], out


def test_output_that_is_a_file_is_one_line_for_every_command(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for args in (
        ["train", "-s", str(spec), "-a", "sdpa", "-o", str(blocker / "runs")],
        ["profile", "-s", str(spec), "-a", "sdpa", "-o", str(blocker)],
        ["scale", "-s", str(spec), "-a", "sdpa", "--res", "32", "-o", str(blocker)],
    ):
        code, out = cli(*args)
        assert code == 2, (args, out)
        assert f"{blocker}" in out and ("a file stands" in out or "already there" in out), out
    assert blocker.read_text() == "mine"


# ---------------------------------------------------------------------------- image folders


def image_folder(root: Path, per_class: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in ("n01", "n02"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.JPEG", format="JPEG")
    return root


def test_too_few_images_for_a_batch_is_one_line(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "inet", per_class=6)
    spec = write_spec(tmp_path, dataset="imagenet100", data_dir=data, batch=64)
    code, out = cli("train", "-s", str(spec), "-a", "sdpa")
    assert code == 2 and "make no full batch of 64; lower train.batch_size" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_one_line_and_blocks_nothing(tmp_path: Path, workers: int) -> None:
    data = image_folder(tmp_path / "inet", per_class=10)
    bad = data / "train" / "n01" / "3.JPEG"
    bad.write_bytes(b"")
    spec = write_spec(tmp_path, dataset="imagenet100", data_dir=data, batch=8, workers=workers)
    code, out = cli("train", "-s", str(spec), "-a", "sdpa")
    assert code == 2 and f"{bad}: unreadable image" in out and "worker" not in out, out
    assert not (tmp_path / "runs").exists()  # nothing half-made blocks the next run
    image_folder(tmp_path / "inet", per_class=10)  # the user replaces the image
    code, out = cli("train", "-s", str(spec), "-a", "sdpa")
    assert code == 0, out


# ---------------------------------------------------------------------------- spec sources


def test_unselected_models_do_not_block_the_selected_ones(tmp_path: Path) -> None:
    default = ROOT / "bench.toml"
    bench = resolve_spec(default, {"profile.seq_lens": [17]}, ["sdpa"], tokens="profile")
    assert [m.name for m in bench.models] == ["sdpa"]
    with pytest.raises(SpecError) as err:
        resolve_spec(default, {"profile.seq_lens": [17]}, ["linformer"], tokens="profile")
    assert any(line.startswith(f"{default}:models[") for line in err.value.lines())
    spec = write_spec(tmp_path)
    with pytest.raises(SpecError) as err:  # train: the 17 tokens of a 32 px image at patch 8
        resolve_spec(spec, {}, ["nystrom"], tokens="image")
    assert err.value.lines() == [
        "--attention nystrom (its default options) at models[nystrom].attention.landmarks: "
        "32 exceeds the 17 tokens of a 32px image at patch 8"
    ]


def test_problems_are_blamed_on_the_option_or_set_item(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    write_spec(tmp_path).rename(other)
    for args, line in (
        (["--set", "train.lr=inf"], "--set train.lr: Input should be a finite number"),
        (["--lr", "inf"], "--lr (train.lr): Input should be a finite number"),
        (["--set", "train.warmup_epochs=nan"], "--set train.warmup_epochs: Input should be"),
        (["--set", 'train.output_dir="runs'], "--set train.output_dir: '\"runs' is not a TOML"),
        (["--set", "train.seeds=[0,"], "--set train.seeds: '[0,' is not a TOML value"),
        (["--lr", "1", "--set", "train.lr=2"], "--lr 1.0 and --set train.lr=2 disagree"),
        (["--set", "train.bogus=1"], "--set train.bogus: unknown key 'bogus'"),
    ):
        code, out = cli("train", "-s", str(other), "-a", "sdpa", *args)
        assert code == 2 and out.strip().startswith(line), (args, out)
        assert "bench.toml" not in out
    other.write_text(other.read_text().replace("dim = 32", "dim = 33"))
    code, out = cli("train", "-s", str(other), "-a", "sdpa")
    assert code == 2 and f"{other}:backbone.dim: 33 is not divisible" in out


def test_set_takes_plain_words_and_paths_as_text() -> None:
    got = parse_set(["train.dataset=synthetic", "train.data_dir=~/data/cifar", "train.lr=3e-4"])
    assert got == {"train.dataset": "synthetic", "train.data_dir": "~/data/cifar", "train.lr": 3e-4}
    assert parse_set(["train.budget=2e15flop"]) == {"train.budget": "2e15flop"}
    with pytest.raises(SpecError, match="is not a TOML value"):
        parse_set(["train.dataset=two words"])


def test_a_spec_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert resolve_spec(spec, {}, ["sdpa"]).models[0].name == "sdpa"


def test_a_foreign_checkpoint_message_gives_no_unsafe_advice(tmp_path: Path) -> None:
    import pickle

    spec = write_spec(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": 1, "f": os.getcwd}))
    code, out = cli("train", "-s", str(spec), "-a", "sdpa", "--resume", str(evil))
    assert code == 2 and "holds objects other than tensors" in out
    assert "weights_only" not in out and "UserWarning" not in out


def test_analyze_names_its_argument_not_an_option(tmp_path: Path) -> None:
    code, out = cli("analyze", str(tmp_path / "nowhere"))
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such run directory" in out
    assert "--checkpoint" not in out


def test_a_claim_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dead = tmp_path / f".checkpoint.pt.{gone}-0a1b2c.tmp"
    live = tmp_path / f".train.jsonl.{os.getpid()}-0a1b2c.tmp"
    mine = tmp_path / ".notes.tmp"  # not a name effbench gives its temporaries
    for p in (dead, live, mine):
        p.write_text("x")
    with claimed([tmp_path]):
        assert not dead.exists() and live.exists() and mine.exists()
