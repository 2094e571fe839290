"""Window attention (`effbench.attention.window`): the windows against an explicit
construction of Swin's (shifted, padded, clamped) windows, map @ V == attend on every kind of
grid, the exact limit, the shift mask, block parity, bfloat16, gradients, no dense
intermediates, FLOPs, and timm's Swin `WindowAttention` as a reference."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_attention import dense_intermediates
from torch.testing import assert_close

from effbench.attention import build_attention
from effbench.attention.base import softmax_attention
from effbench.attention.window import (
    WindowAttention,
    window_attention,
    window_mask,
    window_plan,
)
from effbench.config.attention import FusedConfig, WindowConfig
from effbench.measure import count_flops

B, DIM, HEADS = 2, 32, 2

# (rows, cols, window): divisible square grids, grids M does not divide (padded), oblong
# grids, and grids with one side no longer than M (clamped, never shifted along it).
GRIDS = [
    (4, 4, 2),
    (8, 8, 4),
    (5, 5, 2),
    (5, 5, 3),
    (6, 9, 4),
    (5, 7, 3),
    (3, 7, 4),  # rows clamped to 3, columns padded
    (2, 11, 4),  # rows clamped to 2, columns padded
    (1, 17, 4),  # the 1 x 17 grid of 18 tokens
]
GRID_IDS = [f"{r}x{c}-m{m}" for r, c, m in GRIDS]


def layer(rows: int, cols: int, *, block: int = 0, **opts: Any) -> WindowAttention:
    m = build_attention(WindowConfig(**opts), dim=DIM, num_heads=HEADS, seq_len=1 + rows * cols)
    assert isinstance(m, WindowAttention) and (m.rows, m.cols) == (rows, cols)
    m.block_index = block
    return m


def fused(seq_len: int) -> Any:
    return build_attention(FusedConfig(), dim=DIM, num_heads=HEADS, seq_len=seq_len)


def qkv(m: WindowAttention, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return m.qkv_heads(torch.randn(B, m.seq_len, DIM, dtype=dtype))


def axis_windows(length: int, window: int, shifted: bool) -> list[range]:
    """The windows along one axis, written out: M clamped to the axis; shifted (only where
    M is shorter than the axis), the first window is [0, M // 2) and the rest are M long
    from there, the last one cut short by the grid's end."""
    m = min(window, length)
    shift = window // 2 if shifted and window < length else 0
    starts = [0, *range(shift, length, m)] if shift else list(range(0, length, m))
    ends = [*starts[1:], length]
    return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def expected_keys(rows: int, cols: int, window: int, shifted: bool) -> list[set[int]]:
    """Each patch query's key tokens: the patches of its window and CLS (token 0)."""
    keys: list[set[int]] = [set() for _ in range(rows * cols)]
    for wr in axis_windows(rows, window, shifted):
        for wc in axis_windows(cols, window, shifted):
            cells = {1 + r * cols + c for r in wr for c in wc}
            for t in cells:
                keys[t - 1] = cells | {0}
    return keys


# ---------------------------------------------------------------------------- windows


def test_plan_clamps_the_window_and_shifts_only_longer_axes() -> None:
    p = window_plan(8, 8, 4, shifted=True)
    assert (p.win_rows, p.win_cols, p.shift_rows, p.shift_cols) == (4, 4, 2, 2)
    assert (p.windows, p.area, p.padded) == (4, 16, False)
    p = window_plan(3, 10, 4, shifted=True)  # Swin: the window covers the 3 rows
    assert (p.win_rows, p.win_cols, p.shift_rows, p.shift_cols) == (3, 4, 0, 2)
    assert (p.padded_rows, p.padded_cols, p.windows, p.padded) == (3, 12, 3, True)
    assert not window_plan(4, 4, 4, shifted=True).shifted  # the window covers the grid
    assert not window_plan(4, 4, 1, shifted=True).shifted  # 1 // 2 == 0
    assert not window_plan(8, 8, 4, shifted=False).shifted
    assert window_mask(window_plan(8, 8, 4, shifted=False), cls=True) is None


@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize(("rows", "cols", "window"), GRIDS, ids=GRID_IDS)
def test_map_support_is_the_window_and_cls(rows: int, cols: int, window: int, block: int) -> None:
    m = layer(rows, cols, window=window, block=block)
    amap = m.attention_map(torch.randn(B, m.seq_len, DIM))
    support = amap.gt(0).all(dim=(0, 1))  # (N, N), the same for every sample and head
    assert support[0].all(), "the CLS query attends to every token"
    keys = expected_keys(rows, cols, window, shifted=block == 1)
    for p, expected in enumerate(keys):
        assert set(support[1 + p].nonzero().flatten().tolist()) == expected, (rows, cols, p)
    assert (amap.gt(0) == support).all()  # the zeros are structural, not underflow


@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize(("rows", "cols", "window"), GRIDS, ids=GRID_IDS)
def test_map_is_what_attend_applies(rows: int, cols: int, window: int, block: int) -> None:
    # `weights` builds the windows in grid coordinates (`window_groups`); `attend` pads,
    # rolls and masks (`partition`, `window_mask`): the two must agree everywhere.
    m = layer(rows, cols, window=window, block=block).double()
    q, k, v = qkv(m, dtype=torch.float64)
    with torch.no_grad():
        out = m.attend(q, k, v)
        assert_close(m.weights(q, k) @ v, out, atol=1e-12, rtol=1e-10)
        assert_close(out[:, :, :1], softmax_attention(q[:, :, :1], k, v, m.scale))


@pytest.mark.parametrize(("rows", "cols", "window"), [(4, 4, 4), (4, 4, 7), (4, 6, 6), (5, 5, 5)])
def test_window_covering_the_grid_is_exact(rows: int, cols: int, window: int) -> None:
    n = 1 + rows * cols
    ref = fused(n)
    for block in (0, 1):  # no shift either: the window covers every axis
        m = layer(rows, cols, window=window, block=block)
        m.load_projection_state(ref.projection_state())
        assert not m.shifted
        x = torch.randn(B, n, DIM)
        with torch.no_grad():
            q, k, v = m.qkv_heads(x)
            assert_close(m.attend(q, k, v), softmax_attention(q, k, v, m.scale))
            assert_close(m(x), ref(x), atol=1e-5, rtol=0)
        assert_close(m.attention_map(x), ref.attention_map(x), atol=1e-6, rtol=0)


def test_shift_mask_keeps_wrapped_regions_apart() -> None:
    # 8x8 grid, M = 4: rolled by -2, cell (0, 0) lands at (6, 6), in the last window beside
    # (6, 6) itself (rolled to (4, 4)); Swin's mask keeps them apart, so (0, 0) sees only the
    # 2x2 corner block it wrapped round with.
    rows = cols = 8
    m = layer(rows, cols, window=4, block=1)
    assert m.shifted
    x = torch.randn(B, m.seq_len, DIM)
    amap = m.attention_map(x)

    def token(r: int, c: int) -> int:
        return 1 + r * cols + c

    corner = {token(r, c) for r in (0, 1) for c in (0, 1)}
    assert set(amap[0, 0, token(0, 0)].nonzero().flatten().tolist()) == corner | {0}
    assert (amap[:, :, token(0, 0), token(6, 6)] == 0).all()
    assert (amap[:, :, token(6, 6), token(0, 0)] == 0).all()
    # The mask is what does it: the same rolled windows without it mix the regions.
    q, k, v = qkv(m)
    plan = m.plans[True]
    grid = [t[:, :, 1:].reshape(B, HEADS, rows, cols, -1) for t in (q, k, v)]
    masked = window_attention(*grid, plan, scale=m.scale, mask=window_mask(plan, cls=False))
    unmasked = window_attention(*grid, plan, scale=m.scale, mask=None)
    assert not torch.allclose(masked, unmasked, atol=1e-3)
    # Interior windows hold one region each: there, the mask changes nothing.
    assert_close(masked[:, :, 2:6, 2:6], unmasked[:, :, 2:6, 2:6])


@pytest.mark.parametrize(("rows", "cols", "window"), [(8, 8, 4), (5, 5, 2), (6, 9, 4)])
def test_block_parity_controls_the_shift(rows: int, cols: int, window: int) -> None:
    outs, maps = [], []
    q, k, v = qkv(layer(rows, cols, window=window))
    for block in range(4):
        m = layer(rows, cols, window=window, block=block)
        assert m.shifted == (block % 2 == 1)
        with torch.no_grad():
            outs.append(m.attend(q, k, v))
            maps.append(m.weights(q, k))
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)
    assert not torch.equal(maps[0] > 0, maps[1] > 0)
    for block in range(4):  # shift = false: every block the same
        m = layer(rows, cols, window=window, block=block, shift=False)
        assert not m.shifted
        with torch.no_grad():
            assert torch.equal(m.attend(q, k, v), outs[0])


@pytest.mark.parametrize("block", [0, 1])
def test_bfloat16_shifted_and_padded(block: int) -> None:
    # The registry's contract test runs block 0 only: here the shift and padding masks
    # meet bfloat16 autocast, against the float32 result.
    m = layer(5, 5, window=3, block=block).train()
    x = torch.randn(B, m.seq_len, DIM, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    out.float().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    with torch.no_grad():
        ref = m(x)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize(("rows", "cols", "window"), [(5, 5, 3), (4, 6, 4)])
def test_shifted_gradients_match_finite_differences(rows: int, cols: int, window: int) -> None:
    m = layer(rows, cols, window=window, block=1).double().eval()
    assert m.shifted
    x = torch.randn(1, m.seq_len, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


def test_inference_then_training() -> None:
    # The masks are buffers built at construction, not tensors first made under
    # inference_mode (which autograd could not save for the backward).
    m = layer(5, 5, window=2, block=1)
    x = torch.randn(B, m.seq_len, DIM)
    with torch.inference_mode():
        m(x)
    m(x.requires_grad_()).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


# ---------------------------------------------------------------------------- cost


@pytest.mark.parametrize("block", [0, 1])
def test_never_materialises_dense_attention(block: int) -> None:
    n = 1 + 16 * 16
    assert n - 1 > 4 * DIM  # so that no projection width passes for a token count
    x = torch.randn(1, n, DIM)
    assert not dense_intermediates(layer(16, 16, window=4, block=block), x)
    assert not dense_intermediates(layer(16, 16, window=5, block=block), x)  # padded
    assert dense_intermediates(fused(n), x)  # the check does catch dense attention


@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize(("rows", "cols", "window"), GRIDS, ids=GRID_IDS)
def test_analytic_flops_equal_counted(rows: int, cols: int, window: int, block: int) -> None:
    m = layer(rows, cols, window=window, block=block)
    n = m.seq_len
    counts = count_flops(m, torch.randn(B, n, DIM), analytic=m.flops(n))
    assert counts.analytic == counts.fvcore == counts.flop_counter, counts
    plan = window_plan(rows, cols, window, shifted=False)
    cells = plan.padded_rows * plan.padded_cols  # padded windows run, and are counted
    per_head = 2 * 2 * DIM // HEADS * (n + cells * (plan.area + 1))
    assert m.attend_flops(n) == HEADS * per_head


def test_work_is_linear_in_tokens() -> None:
    attend = {}
    for side in (8, 16):
        m = layer(side, side, window=4, block=1)
        n = m.seq_len
        counts = count_flops(m, torch.randn(1, n, DIM), analytic=m.flops(n))
        attend[side] = counts.fvcore - m.projection_flops(n)
        assert attend[side] == m.attend_flops(n)
    # 257 / 65 = 3.95x the tokens: window work grows ~4x, dense attention would grow ~16x.
    assert 3.5 < attend[16] / attend[8] < 4.5


# ---------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    ("rows", "cols", "window", "shift"),
    [(8, 8, 4, False), (8, 8, 4, True), (6, 9, 3, True), (3, 8, 4, True), (12, 8, 4, True)],
)
def test_matches_timm_swin_window_attention(rows: int, cols: int, window: int, shift: bool) -> None:
    # timm's Swin block (its cyclic shift, region mask, WindowAttention and reverse shift)
    # with our W_qkv and W_o and its relative position bias zeroed, on the patches alone (no
    # CLS), against the same windows through `window_attention`. Divisible grids only: for
    # the others timm rolls before padding and lets the padding into the keys.
    swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    cfg = WindowConfig(window=window)
    m = build_attention(cfg, dim=DIM, num_heads=HEADS, seq_len=1 + rows * cols)
    block = swin.SwinTransformerBlock(
        DIM,
        input_resolution=(rows, cols),
        num_heads=HEADS,
        window_size=window,
        shift_size=window // 2 if shift else 0,
    ).eval()
    with torch.no_grad():
        block.attn.qkv.load_state_dict(m.qkv.state_dict())
        block.attn.proj.load_state_dict(m.proj.state_dict())
        block.attn.relative_position_bias_table.zero_()
    x = torch.randn(B, rows, cols, DIM)
    plan = window_plan(rows, cols, window, shifted=shift)
    assert (plan.win_rows, plan.win_cols) == tuple(block.window_size)
    assert (plan.shift_rows, plan.shift_cols) == tuple(block.shift_size)
    with torch.no_grad():
        expected = block._attn(x).reshape(B, rows * cols, DIM)
        q, k, v = m.qkv_heads(x.reshape(B, rows * cols, DIM))
        grid = [t.reshape(B, HEADS, rows, cols, -1) for t in (q, k, v)]
        out = window_attention(*grid, plan, scale=m.scale, mask=window_mask(plan, cls=False))
        out = m.merge_heads(out.reshape(B, HEADS, rows * cols, -1))
    # timm masks with -100 rather than -inf: a weight of e^-100 ~ 4e-44, far below float32
    # rounding of the outputs.
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
