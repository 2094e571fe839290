"""Training budgets (`--budget` / `train.budget`: epochs, minutes, FLOPs), the test predictions
each run keeps, and each run's own peak memory."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_train import records, run_cli, trainer, write_spec

from effbench.config.budget import parse_budget
from effbench.config.load import load_spec
from effbench.measure.memory import CLEAR_REFS
from effbench.model import build_model
from effbench.results import load_predictions
from effbench.train import Interrupted, StopFlag, TrainProgress

SYNTH = {"dataset": "synthetic", "epochs": 2}


def _flop_per_step(spec: Path, kind: str) -> float:
    bench = load_spec(spec)
    entry = next(m for m in bench.models if m.name == kind)
    return 3.0 * build_model(bench.backbone, entry.attention).flops() * bench.train.batch_size


def test_budget_strings_parse_normalise_and_fail_clearly() -> None:
    assert str(parse_budget("300s")) == "5min" and str(parse_budget("1.5h")) == "90min"
    assert str(parse_budget("20s")) == "20s" and parse_budget("20s").seconds == 20
    assert str(parse_budget("2e15flop")) == "2e+15flop" and parse_budget("30ep").epochs == 30
    for bad in ("5 minutes", "0ep", "2.5ep", "-3min", "flop"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_cli_budget_errors_are_one_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, **SYNTH)
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa", "--budget", "5minutes"])
    assert res.exit_code == 2 and "budget '5minutes'" in res.output
    assert "Traceback" not in res.output
    res = run_cli(["train", "--spec", str(spec), "--epochs", "2", "--budget", "5min"])
    assert res.exit_code == 2 and "not both" in res.output
    assert not (tmp_path / "runs").exists()


def test_flop_budget_trains_the_steps_it_buys_with_the_schedule_over_them(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    per_step = _flop_per_step(write_spec(tmp_path / "probe", **SYNTH), "sdpa")
    budget = per_step * 7.5  # buys 7 steps: 2 epochs of 3 (192 training images, batch 64), 1 more
    spec = write_spec(tmp_path, **SYNTH, extra=f'budget = "{budget:.6g}flop"')
    out = list(trainer(spec, "sdpa").run())
    final, epochs = out[-1], out[:-1]
    assert final.status == "ok" and final.budget == f"{budget:.6g}flop"
    assert final.steps == 7 and final.images == 7 * 64
    assert [e.step for e in epochs] == [3, 6, 7]  # the last epoch is partial, and validated
    assert final.epochs == final.epochs_run == 3
    assert final.train_flop == pytest.approx(7 * per_step) and final.train_flop <= budget
    bench = load_spec(spec)
    assert epochs[-1].lr == pytest.approx(bench.train.min_lr)  # the cosine ends with the budget


def _long_epochs(spec: Path) -> Path:
    """`spec` with epochs of 57 steps, not 3: a time budget then spends its seconds on steps
    rather than on hundreds of validations between epochs (not counted as training time)."""
    spec.write_text(spec.read_text().replace("synthetic_samples = 256", "synthetic_samples = 4096"))
    return spec


def test_time_budget_stops_within_one_step_of_its_time(tmp_path: Path) -> None:
    spec = _long_epochs(write_spec(tmp_path, **SYNTH, extra='budget = "3s"'))
    final = list(trainer(spec, "sdpa").run())[-1]
    step_s = final.train_s / final.steps
    assert final.budget == "3s" and final.epochs is None
    assert 3.0 <= final.train_s < 3.0 + 2 * step_s + 0.05
    assert final.steps * 64 == final.images


@pytest.mark.parametrize("budget", ["ep", "flop"])
def test_resume_under_a_step_budget_matches_uninterrupted(tmp_path: Path, budget: str) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "c").mkdir()
    text = (
        "3ep"
        if budget == "ep"
        else f"{_flop_per_step(write_spec(tmp_path / 'w', **SYNTH), 'sdpa') * 8.2:.6g}flop"
    )
    whole = list(
        trainer(write_spec(tmp_path / "w", **SYNTH, extra=f'budget = "{text}"'), "sdpa").run()
    )
    spec = write_spec(tmp_path / "c", **SYNTH, extra=f'budget = "{text}"')
    stop = StopFlag()

    def on_batch(phase: str, i: int, n: int) -> None:
        if phase == "train" and i == 2 and stop.signum is None:
            stop.signum = signal.SIGTERM  # mid-way through epoch 1

    with pytest.raises(Interrupted):
        list(trainer(spec, "sdpa", stop=stop, progress=TrainProgress(on_batch=on_batch)).run())
    resumed = list(trainer(spec, "sdpa", resume="auto").run())
    assert resumed[-1].steps == whole[-1].steps
    assert resumed[-1].test_top1 == whole[-1].test_top1
    assert [r["train_loss"] for r in records(spec, "sdpa")[:-1]] == [
        r.train_loss for r in whole[:-1]
    ]


def test_time_budget_resumed_continues_the_remaining_time(tmp_path: Path) -> None:
    spec = _long_epochs(write_spec(tmp_path, **SYNTH, extra='budget = "4s"'))
    stop = StopFlag()
    seen = {"n": 0}

    def on_batch(phase: str, i: int, n: int) -> None:
        seen["n"] += phase == "train"
        if seen["n"] == 4:
            stop.signum = signal.SIGTERM

    with pytest.raises(Interrupted):
        list(trainer(spec, "sdpa", stop=stop, progress=TrainProgress(on_batch=on_batch)).run())
    final = list(trainer(spec, "sdpa", resume="auto").run())[-1]
    step_s = final.train_s / final.steps
    # not 4 s more after the resume: at most a step past the budget on each side of the
    # stop, and a little for a machine that other work slows
    assert 4.0 <= final.train_s < 4.0 + 2 * step_s + 0.5
    assert final.steps > 4


def test_each_run_keeps_its_test_predictions(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, **SYNTH)
    final = list(trainer(spec, "sdpa").run())[-1]
    predicted, label = load_predictions(tmp_path / "runs" / "sdpa" / "seed0")
    assert len(label) == final.n_test and predicted.dtype.kind == "i"
    assert (predicted == label).mean() == pytest.approx(final.test_top1)
    assert set(label.tolist()) <= set(range(10)) and len(set(label.tolist())) > 1


@pytest.mark.skipif(not Path(CLEAR_REFS).exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_smaller_model_after_a_larger_one_reports_its_own_peak(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    big = write_spec(tmp_path / "big", dataset="synthetic", epochs=1)
    text = (
        big.read_text().replace("patch_size = 8", "patch_size = 2").replace("dim = 32", "dim = 96")
    )
    big.write_text(text.replace("batch_size = 64", "batch_size = 128"))
    small = write_spec(tmp_path / "small", dataset="synthetic", epochs=1)
    peaks = {}
    for name, spec in (("big", big), ("small", small)):
        final = list(trainer(spec, "sdpa").run())[-1]
        assert final.mem_source == "peak_rss_since_reset"
        peaks[name] = final.peak_mib
    assert peaks["small"] < peaks["big"] - 50, peaks
