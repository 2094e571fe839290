"""The report's fidelity and maps sections on hand-made analyze records: maps that are not
distributions are named and headlined by output error, a residual branch is kept apart from the
attention's error, old records are flagged, and signed maps get a diverging colour scale."""

from __future__ import annotations

from typing import Any

import report_records

from effbench.report.content import build_data
from effbench.report.inputs import Results
from effbench.report.sections import fidelity, maps
from effbench.results import LayerFidelity

GRID = [[0.1, 0.2], [0.3, 0.3]]  # a CLS row over a 2x2 patch grid
SIGNED = [[0.02, -0.03], [0.01, 0.004]]  # what a Linformer layer's CLS row can look like


def _record(model: str, kind: str, layers: list[dict[str, Any]], **extra: Any) -> dict:
    """An analyze record with the fields the two sections read; `layers` go through the
    schema's LayerFidelity, so a renamed field fails here."""
    cls = extra.pop("cls", GRID)
    return {
        "kind": "analyze", "model": model, "attention": {"kind": kind}, "status": "ok",
        "time": "2026-01-01T00:00:00", "n_images": 32, "image_size": 8, "grid": [2, 2],
        "layers": [LayerFidelity(layer=i, **x).model_dump() for i, x in enumerate(layers)],
        "images": [[[[0, 0, 0]] * 8] * 8], "labels": [1], "predictions": [1],
        "cls_maps": [[cls]], "cls_maps_exact": [[GRID]], "rollout": [cls],
        "rollout_exact": [GRID], **extra,
    }  # fmt: skip


def _records() -> list[dict]:
    exact = {"rel_output_error": 1e-7, "tv_mean": 1e-7, "tv_max": 1e-6, "row_sum_max_dev": 0}
    return [
        _record("sdpa", "sdpa", [exact], map_row_stochastic=True),
        _record(
            "performer", "performer",
            [{"rel_output_error": 0.35, "tv_mean": 0.16, "tv_max": 0.4, "row_sum_max_dev": 1e-6}],
            map_row_stochastic=True,
        ),
        _record(
            "linformer", "linformer",
            [{"rel_output_error": 0.75, "row_sum_max_dev": 1.03, "min_weight": -0.04}],
            map_row_stochastic=False, cls=SIGNED,
        ),
        # Nystrom with a conv branch: the whole layer is far from softmax, its attention is not.
        _record(
            "nystrom", "nystrom",
            [{"rel_output_error": 3.49, "attention_error": 0.159, "skip_rel_norm": 3.4,
              "row_sum_max_dev": 2e-3, "min_weight": -1e-3, "pinv_residual": 0.94,
              "ginv_residual": 0.02}],
            map_row_stochastic=False,
        ),
    ]  # fmt: skip


def _texts(sec: Any) -> str:
    return "\n".join(b.text for b in sec.blocks if b.kind == "text")


def _table(sec: Any) -> dict[str, dict[str, str]]:
    (table,) = [b for b in sec.blocks if b.kind == "table"]
    return {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}


def test_maps_that_are_not_distributions_are_named_and_headlined_by_output_error() -> None:
    sec, summary = fidelity.section(build_data(Results(records=_records())))
    text = _texts(sec)
    assert "not distributions over the keys" in text and ": linformer, nystrom." in text
    assert "AZA − A" in text and "expected and harmless" in text  # Nystrom's residuals explained
    rows = _table(sec)
    assert rows["linformer"]["mean TV distance"] == "— (not a distribution)"
    assert rows["nystrom"]["mean TV distance"] == "— (not a distribution)"
    assert rows["performer"]["mean TV distance"] == "0.160"
    assert rows["linformer"]["map"] == "signed" and rows["performer"]["map"] == "distribution"
    assert rows["nystrom"]["map"] == "signed"
    assert any("Not distributions" in s and "linformer, nystrom" in s for s in summary)
    assert not any("Not distributions" in s and "performer" in s for s in summary)


def test_a_residual_branch_is_not_counted_as_approximation_error() -> None:
    sec, summary = fidelity.section(build_data(Results(records=_records())))
    nystrom = _table(sec)["nystrom"]
    assert nystrom["mean attention error"] == "0.159"  # the attention part alone
    assert nystrom["residual branch size"] == "3.40"
    assert nystrom["layer output with branch"] == "3.49"  # given apart, not as the headline
    assert _table(sec)["linformer"]["layer output with branch"] == "-"  # no branch
    (ranking,) = [s for s in summary if s.startswith("Distance from exact attention")]
    assert "nystrom 0.159, performer 0.350, linformer 0.750." in ranking
    assert "sdpa" not in ranking  # exact kinds are not ranked


def test_records_from_before_signed_maps_are_flagged() -> None:
    old = _records()[2]
    del old["map_row_stochastic"]
    for layer in old["layers"]:  # what an old record held: a stand-in's TV distance
        layer.update(tv_mean=0.068, tv_max=0.2, min_weight=None)
    sec, _ = fidelity.section(build_data(Results(records=[old])))
    assert "analyze records of linformer predate signed maps" in _texts(sec)
    assert fidelity.section(build_data(Results(records=_records())))[0] is not None
    assert "predate" not in _texts(fidelity.section(build_data(Results(records=_records())))[0])


def test_signed_maps_get_their_own_diverging_scale() -> None:
    signed, stochastic = _records()[2], _records()[1]
    mine, exact = maps.panel_scales(signed, SIGNED, GRID)
    assert mine == {"cmap": "RdBu_r", "vmin": -0.03, "vmax": 0.03}  # centred on 0
    assert exact == {"cmap": "magma", "vmin": 0, "vmax": 0.3}  # its own, not Linformer's
    mine, exact = maps.panel_scales(stochastic, GRID, GRID)
    assert mine == exact == {"cmap": "magma", "vmin": 0, "vmax": 0.3}  # one shared scale
    sec, _ = maps.section(build_data(Results(records=_records())))
    assert "diverging around 0" in _texts(sec)
    assert len([b for b in sec.blocks if b.kind == "figure"]) == 4  # every model drawn


def test_the_map_column_says_how_a_map_falls_short_of_a_distribution() -> None:
    def label(row_dev: float, min_weight: float) -> str:
        layer = {"rel_output_error": 0.03, "row_sum_max_dev": row_dev, "min_weight": min_weight}
        rec = _record("m", "nystrom", [layer], map_row_stochastic=False)
        return _table(fidelity.section(build_data(Results(records=[rec])))[0])["m"]["map"]

    assert label(1e-4, 0.0) == "not guaranteed"  # close to a distribution on this model
    assert label(0.2, 0.0) == "rows ≠ 1"
    assert label(1e-4, -0.01) == "signed"


def test_a_mechanism_without_a_map_gets_its_output_fidelity_and_no_maps(
    monkeypatch: Any,
) -> None:
    """The contract's "no map": analyze of a model whose mechanism declares none records
    its output error only, the record passes the report's checks, and the fidelity and
    maps sections say "no map" for it while drawing the others."""
    import torch

    from effbench.analyze import analyze_model
    from effbench.attention.hydra import HydraAttention
    from effbench.config.attention import HydraConfig
    from effbench.config.spec import Backbone
    from effbench.model import build_model
    from effbench.report.checks import admit

    def no_weights(self: Any, q: Any, k: Any) -> Any:
        raise NotImplementedError("no per-head map")

    monkeypatch.setattr(HydraAttention, "has_map", False)
    monkeypatch.setattr(HydraAttention, "weights", no_weights)
    model = build_model(
        Backbone(image_size=8, patch_size=4, dim=16, depth=2, heads=2), HydraConfig()
    )
    fields = analyze_model(model, torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    assert fields["has_map"] is False and fields["cls_maps"] is None and fields["rollout"] is None
    assert [x.row_sum_max_dev for x in fields["layers"]] == [None, None]
    assert all(x.rel_output_error > 0 for x in fields["layers"])
    rec = report_records.analyze(
        "hydra",
        **{k: v for k, v in fields.items() if k not in ("images", "labels", "predictions")},
    )  # a whole record through the schema, the drawn images the helper's own
    assert admit(rec) is None, admit(rec)
    assert admit({**rec, "rollout": [[[0.1]]]}) == (
        "analyze record: has_map is false but rollout given"
    )

    records = [*_records(), rec]
    sec, summary = fidelity.section(build_data(Results(records=records)))
    row = _table(sec)["hydra"]
    assert row["map"] == "no map" and row["mean TV distance"] == "— (no map)"
    assert row["max |row sum − 1|"] == "-"
    assert "No per-head map" in _texts(sec) and "hydra" not in _texts(sec).split("negative")[0]
    assert any(s == "No per-head map (output error only): hydra." for s in summary)
    sec, _ = maps.section(build_data(Results(records=records)))
    assert "No map: hydra" in _texts(sec)
    assert len([b for b in sec.blocks if b.kind == "figure"]) == 4  # the others, drawn
