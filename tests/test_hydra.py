"""Hydra attention: the paper's element-wise form with one head per feature, the multi-head
form with fewer, its FLOPs (element-wise work counted apart from what the counters see), its
head count in models and specs, and autocast."""

from __future__ import annotations

import tomllib

import pytest
import torch
from test_attention import dense_intermediates
from torch import Tensor
from torch.testing import assert_close

from effbench.attention import build_attention
from effbench.attention.hydra import HydraAttention
from effbench.config.attention import HydraConfig, SdpaConfig
from effbench.config.load import parse_spec
from effbench.config.spec import Backbone
from effbench.errors import SpecError
from effbench.measure import count_flops
from effbench.model import build_model

B, DIM, N = 2, 32, 26


def build(*, heads: int | None = None, seq_len: int = N) -> HydraAttention:
    cfg = HydraConfig(heads=heads)
    layer = build_attention(
        cfg, dim=DIM, num_heads=cfg.head_count(dim=DIM, backbone_heads=2), seq_len=seq_len
    )
    assert isinstance(layer, HydraAttention)
    return layer


def paper_hydra(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The paper's form on (B, N, C): q/||q||, k/||k||, then q * sum_t(k_t * v_t)."""
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    return q * (k * v).sum(dim=-2, keepdim=True)


def heads_of(x: Tensor, h: int) -> Tensor:
    """(B, N, C) -> (B, H, N, C / H), the layout `qkv_heads` gives."""
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


def test_one_head_per_feature_is_the_papers_element_wise_form() -> None:
    m = build()
    assert m.num_heads == DIM and m.head_dim == 1  # the true form by default
    q, k, v = (torch.randn(B, N, DIM, dtype=torch.float64) for _ in range(3))
    got = m.attend(heads_of(q, DIM), heads_of(k, DIM), heads_of(v, DIM))
    assert_close(got.transpose(1, 2).reshape(B, N, DIM), paper_hydra(q, k, v))


def test_fewer_heads_are_linear_attentions_of_the_normalised_features() -> None:
    m = build(heads=4)
    assert m.num_heads == 4 and m.head_dim == DIM // 4
    q, k, v = (torch.randn(B, N, DIM, dtype=torch.float64) for _ in range(3))
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    per_head = heads_of(qn, 4) @ (heads_of(kn, 4).transpose(-2, -1) @ heads_of(v, 4))
    assert_close(m.attend(heads_of(q, 4), heads_of(k, 4), heads_of(v, 4)), per_head)


def test_its_map_is_signed_and_per_head() -> None:
    m = build()
    amap = m.attention_map(torch.randn(B, N, DIM))
    assert amap.shape == (B, DIM, N, N)
    assert (amap < 0).any()  # cosine similarities: signed, not a distribution
    assert not HydraAttention.map_row_stochastic and not HydraAttention.map_nonnegative


@pytest.mark.parametrize("heads", [None, 4])
def test_flops_count_its_element_wise_work_apart_and_grow_linearly(heads: int | None) -> None:
    seen = {}
    for side in (4, 8):
        n = 1 + side * side
        m = build(heads=heads, seq_len=n)
        counted = count_flops(
            m, torch.randn(1, n, DIM), analytic=m.flops(n) - m.elementwise_flops(n)
        )
        assert counted.analytic == counted.fvcore == counted.flop_counter, counted
        assert m.elementwise_flops(n) > 0
        seen[side] = m.flops(n) - m.projection_flops(n)
    assert 3.5 < seen[8] / seen[4] < 4.5  # 65 / 17 = 3.8x the tokens, no N^2 term
    if heads is None:  # one feature per head: the element-wise work is the main cost
        n = 65
        assert build(seq_len=n).elementwise_flops(n) > build(seq_len=n).attend_flops(n)


def test_never_materialises_dense_attention() -> None:
    n = 1 + 16 * 16
    assert not dense_intermediates(build(seq_len=n), torch.randn(1, n, DIM))


def test_bfloat16_autocast_computes_in_float32() -> None:
    m = build()
    q, k, v = (torch.randn(B, DIM, N, 1).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.attend(q, k, v)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, m.attend(q.float(), k.float(), v.float()).bfloat16())


def test_a_model_splits_its_width_into_its_own_heads_and_starts_equal() -> None:
    bb = Backbone(image_size=16, patch_size=4, dim=DIM, depth=2, heads=2)
    torch.manual_seed(0)
    hydra = build_model(bb, HydraConfig())
    torch.manual_seed(0)
    sdpa = build_model(bb, SdpaConfig())
    assert {layer.num_heads for layer in hydra.attention_layers()} == {DIM}
    assert {layer.num_heads for layer in sdpa.attention_layers()} == {2}
    shared = sdpa.state_dict()
    for name, tensor in hydra.state_dict().items():  # every tensor the two have in common
        assert torch.equal(tensor, shared[name]), name
    assert hydra(torch.randn(1, 3, 16, 16)).shape == (1, bb.num_classes)


def test_a_head_count_that_does_not_divide_the_width_is_a_located_error() -> None:
    text = '[backbone]\ndim = 32\nheads = 2\n[[models]]\nname = "h"\n'
    text += 'attention = { kind = "hydra", heads = 5 }\n'
    with pytest.raises(SpecError) as err:
        parse_spec(tomllib.loads(text))
    assert "models[0].attention.heads: 5 does not divide backbone.dim 32" in "\n".join(
        err.value.lines()
    )


def test_it_is_measured_against_exact_attention_over_the_backbones_heads() -> None:
    """analyze's reference for a kind with its own head count is the attention it replaces:
    exact softmax over the backbone's heads, from the same weights (here the first layer,
    whose input the two models share, gives sdpa's exact maps to the last digit)."""
    from effbench.analyze import analyze_model

    bb = Backbone(image_size=16, patch_size=4, dim=DIM, depth=2, heads=2)
    images, labels = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    fields = {}
    for cfg in (HydraConfig(), SdpaConfig()):
        torch.manual_seed(0)
        fields[cfg.kind] = analyze_model(build_model(bb, cfg), images, labels, heads=bb.heads)
    assert fields["hydra"]["cls_maps_exact"][0] == fields["sdpa"]["cls_maps_exact"][0]
    assert fields["sdpa"]["layers"][0].rel_output_error < 1e-5  # exact against itself
    assert fields["hydra"]["layers"][0].rel_output_error > 0.1
    assert fields["hydra"]["layers"][0].tv_mean is None  # signed: no TV distance
