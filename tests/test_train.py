"""`effbench train`: real training on the mini CIFAR-10, exact resume, signals, errors,
ImageFolder data and a 2-process torchrun run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from specs import MINI, TINY_BACKBONE, TINY_MODELS, needs_mini
from typer.testing import CliRunner

from effbench.cli import app
from effbench.config.attention import BASELINE_KIND, EXACT_KINDS, KINDS
from effbench.config.load import load_spec, select_models
from effbench.data import build_loaders
from effbench.errors import CheckpointError, SpecError, TrainError
from effbench.results import load_predictions, read_jsonl
from effbench.runs import CHECKPOINT, RECORDS
from effbench.train import (
    Dist,
    Interrupted,
    RunState,
    StopFlag,
    Trainer,
    TrainProgress,
    fingerprint_diff,
    load_checkpoint,
    lr_factor,
    rng_state,
)
from effbench.train.checkpoint import restore, save_checkpoint, zero_acc

SPEC = (
    TINY_BACKBONE
    + """
{models}
[profile]
seq_lens = [17]

[train]
dataset = "{dataset}"
data_dir = "{data_dir}"
download = false
epochs = {epochs}
batch_size = 64
eval_batch_size = 256
lr = 2e-3
warmup_epochs = 0.5
device = "cpu"
output_dir = "{out}"
synthetic_samples = 256
{extra}
"""
)


def write_spec(
    tmp_path: Path,
    *,
    dataset: str = "cifar10",
    data_dir: Path = MINI,
    epochs: int = 2,
    extra: str = "",
) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(
        SPEC.format(
            dataset=dataset,
            data_dir=data_dir,
            epochs=epochs,
            out=tmp_path / "runs",
            extra=extra,
            models=TINY_MODELS,
        )
    )
    return p


def trainer(spec_path: Path, model: str, seed: int = 0, **kw: object) -> Trainer:
    bench = select_models(load_spec(spec_path), [model])
    return Trainer(
        bench, bench.models[0], seed, dist=Dist(device=torch.device("cpu")), run_id="t", **kw
    )


def records(spec_path: Path, model: str, seed: int = 0) -> list[dict]:
    out = spec_path.parent / "runs" / model / f"seed{seed}" / RECORDS
    good, bad = read_jsonl(out)
    assert not bad
    return good


# ---------------------------------------------------------------------------- spec


def test_train_section_validation(tmp_path: Path) -> None:
    cases = {
        "epochs = 0": "train.epochs",
        'precision = "fp8"': "train.precision",
        "min_lr = 1.0": "train.min_lr",
        "seeds = [1, 1]": "train.seeds",
        "betas = [0.9, 1.5]": "train.betas",
        "learning_rate = 0.1": "train.learning_rate",
    }
    for extra, loc in cases.items():
        p = write_spec(tmp_path, extra=extra)
        text = p.read_text().replace("epochs = 2\n", "") if extra.startswith("epochs") else None
        if text is not None:
            p.write_text(text)
        with pytest.raises(SpecError) as err:
            load_spec(p)
        assert any(loc in line for line in err.value.lines()), (extra, err.value.lines())


def test_lr_schedule_warms_up_then_decays_to_floor() -> None:
    f = [lr_factor(s, warmup=10, total=100, floor=0.01) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert f[100] == pytest.approx(0.01)


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_restores_modules_state_and_random_streams(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = RunState(acc=zero_acc(torch.device("cpu")), epoch=2, step_in_epoch=5, history=[{}])
    state.acc["seen"] += 64
    path = tmp_path / CHECKPOINT
    save_checkpoint(
        path, fingerprint={"seed": 0}, modules={"model": model, "optimizer": opt}, state=state
    )
    after = torch.rand(3)  # the streams move on after the save...
    other = torch.nn.Linear(4, 3)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    got = restore(
        load_checkpoint(path), {"model": other, "optimizer": other_opt}, state.acc["seen"].device
    )
    assert torch.equal(torch.rand(3), after)  # ...and the restore puts them back
    assert got.epoch == 2 and got.step_in_epoch == 5 and got.history == [{}]
    assert got.acc["seen"].item() == 64 and got.acc["seen"].dtype == torch.float64
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
    assert other_opt.state_dict()["state"][0]["step"] == 1
    assert set(rng_state()) == {"torch", "cuda", "python", "numpy"}
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not an effbench checkpoint"):
        load_checkpoint(path)
    torch.save({"format": 0}, path)
    with pytest.raises(CheckpointError, match="not an effbench training checkpoint"):
        load_checkpoint(path)


def test_fingerprint_diff_names_every_changed_setting() -> None:
    old = {"train": {"lr": 0.1, "mixup": 0.0}, "seed": 0}
    new = {"train": {"lr": 0.2, "mixup": 0.0}, "seed": 0, "extra": 1}
    assert fingerprint_diff(old, new) == [
        "extra: checkpoint None, now 1",
        "train.lr: checkpoint 0.1, now 0.2",
    ]
    assert fingerprint_diff(old, old) == []


def test_one_process_is_its_own_world() -> None:
    dist = Dist()
    assert dist.main and dist.any_rank(True) and not dist.any_rank(False)
    t = torch.ones(2)
    assert dist.all_sum(t) is t


# ---------------------------------------------------------------------------- training


@needs_mini
@pytest.mark.parametrize("kind", KINDS)
def test_every_mechanism_learns_mini_cifar(tmp_path: Path, kind: str) -> None:
    """Three epochs of a one-block ViT on the real 4,660-image subset: well above chance."""
    spec = write_spec(tmp_path, epochs=3)
    out = list(trainer(spec, kind).run())
    final = out[-1]
    assert final.kind == "train" and final.status == "ok"
    assert [r.epoch for r in out[:-1]] == [1, 2, 3]
    assert out[-1].n_train + out[-1].n_val == 4660 and out[-1].n_test == 932
    # Chance is 10 %; its standard error over 932 test images is 1 point.
    assert final.test_top1 > 0.2, f"{kind}: {final.test_top1:.3f}"
    assert final.test_top5 > final.test_top1
    assert (tmp_path / "runs" / kind / "seed0" / "model.safetensors").is_file()


def _losses(recs: list) -> list[float]:
    return [r["train_loss"] if isinstance(r, dict) else r.train_loss for r in recs]


@needs_mini
def test_resume_after_an_epoch_and_mid_epoch_matches_uninterrupted(tmp_path: Path) -> None:
    extra = "random_erasing = 0.25\nmixup = 0.2\ncutmix = 0.2\nval_fraction = 0.05"
    whole_dir = tmp_path / "whole"
    whole_dir.mkdir()
    whole = [r for r in trainer(write_spec(whole_dir, epochs=3, extra=extra), "performer").run()]
    base = [r for r in whole if r.kind == "train_epoch"]

    # Stop mid-way through epoch 2 as a SIGTERM would, then resume twice (auto, then path).
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    spec = write_spec(cut_dir, epochs=3, extra=extra)
    stop = StopFlag()
    seen = {"batches": 0}

    def on_batch(phase: str, i: int, n: int) -> None:
        if phase == "train":
            seen["batches"] += 1
            if seen["batches"] == 90:  # epoch 1 has 62 batches of 64
                stop.signum = signal.SIGTERM

    with pytest.raises(Interrupted) as err:
        list(trainer(spec, "performer", stop=stop, progress=TrainProgress(on_batch=on_batch)).run())
    assert err.value.exit_code == 143
    assert (cut_dir / "runs" / "performer" / "seed0" / CHECKPOINT).is_file()
    assert len(records(spec, "performer")) == 1  # epoch 1 only
    resumed = list(trainer(spec, "performer", resume="auto").run())
    losses = _losses(records(spec, "performer")[:3])
    assert losses == _losses(base)  # bit-identical on CPU
    assert resumed[-1].test_top1 == whole[-1].test_top1
    assert resumed[-1].steps == whole[-1].steps


@needs_mini
def test_resume_refuses_other_settings_and_corrupt_checkpoints(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, epochs=1)
    list(trainer(spec, "sdpa").run())
    with pytest.raises(TrainError, match="already holds a run"):
        trainer(spec, "sdpa")
    changed = write_spec(tmp_path, epochs=1, extra="label_smoothing = 0.0")
    with pytest.raises(CheckpointError, match=r"train\.label_smoothing: checkpoint 0\.1, now 0\.0"):
        list(trainer(changed, "sdpa", resume="auto").run())
    ckpt = tmp_path / "runs" / "sdpa" / "seed0" / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        list(trainer(spec, "sdpa", resume="auto").run())
    with pytest.raises(CheckpointError, match="not found"):
        trainer(spec, "sdpa", resume=str(tmp_path / "nope.pt"))


def test_nan_loss_stops_with_a_nan_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import effbench.train.trainer as train_mod

    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def flaky(*a: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", flaky)
    spec = write_spec(tmp_path, dataset="synthetic", epochs=2)
    out = list(trainer(spec, "sdpa").run())
    assert out[-1].status == "nan"
    assert "epoch 1, step 3" in out[-1].error
    assert records(spec, "sdpa")[-1]["status"] == "nan"


# ---------------------------------------------------------------------------- command line


def run_cli(args: list[str]) -> object:
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_cli_trains_several_models_and_seeds_and_skips_finished(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, dataset="synthetic", epochs=1)
    args = ["train", "--spec", str(spec), "-a", "sdpa", "linformer", "--seeds", "0", "1"]
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    for model in ("sdpa", "linformer"):
        for seed in (0, 1):
            recs = records(spec, model, seed)
            assert [r["kind"] for r in recs] == ["train_epoch", "train"]
            assert recs[-1]["seed"] == seed and recs[-1]["world_size"] == 1
            # the epoch's training time carries its CPU check; the final record counts them
            check = recs[0]["cpu_checks"]["train"]
            assert recs[0]["contended"] == check["disturbed"] and 0 < check["cpu_share"] <= 1.5
            assert recs[-1]["contended_epochs"] == int(recs[0]["contended"])
    summary = json.loads(next((tmp_path / "runs").glob("summary-*.json")).read_text())
    assert [m["model"] for m in summary["models"]] == ["sdpa", "linformer"]
    assert all(len(m["test_top1"]) == 2 for m in summary["models"])
    before = (tmp_path / "runs" / "sdpa" / "seed0" / RECORDS).read_text()
    res = run_cli(args)  # the same runs again: refused, nothing touched
    assert res.exit_code == 2 and "already holds a run" in res.output
    assert (tmp_path / "runs" / "sdpa" / "seed0" / RECORDS).read_text() == before
    res = run_cli([*args, "--resume", "auto"])
    assert res.exit_code == 0 and res.output.count("already finished") == 4
    run = tmp_path / "runs" / "sdpa" / "seed0"
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")
    one = ["train", "--spec", str(spec), "-a", "sdpa", "--seeds", "0", "--resume", str(run)]
    res = run_cli(one)
    assert res.exit_code == 2 and "corrupt or not an effbench checkpoint" in res.output
    assert (run / RECORDS).read_text() == before  # nothing already written is lost


def test_cli_errors_are_clear_and_lose_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    spec = write_spec(tmp_path, data_dir=missing, epochs=1)
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa"])
    assert res.exit_code == 2
    assert "--data-dir" in res.output and "--dataset synthetic" in res.output
    res = run_cli(["train", "--spec", str(spec), "-a", "nope"])
    assert res.exit_code == 2 and "unknown attention 'nope'" in res.output
    res = run_cli(["train", "--spec", str(spec), "--set", "train.epochs=-1"])
    assert res.exit_code == 2 and "train.epochs" in res.output
    res = run_cli(["train", "--spec", str(spec), "--resume", "x.pt"])
    assert res.exit_code == 2 and "resumes one run" in res.output


def _image_tree(root: Path, classes: list[str], per_class: int) -> None:
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                pixels = torch.randint(0, 64, (40, 48, 3), generator=g) + 60 * c
                Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(d / f"{i}.png")


def test_image_folder_trains_as_imagenet100_style_data(tmp_path: Path) -> None:
    root = tmp_path / "in100"
    _image_tree(root, ["n01", "n02", "n03"], per_class=10)
    spec = write_spec(tmp_path, dataset="imagenet100", data_dir=root, epochs=1, extra="workers = 1")
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa", "-b", "8"])
    assert res.exit_code == 0, res.output
    assert "3 class folders, not the 100 of ImageNet-100" in res.output
    assert "num_classes set to 3" in res.output
    final = records(spec, "sdpa")[-1]
    assert final["status"] == "ok" and final["n_test"] == 6 and final["n_train"] == 27
    spec_json = json.loads((tmp_path / "runs" / "sdpa" / "seed0" / "spec.json").read_text())
    assert spec_json["backbone"]["num_classes"] == 3

    bad = tmp_path / "bad"
    _image_tree(bad, ["n01", "n02"], per_class=2)
    (bad / "val" / "n02").rename(bad / "val" / "n09")
    spec = write_spec(tmp_path, dataset="imagenet100", data_dir=bad, epochs=1)
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "only in train: n02" in res.output


# ---------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    return {**os.environ, "EFFBENCH_ALLOCATOR": "system", "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command in its own process group, killing the whole group if it hangs (torchrun's
    workers included)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out.decode()[-2000:]}{err.decode()[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow  # for time: the slow set kills and resumes whole trainings as well
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, dataset="synthetic", epochs=20)
    spec.write_text(spec.read_text().replace("synthetic_samples = 256", "synthetic_samples = 1024"))
    cmd = [sys.executable, "-m", "effbench", "train", "--spec", str(spec), "-a", "sdpa"]
    recs = tmp_path / "runs" / "sdpa" / "seed0" / RECORDS
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (recs.is_file() and recs.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out.decode()
    assert b"--resume auto" in out
    assert (tmp_path / "runs" / "sdpa" / "seed0" / CHECKPOINT).is_file()
    done = [r for r in read_jsonl(recs)[0] if r["kind"] == "train_epoch"]
    assert 1 <= len(done) < 20
    res = _run([*cmd, "--resume", "auto"], tmp_path)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    epochs = [r["epoch"] for r in read_jsonl(recs)[0] if r["kind"] == "train_epoch"]
    assert epochs == list(range(1, 21))


def test_torchrun_two_processes_write_one_set_of_results(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, dataset="synthetic", epochs=2)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "effbench",
        "train",
        "--spec",
        str(spec),
        "-a",
        "nystrom",
    ]
    res = _run(cmd, tmp_path)
    assert res.returncode == 0, res.stdout.decode()[-3000:] + res.stderr.decode()[-3000:]
    recs = records(spec, "nystrom")
    assert [r["kind"] for r in recs] == ["train_epoch", "train_epoch", "train"]
    assert recs[-1]["world_size"] == 2 and recs[-1]["n_test"] == 64
    # Both processes' test shards come back in the split's order (the labels of the synthetic
    # test split are what one process would have read).
    predicted, label = load_predictions(tmp_path / "runs" / "nystrom" / "seed0")
    assert len(label) == 64 and (predicted == label).mean() == pytest.approx(recs[-1]["test_top1"])
    loaders = build_loaders(
        load_spec(spec).train,
        image_size=32,
        channels=3,
        num_classes=10,
        device=torch.device("cpu"),
        seed=0,
        rank=0,
        world=1,
    )
    assert label.tolist() == torch.cat([y for _, y in loaders.test.iterate()]).tolist()
    assert len(list((tmp_path / "runs").glob("summary-*.json"))) == 1
    assert res.stdout.decode().count("test top-1") == 1  # only rank 0 prints


def test_tensorboard_scalars_or_a_clear_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, dataset="synthetic", epochs=1)
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa", "--tensorboard"])
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert res.exit_code == 2 and "effbench[tb]" in res.output
        assert not (tmp_path / "runs").exists()
        return
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "runs" / "sdpa" / "seed0" / "tb").glob("events.out.tfevents.*"))


def test_download_failure_names_the_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*a: object, **kw: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    spec = write_spec(tmp_path, data_dir=tmp_path / "data", extra="download = true")
    spec.write_text(spec.read_text().replace("download = false\n", ""))
    res = run_cli(["train", "--spec", str(spec), "-a", "sdpa"])
    assert res.exit_code == 2
    assert "could not be downloaded" in res.output and "--dataset synthetic" in res.output


@needs_mini
def test_exact_kinds_train_to_the_same_losses(tmp_path: Path) -> None:
    """Equal starts: the exact kinds compute one function from the same initial weights, so
    two epochs on the mini CIFAR-10 give the same losses up to float rounding."""
    spec = write_spec(tmp_path, epochs=2)
    runs = {k: list(trainer(spec, k).run()) for k in sorted(EXACT_KINDS)}
    losses = {k: _losses(out[:-1]) for k, out in runs.items()}
    ref = losses[BASELINE_KIND]
    assert len(ref) == 2
    for kind, got in losses.items():
        assert got == pytest.approx(ref, rel=1e-5), (kind, losses)
    tops = {k: out[-1].test_top1 for k, out in runs.items()}
    assert max(tops.values()) - min(tops.values()) <= 2 / 932, tops
