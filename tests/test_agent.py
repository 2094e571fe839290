"""Agent attention (`effbench.attention.agent`): the pooled agents, the paper's formula in
float64 where the agents are the patch queries themselves, the depthwise convolution against
an explicit conv2d, CLS handling, map @ V + skip == attend on square, oblong and upsampled
grids, bfloat16, linear work and FLOP counts."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_attention import dense_intermediates
from torch.testing import assert_close

from effbench.attention import build_attention
from effbench.attention.agent import AgentAttention, agent_tokens
from effbench.attention.base import Attention, relative_error, softmax_attention
from effbench.config.attention import AgentConfig, FusedConfig
from effbench.measure import count_flops

B, DIM, HEADS = 2, 32, 2

# (seq_len, agents, dwc_kernel): a square grid pooled in 2x2 blocks; 5x5 pooled to 3x3 with
# overlapping bins; a 4x6 grid upsampled to 5x5 agents; the 1x17 grid of 18 tokens; agents
# equal to the patches; a convolution wider than the grid.
GRIDS = [(17, 4, 3), (26, 9, 5), (25, 25, 3), (18, 4, 3), (17, 16, 0), (13, 4, 7)]
GRID_IDS = [f"n{n}-a{a}-k{k}" for n, a, k in GRIDS]


def build(seq_len: int, **opts: Any) -> AgentAttention:
    layer = build_attention(
        AgentConfig.tiny().model_copy(update=opts), dim=DIM, num_heads=HEADS, seq_len=seq_len
    )
    assert isinstance(layer, AgentAttention)
    return layer


def qkv(m: Attention, n: int, *, dtype: torch.dtype = torch.float32):
    with torch.no_grad():
        return m.qkv_heads(torch.randn(B, n, DIM, dtype=dtype))


def pool_bins(size: int, out: int) -> list[range]:
    """Adaptive pooling's bins along one axis: [floor(i size / out), ceil((i+1) size / out))."""
    return [range(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


@pytest.mark.parametrize(
    ("rows", "cols", "agents"), [(4, 4, 4), (5, 5, 9), (4, 6, 25), (1, 17, 4), (3, 4, 16)]
)
def test_agents_are_the_pooled_patch_queries(rows: int, cols: int, agents: int) -> None:
    q = torch.randn(B, HEADS, 1 + rows * cols, 8, dtype=torch.float64)
    side = math.isqrt(agents)
    grid = q[:, :, 1:].reshape(B, HEADS, rows, cols, 8)
    expected = torch.stack(
        [
            grid[:, :, list(r)][:, :, :, list(c)].mean(dim=(2, 3))
            for r in pool_bins(rows, side)
            for c in pool_bins(cols, side)
        ],
        dim=2,
    )
    out = agent_tokens(q, rows, cols, agents)
    assert out.shape == (B, HEADS, agents, 8)
    assert_close(out, expected, atol=1e-12, rtol=0)
    q[:, :, 0] += 100.0  # the CLS query is not pooled
    assert_close(agent_tokens(q, rows, cols, agents), out, atol=0, rtol=0)


def test_agents_equal_to_the_patches_follow_the_paper_formula() -> None:
    # With agents == patches on a square grid the pool is the identity: A = Q_p. Then the
    # agent aggregation is exact softmax attention of the patch queries over all N keys, and
    # the output is Eq. (3) of the paper, written here with explicit exponentials in float64.
    n = 17
    m = build(n, agents=16, dwc_kernel=0).double()
    q, k, v = qkv(m, n, dtype=torch.float64)
    s = m.scale
    a = q[:, :, 1:]
    assert_close(agent_tokens(q, 4, 4, 16), a, atol=0, rtol=0)
    e_ak = torch.exp(torch.einsum("bhad,bhjd->bhaj", a, k) * s)
    agent_v = torch.einsum("bhaj,bhjd->bhad", e_ak, v) / e_ak.sum(-1, keepdim=True)
    assert_close(agent_v, softmax_attention(a, k, v, s), atol=1e-12, rtol=0)  # exact limit
    e_qa = torch.exp(torch.einsum("bhid,bhad->bhia", q, a) * s)
    expected = torch.einsum("bhia,bhad->bhid", e_qa, agent_v) / e_qa.sum(-1, keepdim=True)
    with torch.no_grad():
        assert_close(m.attend(q, k, v), expected, atol=1e-12, rtol=0)
        with_conv = build(n, agents=16, dwc_kernel=3).double()
        out = with_conv.attend(q, k, v) - with_conv.skip(v)
    assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("n", "rows", "cols", "kernel"), [(26, 5, 5, 3), (13, 3, 4, 5), (18, 1, 17, 3)]
)
def test_dwc_is_a_depthwise_conv2d_of_the_value_grid(
    n: int, rows: int, cols: int, kernel: int
) -> None:
    m = build(n, dwc_kernel=kernel).double()
    with torch.no_grad():
        m.dwc.bias.normal_()  # a non-zero bias, which the output must carry
    _, _, v = qkv(m, n, dtype=torch.float64)
    d = DIM // HEADS
    # Channels h*d + j: head h's feature j, one head after another.
    image = torch.cat(
        [v[:, h, 1:].reshape(B, rows, cols, d).permute(0, 3, 1, 2) for h in range(HEADS)], dim=1
    )
    conv = F.conv2d(image, m.dwc.weight, m.dwc.bias, padding=kernel // 2, groups=DIM)
    assert conv.shape == (B, DIM, rows, cols)
    expected = torch.stack(
        [conv[:, h * d : (h + 1) * d].flatten(2).transpose(1, 2) for h in range(HEADS)], dim=1
    )
    with torch.no_grad():
        skip = m.skip(v)
    assert skip.shape == v.shape
    assert (skip[:, :, 0] == 0).all(), "the convolution reaches the CLS output"
    assert_close(skip[:, :, 1:], expected, atol=1e-12, rtol=0)
    assert build(n, dwc_kernel=0).skip(v) is None


@pytest.mark.parametrize(("n", "agents", "kernel"), GRIDS, ids=GRID_IDS)
def test_map_times_v_plus_skip_is_attend(n: int, agents: int, kernel: int) -> None:
    m = build(n, agents=agents, dwc_kernel=kernel).double()
    q, k, v = qkv(m, n, dtype=torch.float64)
    with torch.no_grad():
        w, skip = m.weights(q, k), m.skip(v)
        out = m.attend(q, k, v)
    assert w.shape == (B, HEADS, n, n)
    assert_close(w @ v + (0 if skip is None else skip), out, atol=1e-12, rtol=0)
    assert w.min() >= 0
    assert_close(w.sum(-1), torch.ones(B, HEADS, n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_cls_query_reads_the_agents_and_cls_key_feeds_them() -> None:
    n = 26
    m = build(n)
    q, k, v = qkv(m, n)
    with torch.no_grad():
        out = m.attend(q, k, v)
        q2 = q.clone()
        q2[:, :, 0] += 1.0
        moved = m.attend(q2, k, v)  # CLS is not pooled: only its own output moves
        assert_close(moved[:, :, 1:], out[:, :, 1:], atol=0, rtol=0)
        assert (moved[:, :, 0] - out[:, :, 0]).abs().max() > 1e-3
        v2 = v.clone()
        v2[:, :, 0] += 1.0  # CLS is a value of every agent, so of every patch query
        assert ((m.attend(q, k, v2) - out)[:, :, 1:].abs().amax(-1) > 1e-4).all()
        assert (m.weights(q, k)[..., 0] > 0).all()


def test_bfloat16_autocast_stays_within_1e_2_of_float32() -> None:
    n = 1 + 8 * 8
    m = build(n, agents=16, dwc_kernel=3)
    q, k, v = qkv(m, n)
    with torch.no_grad():
        ref = m.attend(q, k, v)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m.attend(q, k, v)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 1e-2
    assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


def test_never_materialises_dense_attention() -> None:
    n = 1 + 16 * 16
    assert n - 1 > 4 * DIM  # so that no projection width passes for a token count
    x = torch.randn(1, n, DIM)
    assert not dense_intermediates(build(n, agents=49, dwc_kernel=5), x)
    fused = build_attention(FusedConfig(), dim=DIM, num_heads=HEADS, seq_len=n)
    assert dense_intermediates(fused, x)  # the check does catch dense attention


@pytest.mark.parametrize(("n", "agents", "kernel"), GRIDS, ids=GRID_IDS)
def test_analytic_flops_equal_counted(n: int, agents: int, kernel: int) -> None:
    m = build(n, agents=agents, dwc_kernel=kernel)
    counts = count_flops(m, torch.randn(B, n, DIM), analytic=m.flops(n))
    assert counts.analytic == counts.fvcore == counts.flop_counter, counts


def test_work_is_linear_in_tokens() -> None:
    attend = {}
    for side in (8, 16):
        n = 1 + side * side
        m = build(n, agents=49)
        counts = count_flops(m, torch.randn(1, n, DIM), analytic=m.flops(n))
        attend[side] = counts.fvcore - m.projection_flops(n)
        assert attend[side] == m.attend_flops(n)
    # 257 / 65 = 3.95x the tokens: the work grows ~4x, dense attention would grow ~16x.
    assert 3.5 < attend[16] / attend[8] < 4.5


def test_weights_do_not_depend_on_the_grid() -> None:
    # Nothing is sized by the grid: weights trained on 4x4 run a 6x6 grid unchanged and give
    # what a layer built for 6x6 gives with the same state.
    small, big = build(17), build(37)
    state = small.state_dict()
    adapted = big.adapt_state(state, trained_grid=(4, 4), grid=(6, 6))
    assert all(torch.equal(adapted[key], state[key]) for key in state)
    big.load_state_dict(adapted)
    x = torch.randn(B, 37, DIM)
    with torch.no_grad():
        assert_close(small(x), big(x), atol=0, rtol=0)
