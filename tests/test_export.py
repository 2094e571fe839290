"""`effbench export` (`effbench.deploy`, `effbench/cli/export.py`): every registered kind on
torch.export, ONNX and onnxruntime, each path ok with outputs within 1e-4 of eager's or a
failure with its reason; the four kinds deployments need most run in onnxruntime; the command
writes its records and the report shows the Deployability matrix."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from specs import TINY16_BACKBONE, TINY_MODELS, run_cli
from torch import nn

from effbench.config.attention import KINDS
from effbench.config.load import parse_spec, select_models
from effbench.config.spec import BenchSpec
from effbench.deploy import (
    ExportSettings,
    Inputs,
    _torch_export,
    describe,
    export_sweep,
    missing_packages,
)
from effbench.env import environment
from effbench.results import ExportRecord

SPEC = TINY16_BACKBONE + TINY_MODELS
# The kinds a deployment needs most: each must run in onnxruntime.
REQUIRED = ("sdpa", "linformer", "performer", "relu_linear")
TOLERANCE = 1e-4
PATHS = ["torch.export static", "torch.export dynamic batch", "onnx", "onnxruntime cpu"]


def _spec(kinds: tuple[str, ...]) -> BenchSpec:
    return select_models(parse_spec(tomllib.loads(SPEC)), list(kinds))


def _export(tmp_path: Path, kinds: tuple[str, ...]) -> list[ExportRecord]:
    settings = ExportSettings(output=tmp_path, batch_size=2, warmup=1, min_run_time=0.01)
    env = environment("cpu", "float32")
    sweep = export_sweep(
        _spec(kinds), device=torch.device("cpu"), env=env, run_id="t", settings=settings
    )
    return list(sweep)


def _ok_or_said_why(r: ExportRecord) -> None:
    """An ok path has its outputs within TOLERANCE of eager's (ONNX's file is checked, not
    run: its outputs are onnxruntime's); a failed one gives a class and a reason."""
    where = f"{r.model} / {r.path}: {r.status} {r.error}"
    if r.status == "ok":
        if r.path != "onnx":
            assert r.max_abs_diff is not None and r.max_abs_diff < TOLERANCE, where
        assert r.error is None, where
    else:
        assert r.status in ("unsupported", "error"), where
        assert r.error and r.error.strip() and r.failure, where


def _runs_in_onnxruntime(records: list[ExportRecord], tmp_path: Path) -> None:
    for kind in REQUIRED:
        mine = {r.path: r for r in records if r.model == kind}
        assert list(mine) == PATHS, (kind, list(mine))
        assert all(r.status == "ok" for r in mine.values()), [
            (r.path, r.error) for r in mine.values()
        ]
        ort, onnx = mine["onnxruntime cpu"], mine["onnx"]
        assert ort.ort_ms and ort.eager_ms and ort.checked_batches == [2, 3]
        assert onnx.dynamic_batch and onnx.opset >= 18 and onnx.onnx_bytes > 0
        assert (tmp_path / onnx.onnx_file).is_file()
        assert mine["torch.export dynamic batch"].checked_batches == [1, 3]


@pytest.mark.slow
def test_every_kind_exports_or_says_why(tmp_path: Path) -> None:
    records = _export(tmp_path, KINDS)
    assert {r.model for r in records} == set(KINDS)
    assert len(records) == len(KINDS) * len(PATHS)
    for r in records:
        _ok_or_said_why(r)
    _runs_in_onnxruntime(records, tmp_path)


# ---------------------------------------------------------------------------- failures


class _Toy(nn.Module):
    image_size = 4

    def __init__(self, forward: str) -> None:
        super().__init__()
        self.how = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "random":  # features drawn at each call, not a buffer
            return x.flatten(1) @ torch.randn(x[0].numel(), 3)
        if self.how == "fixed batch":
            return x.reshape(2, -1).sum(1, keepdim=True)
        n = int((x > 0).sum())  # data-dependent
        return x.flatten()[:n].sum().expand(x.shape[0], 1)


def _toy(how: str, *, dynamic: bool) -> dict:
    inputs = Inputs(_Toy(how).eval(), torch.device("cpu"), channels=1)
    try:
        return _torch_export(inputs, 2, dynamic=dynamic)
    except Exception as err:
        return describe(err).fields()


def test_failures_are_classified_with_a_reason() -> None:
    random = _toy("random", dynamic=False)
    assert (random["status"], random["failure"]) == ("unsupported", "random values in the graph")
    assert "aten.randn" in random["note"] and "frozen buffer" in random["note"]
    fixed = _toy("fixed batch", dynamic=True)
    assert (fixed["status"], fixed["failure"]) == ("unsupported", "dimension fixed by the model")
    assert fixed["error"] == "the model fixes batch to 2"
    data = _toy("data-dependent", dynamic=False)
    assert (data["status"], data["failure"]) == ("unsupported", "data-dependent shape")
    assert "data-dependent expression" in data["error"]
    no_fn = describe(
        RuntimeError("No ONNX function found for <OpOverload(op='mine.op', overload='default')>")
    )
    assert (no_fn.failure, no_fn.operator) == ("unsupported operator", "mine::op")
    ort = describe(
        RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for Foo(18) node")
    )
    assert (ort.status, ort.operator) == ("unsupported", "Foo(18)")
    other = describe(ValueError("\x1b[96msomething\x1b[0m   else\nmore"))
    assert (other.status, other.failure, other.reason) == (
        "error", "ValueError", "ValueError: something else"
    )  # fmt: skip


# ---------------------------------------------------------------------------- the command


@pytest.mark.slow  # for time; the default run exports through the library calls above
def test_the_required_kinds_run_in_onnxruntime_through_the_command(tmp_path: Path) -> None:
    # end to end: the command's matrix and records, the ONNX files, the report's section
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC)
    out = tmp_path / "results"
    args = ("export", "-s", str(spec), "-a", *REQUIRED, "-b", "2", "--device", "cpu")
    code, output = run_cli(*args, "--min-run-time", "0.01", "-o", str(out))
    assert code == 0, output
    assert "onnxruntime cpu" in output and "16 ok." in output, output
    lines = (out / "export.jsonl").read_text().splitlines()
    records = [ExportRecord.model_validate(json.loads(line)) for line in lines]
    for r in records:
        _ok_or_said_why(r)
    _runs_in_onnxruntime(records, out)
    # Performer's random features are a frozen buffer: drawn once, exported as a constant
    assert not any(r.note for r in records), [r.note for r in records]
    code, output = run_cli("report", str(out), "-o", str(tmp_path / "report"), "--format", "md")
    assert code == 0, output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Deployability" in md, md
    assert "onnxruntime runs sdpa, linformer, performer, relu" in md, md  # _ escaped in md


def test_export_without_the_deploy_extra_says_which_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    assert missing_packages() == ["onnxruntime"]
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC)
    code, output = run_cli("export", "-s", str(spec), "-a", "sdpa", "-o", str(tmp_path / "r"))
    assert code == 2
    assert "install the deploy extra: pip install 'effbench[deploy]'" in output, output
    assert not (tmp_path / "r").exists()
