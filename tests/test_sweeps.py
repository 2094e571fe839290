"""Option sweeps: a list in a `[[models]]` entry's attention options expands to one model
per value (several lists: their product), each validated like a single model, named from
the entry and its values, grouped under the entry's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from effbench.config.load import parse_spec, select_models
from effbench.errors import SpecError


def spec_with(*models: dict[str, Any]) -> dict[str, Any]:
    return {"models": list(models)}


def test_a_list_expands_to_one_model_per_value() -> None:
    spec = parse_spec(
        spec_with(
            {"name": "sdpa", "attention": {"kind": "sdpa"}},
            {"name": "linformer", "attention": {"kind": "linformer", "k": [32, 64, 128]}},
        )
    )
    names = [m.name for m in spec.models]
    assert names == ["sdpa", "linformer-k32", "linformer-k64", "linformer-k128"]
    assert [m.attention.k for m in spec.models[1:]] == [32, 64, 128]
    assert {m.group for m in spec.models[1:]} == {"linformer"} and spec.models[0].group is None


def test_several_lists_expand_to_their_product() -> None:
    spec = parse_spec(
        spec_with(
            {
                "name": "win",
                "attention": {"kind": "linformer", "k": [8, 16], "share_kv": [True, False]},
            }
        )
    )
    assert [m.name for m in spec.models] == [
        "win-k8-share_kv",
        "win-k8-noshare_kv",
        "win-k16-share_kv",
        "win-k16-noshare_kv",
    ]
    assert len({(m.attention.k, m.attention.share_kv) for m in spec.models}) == 4


def test_string_options_name_variants_by_their_value() -> None:
    spec = parse_spec(
        spec_with({"name": "sdpa", "attention": {"kind": "sdpa", "backend": ["math", "auto"]}})
    )
    assert [m.name for m in spec.models] == ["sdpa-math", "sdpa-auto"]


def test_each_variant_is_validated_and_the_entry_is_blamed() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(
            spec_with(
                {"name": "sdpa", "attention": {"kind": "sdpa"}},
                {"name": "nys", "attention": {"kind": "nystrom", "conv_kernel": [3, 4]}},
            )
        )
    (loc, msg), *_ = err.value.issues
    assert loc == "models[1].attention.conv_kernel (nys-conv_kernel4)"
    assert "odd" in msg


def test_an_empty_sweep_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with({"name": "lin", "attention": {"kind": "linformer", "k": []}}))
    assert err.value.issues == [
        ("models[0].attention.k", "an option sweep needs at least one value")
    ]


def test_a_variant_name_that_repeats_a_model_is_refused() -> None:
    with pytest.raises(SpecError, match="repeats"):
        parse_spec(
            spec_with(
                {"name": "lin-k8", "attention": {"kind": "linformer", "k": 8}},
                {"name": "lin", "attention": {"kind": "linformer", "k": [8, 16]}},
            )
        )


def test_the_group_name_selects_every_variant() -> None:
    spec = parse_spec(
        spec_with(
            {"name": "sdpa", "attention": {"kind": "sdpa"}},
            {"name": "lin", "attention": {"kind": "linformer", "k": [8, 16]}},
        )
    )
    assert [m.name for m in select_models(spec, ["lin"]).models] == ["lin-k8", "lin-k16"]
    assert [m.name for m in select_models(spec, ["lin-k16"]).models] == ["lin-k16"]


def test_an_expanded_spec_reads_back_as_itself() -> None:
    spec = parse_spec(spec_with({"name": "lin", "attention": {"kind": "linformer", "k": [8, 16]}}))
    again = parse_spec(spec.model_dump(mode="json"))
    assert again == spec and again.hash() == spec.hash()


def test_the_report_draws_a_sweep_as_one_curve(tmp_path: Path) -> None:
    from report_records import scale, train

    from effbench.report import build_report, collect
    from effbench.report.content import build_data
    from effbench.results import write_jsonl_atomic

    recs = [train("sdpa", test_top1=0.55), scale("sdpa", 32), scale("sdpa", 64)]
    for k, acc in ((8, 0.40), (16, 0.45), (32, 0.50)):
        name = f"lin-k{k}"
        recs.append(train(name, mechanism="linformer", group="lin", test_top1=acc))
        recs += [
            scale(name, 32, mechanism="linformer", group="lin", infer_ms=1.0 + k / 8),
            scale(name, 64, mechanism="linformer", group="lin", infer_ms=2.0 + k / 8),
        ]
    write_jsonl_atomic(tmp_path / "records.jsonl", recs)
    results = collect([tmp_path])
    data = build_data(results)
    assert data.swept() == {"lin": ["lin-k8", "lin-k16", "lin-k32"]}
    styles = [data.style(m) for m in data.swept()["lin"]]
    assert len({s["color"] for s in styles}) == 1  # one mechanism, one colour
    assert len({s["marker"] for s in styles}) == 3  # told apart by marker
    assert data.label("lin-k16") == "lin: k16" and data.label("sdpa") == "sdpa"
    report = build_report(results)
    (pareto,) = [s for s in report.sections if s.id == "pareto"]
    assert "joins the variants of one option sweep" in " ".join(
        b.text for b in pareto.blocks if b.kind == "text"
    )


def test_names_sort_numbers_by_value_and_survive_huge_ones() -> None:
    from effbench.report.content import model_order

    huge = "9" * 5000  # more digits than int() converts
    assert model_order(["lin-k16", "lin-k8", "lin-k128", huge], {}) == [
        huge, "lin-k8", "lin-k16", "lin-k128",
    ]  # fmt: skip
