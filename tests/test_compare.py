"""`effbench compare`: a tiny study end to end on mini CIFAR-10 (2 models, 2 epochs, 2
resolutions, 2 sequence lengths), interrupted by SIGTERM during training and resumed, rerun
(everything skipped, the report rendered again), refused with another spec; shipped recipes
validate; an unknown recipe lists them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from specs import MINI, needs_mini, run_cli, tiny_study

from effbench.config.load import load_spec
from effbench.study import recipe_names, recipe_path

SPEC = tiny_study(
    """
data_dir = "{data}"
download = false
epochs = {epochs}
batch_size = 256
eval_batch_size = 512
warmup_epochs = 0.5
device = "cpu"
"""
)


def compare(spec: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "effbench", "compare", "-s", str(spec), "-o", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for(path_glob: Path, pattern: str, limit_s: float) -> None:
    end = time.monotonic() + limit_s
    while not list(path_glob.glob(pattern)):
        assert time.monotonic() < end, f"nothing matched {path_glob}/{pattern} in {limit_s} s"
        time.sleep(0.2)


@pytest.mark.slow  # a whole study, twice (`.ci/run` runs the slow set)
@needs_mini
def test_a_study_runs_resumes_skips_and_refuses_another_spec(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC.format(data=MINI, epochs=3), encoding="utf-8")
    out = tmp_path / "study"
    first = compare(spec, out)
    wait_for(out / "runs", "sdpa/seed0/checkpoint*", 120)  # the first epoch is done
    first.send_signal(signal.SIGTERM)
    text, _ = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, text
    assert "interrupted by SIGTERM during train" in text

    second = compare(spec, out)
    text, _ = second.communicate(timeout=600)
    assert second.returncode == 0, text
    assert "train:sdpa/seed0: done, skipped" not in text  # it went on with training
    study = json.loads((out / "study.json").read_text())
    done = {k for k, u in study["units"].items() if u["state"] == "done"}
    assert {"train:sdpa/seed0", "train:linformer/seed0", "analyze", "scale", "profile"} <= done
    assert {"resolution:sdpa/seed0", "resolution:linformer/seed0"} <= done
    html = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Recommendation", "Accuracy", "Scaling with resolution", "Attention maps"):
        assert heading in html, heading
    finals = [
        json.loads(line)
        for line in (out / "runs" / "sdpa" / "seed0" / "train.jsonl").read_text().splitlines()
        if json.loads(line).get("kind") == "train"
    ]
    assert finals and finals[-1]["epochs_run"] == 3  # resumed to the whole budget
    assert "Recommendation" in text and "Report:" in text

    t0 = time.monotonic()
    third = compare(spec, out)
    text, _ = third.communicate(timeout=300)
    assert third.returncode == 0, text
    assert text.count("done, skipped") == 7  # 2 runs, analyze, 2 resolutions, scale, profile
    assert time.monotonic() - t0 < 60

    spec.write_text(SPEC.format(data=MINI, epochs=4), encoding="utf-8")
    fourth = compare(spec, out)
    text, _ = fourth.communicate(timeout=120)
    assert fourth.returncode == 2, text
    assert "train.epochs: study 3, now 4" in text and "--fresh" in text


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_validates(name: str) -> None:
    spec = load_spec(recipe_path(name))
    assert len(spec.models) >= 2 and spec.train.seeds


def test_the_recipes_are_the_three_the_readme_names() -> None:
    assert recipe_names() == ["cifar10-gpu", "cpu-mini", "imagenet100-gpu"]


def test_an_unknown_recipe_lists_the_recipes(tmp_path: Path) -> None:
    code, out = run_cli("compare", "--recipe", "nope", "-o", str(tmp_path / "s"))
    assert code == 2
    assert "unknown recipe; choose one of cifar10-gpu, cpu-mini, imagenet100-gpu" in out


def test_quick_beside_a_spec_or_recipe_says_what_to_drop(tmp_path: Path) -> None:
    spec = tmp_path / "mine.toml"
    spec.write_text(SPEC.format(data=MINI, epochs=1), encoding="utf-8")
    code, out = run_cli("compare", "--quick", "-s", str(spec), "-o", str(tmp_path / "s"))
    assert code == 2
    assert "--quick is the cpu-mini recipe, which brings its own spec; drop --spec" in out
    code, out = run_cli("compare", "--quick", "--recipe", "cifar10-gpu", "-o", str(tmp_path / "s"))
    assert code == 2
    assert "--quick is the cpu-mini recipe; drop --recipe cifar10-gpu" in out
    assert not (tmp_path / "s").exists()


def test_every_stage_is_checked_before_the_first_runs(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    text = SPEC.format(data=MINI, epochs=1).replace("seq_lens = [17, 65]", "seq_lens = [5]")
    spec.write_text(text, encoding="utf-8")
    code, out = run_cli("compare", "-s", str(spec), "-o", str(tmp_path / "s"))
    assert code == 2
    assert "models[1].attention.k: 8 exceeds profile.seq_lens' shortest length 5" in out
    assert not (tmp_path / "s" / "runs").exists()


def test_a_missing_dataset_names_data_dir_and_synthetic(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC.format(data=tmp_path / "nothing", epochs=1), encoding="utf-8")
    proc = compare(spec, tmp_path / "study")
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, text
    assert "--data-dir" in text and "--dataset synthetic" in text
    assert "train:sdpa/seed0 failed (exit 2)" in text


def test_train_reads_a_recipe(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    code, text = run_cli(
        "train", "--recipe", "cpu-mini", "-a", "sdpa", "--dataset", "synthetic",
        "--epochs", "1", "--set", "train.synthetic_samples=256", "backbone.depth=1",
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    spec = json.loads((out / "sdpa" / "seed0" / "spec.json").read_text())
    assert spec["train"]["warmup_epochs"] == 0.5  # the recipe's, not bench.toml's 2.0
    code, text = run_cli("train", "--recipe", "cpu-mini", "--spec", str(tmp_path / "my.toml"))
    assert code == 2 and "--spec and --recipe: choose one" in text
    code, text = run_cli("train", "--recipe", "nope")
    assert code == 2 and "unknown recipe; choose one of" in text
