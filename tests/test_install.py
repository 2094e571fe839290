"""effbench works from any directory: the default spec ships with the package (and `effbench
init` writes it out), and datasets have a default home outside the working directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from specs import run_cli

from effbench.config.fields import default_data_dir
from effbench.config.load import load_spec
from effbench.config.spec import TrainSection
from effbench.data import load_cifar10
from effbench.errors import DataError
from effbench.study.recipes import shipped_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_default_is_the_repository_spec() -> None:
    assert shipped_spec().read_bytes() == (ROOT / "bench.toml").read_bytes()


def test_init_writes_the_default_and_never_replaces_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, text = run_cli("init")
    assert code == 0 and "wrote bench.toml" in text, text
    written = tmp_path / "bench.toml"
    assert written.read_bytes() == shipped_spec().read_bytes()
    assert load_spec(written) == load_spec(shipped_spec())  # it validates, as the default

    written.write_text("# mine\n")
    code, text = run_cli("init")
    assert code == 2 and "bench.toml exists" in text and "Traceback" not in text
    assert written.read_text() == "# mine\n"  # untouched

    (tmp_path / "sub").mkdir()
    code, text = run_cli("init", "sub")  # a directory: bench.toml in it
    assert code == 0 and (tmp_path / "sub" / "bench.toml").is_file(), text
    assert "--spec sub/bench.toml" in text
    code, text = run_cli("init", "nowhere/x.toml")
    assert code == 2 and "nowhere is not a directory" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.toml", "sub"]  # no leftovers


def test_a_command_without_a_spec_here_reads_the_shipped_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["profile", "-a", "sdpa", "-n", "65", "--repeats", "1", "--min-run-time", "0.01"]
    args += ["--no-breakdown", "-o", "out"]
    code, text = run_cli(*args)
    assert code == 0, text
    assert "spec: the default shipped with effbench (no ./bench.toml here" in text
    assert len(list((tmp_path / "out").glob("profile-*.jsonl"))) == 1

    (tmp_path / "bench.toml").write_text(shipped_spec().read_text().replace("dim = 64", "dim = 32"))
    code, text = run_cli(*args)
    assert code == 0 and "spec: ./bench.toml" in text, text
    code, text = run_cli(*args, "--spec", str(tmp_path / "bench.toml"))  # named: nothing to say
    assert code == 0 and "spec:" not in text, text


def test_datasets_default_to_effbench_data_else_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EFFBENCH_DATA", str(tmp_path / "d"))
    assert TrainSection().data_path() == tmp_path / "d"
    assert TrainSection(dataset="imagenet100").data_path() == tmp_path / "d" / "imagenet100"
    assert TrainSection(data_dir="~/x").data_path() == Path("~/x").expanduser()  # it wins
    monkeypatch.delenv("EFFBENCH_DATA")
    cache = default_data_dir()
    assert cache.is_absolute() and cache.parts[-2:] == ("effbench", "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_data_dir() == tmp_path / "xdg" / "effbench" / "data"


def test_missing_data_names_the_options_and_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EFFBENCH_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "cache", download=False)
    text = str(err.value)
    assert "--data-dir" in text and "--dataset synthetic" in text
    assert "$EFFBENCH_DATA" in text and str(tmp_path / "cache") in text
