"""`--batch max`: the search for the largest batch under a memory limit, against memory
models (where the answer is known) and for real on the CPU under a small limit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from specs import TINY_BACKBONE, run_cli

from effbench.config.load import parse_spec, read_toml
from effbench.config.size import parse_size, size_words
from effbench.config.spec import ScaleSection
from effbench.crossover import summarize
from effbench.env import environment
from effbench.measure import Rounds
from effbench.measure.maxbatch import STEP_DOWN, NothingFits, find_max_batch
from effbench.measure.memory import memory_cap
from effbench.sweep import scale_sweep
from effbench.sweep.common import classify
from effbench.sweep.scale import ScalePoint, measure_model

MIB = 2**20


def _largest(mem, limit: int, top: int) -> int:
    """The true answer: the largest batch up to `top` whose memory fits."""
    return max((b for b in range(1, top + 1) if mem(b) is not None and mem(b) <= limit), default=0)


@settings(max_examples=60, deadline=None)
@given(
    fixed=st.integers(0, 200 * MIB),
    per_image=st.integers(1, 8 * MIB),
    limit=st.integers(1 * MIB, 2000 * MIB),
    bend=st.floats(0.0, 0.002),
)
def test_the_search_finds_the_largest_fitting_batch_within_one_step(
    fixed: int, per_image: int, limit: int, bend: float
) -> None:
    """A memory model with a fixed part, a linear part and a superlinear bend the line
    cannot see: the batch found fits, and no batch more than one step above it fits."""

    def mem(b: int) -> int:
        return int(fixed + per_image * b * (1 + bend * b))

    top = 4096
    if mem(1) > limit:
        with pytest.raises(NothingFits):
            find_max_batch(mem, limit, largest=top)
        return
    found = find_max_batch(mem, limit, largest=top)
    truth = _largest(mem, limit, top)
    assert found.peak == mem(found.batch) <= limit
    assert found.batch <= truth
    assert found.batch >= min(truth - 1, math.floor(truth * STEP_DOWN)) - 1, (found, truth)
    if bend == 0:  # a straight line is found exactly
        assert found.batch == truth
    assert found.capped == (found.batch == top)


def test_a_batch_that_runs_out_of_memory_is_stepped_down_from_never_chosen() -> None:
    """The process runs out of memory at 700 although the line says 1,000 fit (a wrong fit):
    the search steps down and never answers a batch that failed."""
    calls: list[int] = []

    def mem(b: int) -> int | None:
        calls.append(b)
        return None if b >= 700 else 1_000 * b

    found = find_max_batch(mem, 1_000_000)
    assert found.batch < 700 and found.batch >= math.floor(699 * STEP_DOWN) - 1
    assert all(t.batch < 700 for t in found.tried if t.peak is not None)
    assert [t.batch for t in found.tried][:4] == [4, 2, 8, 16]
    assert found.as_dict(1)["tried"][-1] == [found.batch, found.peak]


def test_a_start_that_does_not_fit_is_halved() -> None:
    found = find_max_batch(lambda b: 100 * b, 250)
    assert found.batch == 2 and [t.batch for t in found.tried][:2] == [4, 2]


def test_sizes_parse_and_bad_ones_are_named() -> None:
    assert parse_size("2GiB") == parse_size("2G") == parse_size("2 gb") == 2 * 2**30
    assert parse_size("512MiB") == 512 * MIB and parse_size("1.5K") == 1536
    assert size_words(3 * 2**29) == "1.5 GiB"
    for bad in ("two gigs", "-1G", "0", ""):
        with pytest.raises(ValueError, match="is not"):
            parse_size(bad)
    assert ScaleSection(batch_size="max", memory_limit="64MiB").batch_size == "max"
    assert ScaleSection(batch_size="16").batch_size == 16
    with pytest.raises(ValueError, match=r"batch_size must be 1 to .* or .max."):
        ScaleSection(batch_size="most")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_the_cap_turns_an_allocation_over_the_limit_into_an_oom() -> None:
    cpu = torch.device("cpu")
    with memory_cap(cpu, 64 * MIB):
        small = torch.ones(4 * MIB // 4)  # fits
        with pytest.raises(RuntimeError) as err:
            torch.ones(512 * MIB // 4)
    assert classify(err.value) == "oom"
    del small
    big = torch.ones(512 * MIB // 4)  # the limit is gone afterwards
    assert big.numel() == 512 * MIB // 4


SPEC = (
    TINY_BACKBONE
    + """
[scale]
resolutions = [16, 32]
mode = "infer"
batch_size = "max"
memory_limit = "512KiB"
largest_batch = 128
repeats = 2
min_run_time = 0.01
warmup = 1
breakdown = false
count_flops = false
top_ops = 0

[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[[models]]
name = "linformer"
attention = { kind = "linformer", k = 8 }
"""
)


def test_scale_at_the_largest_batch_on_the_cpu_under_a_small_limit(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(SPEC, encoding="utf-8")
    spec = parse_spec(read_toml(path))
    records = list(
        scale_sweep(spec, device=torch.device("cpu"), env=environment("cpu", "float32"), run_id="r")
    )
    for r in records:
        assert r.status == "ok", r.error
        assert r.batch_search == "max" and r.max_batch is not None
        for found in r.max_batch.values():
            assert 1 <= found.batch <= 128 and found.peak_mib <= found.limit_mib == 0.5
            assert found.capped or found.peak_mib > 0.5 * found.limit_mib, found
            assert [found.batch, found.peak_mib] in found.tried
        assert r.batch_size == r.max_batch["infer"].batch
        assert r.images_per_s == pytest.approx(r.batch_size / (r.infer_ms / 1e3))
        assert r.infer_image_ms == pytest.approx(r.infer_ms / r.batch_size)
        assert len(r.infer_image_rounds_ms) == 2
    # a bigger picture needs more memory per image, so its largest batch is smaller
    sdpa = {r.image_size: r for r in records if r.model == "sdpa"}
    assert sdpa[32].max_batch["infer"].batch < sdpa[16].max_batch["infer"].batch
    # crossovers compare time per image (throughput), the metric of a max-batch grid
    found = summarize([r.model_dump() for r in records], baseline="sdpa", mode="infer")
    assert set(found["linformer"]["verdicts"]) == {"infer_throughput"}


def test_a_training_step_has_its_own_largest_batch(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(SPEC.replace('mode = "infer"', 'mode = "train"'), encoding="utf-8")
    spec = parse_spec(read_toml(path))
    out: dict = {}
    point = ScalePoint(spec.models[0], 32)
    measure_model(spec, point, device=torch.device("cpu"), out=out, rounds=Rounds(1))
    (found,) = out["max_batch"].values()
    assert out["batch_size"] == found["batch"] >= 4 and found["peak_mib"] <= 0.5
    assert out["train_image_ms"] == pytest.approx(out["train_ms"] / found["batch"])
    assert out["train_images_per_s"] == pytest.approx(1e3 / out["train_image_ms"])


def test_max_batch_on_the_cpu_needs_a_limit_and_nothing_fitting_is_an_oom(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(SPEC.replace('memory_limit = "512KiB"\n', ""), encoding="utf-8")
    code, out = run_cli("scale", "--spec", str(path), "--device", "cpu", "-o", str(tmp_path))
    assert code == 2 and "--batch max on the CPU needs --memory-limit SIZE" in out
    assert "Traceback" not in out
    code, out = run_cli(
        "scale", "--spec", str(path), "-a", "sdpa", "--res", "16", "--memory-limit", "1KiB",
        "--device", "cpu", "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 0, out
    (result,) = (tmp_path / "res").glob("scale-*.jsonl")
    line = result.read_text(encoding="utf-8").splitlines()[0]
    assert '"status":"oom"' in line.replace(" ", "") and "batch of 1 does not fit" in line


def test_profile_at_the_largest_batch_gives_tokens_per_second(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(SPEC.replace("[scale]", "[profile]\nseq_lens = [17]\n[scale]"), "utf-8")
    code, out = run_cli(
        "profile", "--spec", str(path), "-a", "sdpa", "--batch", "max", "--memory-limit",
        "1MiB", "--repeats", "2", "--min-run-time", "0.01", "--device", "cpu",
        "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 0, out
    assert "the largest batch under 1MiB" in out
    (result,) = (tmp_path / "res").glob("profile-*.jsonl")
    (r,) = [json.loads(line) for line in result.read_text("utf-8").splitlines()]
    assert r["status"] == "ok" and r["batch_search"] == "max"
    assert set(r["max_batch"]) == {"fwd", "fwdbwd"}
    assert r["batch_size"] == r["max_batch"]["fwd"]["batch"]
    assert r["max_batch"]["fwdbwd"]["batch"] <= r["batch_size"]  # a backward needs more
    assert r["fwd_tokens_per_s"] == pytest.approx(17e3 / r["fwd_image_ms"])
    assert all(b["peak_mib"] <= 1 for b in r["max_batch"].values())


def test_the_report_tells_throughput_from_memory_headroom(tmp_path: Path) -> None:
    """A max-batch series: the throughput table, crossovers on time per image, and which
    models' memory bought a larger batch than the baseline's at the largest resolution."""
    from report_records import scale

    from effbench.report.build import build_report
    from effbench.report.inputs import collect
    from effbench.results import write_jsonl_atomic

    def point(model: str, px: int, batch: int, per_image: float) -> dict:
        rounds = [per_image * f for f in (0.99, 1.0, 1.01)]
        found = {"batch": batch, "peak_mib": 250.0, "limit_mib": 256.0, "tried": [[batch, 250.0]]}
        return scale(
            model, px, batch_search="max", batch_size=batch, repeats=3,
            infer_ms=per_image * batch, infer_rounds_ms=[t * batch for t in rounds],
            infer_image_ms=per_image, infer_image_rounds_ms=rounds,
            images_per_s=1e3 / per_image, max_batch={"infer": found},
        )  # fmt: skip

    records = [
        point("sdpa", 16, 512, 1.0), point("sdpa", 32, 64, 4.0),
        point("standard", 16, 512, 1.0), point("standard", 32, 16, 6.0),
        point("linformer", 16, 512, 1.2), point("linformer", 32, 64, 2.0),
    ]  # fmt: skip
    write_jsonl_atomic(tmp_path / "scale.jsonl", records)
    report = build_report(collect([tmp_path]))
    summary = "\n".join(report.summary)
    assert "Throughput crossovers" in summary and "linformer from 32 px" in summary
    assert "Largest inference batch at 32 px" in summary
    assert "64 for sdpa; the same for linformer (64); smaller for standard (16)" in summary
    (scaling,) = [s for s in report.sections if s.title == "Scaling with resolution"]
    tables = [b for b in scaling.blocks if b.kind == "table"]
    (throughput,) = [t for t in tables if t.title.startswith("Throughput at the largest batch")]
    assert throughput.columns[3:] == ["batch (infer)", "images/s (infer)", "peak MiB (infer)"]
    assert ["standard", "32", "17", "16", "167", "250"] in throughput.rows
    assert any(t.columns == ["model", "infer throughput"] for t in tables)
