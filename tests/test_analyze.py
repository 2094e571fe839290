"""`effbench.analyze` on tiny untrained models of every registered mechanism: the fidelity
fields, the mechanisms' own diagnostics merged in, and exact kinds measured as exact."""

from __future__ import annotations

import pytest
import torch

from effbench.analyze import analyze_model, attention_inputs, rollout, total_variation
from effbench.attention import available
from effbench.config.attention import CONFIGS
from effbench.config.spec import Backbone
from effbench.model import build_model
from effbench.results import AnalyzeRecord, LayerFidelity

BB = Backbone(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0, num_classes=5)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 5, (6,), generator=g)


@pytest.mark.parametrize("kind", available())
def test_analyze_merges_the_mechanisms_diagnostics(kind: str, batch) -> None:
    images, labels = batch
    torch.manual_seed(0)
    model = build_model(BB, CONFIGS[kind].tiny()).eval()
    fields = analyze_model(model, images, labels, classes=tuple("abcde"))
    layers = model.attention_layers()
    assert fields["n_images"] == 6 and fields["grid"] == [4, 4]
    assert [f.layer for f in fields["layers"]] == [0, 1]
    inputs, _ = attention_inputs(model, images)
    with torch.no_grad():
        own = [
            layer.diagnostics(*(t.float() for t in layer.qkv_heads(x.float())))
            for layer, x in zip(layers, inputs, strict=True)
        ]
        whole = type(layers[0]).model_diagnostics(layers, inputs)
    for fidelity, extra in zip(fields["layers"], own, strict=True):
        assert set(extra) <= set(LayerFidelity.model_fields), extra
        assert {k: getattr(fidelity, k) for k in extra} == extra
    assert set(whole) <= set(AnalyzeRecord.model_fields), whole
    assert {k: fields[k] for k in whole} == whole
    stochastic = type(layers[0]).map_row_stochastic
    assert fields["map_row_stochastic"] is stochastic
    for f in fields["layers"]:
        assert f.rel_output_error >= 0 and f.min_weight <= 0
        if stochastic:  # TV distance only where rows are distributions
            assert 0 <= f.tv_mean <= f.tv_max <= 1 + 1e-6
        else:
            assert f.tv_mean is None and f.tv_max is None
        if CONFIGS[kind].exact:  # exact attention against itself
            assert f.rel_output_error < 1e-5 and f.tv_mean < 1e-5
        branch = layers[0].skip(torch.zeros(1, 2, model.seq_len, 16)) is not None
        assert (f.attention_error is not None) is branch  # figures apart only for a branch
        assert (f.skip_rel_norm is not None) is branch


def test_a_residual_branch_is_measured_apart_from_the_attention(batch) -> None:
    images, labels = batch
    torch.manual_seed(0)
    cfg = CONFIGS["nystrom"].tiny().model_copy(update={"conv_kernel": 3})
    model = build_model(BB, cfg).eval()
    with torch.no_grad():  # make the conv branch large, as training can
        for layer in model.attention_layers():
            layer.conv.weight.fill_(1.0)
    fields = analyze_model(model, images, labels)
    for f in fields["layers"]:
        assert f.skip_rel_norm > 1  # the branch is bigger than the attention output
        assert f.rel_output_error > 1  # so the whole output is far from softmax attention
        assert f.attention_error < 0.5 * f.rel_output_error  # the attention itself is not
        assert f.approximation_error == f.attention_error
        assert f.pinv_residual is not None and f.ginv_residual is not None
    assert len(fields["cls_maps"]) == 2 and len(fields["cls_maps"][0]) == 4
    assert len(fields["images"]) == len(fields["labels"]) == len(fields["predictions"]) == 4


def test_total_variation_and_rollout() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.equal(total_variation(p, q), torch.tensor([0.5, 0.0]))
    maps = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    out = rollout([maps, maps])
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(out.sum(dim=-1), torch.ones(2, 5))


def test_rollout_of_a_signed_map_stays_finite() -> None:
    # Rows of 0.5 A + 0.5 I that sum to 0: dividing by the row sum would give inf / NaN.
    signed = torch.tensor([[0.0, -1.0], [-1.0, 0.0]])[None, None]  # (B, H, N, N)
    out = rollout([signed, signed])
    assert out.isfinite().all()
    half = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])
    torch.testing.assert_close(out[0], half @ half)  # rows already of absolute sum 1


def test_records_from_before_signed_maps_still_load() -> None:
    # A layer as `analyze` wrote it before: TV distance always, no split, no min weight.
    old = {"layer": 0, "rel_output_error": 0.75, "tv_mean": 0.068, "tv_max": 0.2,
           "row_sum_max_dev": 1e-6, "pinv_residual": None}  # fmt: skip
    layer = LayerFidelity.model_validate(old)
    assert layer.attention_error is None and layer.skip_rel_norm is None
    assert layer.min_weight is None and layer.ginv_residual is None
    assert AnalyzeRecord.model_fields["map_row_stochastic"].default is None


def test_the_approximation_error_leaves_a_branch_out() -> None:
    plain = LayerFidelity(layer=0, rel_output_error=0.3, row_sum_max_dev=0.0)
    branch = plain.model_copy(update={"rel_output_error": 3.49, "attention_error": 0.159})
    assert plain.approximation_error == 0.3 and branch.approximation_error == 0.159
    assert "approximation_error" not in branch.model_dump()  # derived, not stored
