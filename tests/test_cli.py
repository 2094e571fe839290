"""`effbench profile` end to end through Typer's CliRunner on a tiny grid, and failed points
recorded with their status instead of stopping the sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from specs import TINY_MODELS
from typer.testing import CliRunner

from effbench.cli import app
from effbench.config.attention import KINDS
from effbench.results import read_jsonl
from effbench.sweep import profile as sweep

TINY = """
[backbone]
image_size = 16
patch_size = 4
dim = 32
heads = 2

{models}
{extra}

[profile]
retries = 0  # no re-measuring (and back-off) on a busy test machine
seq_lens = [17, 26]
batch_size = 2
device = "cpu"
warmup = 0
min_run_time = 0.01
"""


def write_spec(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(TINY.format(extra=extra, models=TINY_MODELS))
    return p


def run_profile(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["profile", *args])
    return result.exit_code, result.output


def load_records(out: Path) -> list[dict]:
    files = sorted(out.glob("profile-*.jsonl"))
    assert len(files) == 1, files
    records, bad = read_jsonl(files[0])
    assert not bad
    return records


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "profile" in result.output
    assert CliRunner().invoke(app, ["--version"]).output.startswith("effbench ")


def test_profile_end_to_end(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "results"
    code, output = run_profile("--spec", str(spec), "--output", str(out), "--breakdown")
    assert code == 0, output
    records = load_records(out)
    assert [(r["model"], r["seq_len"]) for r in records] == [
        (k, n) for k in KINDS for n in (17, 26)
    ]
    for r in records:
        assert r["status"] == "ok", r["error"]
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["fwd_runs"] >= 1
        assert r["fwd_peak_mib"] > 0 and r["mem_source"]
        seen = r["flops_analytic"] - (r["flops_elementwise"] or 0)  # what counters can see
        assert seen == r["flops_fvcore"] == r["flops_flop_counter"] > 0
        assert r["fwd_gflops_per_s"] > 0
        assert r["repeats"] == 3 and r["fwd_repeat_spread"] >= 0 and r["fwdbwd_repeat_spread"] >= 0
        assert r["top_ops"] and all(op["self_ms"] >= 0 for op in r["top_ops"])
        assert r["env"]["threads"] >= 1 and r["env"]["allocator"] and r["env"]["torch"]
        assert r["spec_hash"] == records[0]["spec_hash"]
        parts = r["breakdown_ms"]  # one block: norm, attention, norm, MLP, residuals
        assert set(parts) == {"attention", "mlp", "norm", "other"}, parts
        assert all(v >= 0 for v in parts.values()) and parts["attention"] > 0
        assert sum(parts.values()) == pytest.approx(r["breakdown_step_ms"])
        assert r["breakdown_source"] == "CPU time"
    sdpa = [r for r in records if r["model"] == "sdpa"]
    assert [r["sdpa_backend"] for r in sdpa] == ["flash_cpu", "flash_cpu"]
    assert not any(r["sdpa_math_fallback"] for r in sdpa)
    resolved = json.loads(next(out.glob("profile-*.spec.json")).read_text())
    assert resolved["profile"]["seq_lens"] == [17, 26]
    assert "standard" in output and f"{2 * len(KINDS)} ok" in output
    assert "3 repeats round-robin over the grid" in output


def test_profile_options_override_spec(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "r"
    code, output = run_profile(
        "-s", str(spec), "-o", str(out), "-a", "sdpa", "linformer", "-n", "17", "37", "-b", "1"
    )
    assert code == 0, output
    records = load_records(out)
    assert [(r["model"], r["seq_len"], r["batch_size"]) for r in records] == [
        ("sdpa", 17, 1), ("sdpa", 37, 1), ("linformer", 17, 1), ("linformer", 37, 1)
    ]  # fmt: skip


def test_trace_writes_perfetto_and_tensorboard_files(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "r"
    code, output = run_profile(
        "-s", str(spec), "-o", str(out), "-a", "nystrom", "-n", "17", "--trace"
    )
    assert code == 0, output
    (rec,) = load_records(out)
    trace_dir = Path(rec["trace_dir"])
    for phase in ("fwd", "fwdbwd"):
        trace = json.loads((trace_dir / phase / "trace.json").read_text())
        assert trace["traceEvents"], "empty Chrome trace"
        assert list((trace_dir / phase / "tb").glob("*.pt.trace.json")), "no TensorBoard trace"


def test_forced_unavailable_backend_is_an_error_record(tmp_path: Path) -> None:
    """A CUDA-only SDPA backend on the CPU fails; the sweep records it and goes on."""
    extra = '[[models]]\nname = "cudnn"\nattention = { kind = "sdpa", backend = "cudnn" }'
    spec, out = write_spec(tmp_path, extra), tmp_path / "r"
    code, output = run_profile("-s", str(spec), "-o", str(out), "-a", "cudnn", "fused", "-n", "17")
    assert code == 0, output
    records = load_records(out)
    assert [r["status"] for r in records] == ["error", "ok"]
    assert records[0]["error"] and "RuntimeError" in records[0]["error"]
    assert records[0]["params"] > 0 and records[0]["flops_analytic"] > 0  # kept what it measured


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
            "oom",
        ),
        (sweep.NonFiniteError("forward output is not finite"), "nan"),
        (ValueError("boom"), "error"),
    ],
)
def test_failures_become_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception, status: str
) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "r"
    real = sweep.measure_attention

    def flaky(spec, point, **kw):
        if point.model.name == "performer":
            kw["out"]["fwd_ms"] = 1.0
            raise exc
        return real(spec, point, **kw)

    monkeypatch.setattr(sweep, "measure_attention", flaky)
    code, output = run_profile(
        "-s", str(spec), "-o", str(out), "-a", "performer", "sdpa", "-n", "17"
    )
    assert code == 0, output
    records = load_records(out)
    assert [(r["model"], r["status"]) for r in records] == [("performer", status), ("sdpa", "ok")]
    assert records[0]["fwd_ms"] == 1.0 and records[0]["error"]


def test_nan_output_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effbench.attention.fused import FusedAttention

    monkeypatch.setattr(FusedAttention, "attend", lambda self, q, k, v: q * float("nan"))
    spec, out = write_spec(tmp_path), tmp_path / "r"
    code, output = run_profile("-s", str(spec), "-o", str(out), "-a", "fused", "-n", "17")
    assert code == 0, output
    (rec,) = load_records(out)
    assert rec["status"] == "nan" and "not finite" in rec["error"]


def test_results_are_never_overwritten(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "r"
    for _ in range(2):
        code, output = run_profile("-s", str(spec), "-o", str(out), "-a", "sdpa", "-n", "17")
        assert code == 0, output
    assert len(list(out.glob("profile-*.jsonl"))) == 2


def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(app, ["profile", "-s", str(spec), "--device", "cuda"])
    assert result.exit_code == 2
    assert "profile.device" in result.stderr and "--device cpu" in result.stderr


def test_command_help_wraps_as_paragraphs() -> None:
    """`--help` shows each docstring paragraph as one paragraph that the terminal wraps, not
    the source's line breaks."""
    import click
    import typer.main

    from effbench.cli.app import reflowed

    assert reflowed("  one\n  two\n\n  three  \n") == "one two\n\nthree"
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        help_text = group.get_command(ctx, name).help or ""
        assert "\n" not in help_text.replace("\n\n", ""), name
    result = CliRunner().invoke(app, ["scale", "--help"], env={"COLUMNS": "80"})
    assert "FLOPs (analytic and counted two ways)" in " ".join(result.output.split())
    assert "(analytic and\n" not in result.output
