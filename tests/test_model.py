"""The ViT: same backbone for every mechanism, analytic FLOPs equal counted FLOPs for the
whole model, position embeddings and trained weights that resize to another grid."""

from __future__ import annotations

import pytest
import torch

from effbench.attention import available
from effbench.config.attention import BASELINE_KIND, CONFIGS
from effbench.config.spec import Backbone, ModelEntry
from effbench.measure import count_flops
from effbench.model import adapt_state_dict, build_model, resize_pos_embed

BB = Backbone(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0, num_classes=5)


def attention_cfg(kind: str):
    """The config's `tiny()` options, validated as a bench.toml model entry."""
    attention = CONFIGS[kind].tiny().model_dump(exclude_unset=True)
    return ModelEntry.model_validate(
        {"name": kind, "attention": {"kind": kind, **attention}}
    ).attention


@pytest.mark.parametrize("kind", available())
def test_vit_forward_backward_and_flops(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(BB, attention_cfg(kind))
    images = torch.randn(3, 3, 16, 16)
    logits = model(images)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.patch_embed.parameters())
    counts = count_flops(model, images, analytic=model.flops() - model.elementwise_flops())
    assert counts.analytic == counts.fvcore == counts.flop_counter


def test_only_the_attention_differs() -> None:
    shapes = {}
    for kind in available():
        sd = build_model(BB, attention_cfg(kind)).state_dict()
        shapes[kind] = {k: v.shape for k, v in sd.items() if ".attn." not in k}
    ref = shapes[BASELINE_KIND]
    assert all(s == ref for s in shapes.values())


def test_image_size_must_divide_into_patches() -> None:
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        build_model(BB, attention_cfg(BASELINE_KIND), image_size=18)


def test_wrong_input_size_is_refused() -> None:
    model = build_model(BB, attention_cfg(BASELINE_KIND))
    with pytest.raises(AssertionError, match="built for 16px images"):
        model(torch.randn(1, 3, 32, 32))


def test_resize_pos_embed() -> None:
    pos = torch.randn(1, 1 + 4 * 4, 8)
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    big = resize_pos_embed(pos, (4, 4), (8, 8))
    assert big.shape == (1, 65, 8)
    assert torch.equal(big[:, 0], pos[:, 0])  # CLS untouched
    const = torch.ones(1, 17, 8)
    assert torch.allclose(resize_pos_embed(const, (4, 4), (6, 6)), torch.ones(1, 37, 8), atol=1e-5)


@pytest.mark.parametrize("kind", available())
def test_larger_model_built_at_another_resolution(kind: str) -> None:
    model = build_model(BB, attention_cfg(kind), image_size=32)
    assert model.seq_len == 65 and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("kind", available())
def test_trained_weights_adapt_to_another_grid(kind: str) -> None:
    # Each attention layer adapts its own weights (Attention.adapt_state); nothing else but
    # the position embedding changes.
    trained = build_model(BB, attention_cfg(kind))
    state = trained.state_dict()
    bigger = build_model(BB, attention_cfg(kind), image_size=32)
    adapted = adapt_state_dict(state, bigger, trained_grid=trained.grid)
    bigger.load_state_dict(adapted)  # every shape fits
    assert adapted.keys() == state.keys()
    for name, tensor in state.items():
        if name != "pos_embed" and ".attn." not in name:
            assert torch.equal(adapted[name], tensor), name
    same = adapt_state_dict(state, build_model(BB, attention_cfg(kind)), trained_grid=(4, 4))
    assert all(torch.equal(same[k], state[k]) for k in state)


def _shared(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight outside the attention layers, and each layer's W_qkv and W_o (fused)."""
    out = {k: v for k, v in model.state_dict().items() if ".attn." not in k}
    for i, blk in enumerate(model.blocks):
        out |= {f"blocks.{i}.attn.{k}": v for k, v in blk.attn.projection_state().items()}
    return out


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_every_mechanism_starts_from_the_same_shared_weights(qkv_bias: bool) -> None:
    starts, streams = {}, {}
    for kind in available():
        cfg = attention_cfg(kind).model_copy(update={"qkv_bias": qkv_bias})
        torch.manual_seed(0)
        starts[kind] = _shared(build_model(BB, cfg))
        streams[kind] = torch.randn(4)  # what comes after the build (dropout, data) is equal too
    ref = starts[BASELINE_KIND]
    for kind, shared in starts.items():
        assert shared.keys() == ref.keys(), kind
        differ = [k for k in ref if not torch.equal(shared[k], ref[k])]
        assert not differ, (kind, differ)
        assert torch.equal(streams[kind], streams[BASELINE_KIND]), kind
    torch.manual_seed(1)
    other = _shared(build_model(BB, attention_cfg(BASELINE_KIND)))
    assert not torch.equal(other["head.weight"], ref["head.weight"])  # the seed still matters


def test_attention_layers_draw_their_own_streams() -> None:
    # Mechanism-specific parameters differ between layers of one model and between seeds.
    torch.manual_seed(0)
    model = build_model(BB, CONFIGS["linformer"].tiny())
    e0, e1 = (blk.attn.state_dict()["e"] for blk in model.blocks)
    assert not torch.equal(e0, e1)
    torch.manual_seed(0)
    assert torch.equal(build_model(BB, CONFIGS["linformer"].tiny()).blocks[0].attn.e, e0)


CONV = BB.model_copy(update={"tokenizer": "conv"})


@pytest.mark.parametrize("kind", [BASELINE_KIND, "window", "agent"])
def test_the_conv_tokenizer_makes_the_same_grid_and_counts_its_flops(kind: str) -> None:
    """Two conv stages for patch 4 give the patch embedding's 4 x 4 grid, so every kind
    (grid-aware ones too) runs on top unchanged; its FLOPs agree three ways, and every kind
    starts from the same tokenizer weights."""
    torch.manual_seed(0)
    model = build_model(CONV, attention_cfg(kind))
    assert len(model.patch_embed.stages) == 2 and model.seq_len == 17
    images = torch.randn(2, 3, 16, 16)
    model(images).sum().backward()
    counts = count_flops(model, images, analytic=model.flops() - model.elementwise_flops())
    assert counts.analytic == counts.fvcore == counts.flop_counter
    plain = build_model(BB, attention_cfg(kind))
    assert model.flops() > plain.flops()
    torch.manual_seed(0)
    again = build_model(CONV, attention_cfg(BASELINE_KIND))
    for a, b in zip(model.patch_embed.stages, again.patch_embed.stages, strict=True):
        assert torch.equal(a.weight, b.weight)
    wide = build_model(CONV, attention_cfg(kind), image_size=32)  # another resolution: 8 x 8
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 5) and wide.seq_len == 65


def test_the_conv_tokenizer_needs_a_power_of_two_patch() -> None:
    from effbench.model import ConvTokenizer

    with pytest.raises(ValueError, match="power-of-two patch size"):
        ConvTokenizer(channels=3, dim=8, patch_size=6)
