"""effbench.sweep: the scale grid with crossovers against the baseline and slopes,
the validated FLOP counts, failed points as records, and a trained checkpoint evaluated at
several resolutions (the profile grid runs through the CLI in test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from specs import MINI, TINY_MODELS, needs_mini, run_cli
from torch import Tensor

from effbench.attention import build_attention
from effbench.attention.linformer import resize_sequence_projection
from effbench.attention.sdpa import SdpaAttention
from effbench.config.attention import (
    BASELINE_KIND,
    KINDS,
    AgentConfig,
    LinformerConfig,
    NystromConfig,
    SdpaConfig,
)
from effbench.config.load import parse_spec, read_toml
from effbench.config.spec import Backbone, BenchSpec
from effbench.crossover import METRICS, loglog_slope, metrics_for
from effbench.env import environment
from effbench.model import adapt_state_dict, build_model
from effbench.results import read_jsonl, record_base
from effbench.sweep import baseline_names, fit_to_tokens, sdpa_layer

SPEC = """
[backbone]
image_size = 32
patch_size = 4
dim = 32
depth = 1
heads = 2

{models}

[train]
dataset = "cifar10"
data_dir = "{data_dir}"
download = false
epochs = 1
batch_size = 128
eval_batch_size = 512
lr = 2e-3
device = "cpu"
output_dir = "{out}"

[scale]
retries = 0  # no re-measuring (and back-off) on a busy test machine
resolutions = [8, 16, 32]
batch_size = 2
mode = "both"
device = "cpu"
warmup = 0
min_run_time = 0.01
repeats = 1
"""


def write_spec(tmp_path: Path) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(SPEC.format(models=TINY_MODELS, data_dir=MINI, out=tmp_path / "runs"))
    return p


def scale_records(out: Path) -> list[dict]:
    files = sorted(out.glob("scale-*.jsonl"))
    assert len(files) == 1, files
    good, bad = read_jsonl(files[0])
    assert not bad
    return good


# ---------------------------------------------------------------------------- pure parts


def test_options_are_capped_at_the_token_count() -> None:
    cfg, note = fit_to_tokens(LinformerConfig(k=64), 17)
    assert cfg.k == 17 and note == "k 64 -> 17 (only 17 tokens)"
    cfg, note = fit_to_tokens(NystromConfig(landmarks=32), 65)
    assert cfg.landmarks == 32 and note is None


def test_agents_are_capped_at_a_square_that_builds() -> None:
    # 32 px at patch 8: 16 patches + CLS. 17 agents would not pool to a grid.
    cfg, note = fit_to_tokens(AgentConfig(agents=49), 17)
    assert cfg.agents == 16 and note == "agents 49 -> 16 (only 17 tokens)"
    layer = build_attention(cfg, dim=32, num_heads=2, seq_len=17)
    assert layer(torch.randn(2, 17, 32)).shape == (2, 17, 32)
    assert fit_to_tokens(AgentConfig(agents=49), 50) == (AgentConfig(agents=49), None)


def test_the_baselines_are_the_models_of_the_baseline_kind() -> None:
    data = read_toml(Path(__file__).resolve().parents[1] / "bench.toml")

    def spec_of(*kinds: str) -> BenchSpec:
        models = [{"name": f"m{i}", "attention": {"kind": k}} for i, k in enumerate(kinds)]
        return parse_spec({**data, "models": models})

    assert baseline_names(spec_of("linformer", BASELINE_KIND, BASELINE_KIND)) == ["m1", "m2"]
    assert baseline_names(spec_of("linformer", "nystrom")) == []


def test_records_share_one_base_and_name_the_sdpa_layer() -> None:
    data = read_toml(Path(__file__).resolve().parents[1] / "bench.toml")
    spec = parse_spec(data)
    model = spec.models[0]
    env = environment("cpu", "float32")
    assert record_base(spec, model, env=env, run_id="r1") == {
        "run_id": "r1",
        "spec_hash": spec.hash(),
        "model": model.name,
        "group": None,
        "attention": model.attention.model_dump(mode="json"),
        "env": env,
    }
    bb = Backbone(image_size=32, patch_size=4, dim=32, depth=2, heads=2)
    vit = build_model(bb, SdpaConfig())
    assert sdpa_layer(vit) is vit.blocks[0].attn
    assert sdpa_layer(vit.blocks[1].attn) is vit.blocks[1].attn
    assert sdpa_layer(build_model(bb, LinformerConfig(k=8))) is None


def test_resized_weights_fit_and_keep_their_scale() -> None:
    bb = Backbone(image_size=32, patch_size=4, dim=32, depth=1, heads=2)
    trained = build_model(bb, LinformerConfig(k=8))
    state = trained.state_dict()
    same = adapt_state_dict(state, build_model(bb, LinformerConfig(k=8)), trained_grid=(8, 8))
    assert all(torch.equal(same[k], state[k]) for k in state)
    bigger = build_model(bb, LinformerConfig(k=8), image_size=64)
    adapted = adapt_state_dict(state, bigger, trained_grid=(8, 8))
    bigger.load_state_dict(adapted)  # every shape fits
    assert adapted["pos_embed"].shape == (1, 257, 32)
    e = torch.rand(8, 65)  # positive, so its row sums are far from 0
    resized = resize_sequence_projection(e, (8, 8), (16, 16))
    assert resized.shape == (8, 257)
    assert torch.equal(resized[:, 0], e[:, 0])  # CLS column kept
    # E X of an all-ones X sums each row: about the same on the finer grid
    torch.testing.assert_close(resized[:, 1:].sum(1), e[:, 1:].sum(1), rtol=0.05, atol=0)


# ---------------------------------------------------------------------------- end to end


def test_scale_grid_end_to_end_with_crossovers_and_slopes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    code, out = run_cli("scale", "--spec", str(spec), "-o", str(tmp_path / "res"))
    assert code == 0, out
    assert "Crossover against sdpa" in out
    recs = scale_records(tmp_path / "res")
    points = [r for r in recs if r["kind"] == "scale"]
    summaries = {r["model"]: r for r in recs if r["kind"] == "scale_summary"}
    assert {(r["model"], r["image_size"]) for r in points} == {
        (k, px) for k in KINDS for px in (8, 16, 32)
    }
    for r in points:
        assert r["status"] == "ok", (r["model"], r["image_size"], r["error"])
        assert r["seq_len"] == (r["image_size"] // 4) ** 2 + 1
        ew = r["flops_elementwise"] or 0  # hydra's, which the counters cannot see
        for key in ("flops", "attn_flops"):
            assert r[f"{key}_analytic"] - ew == r[f"{key}_fvcore"] == r[f"{key}_flop_counter"] > 0
        assert 0 < r["attn_flops_analytic"] < r["flops_analytic"]
        assert r["infer_ms"] > 0 and r["train_ms"] > 0 and r["images_per_s"] > 0
        assert r["infer_peak_mib"] > 0 < r["train_peak_mib"]
        assert r["env"]["threads"] >= 1 and r["repeats"] == 1 and r["env"]["allocator"]
        assert set(r["breakdown_ms"]) == {"attention", "mlp", "norm", "other"}
        assert r["energy_note"] == "energy needs an NVIDIA GPU (NVML); device is cpu"
        assert r["infer_joules_per_image"] is r["train_joules_per_step"] is None
    linformer_8 = next(r for r in points if r["model"] == "linformer" and r["image_size"] == 8)
    assert linformer_8["attention"]["k"] == 5 and "k 8 -> 5" in linformer_8["note"]
    assert {r["sdpa_backend"] for r in points if r["model"] == "sdpa"} == {"flash_cpu"}

    assert set(summaries) == set(KINDS)
    for model, s in summaries.items():
        assert s["baseline"] == "sdpa" and set(s["slopes"]) == set(metrics_for("both"))
        mine = {r["image_size"]: r for r in points if r["model"] == model}
        base = {r["image_size"]: r for r in points if r["model"] == "sdpa"}
        for metric in metrics_for("both"):
            field = METRICS[metric]
            tokens = s["slope_tokens"][metric]
            fitted = [(r["seq_len"], r[field]) for r in mine.values() if r["seq_len"] in tokens]
            expect = loglog_slope(fitted)
            assert s["slopes"][metric] == pytest.approx(expect)
            if model == "sdpa":
                continue
            c = s["crossovers"][metric]
            if metric.endswith("_time"):  # one timed round: no interval, so no verdict
                said = s["verdicts"][metric]
                assert c is None and set(said) == {"8", "16", "32"}
                assert all(
                    v["verdict"] == "not resolved" and v["rounds"] == 1 for v in said.values()
                )
                continue
            ahead = {px: mine[px][field] < base[px][field] for px in mine}
            if c is None:
                assert not ahead[32]
            else:
                assert all(ahead[px] for px in ahead if px >= c["resolution"])
                assert c["tokens"] == mine[c["resolution"]]["seq_len"]
                below = [px for px in ahead if px < c["resolution"]]
                assert c["at_start"] == (not below)
                if below:
                    assert not ahead[max(below)]
    assert not summaries["sdpa"]["crossovers"]


def test_scale_adds_the_baseline_and_rejects_bad_input(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    out_dir = tmp_path / "res"
    code, out = run_cli(
        "scale", "-s", str(spec), "-a", "linformer", "--res", "8", "16", "--mode", "infer",
        "--no-breakdown", "--set", "scale.count_flops=false", "scale.top_ops=0",
        "-o", str(out_dir),
    )  # fmt: skip
    assert code == 0, out
    recs = scale_records(out_dir)
    assert {r["model"] for r in recs if r["kind"] == "scale"} == {"linformer", "sdpa"}
    sdpa = [r for r in recs if r["kind"] == "scale" and r["model"] == "sdpa"]
    assert [(r["sdpa_backend"], r["sdpa_math_fallback"]) for r in sdpa] == [
        ("flash_cpu", False)
    ] * 2
    assert all(r["breakdown_ms"] is None and r["flops_fvcore"] is None for r in sdpa)
    before = sorted(p.name for p in out_dir.iterdir())
    code, out = run_cli("scale", "-s", str(spec), "--res", "30", "64", "-o", str(out_dir))
    assert code == 2 and "not divisible by patch size 4" in out and "32" in out
    code, out = run_cli("scale", "-s", str(spec), "--res", "8", "30", "32", "-o", str(out_dir))
    assert code == 2 and "scale.resolutions: [30] not divisible by patch size 4" in out
    code, out = run_cli("scale", "-s", str(spec), "--mode", "fast", "-o", str(out_dir))
    assert code == 2 and "scale.mode" in out
    code, out = run_cli("scale", "-s", str(spec), "-a", "linear", "-o", str(out_dir))
    assert code == 2 and "unknown attention" in out
    assert sorted(p.name for p in out_dir.iterdir()) == before  # nothing written or lost


def _extra_product(self: SdpaAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """sdpa plus a Q K^T that the analytic count does not know about."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
    return out + 0 * (q @ k.transpose(-2, -1)).mean()


def _uncountable(self: SdpaAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """sdpa plus an op (addbmm) that fvcore has no FLOP handle for."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
    B, H, N, d = q.shape
    keys_t = k.reshape(-1, N, d).transpose(1, 2)
    extra = torch.addbmm(torch.zeros(N, N), q.reshape(-1, N, d), keys_t)
    return out + 0 * extra.mean()


@pytest.mark.parametrize(
    ("attend", "message"),
    [(_extra_product, "FLOP counts disagree"), (_uncountable, "no FLOP handle for aten::addbmm")],
    ids=["uncounted-by-analytic", "uncountable-by-fvcore"],
)
def test_flop_disagreement_is_an_error_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attend: object, message: str
) -> None:
    monkeypatch.setattr(SdpaAttention, "attend", attend)
    spec = write_spec(tmp_path)
    code, out = run_cli(
        "scale", "-s", str(spec), "-a", "sdpa", "fused", "--res", "16", "16", "--mode", "infer",
        "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 0, out
    recs = {r["model"]: r for r in scale_records(tmp_path / "res") if r["kind"] == "scale"}
    bad, good = recs["sdpa"], recs["fused"]
    assert good["status"] == "ok"
    assert bad["status"] == "error" and message in bad["error"], bad["error"]
    assert bad["infer_ms"] > 0  # what was measured before the check is kept
    if message.startswith("FLOP counts"):
        assert bad["flops_fvcore"] == bad["flops_flop_counter"] > bad["flops_analytic"]
        assert f"analytic {bad['flops_analytic']:,}" in bad["error"]


@needs_mini
def test_checkpoint_of_one_epoch_evaluates_at_three_resolutions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path)
    code, out = run_cli("train", "-s", str(spec), "-a", "linformer")
    assert code == 0, out
    run = tmp_path / "runs" / "linformer" / "seed0"
    trained = next(r for r in read_jsonl(run / "train.jsonl")[0] if r["kind"] == "train")
    code, out = run_cli(
        "scale", "-s", str(spec), "--checkpoint", str(run), "--res", "16", "32", "48",
        "--mode", "infer", "--no-breakdown", "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 0, out
    recs = scale_records(tmp_path / "res")
    assert [r["image_size"] for r in recs] == [16, 32, 48]
    assert all(r["kind"] == "scale" for r in recs)  # one model: no crossovers
    for r in recs:
        assert r["status"] == "ok", r["error"]
        assert r["checkpoint"] == str(run) and r["trained_image_size"] == 32
        assert r["n_test"] == 932 and 0 <= r["test_top1"] <= r["test_top5"] <= 1
        assert r["attention"]["k"] == 8  # projections resized, not re-sized options
    at_32 = recs[1]
    assert at_32["test_top1"] == pytest.approx(trained["test_top1"], abs=1e-9)
    assert at_32["test_top1"] > 0.15  # chance is 0.10
    assert recs[0]["seq_len"] == 17 and recs[2]["seq_len"] == 145
    # Where there is no bench.toml, the run's own spec gives [scale] (batch 2, mode both).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out = run_cli(
        "scale", "--checkpoint", str(run), "--res", "32", "--no-breakdown",
        "--set", "scale.count_flops=false",
    )  # fmt: skip
    assert code == 0, out
    (rec,) = scale_records(elsewhere / "results")
    assert (rec["batch_size"], rec["mode"], rec["status"]) == (2, "both", "ok")
    assert rec["test_top1"] == pytest.approx(trained["test_top1"], abs=1e-9)


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    code, out = run_cli("scale", "-s", str(spec), "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "no such run directory" in out
    run = tmp_path / "runs" / "sdpa" / "seed0"
    run.mkdir(parents=True)
    code, out = run_cli("scale", "-s", str(spec), "--checkpoint", str(run))
    assert code == 2 and "no spec.json" in out
    (run / "spec.json").write_text(
        '{"models": [{"name": "sdpa", "attention": {"kind": "sdpa"}}]}', encoding="utf-8"
    )
    code, out = run_cli("scale", "-s", str(spec), "--checkpoint", str(run))
    assert code == 2 and "train at least one epoch first" in out
    (run / "model.safetensors").write_bytes(b"garbage")
    code, out = run_cli(
        "scale", "-s", str(spec), "--checkpoint", str(run), "--data-dir", str(MINI),
        "--res", "32", "32", "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 2 and "corrupt or unreadable" in out, out
    code, out = run_cli("scale", "-s", str(spec), "--checkpoint", str(run), "--patch", "8")
    assert code == 2 and "keeps its patch size" in out


def test_failed_points_are_records_and_the_grid_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_attend(self: SdpaAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.full_like(q, float("nan"))

    monkeypatch.setattr(SdpaAttention, "attend", nan_attend)
    spec = write_spec(tmp_path)
    code, out = run_cli(
        "scale", "-s", str(spec), "-a", "sdpa", "nystrom", "--mode", "infer", "--no-breakdown",
        "-o", str(tmp_path / "res"),
    )  # fmt: skip
    assert code == 0, out
    recs = scale_records(tmp_path / "res")
    points = {(r["model"], r["image_size"]): r for r in recs if r["kind"] == "scale"}
    assert len(points) == 6
    for px in (8, 16, 32):
        assert points[("sdpa", px)]["status"] == "nan"
        assert "not finite" in points[("sdpa", px)]["error"]
        assert points[("nystrom", px)]["status"] == "ok"
    summary = next(r for r in recs if r["kind"] == "scale_summary" and r["model"] == "nystrom")
    # every baseline point failed, so nystrom is ahead from the smallest resolution
    assert summary["crossovers"]["infer_time"] == {"resolution": 8, "tokens": 5, "at_start": True}
