"""Property-based tests: whatever a spec file or a `--set` item holds, the spec loads or is
refused with lines that each name where the problem is; never another exception."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import report_records as rec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from specs import TINY_BACKBONE, run_cli

from effbench.config.overrides import parse_set
from effbench.errors import EffbenchError
from effbench.plan import resolve_spec
from effbench.report.checks import admit
from effbench.results import read_jsonl

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASE = (
    TINY_BACKBONE
    + """
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }

[[models]]
name = "nys"
attention = { kind = "nystrom", landmarks = 8 }

[profile]
seq_lens = [17, 65]

[train]
epochs = 1
"""
)

KEYS = [
    "backbone.image_size", "backbone.patch_size", "backbone.dim", "backbone.depth",
    "backbone.heads", "backbone.mlp_ratio", "backbone.dropout", "backbone.num_classes",
    "profile.seq_lens", "profile.batch_size", "profile.min_run_time", "profile.warmup",
    "profile.repeats", "profile.device", "profile.dtype", "train.lr", "train.min_lr",
    "train.epochs", "train.budget", "train.warmup_epochs", "train.mixup", "train.seeds",
    "train.betas", "train.dataset", "train.output_dir", "train.batch_size", "scale.resolutions",
    "scale.patch_size", "scale.mode", "train.bogus", "nosection.key",
]  # fmt: skip

# Strings with markup, maths, escapes, control characters, and huge or non-finite numbers.
NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "<script>alert(1)</script>", "$\\frac{a}{b}$", "{{ 7*7 }}", "%s%n", "..", "../x",
            "\x00", "\u202e", "inf", "nan", "1e999", "9" * 5000, "[" * 500, '"', "\\",
        ]
    ),
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers(min_value=1, max_value=64),  # plausible values, so that some specs load
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(NUMBERS, st.booleans(), NASTY_TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(NASTY_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


def toml_value(v: Any) -> str:
    """A TOML literal of `v` (inf and nan as TOML writes them)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v) if abs(v) < 10**4000 else "9" * 5000
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def check_located(err: EffbenchError, *sources: str) -> None:
    lines = err.lines()
    assert lines
    for line in lines:
        assert line.startswith((*sources, "--", "command line")), line
        assert "Traceback" not in line


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_any_spec_values_load_or_are_refused_located(tmp_path: Path, changes: list) -> None:
    sys.set_int_max_str_digits(0)  # let hypothesis build huge ints; the reader keeps its limit
    text = BASE
    for key, value in changes:
        section, name = key.split(".")
        text = text.replace(f"[{section}]\n", f"[{section}]\n{name} = {toml_value(value)}\n", 1)
        if f"[{section}]" not in text:
            text += f"\n[{section}]\n{name} = {toml_value(value)}\n"
    sys.set_int_max_str_digits(4300)
    path = tmp_path / "bench.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for tokens in ("image", "profile", None):
        try:
            bench = resolve_spec(path, {}, None, tokens=tokens)
        except EffbenchError as err:
            event("refused")
            check_located(err, str(path))
        else:
            event("loaded")
            assert all(math.isfinite(v) for v in _numbers(bench.model_dump()))


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_spec_file_are_refused_located(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bench.toml"
    path.write_bytes(data)
    with pytest.raises(EffbenchError) as err:
        resolve_spec(path, {})  # no bytes this short hold a model
    check_located(err.value, str(path))


@FUZZ
@given(
    items=st.lists(
        st.tuples(st.sampled_from(KEYS), st.one_of(NASTY_TEXT, VALUES.map(toml_value))),
        max_size=3,
    ),
    lr=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_any_set_items_and_options_load_or_are_refused_located(
    tmp_path: Path, items: list, lr: float | None
) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(BASE)
    sets = [f"{k}={v}" for k, v in items]
    try:
        bench = resolve_spec(path, {"train.lr": lr}, ["sdpa"], sets, tokens="image")
    except EffbenchError as err:
        event("refused")
        check_located(err, str(path))
    else:
        event("loaded")
        assert math.isfinite(bench.train.lr)
        for k, v in items:  # every item was applied, as text only when a plain word
            assert k.split(".")[0] in ("backbone", "profile", "train", "scale")
            if isinstance(parse_set([f"{k}={v}"])[k], str):
                assert v.strip() == parse_set([f"{k}={v}"])[k]


def _numbers(data: Any) -> list[float]:
    if isinstance(data, dict):
        return [x for v in data.values() for x in _numbers(v)]
    if isinstance(data, list | tuple):
        return [x for v in data for x in _numbers(v)]
    return [float(data)] if isinstance(data, int | float) and not isinstance(data, bool) else []


# ---------------------------------------------------------------------------- record lines

RECORDS = {
    "train": rec.train("sdpa"),
    "train_epoch": rec.epoch("sdpa"),
    "scale": rec.scale("sdpa", 16),
    "profile": rec.profile("sdpa", 17),
    "analyze": rec.analyze("sdpa"),
}


def fuzzed_line(data: st.DataObject) -> bytes:
    """A line of a results file: a whole record with one field given any value, perhaps cut
    short or with raw bytes in it."""
    record = json.loads(json.dumps(RECORDS[data.draw(st.sampled_from(sorted(RECORDS)))]))
    field = data.draw(st.sampled_from(sorted(record)))
    sys.set_int_max_str_digits(0)
    record[field] = data.draw(VALUES)
    text = json.dumps(record).encode("utf-8", "surrogatepass")
    sys.set_int_max_str_digits(4300)
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(text))))
    junk = data.draw(st.one_of(st.just(b""), st.binary(max_size=8)))
    return (text if cut is None else text[:cut]) + junk


@FUZZ
@given(data=st.data())
def test_any_record_line_is_read_and_admitted_or_refused(tmp_path: Path, data: Any) -> None:
    path = tmp_path / "r.jsonl"
    lines = [fuzzed_line(data) for _ in range(3)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    good, bad = read_jsonl(path)
    reasons = [r for r in (admit(g) for g in good) if r is not None]
    lines = [x for x in path.read_bytes().split(b"\n") if x.strip()]
    assert len(good) + len(bad) == len(lines)  # every line read or listed, none lost
    assert all(isinstance(r, str) and r for r in reasons + [b.reason for b in bad])


@pytest.mark.slow  # for time: twelve whole reports
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=NASTY_TEXT)
def test_the_report_survives_any_record_and_escapes_every_name(
    tmp_path_factory: pytest.TempPathFactory, data: Any, name: str
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    results = root / "results"
    results.mkdir()
    good = [rec.train("sdpa"), rec.train(name or "x", mechanism="nystrom", test_top1=0.4)]
    good += [rec.scale(name or "x", 16, mechanism="nystrom"), rec.scale("sdpa", 16)]
    (results / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (results / "fuzz.jsonl").write_bytes(b"\n".join(fuzzed_line(data) for _ in range(3)))
    code, output = run_cli("report", str(results), "-o", str(root / "out"))
    assert code == 0, output
    page = (root / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page  # every name escaped, wherever the page shows it
    read, unreadable = read_jsonl(results / "fuzz.jsonl")
    admitted = sum(admit(r) is None for r in read)
    assert f"{len(good) + admitted} records from 2 file(s)" in output, output
    skipped = len(unreadable) + len(read) - admitted
    assert (f"{skipped} skipped line(s) listed" in output) == (skipped > 0), output
