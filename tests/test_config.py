"""bench.toml validation: the default spec loads, and malformed specs fail with exit 2 and a
`location: message` line that names what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from effbench.cli import app
from effbench.config.attention import KINDS
from effbench.config.load import load_spec, parse_spec, read_toml, select_models
from effbench.config.overrides import parse_set
from effbench.config.spec import resolution_ladder
from effbench.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
[backbone]
image_size = 32
patch_size = 4
dim = 64
heads = 4

[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[[models]]
name = "nys"
attention = { kind = "nystrom", landmarks = 8 }

[profile]
seq_lens = [17, 65]
"""


def test_default_spec_loads_every_kind() -> None:
    spec = load_spec(ROOT / "bench.toml")
    assert {m.attention.kind for m in spec.models} == set(KINDS)
    assert spec.backbone.seq_len() == 65
    assert len(spec.hash()) == 12


def test_overrides_apply_and_change_the_hash(tmp_path: Path) -> None:
    p = tmp_path / "bench.toml"
    p.write_text(GOOD)
    base = load_spec(p)
    over = load_spec(p, {"profile.batch_size": 3, "profile.seq_lens": [33]})
    assert over.profile.batch_size == 3 and over.profile.seq_lens == [33]
    assert base.hash() != over.hash()


def test_select_models_by_name_kind_and_default_kind(tmp_path: Path) -> None:
    p = tmp_path / "bench.toml"
    p.write_text(GOOD)
    spec = load_spec(p)
    assert [m.name for m in select_models(spec, ["nystrom"]).models] == ["nys"]
    assert [m.name for m in select_models(spec, ["sdpa,nys"]).models] == ["sdpa", "nys"]
    added = select_models(spec, ["performer"])
    assert added.models[0].attention.kind == "performer"
    assert len(select_models(spec, ["all"]).models) == 2
    with pytest.raises(SpecError, match="unknown attention 'flash9'"):
        select_models(spec, ["flash9"])


# (name, TOML text, location expected in the message, words expected in the message)
BAD_SPECS = [
    ("unknown top key", GOOD + "\n[trian]\nepochs = 3\n", "trian", "unknown key"),
    (
        "unknown backbone key",
        GOOD.replace("dim = 64", "dim = 64\ndepht = 3"),
        "backbone.depht",
        "unknown key",
    ),
    (
        "unknown attention kind",
        GOOD.replace('kind = "sdpa"', 'kind = "flashy"'),
        "models[0].attention.kind",
        "unknown attention kind 'flashy'",
    ),
    (
        "unknown attention option",
        GOOD.replace("landmarks = 8", "landmark = 8"),
        "models[1].attention.landmark",
        "unknown key",
    ),
    ("wrong type", GOOD.replace("dim = 64", 'dim = "wide"'), "backbone.dim", "integer"),
    ("negative size", GOOD.replace("heads = 4", "heads = -4"), "backbone.heads", "greater than 0"),
    (
        "image not divisible by patch",
        GOOD.replace("image_size = 32", "image_size = 30"),
        "backbone.image_size",
        "not divisible by patch_size 4",
    ),
    (
        "dim not divisible by heads",
        GOOD.replace("heads = 4", "heads = 3"),
        "backbone.dim",
        "not divisible by heads 3",
    ),
    (
        "landmarks above shortest profiled length",
        GOOD.replace("landmarks = 8", "landmarks = 20"),
        "models[1].attention.landmarks",
        "shortest length 17",
    ),
    ("bad TOML syntax", GOOD.replace("dim = 64", "dim = = 64"), "", "invalid TOML"),
    (
        "missing kind",
        GOOD.replace('{ kind = "sdpa" }', '{ backend = "math" }'),
        "models[0].attention",
        "missing 'kind'",
    ),
    (
        "duplicate model names",
        GOOD.replace('name = "nys"', 'name = "sdpa"'),
        "models[1].name",
        "repeats models[0]",
    ),
    (
        "no models",
        GOOD.split("[[models]]")[0] + "[profile]\nseq_lens = [17]\n",
        "models",
        "Field required",
    ),
    ("bad dtype", GOOD + 'dtype = "float8"\n', "profile.dtype", "float32"),
    ("bad device", GOOD + 'device = "tpu"\n', "profile.device", "'auto', 'cpu', 'cuda'"),
    (
        "even hybrid window",
        GOOD.replace('kind = "sdpa"', 'kind = "hybrid", window = 4'),
        "models[0].attention.window",
        "must be odd",
    ),
    (
        "sequence length too short",
        GOOD.replace("[17, 65]", "[1, 65]"),
        "profile.seq_lens",
        "2 (CLS",
    ),
    (
        "huge timing",
        GOOD + "min_run_time = 1e300\n",
        "profile.min_run_time",
        "less than or equal to 60",
    ),
    ("huge length", GOOD.replace("[17, 65]", "[17, 9" + "9" * 5000 + "]"), "", "invalid TOML"),
    (
        "huge image",
        GOOD.replace("image_size = 32", "image_size = 4294967296"),
        "backbone.image_size",
        "less than or equal",
    ),
    ("infinite warm-up", GOOD + "warmup = inf\n", "profile.warmup", "finite"),
    ("infinite timing", GOOD + "min_run_time = inf\n", "profile.min_run_time", "finite"),
    ("nan timing", GOOD + "min_run_time = nan\n", "profile.min_run_time", "finite"),
    (
        "zero-width MLP",
        GOOD.replace("dim = 64", "dim = 64\nmlp_ratio = 0.001"),
        "backbone.mlp_ratio",
        "no hidden unit",
    ),
    (
        "conv tokenizer on an odd patch",
        GOOD.replace(
            "image_size = 32\npatch_size = 4", 'image_size = 48\npatch_size = 6\ntokenizer = "conv"'
        ),
        "backbone.patch_size",
        "not a power of two",
    ),
    (
        "model named ..",
        GOOD.replace('name = "nys"', 'name = ".."'),
        "models[1].name",
        "outside the output",
    ),
    (
        "model name with a separator",
        GOOD.replace('name = "nys"', 'name = "../x"'),
        "models[1].name",
        "should match pattern",
    ),
]


@pytest.mark.parametrize(("name", "text", "loc", "words"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_malformed_spec_exits_2_naming_the_location(
    tmp_path: Path, name: str, text: str, loc: str, words: str
) -> None:
    p = tmp_path / "bench.toml"
    p.write_text(text)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["profile", "--spec", str(p), "--output", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines, "no error printed"
    prefix = f"{p}:{loc}: " if loc else f"{p}: "
    assert any(line.startswith(prefix) and words in line for line in lines), lines
    assert not out.exists(), "a rejected spec must not start writing results"


def test_missing_spec_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["profile", "--spec", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "spec file not found" in result.stderr and "--spec" in result.stderr


def test_unknown_attention_on_the_command_line(tmp_path: Path) -> None:
    p = tmp_path / "bench.toml"
    p.write_text(GOOD)
    result = CliRunner().invoke(app, ["profile", "--spec", str(p), "--attention", "softmax2"])
    assert result.exit_code == 2
    assert result.stderr.startswith("command line:--attention: unknown attention 'softmax2'")


def test_cli_override_is_validated_too(tmp_path: Path) -> None:
    p = tmp_path / "bench.toml"
    p.write_text(GOOD)
    result = CliRunner().invoke(app, ["profile", "--spec", str(p), "--seq-len", "5"])
    assert result.exit_code == 2
    assert (
        "models[1].attention.landmarks: 8 exceeds profile.seq_lens' shortest length 5"
        in result.stderr
    )


def test_parse_spec_reports_every_problem_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"backbone": {"dim": 0, "heads": "x"}, "models": []})
    locs = [loc for loc, _ in info.value.issues]
    assert {"backbone.dim", "backbone.heads", "models"} <= set(locs)


def test_parse_set_reads_toml_values() -> None:
    got = parse_set(["train.lr=3e-4", "train.seeds=[0, 1]", "train.dataset=synthetic"])
    assert got == {"train.lr": 3e-4, "train.seeds": [0, 1], "train.dataset": "synthetic"}
    with pytest.raises(SpecError):
        parse_set(["lr=3"])


def test_resolution_ladder() -> None:
    assert resolution_ladder(32, 224, 4) == [32, 64, 128, 224]
    assert resolution_ladder(32, 512, 16) == [32, 64, 128, 256, 512]
    assert resolution_ladder(48, 100, 4) == [48, 64, 100]
    assert resolution_ladder(64, 64, 8) == [64]
    assert resolution_ladder(8, 32, 8) == [8, 16, 32]
    with pytest.raises(ValueError, match="not divisible by patch size 16; use a multiple"):
        resolution_ladder(30, 224, 16)
    with pytest.raises(ValueError, match="must not exceed"):
        resolution_ladder(64, 32, 4)


def test_scale_section_is_validated() -> None:
    data = read_toml(Path(__file__).resolve().parents[1] / "bench.toml")
    spec = parse_spec(data)
    assert spec.scale.resolutions == [32, 64, 128, 224] and spec.scale_patch() == 4
    odd = parse_spec(data, overrides={"scale.resolutions": [30, 64]})  # fine for other commands
    assert odd.scale_problems() == [
        ("scale.resolutions", "[30] not divisible by patch size 4; use multiples of 4")
    ]
    with pytest.raises(SpecError, match=r"scale\.mode"):
        parse_spec(data, overrides={"scale.mode": "fast"})
    assert parse_spec(data, overrides={"scale.patch_size": 16}).scale_patch() == 16
