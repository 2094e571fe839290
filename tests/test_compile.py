"""`profile --compile` and `scale --compile`: the timed calls run the torch.compile'd layer or
model (inductor's C++ backend on the CPU), the first call is recorded apart as compile time,
FLOPs still agree, and a mechanism that fails to compile is an error record, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from specs import TINY16_BACKBONE, run_cli

from effbench.results import ProfileRecord, ScaleRecord, read_jsonl
from effbench.sweep import common

SPEC = (
    TINY16_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[[models]]
name = "nystrom"
attention = { kind = "nystrom", landmarks = 8 }

[profile]
seq_lens = [17]
batch_size = 2
device = "cpu"
repeats = 1
warmup = 0
min_run_time = 0.01
retries = 0
backward = false

[scale]
resolutions = [16]
batch_size = 2
device = "cpu"
mode = "infer"
repeats = 1
warmup = 0
min_run_time = 0.01
retries = 0
breakdown = false
"""
)


def records(out: Path, kind: str) -> list[dict]:
    (path,) = sorted(out.glob(f"{kind}-*.jsonl"))
    good, bad = read_jsonl(path)
    assert not bad
    return [r for r in good if r["kind"] == kind]


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(SPEC)
    return p


def test_profile_compiled_records_say_so_and_count_the_same_flops(
    spec: Path, tmp_path: Path
) -> None:
    code, out = run_cli("profile", "-s", str(spec), "-a", "sdpa", "--compile", "-o", str(tmp_path))
    assert code == 0, out
    (rec,) = records(tmp_path, "profile")
    ProfileRecord.model_validate(rec)
    assert rec["status"] == "ok" and rec["compiled"] is True and rec["compile_mode"] == "default"
    assert rec["compile_s"]["fwd"] > 0 and rec["fwd_ms"] > 0
    assert rec["flops_fvcore"] == rec["flops_analytic"] == rec["flops_flop_counter"]
    code, out = run_cli("profile", "-s", str(spec), "-a", "sdpa", "-o", str(tmp_path / "eager"))
    (eager,) = records(tmp_path / "eager", "profile")
    assert eager["compiled"] is False and eager["compile_s"] is None
    assert eager["flops_analytic"] == rec["flops_analytic"]


def test_scale_compiled_records_say_so(spec: Path, tmp_path: Path) -> None:
    args = ["scale", "-s", str(spec), "-a", "sdpa", "--compile", "--compile-mode", "default"]
    code, out = run_cli(*args, "--mode", "both", "-o", str(tmp_path))  # a training step too
    assert code == 0, out
    (rec,) = records(tmp_path, "scale")
    ScaleRecord.model_validate(rec)
    assert rec["status"] == "ok", rec["error"]
    assert rec["compiled"] is True and rec["compile_s"]["infer"] > 0 and rec["train_ms"] > 0
    assert rec["flops_fvcore"] == rec["flops_analytic"] and rec["infer_ms"] > 0


def test_a_mechanism_that_fails_to_compile_is_an_error_record(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.compile

    def compile_all_but_nystrom(module: torch.nn.Module, **kwargs: object) -> object:
        if "Nystrom" in type(module).__name__:
            raise RuntimeError("inductor cannot lower this graph")
        return real(module, **kwargs)

    monkeypatch.setattr(common.torch, "compile", compile_all_but_nystrom)
    code, out = run_cli("profile", "-s", str(spec), "--compile", "-o", str(tmp_path))
    assert code == 0, out
    by_model = {r["model"]: r for r in records(tmp_path, "profile")}
    assert by_model["sdpa"]["status"] == "ok" and by_model["sdpa"]["compiled"] is True
    assert by_model["nystrom"]["status"] == "error"
    assert "inductor cannot lower this graph" in by_model["nystrom"]["error"]


def test_compile_mode_must_be_one_torch_knows(spec: Path) -> None:
    code, out = run_cli("profile", "-s", str(spec), "--compile-mode", "fastest")
    assert code == 2 and out.startswith("--compile-mode (profile.compile_mode): Input should be")


def test_the_report_never_mixes_compiled_and_eager_figures() -> None:
    from effbench.report.content import env_key, env_label

    env = {"device_name": "cpu", "torch": "2", "threads": 2, "allocator": "glibc"}
    eager = env_key({"env": env, "compiled": False})
    compiled = env_key({"env": env, "compiled": True, "compile_mode": "max-autotune"})
    assert eager == env_key({"env": env}) != compiled  # records from before --compile: eager
    assert env_label(compiled) == "cpu, torch 2, 2 threads, glibc, compiled max-autotune"
    assert env_label(eager) == "cpu, torch 2, 2 threads, glibc"


def test_train_compiled_records_its_mode(spec: Path, tmp_path: Path) -> None:
    args = ["train", "-s", str(spec), "-a", "sdpa", "--dataset", "synthetic", "--epochs", "1"]
    extra = ["--set", "train.synthetic_samples=64", "-b", "32", "--device", "cpu"]
    code, out = run_cli(
        *args, *extra, "--compile", "--compile-mode", "default", "-o", str(tmp_path)
    )
    assert code == 0, out
    good, bad = read_jsonl(tmp_path / "sdpa" / "seed0" / "train.jsonl")
    final = good[-1]
    assert not bad and final["kind"] == "train" and final["status"] == "ok"
    assert final["compiled"] is True and final["compile_mode"] == "default"
    assert final["compile_s"] > 0


def test_compile_mode_is_a_setting_only_of_compiled_runs() -> None:
    from effbench.config.load import parse_spec
    from effbench.runs import fingerprint

    data = {"models": [{"name": "a", "attention": {"kind": "sdpa"}}]}
    eager = parse_spec(data)
    assert "compile_mode" not in fingerprint(eager, eager.models[0], 0)["train"]
    compiled = parse_spec(
        data, overrides={"train.compile": True, "train.compile_mode": "max-autotune"}
    )
    assert fingerprint(compiled, compiled.models[0], 0)["train"]["compile_mode"] == "max-autotune"
