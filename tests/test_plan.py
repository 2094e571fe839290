"""effbench.plan without Typer: where a command's spec comes from, the scale grid (resolution
ladder, baseline, `--checkpoint`), the train runs (taken and finished run directories) and
the runs `analyze` loads; each user error a located EffbenchError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from effbench.config.attention import BASELINE_KIND
from effbench.config.load import parse_spec
from effbench.errors import DataError, EffbenchError, RunError, SpecError, TrainError, UsageError
from effbench.plan import (
    ScalePlan,
    check_checkpoint_data,
    choose_device,
    load_runs,
    plan_scale,
    plan_train,
    resolve_spec,
)

SPEC = """
[backbone]
image_size = 16
patch_size = 4
dim = 32
heads = 2

[[models]]
name = "lin"
attention = {{ kind = "linformer", k = 8 }}
[[models]]
name = "perf"
attention = {{ kind = "performer", features = 16 }}

[train]
dataset = "synthetic"
output_dir = "{out}"
seeds = [0, 1]

[scale]
resolutions = [16, 32]
{extra}
"""


def write_spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(out=tmp_path / "runs", extra=extra))
    return path


def fake_run(
    directory: Path, *, patch: int = 4, model: str = "lin", dataset: str = "synthetic"
) -> Path:
    """A run directory as `effbench train` leaves it, with placeholder weights."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    data = {
        "backbone": {"image_size": 4 * patch, "patch_size": patch, "dim": 32, "heads": 2},
        "models": [
            {"name": "lin", "attention": {"kind": "linformer", "k": 8}},
            {"name": "perf", "attention": {"kind": "performer", "features": 16}},
        ],
        "train": {"dataset": dataset},
        "scale": {"resolutions": [16, 64]},
    }
    spec = parse_spec(data)
    (directory / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    (directory / "train.jsonl").write_text(json.dumps({"kind": "train_epoch", "model": model}))
    save_file({"w": torch.zeros(1)}, str(directory / "model.safetensors"))
    return directory


# ---------------------------------------------------------------------------- spec


def test_resolve_spec_applies_options_then_set_then_selects_models(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    overrides = {"train.epochs": 3, "train.lr": 1e-3, "profile.batch_size": None}
    bench = resolve_spec(path, overrides, ["perf"], ["train.min_lr=5e-4", "train.lr=1e-3"])
    assert bench.train.epochs == 3 and bench.train.lr == 1e-3 and bench.train.min_lr == 5e-4
    with pytest.raises(UsageError, match=r"--lr 0\.001 and --set train\.lr=0\.0005 disagree"):
        resolve_spec(path, overrides, ["perf"], ["train.lr=5e-4"])  # which one was meant?
    assert [m.name for m in bench.models] == ["perf"]
    assert (
        resolve_spec(path, {}).profile.batch_size
        == parse_spec({"models": [{"name": "x", "attention": {"kind": "sdpa"}}]}).profile.batch_size
    )  # None leaves a key alone


def test_resolve_spec_errors_are_located(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    with pytest.raises(SpecError) as err:
        resolve_spec(path, {}, ["nope"])
    assert err.value.lines()[0].startswith("command line:--attention: unknown attention 'nope'")
    with pytest.raises(SpecError) as err:
        resolve_spec(path, {}, None, ["xx"])
    assert err.value.lines() == [
        "command line:--set: 'xx' is not section.key=value (e.g. train.lr=3e-4)"
    ]
    with pytest.raises(SpecError) as err:
        resolve_spec(path, {"train.epochs": -1})
    assert err.value.lines()[0].startswith("--epochs (train.epochs): ")
    with pytest.raises(SpecError) as err:
        resolve_spec(path, {}, None, ["train.epochs=-1"])
    assert err.value.lines()[0].startswith("--set train.epochs: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_choose_device_names_the_setting() -> None:
    assert choose_device("cpu", where="scale.device") == torch.device("cpu")
    with pytest.raises(EffbenchError) as err:
        choose_device("cuda", where="scale.device")
    (line,) = err.value.lines()
    assert line.startswith("scale.device: device 'cuda' requested") and "--device cpu" in line


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda:x", ""])
def test_choose_device_refuses_what_is_not_a_cpu_or_cuda_device(name: str) -> None:
    with pytest.raises(EffbenchError) as err:
        choose_device(name, where="--device")
    (line,) = err.value.lines()
    assert line.startswith("--device: device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


# ---------------------------------------------------------------------------- scale


def test_scale_ladder_between_two_resolutions_and_given_lists(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    plan = plan_scale(path, {}, res=[16, 128])
    assert plan.spec.scale.resolutions == [16, 32, 64, 128]
    assert plan.run is None and plan.state is None
    assert plan_scale(path, {}, res=[16, 48, 24]).spec.scale.resolutions == [16, 24, 48]
    plan = plan_scale(path, {"scale.patch_size": 8}, res=[24, 64])
    assert plan.spec.scale.resolutions == [24, 32, 64]  # the ladder follows --patch


def test_scale_resolution_errors(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    with pytest.raises(EffbenchError) as err:
        plan_scale(path, {}, res=[30, 64])
    assert err.value.lines() == [
        "--res: 30 px is not divisible by patch size 4; use a multiple such as 32"
    ]
    with pytest.raises(SpecError) as err:  # the spec's own resolutions, checked by scale only
        plan_scale(write_spec(tmp_path, "patch_size = 6"), {})
    assert err.value.lines() == [
        f"{tmp_path / 'spec.toml'}:scale.resolutions: [16, 32] not divisible by patch size 6; "
        "use multiples of 6"
    ]


def test_scale_adds_the_baseline_when_no_model_has_it(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    plan = plan_scale(path, {}, attention=["perf"])
    assert [m.name for m in plan.spec.models] == ["perf", BASELINE_KIND]
    assert plan.spec.models[-1].attention.kind == BASELINE_KIND
    extra = f'[[models]]\nname = "base"\nattention = {{ kind = "{BASELINE_KIND}" }}'
    (tmp_path / "with-base.toml").write_text(
        SPEC.format(out=tmp_path / "runs", extra="").replace("[train]", f"{extra}\n[train]")
    )
    plan = plan_scale(tmp_path / "with-base.toml", {}, attention=["lin"])
    assert [m.name for m in plan.spec.models] == ["lin", "base"]  # the spec's own baseline


def test_scale_checkpoint_uses_the_runs_model_and_patch(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs" / "lin" / "seed0", patch=8)
    path = write_spec(tmp_path)
    plan = plan_scale(path, {"scale.repeats": 2}, checkpoint=run, res=[16, 64])
    assert isinstance(plan, ScalePlan) and plan.run is not None
    assert plan.run.directory == run and plan.run.entry.name == "lin"
    assert [m.name for m in plan.spec.models] == ["lin"]  # no baseline added
    assert plan.spec.scale_patch() == 8 and plan.spec.scale.resolutions == [16, 32, 64]
    assert plan.spec.scale.repeats == 2
    assert plan.state is not None and set(plan.state) == {"w"}
    with pytest.raises(RunError, match="keeps its patch size"):
        plan_scale(path, {"scale.patch_size": 4}, checkpoint=run)


def test_scale_checkpoint_without_a_spec_here_uses_the_runs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = fake_run(tmp_path / "runs" / "perf" / "seed0", model="perf")
    monkeypatch.chdir(tmp_path)  # no bench.toml here
    plan = plan_scale(Path("bench.toml"), {}, checkpoint=run, data_dir=tmp_path / "data")
    assert plan.spec.scale.resolutions == [16, 64]  # the run's own [scale]
    assert [m.name for m in plan.spec.models] == ["perf"]
    assert plan.spec.train.data_dir == str(tmp_path / "data")


def test_scale_checkpoint_errors(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    run = fake_run(tmp_path / "runs" / "lin" / "seed0")
    with pytest.raises(EffbenchError) as err:
        plan_scale(path, {}, checkpoint=run, attention=["lin"])
    assert err.value.lines() == [
        "--attention: a --checkpoint evaluates the model it was trained with"
    ]
    with pytest.raises(RunError, match="no such run directory"):
        plan_scale(path, {}, checkpoint=tmp_path / "nope")
    with pytest.raises(SpecError):  # the spec here is read (and must be valid) first
        plan_scale(path, {}, checkpoint=run, attention=["nope"])


def test_checkpoint_data_is_checked_with_the_run_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    run = fake_run(tmp_path / "runs" / "lin" / "seed0")
    check_checkpoint_data(plan_scale(path, {}, checkpoint=run), torch.device("cpu"))
    check_checkpoint_data(plan_scale(path, {}), torch.device("cpu"))  # no run, nothing to read
    run = fake_run(tmp_path / "runs" / "lin" / "seed1", dataset="imagenet100")
    missing = tmp_path / "no-imagenet"
    plan = plan_scale(path, {}, checkpoint=run, data_dir=missing)
    with pytest.raises(DataError) as err:
        check_checkpoint_data(plan, torch.device("cpu"))
    assert str(err.value).startswith(f"--checkpoint {run}: {missing / 'train'} is not a directory")


# ---------------------------------------------------------------------------- train


def test_train_runs_every_model_and_seed(tmp_path: Path) -> None:
    plan = plan_train(write_spec(tmp_path), {"train.seeds": [2, 3]})
    assert [(m.name, s) for m, s in plan.runs] == [("lin", 2), ("lin", 3), ("perf", 2), ("perf", 3)]
    assert plan.directory(plan.runs[1][0], 3) == tmp_path / "runs" / "lin" / "seed3"
    assert plan.taken() == [] and plan.finished(*plan.runs[0]) is None
    plan.check_free()


def test_train_checkpoint_path_resumes_one_run(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    with pytest.raises(EffbenchError) as err:
        plan_train(path, {}, resume="x.pt")
    assert err.value.lines() == [
        "--resume x.pt: a checkpoint path resumes one run; pick one model and one seed, "
        "or use --resume auto"
    ]
    plan = plan_train(path, {"train.seeds": [0]}, attention=["lin"], resume="x.pt")
    assert len(plan.runs) == 1 and plan.resume == "x.pt"


def test_train_taken_and_finished_runs(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    taken = tmp_path / "runs" / "perf" / "seed1"
    taken.mkdir(parents=True)
    final = {"kind": "train", "model": "perf", "seed": 1, "status": "ok"}
    (taken / "train.jsonl").write_text(
        json.dumps({"kind": "train_epoch", "model": "perf"}) + "\n" + json.dumps(final) + "\n"
    )
    plan = plan_train(path, {})
    assert plan.taken() == [taken]
    with pytest.raises(TrainError) as err:
        plan.check_free()
    assert err.value.lines() == [
        f"{taken} already holds a run",
        "pass --resume auto to continue (finished runs are skipped), or --output DIR for new runs",
    ]
    auto = plan_train(path, {}, resume="auto")
    assert auto.taken() == []
    auto.check_free()
    entry = auto.spec.model("perf")
    assert auto.finished(entry, 1) == final
    assert auto.finished(entry, 0) is None and plan.finished(entry, 1) is None


# ---------------------------------------------------------------------------- analyze


def test_load_runs_with_another_data_dir(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "runs" / m / "seed0", model=m) for m in ("lin", "perf")]
    found = load_runs(runs, data_dir=tmp_path / "data")
    assert [(run.entry.name, set(state)) for run, state in found] == [
        ("lin", {"w"}),
        ("perf", {"w"}),
    ]
    assert all(run.spec.train.data_dir == str(tmp_path / "data") for run, _ in found)
    assert load_runs(runs[:1])[0][0].spec.train.data_dir != str(tmp_path / "data")
    with pytest.raises(RunError, match="no such run directory"):
        load_runs([tmp_path / "nope"])
